// Test-only stand-in for a header that CMake generates in CUDA builds of torch and that CPU
// wheels do not ship; c10/cuda/CUDAMacros.h includes it. Used by
// tests/ops/test_ms_deform_attn.py to syntax-check the CUDA glue; never installed.
#pragma once

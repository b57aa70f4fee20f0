// The kernel compiled for AVX-512F with 512-bit vectors; chosen at run time only on
// machines that have it (see ms_deform_attn_cpu.cpp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "msda_cpu_api.h"

#if MSDA_HAVE_X86_VARIANTS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512")
#endif

#define MSDA_ISA avx512
#include "msda_cpu_kernel.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // MSDA_HAVE_X86_VARIANTS

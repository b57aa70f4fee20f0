// The CUDA kernels' plain interface: raw device pointers and sizes, no ATen, so that the .cu
// file compiles with nvcc alone. ms_deform_attn_cuda.cpp adapts tensors to it.
//
// Shapes and sampling conventions are those of cpu/msda_cpu_kernel.h. Values are float, half
// or bfloat16; locations, attention weights and every accumulation are float32; grad_value is
// accumulated into a float32 buffer (the caller casts it to the value's dtype).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace unipercept_msda {
namespace cuda {

struct Dims {
  int64_t batch;        // N
  int64_t num_values;   // S
  int64_t num_heads;    // M
  int64_t head_dim;     // D
  int64_t num_queries;  // Q
  int64_t num_levels;   // L
  int64_t num_points;   // P
};

// ValueT is float, __half or __nv_bfloat16 (instantiated in the .cu file only for those).
template <typename ValueT>
cudaError_t launch_forward(const ValueT* value, const int64_t* spatial_shapes,
                           const int64_t* level_start, const float* loc, const float* attn,
                           ValueT* out, const Dims& dims, int multiprocessors,
                           cudaStream_t stream);

template <typename ValueT>
cudaError_t launch_backward(const ValueT* value, const int64_t* spatial_shapes,
                            const int64_t* level_start, const float* loc, const float* attn,
                            const ValueT* grad_out, float* grad_value, float* grad_loc,
                            float* grad_attn, const Dims& dims, int multiprocessors,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace unipercept_msda

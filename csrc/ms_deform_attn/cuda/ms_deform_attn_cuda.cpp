// CUDA implementation of unipercept::ms_deform_attn_{forward,backward}: tensors in, raw
// pointers to the kernels in ms_deform_attn_cuda.cu out. Compiled by the host compiler.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "../ms_deform_attn_checks.h"
#include "msda_cuda_api.h"

namespace unipercept_msda {
namespace {

cuda::Dims dims_of(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& sampling_locations) {
  return cuda::Dims{value.size(0),
                    value.size(1),
                    value.size(2),
                    value.size(3),
                    sampling_locations.size(1),
                    spatial_shapes.size(0),
                    sampling_locations.size(4)};
}

// Multiprocessors of the current device (ATen's CUDAContext.h would give it too, but pulls in
// the cuBLAS/cuSPARSE headers, which a plain CUDA toolkit install may lack).
int multiprocessor_count(c10::DeviceIndex device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

void check_dtype(const at::Tensor& value) {
  const auto dtype = value.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "ms_deform_attn (CUDA kernel): value must be float32, float16 or bfloat16, got ",
              dtype);
}

// Calls fn with the value's element type as the kernels know it.
template <typename Fn>
void dispatch_value_type(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kHalf:
      fn(static_cast<__half*>(nullptr), static_cast<at::Half*>(nullptr));
      break;
    case at::kBFloat16:
      fn(static_cast<__nv_bfloat16*>(nullptr), static_cast<at::BFloat16*>(nullptr));
      break;
    default:
      fn(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  }
}

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights) {
  // Shapes on the device are validated by the Python wrapper; reading them here would sync.
  check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, /*check_contents=*/false);
  check_dtype(value);
  const c10::cuda::CUDAGuard guard(value.device());
  const cuda::Dims dims = dims_of(value, spatial_shapes, sampling_locations);
  auto out = at::empty({dims.batch, dims.num_queries, dims.num_heads * dims.head_dim},
                       value.options());
  const int multiprocessors = multiprocessor_count(value.device().index());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
  dispatch_value_type(value.scalar_type(), [&](auto* kernel_type, auto* aten_type) {
    using KernelT = std::remove_pointer_t<decltype(kernel_type)>;
    using AtenT = std::remove_pointer_t<decltype(aten_type)>;
    C10_CUDA_CHECK(cuda::launch_forward<KernelT>(
        reinterpret_cast<const KernelT*>(value.const_data_ptr<AtenT>()),
        spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
        sampling_locations.const_data_ptr<float>(), attention_weights.const_data_ptr<float>(),
        reinterpret_cast<KernelT*>(out.mutable_data_ptr<AtenT>()), dims, multiprocessors,
        stream));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, /*check_contents=*/false);
  check_grad_output(value, sampling_locations, grad_output);
  check_dtype(value);
  const c10::cuda::CUDAGuard guard(value.device());
  const cuda::Dims dims = dims_of(value, spatial_shapes, sampling_locations);
  const at::Tensor grad = grad_output.contiguous();
  // grad_value is accumulated in float32 whatever the value's dtype.
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(at::kFloat));
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  const int multiprocessors = multiprocessor_count(value.device().index());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
  dispatch_value_type(value.scalar_type(), [&](auto* kernel_type, auto* aten_type) {
    using KernelT = std::remove_pointer_t<decltype(kernel_type)>;
    using AtenT = std::remove_pointer_t<decltype(aten_type)>;
    C10_CUDA_CHECK(cuda::launch_backward<KernelT>(
        reinterpret_cast<const KernelT*>(value.const_data_ptr<AtenT>()),
        spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
        sampling_locations.const_data_ptr<float>(), attention_weights.const_data_ptr<float>(),
        reinterpret_cast<const KernelT*>(grad.const_data_ptr<AtenT>()),
        grad_value.mutable_data_ptr<float>(), grad_loc.mutable_data_ptr<float>(),
        grad_attn.mutable_data_ptr<float>(), dims, multiprocessors, stream));
  });
  if (value.scalar_type() != at::kFloat) grad_value = grad_value.to(value.scalar_type());
  return std::make_tuple(grad_value, grad_loc, grad_attn);
}

}  // namespace
}  // namespace unipercept_msda

TORCH_LIBRARY_IMPL(unipercept, CUDA, m) {
  m.impl("ms_deform_attn_forward", &unipercept_msda::forward_cuda);
  m.impl("ms_deform_attn_backward", &unipercept_msda::backward_cuda);
}

// Argument checks shared by the CPU and CUDA implementations. The Python wrapper
// (unipercept.ops.ms_deform_attn) validates first and raises ValueError naming the argument;
// these checks guard direct calls of torch.ops.unipercept.* so that a bad call fails with a
// message instead of reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace unipercept_msda {

inline void check_arguments(const at::Tensor& value, const at::Tensor& spatial_shapes,
                            const at::Tensor& level_start_index,
                            const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights, bool check_contents) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must have shape (N, S, M, D), got ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 &&
                  spatial_shapes.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes must be int64 of shape (L, 2), got ",
              spatial_shapes.scalar_type(), " ", spatial_shapes.sizes());
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == levels &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64 of shape (", levels, ",), got ",
              level_start_index.scalar_type(), " ", level_start_index.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == value.size(0) &&
                  sampling_locations.size(2) == value.size(2) &&
                  sampling_locations.size(3) == levels && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must have shape (N, Q, M, L, P, 2) with N=",
              value.size(0), ", M=", value.size(2), ", L=", levels, "; got ",
              sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights must have shape (N, Q, M, L, P) = ",
              sampling_locations.sizes().slice(0, 5), ", got ", attention_weights.sizes());
  const auto coord_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(sampling_locations.scalar_type() == coord_type &&
                  attention_weights.scalar_type() == coord_type,
              "ms_deform_attn: sampling_locations and attention_weights must be ", coord_type,
              " for a ", value.scalar_type(), " value, got ", sampling_locations.scalar_type(),
              " and ", attention_weights.scalar_type());
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations,
                              &attention_weights}) {
    TORCH_CHECK(t->device() == value.device(),
                "ms_deform_attn: all tensors must be on value's device ", value.device(),
                ", got one on ", t->device());
  }
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations,
                              &attention_weights}) {
    TORCH_CHECK(t->is_contiguous(), "ms_deform_attn: all tensors must be contiguous");
  }
  if (check_contents) {
    const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
    const int64_t* starts = level_start_index.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t l = 0; l < levels; ++l) {
      TORCH_CHECK(shapes[2 * l] > 0 && shapes[2 * l + 1] > 0,
                  "ms_deform_attn: spatial_shapes[", l, "] must be positive");
      TORCH_CHECK(starts[l] == total, "ms_deform_attn: level_start_index[", l, "] is ",
                  starts[l], ", expected ", total, " from spatial_shapes");
      total += shapes[2 * l] * shapes[2 * l + 1];
    }
    TORCH_CHECK(total == value.size(1), "ms_deform_attn: spatial_shapes cover ", total,
                " positions but value has ", value.size(1));
  }
}

inline void check_grad_output(const at::Tensor& value, const at::Tensor& sampling_locations,
                              const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
                  grad_output.size(1) == sampling_locations.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "ms_deform_attn: grad_output must have shape (N, Q, M * D), got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn: grad_output must match value's dtype and device");
}

}  // namespace unipercept_msda

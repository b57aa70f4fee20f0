// CPU implementation of unipercept::ms_deform_attn_{forward,backward}: argument checks, the
// choice of instruction set, and the split of the work over threads (at::parallel_for, i.e.
// torch's OpenMP pool, so torch.set_num_threads applies).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>

#include "../ms_deform_attn_checks.h"
#include "msda_cpu_api.h"

namespace unipercept_msda {
namespace {

enum class Isa { base, avx2, avx512 };

bool supported(Isa isa) {
#if MSDA_HAVE_X86_VARIANTS
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::base:
      return true;
  }
  return false;
#else
  return isa == Isa::base;
#endif
}

bool parse(const std::string& name, Isa* isa) {
  if (name == "avx512") *isa = Isa::avx512;
  else if (name == "avx2") *isa = Isa::avx2;
  else if (name == "base") *isa = Isa::base;
  else return false;
  return true;
}

const char* name_of(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::base:
      return "base";
  }
  return "base";
}

// The best instruction set this machine runs, unless UNIPERCEPT_MSDA_CPU_ISA names another
// supported one (for comparing variants; an unsupported name is ignored).
Isa& selected() {
  static Isa isa = [] {
    Isa requested;
    const char* env = std::getenv("UNIPERCEPT_MSDA_CPU_ISA");
    if (env != nullptr && parse(env, &requested) && supported(requested)) return requested;
    for (Isa candidate : {Isa::avx512, Isa::avx2}) {
      if (supported(candidate)) return candidate;
    }
    return Isa::base;
  }();
  return isa;
}

template <typename... Args>
void run_forward(Args... args) {
  switch (selected()) {
#if MSDA_HAVE_X86_VARIANTS
    case Isa::avx512:
      return avx512::forward(args...);
    case Isa::avx2:
      return avx2::forward(args...);
#endif
    default:
      return base::forward(args...);
  }
}

template <typename... Args>
void run_backward(Args... args) {
  switch (selected()) {
#if MSDA_HAVE_X86_VARIANTS
    case Isa::avx512:
      return avx512::backward(args...);
    case Isa::avx2:
      return avx2::backward(args...);
#endif
    default:
      return base::backward(args...);
  }
}

Problem describe(const at::Tensor& value, const at::Tensor& spatial_shapes,
                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations) {
  return Problem{value.size(0),
                 value.size(1),
                 value.size(2),
                 value.size(3),
                 sampling_locations.size(1),
                 sampling_locations.size(3),
                 sampling_locations.size(4),
                 spatial_shapes.data_ptr<int64_t>(),
                 level_start_index.data_ptr<int64_t>()};
}

// Forward rows are independent: threads take contiguous ranges of (n, q, m), which keeps
// neighbouring queries (whose samples overlap) on one core.
template <typename T>
at::Tensor forward_typed(const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& loc,
                         const at::Tensor& attn) {
  const Problem pb = describe(value, spatial_shapes, level_start_index, loc);
  auto out = at::empty({pb.batch, pb.num_queries, pb.num_heads * pb.head_dim}, value.options());
  const T* value_ptr = value.data_ptr<T>();
  const T* loc_ptr = loc.data_ptr<T>();
  const T* attn_ptr = attn.data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  const int64_t tasks = pb.batch * pb.num_queries * pb.num_heads;
  at::parallel_for(0, tasks, 64, [&](int64_t begin, int64_t end) {
    run_forward(pb, value_ptr, loc_ptr, attn_ptr, out_ptr, begin, end);
  });
  return out;
}

// Backward: grad_value is a scatter, so each worker owns one (n, m) head and writes its rows
// without atomics. With more threads than heads, the queries of a head are split into chunks;
// every chunk but the first accumulates into a private buffer, summed in afterwards.
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_typed(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& loc, const at::Tensor& attn,
    const at::Tensor& grad_output) {
  const Problem pb = describe(value, spatial_shapes, level_start_index, loc);
  auto grad_value = at::zeros_like(value);
  auto grad_loc = at::empty_like(loc);
  auto grad_attn = at::empty_like(attn);
  const int64_t heads = pb.batch * pb.num_heads;
  const int64_t threads = at::get_num_threads();
  int64_t chunks = heads >= threads ? 1 : (threads + heads - 1) / heads;
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, pb.num_queries / 256));
  const int64_t row = pb.num_heads * pb.head_dim;
  at::Tensor scratch;
  T* scratch_ptr = nullptr;
  if (chunks > 1) {
    scratch = at::zeros({heads, chunks - 1, pb.num_values, pb.head_dim}, value.options());
    scratch_ptr = scratch.data_ptr<T>();
  }
  const T* value_ptr = value.data_ptr<T>();
  const T* loc_ptr = loc.data_ptr<T>();
  const T* attn_ptr = attn.data_ptr<T>();
  const T* grad_out_ptr = grad_output.data_ptr<T>();
  T* grad_value_ptr = grad_value.data_ptr<T>();
  T* grad_loc_ptr = grad_loc.data_ptr<T>();
  T* grad_attn_ptr = grad_attn.data_ptr<T>();
  const int64_t per_chunk = (pb.num_queries + chunks - 1) / chunks;
  at::parallel_for(0, heads * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t head = task / chunks, chunk = task % chunks;
      const int64_t n = head / pb.num_heads, m = head % pb.num_heads;
      const int64_t q_begin = std::min(chunk * per_chunk, pb.num_queries);
      const int64_t q_end = std::min(q_begin + per_chunk, pb.num_queries);
      T* target = chunk == 0 ? grad_value_ptr + n * pb.num_values * row + m * pb.head_dim
                             : scratch_ptr + ((head * (chunks - 1) + chunk - 1) * pb.num_values) *
                                                 pb.head_dim;
      const int64_t target_row = chunk == 0 ? row : pb.head_dim;
      run_backward(pb, value_ptr, loc_ptr, attn_ptr, grad_out_ptr, target, target_row,
                      grad_loc_ptr, grad_attn_ptr, n, m, q_begin, q_end);
    }
  });
  if (chunks > 1) {
    at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t head = begin; head < end; ++head) {
        const int64_t n = head / pb.num_heads, m = head % pb.num_heads;
        T* gv = grad_value_ptr + n * pb.num_values * row + m * pb.head_dim;
        for (int64_t chunk = 1; chunk < chunks; ++chunk) {
          const T* src = scratch_ptr + ((head * (chunks - 1) + chunk - 1) * pb.num_values) *
                                           pb.head_dim;
          for (int64_t s = 0; s < pb.num_values; ++s) {
            for (int64_t c = 0; c < pb.head_dim; ++c) gv[s * row + c] += src[s * pb.head_dim + c];
          }
        }
      }
    });
  }
  return std::make_tuple(grad_value, grad_loc, grad_attn);
}

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, /*check_contents=*/true);
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn (CPU kernel): value must be float32 or float64, got ",
              value.scalar_type(), "; the Python wrapper upcasts half precision");
  if (value.scalar_type() == at::kDouble) {
    return forward_typed<double>(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights);
  }
  return forward_typed<float>(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, /*check_contents=*/true);
  check_grad_output(value, sampling_locations, grad_output);
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn (CPU kernel): value must be float32 or float64, got ",
              value.scalar_type());
  const at::Tensor grad = grad_output.contiguous();
  if (value.scalar_type() == at::kDouble) {
    return backward_typed<double>(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, grad);
  }
  return backward_typed<float>(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, grad);
}

std::string cpu_isa() { return name_of(selected()); }

bool set_cpu_isa(const std::string& name) {
  Isa isa;
  if (!parse(name, &isa) || !supported(isa)) return false;
  selected() = isa;
  return true;
}

}  // namespace
}  // namespace unipercept_msda

TORCH_LIBRARY_FRAGMENT(unipercept, m) {
  m.def("msda_cpu_isa() -> str", &unipercept_msda::cpu_isa);
  m.def("msda_set_cpu_isa(str isa) -> bool", &unipercept_msda::set_cpu_isa);
}

TORCH_LIBRARY_IMPL(unipercept, CPU, m) {
  m.impl("ms_deform_attn_forward", &unipercept_msda::forward_cpu);
  m.impl("ms_deform_attn_backward", &unipercept_msda::backward_cpu);
}

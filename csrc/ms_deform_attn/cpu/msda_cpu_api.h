// The CPU kernel's plain-C++ interface: one namespace per instruction set, same functions in
// each. Shapes and conventions are documented in msda_cpu_kernel.h.
#pragma once

#include <cstdint>

namespace unipercept_msda {

struct Problem {
  int64_t batch;        // N
  int64_t num_values;   // S, sum of H_l * W_l
  int64_t num_heads;    // M
  int64_t head_dim;     // D
  int64_t num_queries;  // Q
  int64_t num_levels;   // L
  int64_t num_points;   // P
  const int64_t* spatial_shapes;  // (L, 2) as (H, W)
  const int64_t* level_start;     // (L,)
};

#define MSDA_DECLARE_ISA(ISA)                                                                  \
  namespace ISA {                                                                              \
  void forward(const Problem& pb, const float* value, const float* loc, const float* attn,     \
               float* out, int64_t task_begin, int64_t task_end);                              \
  void forward(const Problem& pb, const double* value, const double* loc, const double* attn,  \
               double* out, int64_t task_begin, int64_t task_end);                             \
  void backward(const Problem& pb, const float* value, const float* loc, const float* attn,    \
                const float* grad_out, float* grad_value_nm, int64_t grad_value_row,           \
                float* grad_loc, float* grad_attn, int64_t n, int64_t m, int64_t q_begin,      \
                int64_t q_end);                                                                \
  void backward(const Problem& pb, const double* value, const double* loc, const double* attn, \
                const double* grad_out, double* grad_value_nm, int64_t grad_value_row,         \
                double* grad_loc, double* grad_attn, int64_t n, int64_t m, int64_t q_begin,    \
                int64_t q_end);                                                                \
  }

// Whether the x86 variants are compiled: GCC or clang targeting x86-64 can build code for an
// instruction set beyond the baseline and choose it at run time.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MSDA_HAVE_X86_VARIANTS 1
#else
#define MSDA_HAVE_X86_VARIANTS 0
#endif

MSDA_DECLARE_ISA(base)
#if MSDA_HAVE_X86_VARIANTS
MSDA_DECLARE_ISA(avx2)
MSDA_DECLARE_ISA(avx512)
#endif

#undef MSDA_DECLARE_ISA

}  // namespace unipercept_msda

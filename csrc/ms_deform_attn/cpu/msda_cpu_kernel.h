// Multi-scale deformable attention on the CPU: the arithmetic, for one instruction set.
//
// This header is included by msda_cpu_{avx512,avx2,base}.cpp, each inside its own
// `#pragma GCC target` region and with MSDA_ISA naming the namespace, so the same loops are
// compiled three times and ms_deform_attn_cpu.cpp picks one at run time. It includes no ATen:
// torch's inline functions must never be compiled for an instruction set the machine may lack.
// Standard headers are included by the .cpp files before the target pragma for the same reason.
//
// Shapes (Deformable-DETR's conventions; every pointer is to contiguous memory):
//   value               (N, S, M, D)     S = sum over levels of H_l * W_l
//   spatial_shapes      (L, 2)           (H_l, W_l)
//   level_start         (L,)             offset of level l in S
//   sampling_locations  (N, Q, M, L, P, 2)  normalised (x, y); pixel centres at (i + 0.5) / W
//   attention_weights   (N, Q, M, L, P)
//   output              (N, Q, M, D)
// Sampling is bilinear with zero padding, as grid_sample(align_corners=False) does: corners
// outside the map read 0, so a sample touches the map only when -1 <= x < W and -1 <= y < H
// (at x = -1 its value is 0, but not its gradient).
//
// Gradients at a pixel centre: there x (or y) is an integer, bilinear sampling has a kink, and
// like grid_sample we return the one-sided derivative of the cell [floor(x), floor(x) + 1). Its
// far corners then have weight 0 yet still enter the location gradient (v[x0 + 1] - v[x0]), so
// a corner is skipped only when it lies outside the map, never because its weight is 0.

#include "msda_cpu_api.h"

namespace unipercept_msda {
namespace MSDA_ISA {
namespace {

// Where one sample reads: four corner offsets (in pixels, clamped into the map), which corners
// lie in the map, and the four bilinear weights, zeroed for corners outside it. Clamping keeps
// every address valid, so the forward channel loop carries no branch.
template <typename T>
struct Corners {
  int64_t offset[4];
  T bilinear[4];
  bool in_map[4];  // may be true with a zero weight: the corner still enters d/d location
  T dx, dy;
  bool inside;
};

template <typename T>
inline Corners<T> locate(T loc_x, T loc_y, int64_t height, int64_t width) {
  Corners<T> c;
  const T x = loc_x * static_cast<T>(width) - T(0.5);
  const T y = loc_y * static_cast<T>(height) - T(0.5);
  c.inside = x >= T(-1) && y >= T(-1) && x < static_cast<T>(width) && y < static_cast<T>(height);
  if (!c.inside) {
    return c;
  }
  const int64_t x0 = static_cast<int64_t>(std::floor(x));
  const int64_t y0 = static_cast<int64_t>(std::floor(y));
  c.dx = x - static_cast<T>(x0);
  c.dy = y - static_cast<T>(y0);
  const bool in_x0 = x0 >= 0, in_x1 = x0 + 1 < width;
  const bool in_y0 = y0 >= 0, in_y1 = y0 + 1 < height;
  const int64_t cx0 = in_x0 ? x0 : 0, cx1 = in_x1 ? x0 + 1 : width - 1;
  const int64_t cy0 = in_y0 ? y0 : 0, cy1 = in_y1 ? y0 + 1 : height - 1;
  c.offset[0] = cy0 * width + cx0;
  c.offset[1] = cy0 * width + cx1;
  c.offset[2] = cy1 * width + cx0;
  c.offset[3] = cy1 * width + cx1;
  const T lx = T(1) - c.dx, ly = T(1) - c.dy;
  c.bilinear[0] = (in_y0 && in_x0) ? ly * lx : T(0);
  c.bilinear[1] = (in_y0 && in_x1) ? ly * c.dx : T(0);
  c.bilinear[2] = (in_y1 && in_x0) ? c.dy * lx : T(0);
  c.bilinear[3] = (in_y1 && in_x1) ? c.dy * c.dx : T(0);
  c.in_map[0] = in_y0 && in_x0;
  c.in_map[1] = in_y0 && in_x1;
  c.in_map[2] = in_y1 && in_x0;
  c.in_map[3] = in_y1 && in_x1;
  return c;
}

// One output row (n, q, m): D channels accumulated over L * P samples. kDim > 0 fixes the head
// dimension at compile time so the accumulator lives in vector registers; kDim == 0 is the
// generic path, accumulating in the output row.
template <typename T, int kDim>
void forward_task(const Problem& pb, const T* value, const T* loc, const T* attn, T* out,
                  int64_t task) {
  const int64_t dim = kDim > 0 ? kDim : pb.head_dim;
  const int64_t heads = pb.num_heads;
  const int64_t m = task % heads;
  const int64_t n = task / (heads * pb.num_queries);
  const int64_t row = heads * dim;  // stride between two pixels of one head
  const T* value_nm = value + n * pb.num_values * row + m * dim;
  const T* loc_t = loc + task * pb.num_levels * pb.num_points * 2;
  const T* attn_t = attn + task * pb.num_levels * pb.num_points;
  T* out_t = out + task * dim;

  T acc[kDim > 0 ? kDim : 1];
  T* accumulator = kDim > 0 ? acc : out_t;
  for (int64_t c = 0; c < dim; ++c) accumulator[c] = T(0);

  for (int64_t l = 0; l < pb.num_levels; ++l) {
    const int64_t height = pb.spatial_shapes[2 * l], width = pb.spatial_shapes[2 * l + 1];
    const T* value_l = value_nm + pb.level_start[l] * row;
    for (int64_t p = 0; p < pb.num_points; ++p) {
      const int64_t i = l * pb.num_points + p;
      const Corners<T> c = locate<T>(loc_t[2 * i], loc_t[2 * i + 1], height, width);
      if (!c.inside) continue;
      const T a = attn_t[i];
      const T w0 = a * c.bilinear[0], w1 = a * c.bilinear[1];
      const T w2 = a * c.bilinear[2], w3 = a * c.bilinear[3];
      const T* __restrict v0 = value_l + c.offset[0] * row;
      const T* __restrict v1 = value_l + c.offset[1] * row;
      const T* __restrict v2 = value_l + c.offset[2] * row;
      const T* __restrict v3 = value_l + c.offset[3] * row;
      if constexpr (kDim > 0) {
#pragma GCC unroll 16
        for (int64_t ch = 0; ch < kDim; ++ch) {
          acc[ch] += w0 * v0[ch] + w1 * v1[ch] + w2 * v2[ch] + w3 * v3[ch];
        }
      } else {
        for (int64_t ch = 0; ch < dim; ++ch) {
          out_t[ch] += w0 * v0[ch] + w1 * v1[ch] + w2 * v2[ch] + w3 * v3[ch];
        }
      }
    }
  }
  if constexpr (kDim > 0) {
    for (int64_t ch = 0; ch < kDim; ++ch) out_t[ch] = acc[ch];
  }
}

// Partial sums per dot product: one 512-bit vector of floats, or two 256-bit ones.
constexpr int kLanes = 16;

template <typename T>
inline void axpy(T scale, const T* __restrict x, T* __restrict y, int64_t dim) {
  for (int64_t ch = 0; ch < dim; ++ch) y[ch] += scale * x[ch];
}

// Gradients for the queries [q_begin, q_end) of one (n, m). grad_value rows of this head are
// written through grad_value_nm with stride grad_value_row between pixels, so a caller can
// point it at a private buffer when several workers share one head.
//
// Corners outside the map read a row of zeros, and corners without a weight (outside the map,
// or on the far side of a pixel centre) point at a junk row instead of a clamped pixel: when
// all four have a weight, the four rows are distinct, so one fused channel loop can load,
// accumulate and store all of them without branches or aliasing.
template <typename T, int kDim>
void backward_range(const Problem& pb, const T* value, const T* loc, const T* attn,
                    const T* grad_out, T* grad_value_nm, int64_t grad_value_row, T* grad_loc,
                    T* grad_attn, int64_t n, int64_t m, int64_t q_begin, int64_t q_end) {
  const int64_t dim = kDim > 0 ? kDim : pb.head_dim;
  const int64_t heads = pb.num_heads;
  const int64_t row = heads * dim;
  const int64_t samples = pb.num_levels * pb.num_points;
  const T* value_nm = value + n * pb.num_values * row + m * dim;
  std::vector<T> spare(2 * dim, T(0));
  const T* zero_row = spare.data();
  T* junk_row = spare.data() + dim;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t task = (n * pb.num_queries + q) * heads + m;
    const T* __restrict go = grad_out + task * dim;
    const T* loc_t = loc + task * samples * 2;
    const T* attn_t = attn + task * samples;
    T* grad_loc_t = grad_loc + task * samples * 2;
    T* grad_attn_t = grad_attn + task * samples;
    for (int64_t l = 0; l < pb.num_levels; ++l) {
      const int64_t height = pb.spatial_shapes[2 * l], width = pb.spatial_shapes[2 * l + 1];
      const T* value_l = value_nm + pb.level_start[l] * row;
      T* grad_value_l = grad_value_nm + pb.level_start[l] * grad_value_row;
      for (int64_t p = 0; p < pb.num_points; ++p) {
        const int64_t i = l * pb.num_points + p;
        const Corners<T> c = locate<T>(loc_t[2 * i], loc_t[2 * i + 1], height, width);
        if (!c.inside) {
          grad_attn_t[i] = T(0);
          grad_loc_t[2 * i] = T(0);
          grad_loc_t[2 * i + 1] = T(0);
          continue;
        }
        const T a = attn_t[i];
        // Corners in the map are read for the dot products even with a zero weight (see the top
        // of this file); only corners with a weight receive a share of grad_value.
        const bool read0 = c.in_map[0], read1 = c.in_map[1];
        const bool read2 = c.in_map[2], read3 = c.in_map[3];
        const bool write0 = c.bilinear[0] != T(0), write1 = c.bilinear[1] != T(0);
        const bool write2 = c.bilinear[2] != T(0), write3 = c.bilinear[3] != T(0);
        const T* __restrict v0 = read0 ? value_l + c.offset[0] * row : zero_row;
        const T* __restrict v1 = read1 ? value_l + c.offset[1] * row : zero_row;
        const T* __restrict v2 = read2 ? value_l + c.offset[2] * row : zero_row;
        const T* __restrict v3 = read3 ? value_l + c.offset[3] * row : zero_row;
        T* __restrict g0 = write0 ? grad_value_l + c.offset[0] * grad_value_row : junk_row;
        T* __restrict g1 = write1 ? grad_value_l + c.offset[1] * grad_value_row : junk_row;
        T* __restrict g2 = write2 ? grad_value_l + c.offset[2] * grad_value_row : junk_row;
        T* __restrict g3 = write3 ? grad_value_l + c.offset[3] * grad_value_row : junk_row;
        const T s0 = a * c.bilinear[0], s1 = a * c.bilinear[1];
        const T s2 = a * c.bilinear[2], s3 = a * c.bilinear[3];
        // d_k = go . value of corner k: every other gradient follows from these four. The sums
        // run in kLanes independent partial sums (a strict left-to-right sum would be a chain
        // of scalar adds: the compiler may not reorder float additions by itself).
        T p0[kLanes] = {}, p1[kLanes] = {}, p2[kLanes] = {}, p3[kLanes] = {};
        const bool all_written = write0 && write1 && write2 && write3;
        int64_t ch = 0;
        for (; ch + kLanes <= dim; ch += kLanes) {
          if (all_written) {
#pragma GCC ivdep
            for (int j = 0; j < kLanes; ++j) {
              const T g = go[ch + j];
              p0[j] += g * v0[ch + j];
              p1[j] += g * v1[ch + j];
              p2[j] += g * v2[ch + j];
              p3[j] += g * v3[ch + j];
              g0[ch + j] += s0 * g;
              g1[ch + j] += s1 * g;
              g2[ch + j] += s2 * g;
              g3[ch + j] += s3 * g;
            }
          } else {
            for (int j = 0; j < kLanes; ++j) {
              const T g = go[ch + j];
              p0[j] += g * v0[ch + j];
              p1[j] += g * v1[ch + j];
              p2[j] += g * v2[ch + j];
              p3[j] += g * v3[ch + j];
            }
          }
        }
        for (; ch < dim; ++ch) {  // the tail of a head dimension that is not a multiple of kLanes
          const T g = go[ch];
          p0[0] += g * v0[ch];
          p1[0] += g * v1[ch];
          p2[0] += g * v2[ch];
          p3[0] += g * v3[ch];
          if (all_written) {
            g0[ch] += s0 * g;
            g1[ch] += s1 * g;
            g2[ch] += s2 * g;
            g3[ch] += s3 * g;
          }
        }
        if (!all_written) {
          // At a pixel centre or the border several corners share the junk row: update one row
          // at a time, and only the rows with a weight.
          if (write0) axpy<T>(s0, go, g0, dim);
          if (write1) axpy<T>(s1, go, g1, dim);
          if (write2) axpy<T>(s2, go, g2, dim);
          if (write3) axpy<T>(s3, go, g3, dim);
        }
        for (int width_half = kLanes / 2; width_half > 0; width_half /= 2) {
          for (int j = 0; j < width_half; ++j) {
            p0[j] += p0[j + width_half];
            p1[j] += p1[j + width_half];
            p2[j] += p2[j + width_half];
            p3[j] += p3[j + width_half];
          }
        }
        const T d0 = p0[0], d1 = p1[0], d2 = p2[0], d3 = p3[0];
        grad_attn_t[i] = c.bilinear[0] * d0 + c.bilinear[1] * d1 + c.bilinear[2] * d2 +
                         c.bilinear[3] * d3;
        const T lx = T(1) - c.dx, ly = T(1) - c.dy;
        grad_loc_t[2 * i] = a * (ly * (d1 - d0) + c.dy * (d3 - d2)) * static_cast<T>(width);
        grad_loc_t[2 * i + 1] = a * (lx * (d2 - d0) + c.dx * (d3 - d1)) * static_cast<T>(height);
      }
    }
  }
}

// Entry points: a range of work, dispatched on the head dimension so the common ones (16, 32,
// 64) get fully unrolled channel loops.
#define MSDA_DISPATCH_DIM(DIM, ...)        \
  switch (DIM) {                           \
    case 16: {                             \
      constexpr int kDim = 16;             \
      __VA_ARGS__;                         \
      break;                               \
    }                                      \
    case 32: {                             \
      constexpr int kDim = 32;             \
      __VA_ARGS__;                         \
      break;                               \
    }                                      \
    case 64: {                             \
      constexpr int kDim = 64;             \
      __VA_ARGS__;                         \
      break;                               \
    }                                      \
    default: {                             \
      constexpr int kDim = 0;              \
      __VA_ARGS__;                         \
    }                                      \
  }

template <typename T>
void forward_impl(const Problem& pb, const T* value, const T* loc, const T* attn, T* out,
                  int64_t task_begin, int64_t task_end) {
  MSDA_DISPATCH_DIM(pb.head_dim, for (int64_t t = task_begin; t < task_end; ++t) {
    forward_task<T, kDim>(pb, value, loc, attn, out, t);
  })
}

template <typename T>
void backward_impl(const Problem& pb, const T* value, const T* loc, const T* attn,
                   const T* grad_out, T* grad_value_nm, int64_t grad_value_row, T* grad_loc,
                   T* grad_attn, int64_t n, int64_t m, int64_t q_begin, int64_t q_end) {
  MSDA_DISPATCH_DIM(pb.head_dim, backward_range<T, kDim>(pb, value, loc, attn, grad_out,
                                                         grad_value_nm, grad_value_row,
                                                         grad_loc, grad_attn, n, m, q_begin,
                                                         q_end))
}
#undef MSDA_DISPATCH_DIM

}  // namespace

void forward(const Problem& pb, const float* value, const float* loc, const float* attn,
             float* out, int64_t task_begin, int64_t task_end) {
  forward_impl<float>(pb, value, loc, attn, out, task_begin, task_end);
}

void forward(const Problem& pb, const double* value, const double* loc, const double* attn,
             double* out, int64_t task_begin, int64_t task_end) {
  forward_impl<double>(pb, value, loc, attn, out, task_begin, task_end);
}

void backward(const Problem& pb, const float* value, const float* loc, const float* attn,
              const float* grad_out, float* grad_value_nm, int64_t grad_value_row,
              float* grad_loc, float* grad_attn, int64_t n, int64_t m, int64_t q_begin,
              int64_t q_end) {
  backward_impl<float>(pb, value, loc, attn, grad_out, grad_value_nm, grad_value_row, grad_loc,
                       grad_attn, n, m, q_begin, q_end);
}

void backward(const Problem& pb, const double* value, const double* loc, const double* attn,
              const double* grad_out, double* grad_value_nm, int64_t grad_value_row,
              double* grad_loc, double* grad_attn, int64_t n, int64_t m, int64_t q_begin,
              int64_t q_end) {
  backward_impl<double>(pb, value, loc, attn, grad_out, grad_value_nm, grad_value_row, grad_loc,
                        grad_attn, n, m, q_begin, q_end);
}

}  // namespace MSDA_ISA
}  // namespace unipercept_msda

// Multi-scale deformable attention on CUDA: float, half and bfloat16 values, float32 math.
//
// Forward: one thread per output element (n, q, m, c); threads of a warp share (n, q, m), so
// the four corner reads of a sample are coalesced over channels.
//
// Backward: one warp per (n, q, m), lanes over channels. The gradient of each sample's
// location and weight needs four dot products over channels (warp shuffles); grad_value is a
// scatter (atomicAdd). On coarse levels many queries hit the same few pixels, so atomics there
// contend: a block accumulates the levels that fit in shared memory (smallest first) in shared
// memory and flushes them to global memory once, when its queries hit those pixels often
// enough for that to pay.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "msda_cuda_api.h"

namespace unipercept_msda {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kForwardThreads = 256;
constexpr int kMaxSharedLevels = 8;
constexpr int64_t kSharedFloats = 12 * 1024;  // 48 KB: the default dynamic shared memory limit

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Where one sample reads (see cpu/msda_cpu_kernel.h): corner offsets in pixels, clamped into
// the map, which corners lie in the map, and bilinear weights that are 0 for corners outside it.
// At a pixel centre (integer x or y) a corner in the map has weight 0 but still enters the
// location gradient, as in grid_sample: only corners outside the map are skipped there.
struct Corners {
  int64_t offset[4];
  float weight[4];
  bool in_map[4];
  float dx, dy;
  bool inside;
};

__device__ __forceinline__ Corners locate(float loc_x, float loc_y, int64_t height,
                                          int64_t width) {
  Corners c;
  const float x = loc_x * static_cast<float>(width) - 0.5f;
  const float y = loc_y * static_cast<float>(height) - 0.5f;
  c.inside =
      x >= -1.f && y >= -1.f && x < static_cast<float>(width) && y < static_cast<float>(height);
  if (!c.inside) return c;
  const int64_t x0 = static_cast<int64_t>(floorf(x));
  const int64_t y0 = static_cast<int64_t>(floorf(y));
  c.dx = x - static_cast<float>(x0);
  c.dy = y - static_cast<float>(y0);
  const bool in_x0 = x0 >= 0, in_x1 = x0 + 1 < width;
  const bool in_y0 = y0 >= 0, in_y1 = y0 + 1 < height;
  const int64_t cx0 = in_x0 ? x0 : 0, cx1 = in_x1 ? x0 + 1 : width - 1;
  const int64_t cy0 = in_y0 ? y0 : 0, cy1 = in_y1 ? y0 + 1 : height - 1;
  c.offset[0] = cy0 * width + cx0;
  c.offset[1] = cy0 * width + cx1;
  c.offset[2] = cy1 * width + cx0;
  c.offset[3] = cy1 * width + cx1;
  const float lx = 1.f - c.dx, ly = 1.f - c.dy;
  c.weight[0] = (in_y0 && in_x0) ? ly * lx : 0.f;
  c.weight[1] = (in_y0 && in_x1) ? ly * c.dx : 0.f;
  c.weight[2] = (in_y1 && in_x0) ? c.dy * lx : 0.f;
  c.weight[3] = (in_y1 && in_x1) ? c.dy * c.dx : 0.f;
  c.in_map[0] = in_y0 && in_x0;
  c.in_map[1] = in_y0 && in_x1;
  c.in_map[2] = in_y1 && in_x0;
  c.in_map[3] = in_y1 && in_x1;
  return c;
}

template <typename ValueT>
__global__ void __launch_bounds__(kForwardThreads)
    forward_kernel(const ValueT* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const float* __restrict__ loc,
                   const float* __restrict__ attn, ValueT* __restrict__ out, Dims d) {
  const int64_t total = d.batch * d.num_queries * d.num_heads * d.head_dim;
  const int64_t row = d.num_heads * d.head_dim;
  const int64_t samples = d.num_levels * d.num_points;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       index < total; index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = index % d.head_dim;
    const int64_t task = index / d.head_dim;  // (n, q, m)
    const int64_t m = task % d.num_heads;
    const int64_t n = task / (d.num_heads * d.num_queries);
    const ValueT* value_nm = value + n * d.num_values * row + m * d.head_dim + c;
    const float* loc_t = loc + task * samples * 2;
    const float* attn_t = attn + task * samples;
    float acc = 0.f;
    for (int64_t l = 0; l < d.num_levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const ValueT* value_l = value_nm + starts[l] * row;
      for (int64_t p = 0; p < d.num_points; ++p) {
        const int64_t i = l * d.num_points + p;
        const Corners k = locate(loc_t[2 * i], loc_t[2 * i + 1], height, width);
        if (!k.inside) continue;
        float sample = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // a zero weight adds nothing to the value itself
          if (k.weight[j] != 0.f) sample += k.weight[j] * to_float(value_l[k.offset[j] * row]);
        }
        acc += attn_t[i] * sample;
      }
    }
    store(out + index, acc);
  }
}

// Which levels a backward block accumulates in shared memory, and where: offset[l] (in
// floats) or -1. Every thread computes the same plan from the shapes on the device, so the
// host needs no copy of them.
struct SharedPlan {
  int offset[kMaxSharedLevels];  // < kSharedFloats, so 32 bits suffice
  int used;
};

__device__ SharedPlan plan_shared(const int64_t* shapes, const Dims& d, int64_t blocks_per_head) {
  SharedPlan plan;
  plan.used = 0;
  const int levels = d.num_levels < kMaxSharedLevels ? static_cast<int>(d.num_levels)
                                                     : kMaxSharedLevels;
  bool considered[kMaxSharedLevels];
  for (int l = 0; l < kMaxSharedLevels; ++l) {
    plan.offset[l] = -1;
    considered[l] = l >= levels;
  }
  const int64_t queries_per_block = (d.num_queries + blocks_per_head - 1) / blocks_per_head;
  const int64_t hits_per_level = queries_per_block * d.num_points * 4;  // corner reads
  for (int round = 0; round < levels; ++round) {
    int best = -1;
    for (int l = 0; l < levels; ++l) {
      if (!considered[l] &&
          (best < 0 || shapes[2 * l] * shapes[2 * l + 1] < shapes[2 * best] * shapes[2 * best + 1])) {
        best = l;
      }
    }
    considered[best] = true;
    const int64_t pixels = shapes[2 * best] * shapes[2 * best + 1];
    const int64_t floats = pixels * d.head_dim;
    // Worth it when the block's samples hit each pixel of the level at least twice on average:
    // the flush then costs at most half the atomics it replaces.
    if (plan.used + floats <= kSharedFloats && hits_per_level >= 2 * pixels) {
      plan.offset[best] = plan.used;
      plan.used += static_cast<int>(floats);
    }
  }
  return plan;
}

template <typename ValueT>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock)
    backward_kernel(const ValueT* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const float* __restrict__ loc,
                    const float* __restrict__ attn, const ValueT* __restrict__ grad_out,
                    float* __restrict__ grad_value, float* __restrict__ grad_loc,
                    float* __restrict__ grad_attn, Dims d) {
  extern __shared__ float shared_grad[];
  const int64_t head = blockIdx.y;  // (n, m)
  const int64_t n = head / d.num_heads, m = head % d.num_heads;
  const int64_t blocks_per_head = gridDim.x;
  const SharedPlan plan = plan_shared(shapes, d, blocks_per_head);
  for (int64_t i = threadIdx.x; i < plan.used; i += blockDim.x) shared_grad[i] = 0.f;
  __syncthreads();

  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t row = d.num_heads * d.head_dim;
  const int64_t samples = d.num_levels * d.num_points;
  const ValueT* value_nm = value + n * d.num_values * row + m * d.head_dim;
  float* grad_value_nm = grad_value + n * d.num_values * row + m * d.head_dim;
  for (int64_t q = blockIdx.x * kWarpsPerBlock + warp; q < d.num_queries;
       q += blocks_per_head * kWarpsPerBlock) {
    const int64_t task = (n * d.num_queries + q) * d.num_heads + m;
    const ValueT* go = grad_out + task * d.head_dim;
    const float* loc_t = loc + task * samples * 2;
    const float* attn_t = attn + task * samples;
    float* grad_loc_t = grad_loc + task * samples * 2;
    float* grad_attn_t = grad_attn + task * samples;
    for (int64_t l = 0; l < d.num_levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const ValueT* value_l = value_nm + starts[l] * row;
      float* grad_value_l = grad_value_nm + starts[l] * row;
      const int64_t shared_offset = l < kMaxSharedLevels ? plan.offset[l] : -1;
      for (int64_t p = 0; p < d.num_points; ++p) {
        const int64_t i = l * d.num_points + p;
        const Corners k = locate(loc_t[2 * i], loc_t[2 * i + 1], height, width);
        if (!k.inside) {  // the same for the whole warp
          if (lane == 0) {
            grad_attn_t[i] = 0.f;
            grad_loc_t[2 * i] = 0.f;
            grad_loc_t[2 * i + 1] = 0.f;
          }
          continue;
        }
        const float a = attn_t[i];
        float dots[4] = {0.f, 0.f, 0.f, 0.f};
        for (int64_t c = lane; c < d.head_dim; c += kWarp) {
          const float g = to_float(go[c]);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (!k.in_map[j]) continue;  // not "weight == 0": the dot enters d/d location
            dots[j] += g * to_float(value_l[k.offset[j] * row + c]);
            if (k.weight[j] == 0.f) continue;  // nothing to scatter into grad_value
            const float update = a * k.weight[j] * g;
            if (shared_offset >= 0) {
              atomicAdd(shared_grad + shared_offset + k.offset[j] * d.head_dim + c, update);
            } else {
              atomicAdd(grad_value_l + k.offset[j] * row + c, update);
            }
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          for (int s = kWarp / 2; s > 0; s /= 2) dots[j] += __shfl_xor_sync(0xffffffffu, dots[j], s);
        }
        if (lane == 0) {
          grad_attn_t[i] = k.weight[0] * dots[0] + k.weight[1] * dots[1] +
                           k.weight[2] * dots[2] + k.weight[3] * dots[3];
          const float lx = 1.f - k.dx, ly = 1.f - k.dy;
          grad_loc_t[2 * i] =
              a * (ly * (dots[1] - dots[0]) + k.dy * (dots[3] - dots[2])) * static_cast<float>(width);
          grad_loc_t[2 * i + 1] = a * (lx * (dots[2] - dots[0]) + k.dx * (dots[3] - dots[1])) *
                                  static_cast<float>(height);
        }
      }
    }
  }
  __syncthreads();
  for (int64_t index = threadIdx.x; index < plan.used; index += blockDim.x) {
    const float update = shared_grad[index];
    if (update == 0.f) continue;
    for (int l = 0; l < kMaxSharedLevels; ++l) {
      const int64_t begin = plan.offset[l];
      if (begin < 0) continue;
      const int64_t floats = shapes[2 * l] * shapes[2 * l + 1] * d.head_dim;
      if (index >= begin && index < begin + floats) {
        const int64_t pixel = (index - begin) / d.head_dim, c = (index - begin) % d.head_dim;
        atomicAdd(grad_value_nm + (starts[l] + pixel) * row + c, update);
        break;
      }
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

template <typename ValueT>
cudaError_t launch_forward(const ValueT* value, const int64_t* spatial_shapes,
                           const int64_t* level_start, const float* loc, const float* attn,
                           ValueT* out, const Dims& dims, int multiprocessors,
                           cudaStream_t stream) {
  const int64_t total = dims.batch * dims.num_queries * dims.num_heads * dims.head_dim;
  if (total == 0) return cudaSuccess;
  const int64_t limit = static_cast<int64_t>(multiprocessors) * 32;
  const int64_t blocks = ceil_div(total, kForwardThreads) < limit ? ceil_div(total, kForwardThreads)
                                                                  : limit;
  forward_kernel<ValueT><<<static_cast<unsigned>(blocks), kForwardThreads, 0, stream>>>(
      value, spatial_shapes, level_start, loc, attn, out, dims);
  return cudaGetLastError();
}

template <typename ValueT>
cudaError_t launch_backward(const ValueT* value, const int64_t* spatial_shapes,
                            const int64_t* level_start, const float* loc, const float* attn,
                            const ValueT* grad_out, float* grad_value, float* grad_loc,
                            float* grad_attn, const Dims& dims, int multiprocessors,
                            cudaStream_t stream) {
  const int64_t heads = dims.batch * dims.num_heads;
  if (heads == 0 || dims.num_queries == 0) return cudaSuccess;
  // Enough blocks for about four per multiprocessor, but no more than the queries need:
  // fewer blocks per head also means fewer shared-memory flushes.
  const int64_t wanted = ceil_div(4 * static_cast<int64_t>(multiprocessors), heads);
  const int64_t needed = ceil_div(dims.num_queries, kWarpsPerBlock);
  const int64_t blocks_per_head = wanted < needed ? (wanted > 0 ? wanted : 1) : needed;
  const dim3 grid(static_cast<unsigned>(blocks_per_head), static_cast<unsigned>(heads));
  backward_kernel<ValueT><<<grid, kWarp * kWarpsPerBlock, kSharedFloats * sizeof(float), stream>>>(
      value, spatial_shapes, level_start, loc, attn, grad_out, grad_value, grad_loc, grad_attn,
      dims);
  return cudaGetLastError();
}

#define MSDA_INSTANTIATE(ValueT)                                                                 \
  template cudaError_t launch_forward<ValueT>(const ValueT*, const int64_t*, const int64_t*,     \
                                              const float*, const float*, ValueT*, const Dims&,  \
                                              int, cudaStream_t);                                \
  template cudaError_t launch_backward<ValueT>(const ValueT*, const int64_t*, const int64_t*,    \
                                               const float*, const float*, const ValueT*,        \
                                               float*, float*, float*, const Dims&, int,         \
                                               cudaStream_t);

MSDA_INSTANTIATE(float)
MSDA_INSTANTIATE(__half)
MSDA_INSTANTIATE(__nv_bfloat16)
#undef MSDA_INSTANTIATE

}  // namespace cuda
}  // namespace unipercept_msda

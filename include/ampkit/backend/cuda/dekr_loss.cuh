/// @brief CUDA DEKR loss: one fused reduction pass (heatmap MSE, smooth-L1, N_pos) with fp32
/// accumulation and a deterministic two-stage sum, and one elementwise backward pass. Math and
/// layouts in loss/dekr_loss.hpp; the host twin is backend/host/dekr_loss.hpp.
///
/// Why two stages instead of atomics: the block partials are summed by one block in a fixed order,
/// so the loss is bit-identical from run to run (atomicAdd order is not), which keeps the dynamic
/// loss scaler's decisions reproducible. N_pos is counted in integers (exact at any batch size).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/loss/dekr_loss.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {

namespace cuda::kernels {

inline constexpr int kLossThreads = 256;
inline constexpr int kLossMaxBlocks = 1024;

template <class N>
__device__ AMPKIT_FORCEINLINE float to_float(N x) {
  if constexpr (std::is_same_v<N, float>) return x;
  else if constexpr (std::is_same_v<N, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
template <class N>
__device__ AMPKIT_FORCEINLINE N from_float(float x) {
  if constexpr (std::is_same_v<N, float>) return x;
  else if constexpr (std::is_same_v<N, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

/// Sum a float and an integer over the block; thread 0 gets the totals.
__device__ AMPKIT_FORCEINLINE void block_sum(float& a, float& b, unsigned long long& n) {
  __shared__ float s_a[kLossThreads / 32], s_b[kLossThreads / 32];
  __shared__ unsigned long long s_n[kLossThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
    n += __shfl_down_sync(0xffffffffu, n, o);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_a[warp] = a;
    s_b[warp] = b;
    s_n[warp] = n;
  }
  __syncthreads();
  if (warp == 0) {
    const bool live = lane < kLossThreads / 32;
    a = live ? s_a[lane] : 0.f;
    b = live ? s_b[lane] : 0.f;
    n = live ? s_n[lane] : 0ull;
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, o);
      b += __shfl_down_sync(0xffffffffu, b, o);
      n += __shfl_down_sync(0xffffffffu, n, o);
    }
  }
}

/// Stage 1: per-block partial sums of m·w·(ŷ−y)², w_d·s_β(δ) and #(w_d > 0).
template <class N>
__global__ void __launch_bounds__(kLossThreads)
    dekr_loss_partials(const N* __restrict__ g_hm, const float* __restrict__ g_hm_gt, const float* __restrict__ g_hm_w,
                       const float* __restrict__ g_mask, std::int64_t mask_c, std::int64_t n_hm, std::int64_t hm_c,
                       const N* __restrict__ g_d, const float* __restrict__ g_d_gt, const float* __restrict__ g_d_w,
                       std::int64_t n_d, float beta, float* __restrict__ g_part_f, unsigned long long* __restrict__ g_part_n) {
  float r_hm = 0.f, r_d = 0.f;
  unsigned long long r_n = 0;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n_hm; i += stride) {
    const float diff = to_float(g_hm[i]) - g_hm_gt[i];
    const float m = g_mask ? (mask_c == 1 ? g_mask[i / hm_c] : g_mask[i]) : 1.f;
    r_hm += m * g_hm_w[i] * diff * diff;
  }
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n_d; i += stride) {
    const float w = g_d_w[i];
    r_n += w > 0.f ? 1ull : 0ull;
    const float d = to_float(g_d[i]) - g_d_gt[i];
    const float ad = fabsf(d);
    r_d += w * (ad < beta ? d * d / (2.f * beta) : ad - 0.5f * beta);
  }
  block_sum(r_hm, r_d, r_n);
  if (threadIdx.x == 0) {
    g_part_f[2 * blockIdx.x] = r_hm;
    g_part_f[2 * blockIdx.x + 1] = r_d;
    g_part_n[blockIdx.x] = r_n;
  }
}

/// Stage 2: one block sums the partials in a fixed order and writes [total, hm, disp, N_pos].
__global__ void __launch_bounds__(kLossThreads)
    dekr_loss_finish(const float* __restrict__ g_part_f, const unsigned long long* __restrict__ g_part_n, int n_parts,
                     float inv_n_hm, float w_hm, float w_d, float* __restrict__ g_result) {
  float r_hm = 0.f, r_d = 0.f;
  unsigned long long r_n = 0;
  for (int i = threadIdx.x; i < n_parts; i += blockDim.x) {
    r_hm += g_part_f[2 * i];
    r_d += g_part_f[2 * i + 1];
    r_n += g_part_n[i];
  }
  block_sum(r_hm, r_d, r_n);
  if (threadIdx.x == 0) {
    const float l_hm = w_hm * r_hm * inv_n_hm;
    const float n_pos = static_cast<float>(r_n);
    const float l_d = w_d * r_d / fmaxf(n_pos, 1.f);
    g_result[0] = l_hm + l_d;
    g_result[1] = l_hm;
    g_result[2] = l_d;
    g_result[3] = n_pos;
  }
}

/// Elementwise gradients × scale, rounded once to the storage type.
template <class N>
__global__ void __launch_bounds__(kLossThreads)
    dekr_loss_grad(const N* __restrict__ g_hm, const float* __restrict__ g_hm_gt, const float* __restrict__ g_hm_w,
                   const float* __restrict__ g_mask, std::int64_t mask_c, std::int64_t n_hm, std::int64_t hm_c,
                   const N* __restrict__ g_d, const float* __restrict__ g_d_gt, const float* __restrict__ g_d_w,
                   std::int64_t n_d, float beta, const float* __restrict__ g_result, const float* __restrict__ g_scale,
                   float factor, float w_hm, float w_d, N* __restrict__ g_dhm, N* __restrict__ g_dd) {
  const float s = (g_scale ? *g_scale : 1.f) * factor;
  const float c_hm = 2.f * w_hm * s / static_cast<float>(n_hm);
  const float c_d = w_d * s / fmaxf(g_result[3], 1.f);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n_hm; i += stride) {
    const float diff = to_float(g_hm[i]) - g_hm_gt[i];
    const float m = g_mask ? (mask_c == 1 ? g_mask[i / hm_c] : g_mask[i]) : 1.f;
    g_dhm[i] = from_float<N>(c_hm * ((m * g_hm_w[i]) * diff));
  }
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n_d; i += stride) {
    const float d = to_float(g_d[i]) - g_d_gt[i];
    const float ds = fabsf(d) < beta ? d / beta : (d > 0.f ? 1.f : (d < 0.f ? -1.f : 0.f));
    g_dd[i] = from_float<N>(c_d * (g_d_w[i] * ds));
  }
}

inline int loss_blocks(std::int64_t n) {
  return static_cast<int>(std::clamp<std::int64_t>((n + kLossThreads - 1) / kLossThreads, 1, kLossMaxBlocks));
}

}  // namespace cuda::kernels

/// result = [total, heatmap, displacement, N_pos] (fp32 (1,1,1,4) on the device), WRITTEN.
template <StorageScalar T>
void dekr_loss_forward(Cuda& ctx, const DekrLossInputs<T>& in, TensorView<float> result, const DekrLossConfig& cfg) {
  in.validate("dekr_loss_forward");
  ampkit::detail::check_dekr_loss_result("dekr_loss_forward", result);
  using N = native_t<T>;
  namespace k = cuda::kernels;
  const std::int64_t n_hm = in.heatmaps.numel(), n_d = in.displacements.numel();
  const int blocks = k::loss_blocks(std::max(n_hm, n_d));
  auto ws = ctx.workspace(static_cast<std::size_t>(blocks) * (2 * sizeof(float) + sizeof(unsigned long long)));
  auto* part_n = reinterpret_cast<unsigned long long*>(ws.data());
  auto* part_f = reinterpret_cast<float*>(part_n + blocks);
  k::dekr_loss_partials<N><<<blocks, k::kLossThreads, 0, ctx.stream()>>>(
      reinterpret_cast<const N*>(in.heatmaps.data), in.gt_heatmaps.data, in.heatmap_weights.data,
      in.heatmap_mask.data, in.heatmap_mask.shape.c, n_hm, in.heatmaps.shape.c,
      reinterpret_cast<const N*>(in.displacements.data), in.gt_displacements.data, in.displacement_weights.data, n_d,
      cfg.beta, part_f, part_n);
  AMPKIT_CUDA_CHECK_LAUNCH();
  k::dekr_loss_finish<<<1, k::kLossThreads, 0, ctx.stream()>>>(part_f, part_n, blocks,
                                                              1.f / static_cast<float>(n_hm), cfg.heatmap_weight,
                                                              cfg.displacement_weight, result.data);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// dL_dheatmaps, dL_ddisplacements WRITTEN: the loss gradient × (*scale, if given) × factor.
/// `result` is the forward's output (N_pos is read on the device); `scale` a (1,1,1,1) device value.
template <StorageScalar T>
void dekr_loss_backward(Cuda& ctx, const DekrLossInputs<T>& in, TensorView<const float> result,
                        TensorView<const float> scale, float factor, TensorView<T> dL_dheatmaps,
                        TensorView<T> dL_ddisplacements, const DekrLossConfig& cfg) {
  in.validate("dekr_loss_backward");
  ampkit::detail::check_dekr_loss_result("dekr_loss_backward", result);
  check_shape("dekr_loss_backward", "dL_dheatmaps", dL_dheatmaps, in.heatmaps.shape);
  check_shape("dekr_loss_backward", "dL_ddisplacements", dL_ddisplacements, in.displacements.shape);
  if (scale.data) check_shape("dekr_loss_backward", "scale", scale, Shape{1, 1, 1, 1});
  using N = native_t<T>;
  namespace k = cuda::kernels;
  const std::int64_t n_hm = in.heatmaps.numel(), n_d = in.displacements.numel();
  const int blocks = k::loss_blocks(std::max(n_hm, n_d));
  k::dekr_loss_grad<N><<<blocks, k::kLossThreads, 0, ctx.stream()>>>(
      reinterpret_cast<const N*>(in.heatmaps.data), in.gt_heatmaps.data, in.heatmap_weights.data,
      in.heatmap_mask.data, in.heatmap_mask.shape.c, n_hm, in.heatmaps.shape.c,
      reinterpret_cast<const N*>(in.displacements.data), in.gt_displacements.data, in.displacement_weights.data, n_d,
      cfg.beta, result.data, scale.data, factor, cfg.heatmap_weight, cfg.displacement_weight,
      reinterpret_cast<N*>(dL_dheatmaps.data), reinterpret_cast<N*>(dL_ddisplacements.data));
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit

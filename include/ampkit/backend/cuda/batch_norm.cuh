/// @brief CUDA backend BatchNorm2d: own NHWC kernels for training/inference forward (plain, +ReLU,
/// +add+ReLU) and the training backward. Semantics and the gradient contract are in
/// nn/ops/batch_norm.hpp; signatures mirror backend/host/batch_norm.hpp.
///
/// Layout of the work: NHWC is an (M, C) row-major matrix with M = N*H*W. A block of 256 threads
/// covers R consecutive rows x (C/V) channel packs, so a block reads one contiguous stretch of
/// memory per step (fully coalesced), and each thread keeps V channels' running statistics in
/// registers. Statistics are fp32 Welford per thread, merged in a fixed order (threads of a block,
/// then blocks) with Chan's formula, so results are deterministic run to run on a given device,
/// and accurate when the mean is large against the spread (where sum/sum-of-squares cancels).
///
/// Channel counts that are not a multiple of the pack width (DEKR's 255, 34, 17): the "flat"
/// layout reads the NHWC tensor as a flat array in 16-byte packs (channel = flat index % C) and
/// tiles it in super-rows of L = lcm(C, V) elements, so every thread still sees the same V
/// channel slots on every step; per-slot partials are merged per channel (slots c, c+C, ...) in a
/// fixed order. With C % V == 0 this is exactly the per-channel layout (L = C). The same switch
/// selects row-tiled elementwise passes (bn_apply_rows / bn_grad_apply_rows: each thread keeps
/// its slots' coefficients in registers) for every C. cuda::bn_flat_packs() = false (env
/// AMPKIT_BN_FLAT_PACKS=0) falls back to the older per-channel layout with the pack width C allows
/// (scalar for odd C) and the grid-stride elementwise passes.
///
/// Passes (x read twice forward, x and dL_dy twice backward; nothing else touches memory):
///   forward  stats_partial -> finalize (mean, invstd, running stats, scale/shift) -> apply
///   backward grad_partial  -> finalize (dgamma, dbeta, dx coefficients)           -> apply
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/packed_io.cuh"
#include "ampkit/core/env_choice.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/batch_norm.hpp"

namespace ampkit {

namespace cuda {

/// Switch for the flat 16-byte-pack BatchNorm layout for channel counts that are not a multiple
/// of the pack width (default on; the environment variable AMPKIT_BN_FLAT_PACKS=0 turns it off at
/// first use; set it at run time with `cuda::bn_flat_packs() = false`). Off: the per-channel layout
/// (scalar loads for odd C), the older path.
inline std::atomic<bool>& bn_flat_packs() {
  static std::atomic<bool> on{env_choice("AMPKIT_BN_FLAT_PACKS", {{"1", true}, {"0", false}}, true, "1")};
  return on;
}

}  // namespace cuda

namespace cuda::detail {

inline constexpr int kBnThreads = 256;
/// Threads of the per-channel finalize blocks (a power of two: the tree halves it).
inline constexpr int kBnFinalizeThreads = 128;

/// How the (M, C) tensor is read: packs of V elements over super-rows of L elements
/// (L = C for the per-channel layout, lcm(C, V) for the flat one), M * C / L super-rows.
struct BnLayout {
  int v;
  std::int64_t row_len;  ///< L
  std::int64_t rows;     ///< M * C / L
  bool flat;
};

template <StorageScalar T>
BnLayout bn_layout(std::int64_t M, std::int64_t C, std::initializer_list<const void*> ptrs) {
  const int vc = pack_width<T>(C, ptrs);
  if (bn_flat_packs().load()) {
    const int vf = pack_width<T>(M * C, ptrs);
    if (vf > vc) {
      const std::int64_t L = std::lcm(C, std::int64_t{vf});
      return {vf, L, M * C / L, true};
    }
  }
  return {vc, C, M, false};
}

/// Which layout bn_forward/bn_backward take for x of shape `s` (for benchmarks and logs).
template <StorageScalar T>
std::string bn_path_name(Shape s, const void* ptr = nullptr) {
  const BnLayout l = bn_layout<T>(s.n * s.h * s.w, s.c, {ptr});
  return std::string(l.flat ? "flat" : "per-channel") + " V=" + std::to_string(l.v) +
         " L=" + std::to_string(l.row_len) + (bn_flat_packs().load() ? " rows" : " grid-stride");
}

/// How a block tiles the (M, C) matrix.
struct BnTiling {
  int packs_per_block;  ///< channel packs covered by one block (<= kBnThreads)
  int rows_per_step;    ///< R: rows one block covers per step
  unsigned grid_x;      ///< blocks across channels
  unsigned grid_y;      ///< blocks down the rows (partials per channel)
};

inline BnTiling bn_tiling(std::int64_t M, std::int64_t C, int V, int n_sm) {
  BnTiling t{};
  const std::int64_t packs = C / V;
  t.packs_per_block = static_cast<int>(std::min<std::int64_t>(packs, kBnThreads));
  t.rows_per_step = kBnThreads / t.packs_per_block;
  t.grid_x = static_cast<unsigned>((packs + t.packs_per_block - 1) / t.packs_per_block);
  // ~4 blocks per SM in total; at least a few steps of rows per block.
  const std::int64_t want = std::max<std::int64_t>(1, std::int64_t{n_sm} * 4 / t.grid_x);
  const std::int64_t steps = (M + t.rows_per_step - 1) / t.rows_per_step;
  t.grid_y = static_cast<unsigned>(std::clamp<std::int64_t>(std::min(want, (steps + 3) / 4), 1, 65535));
  return t;
}

/// Tiling of the elementwise passes: as bn_tiling, with enough blocks down the rows to fill the
/// device (8 blocks of 256 per SM) since there is no partial per block to merge.
inline BnTiling bn_apply_tiling(std::int64_t M, std::int64_t C, int V, int n_sm) {
  BnTiling t = bn_tiling(M, C, V, n_sm);
  const std::int64_t want = std::max<std::int64_t>(1, std::int64_t{n_sm} * 8 / t.grid_x);
  const std::int64_t steps = (M + t.rows_per_step - 1) / t.rows_per_step;
  t.grid_y = static_cast<unsigned>(std::clamp<std::int64_t>(std::min(want, steps), 1, 65535));
  return t;
}

/// Chan et al.'s merge of (n, mean, M2) partial statistics.
__device__ __forceinline__ void welford_merge(float& n, float& mean, float& m2, float nb, float meanb,
                                              float m2b) {
  if (nb == 0.f) return;
  const float nn = n + nb;
  const float d = meanb - mean;
  const float fb = nb / nn;
  mean += d * fb;
  m2 += m2b + d * d * n * fb;
  n = nn;
}

/// Per block: Welford statistics of its rows for each slot it covers. `C` here is the super-row
/// length L (slot = position in the super-row). partial: (grid_y, L, 3) = (count, mean, M2).
template <class N, int V>
__global__ void __launch_bounds__(kBnThreads)
    bn_stats_partial(const N* __restrict__ x, std::int64_t M, int C, int ppb, float* __restrict__ partial) {
  __shared__ float s_n[kBnThreads], s_mean[kBnThreads * V], s_m2[kBnThreads * V];
  const int R = kBnThreads / ppb;
  const int r = threadIdx.x / ppb, pl = threadIdx.x % ppb;
  const int pack = blockIdx.x * ppb + pl;
  const bool active = r < R && pack * V < C;
  float n = 0.f, mean[V], m2[V];
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = m2[v] = 0.f;
  // Welford update of this thread's V slots with one pack.
  auto update = [&](const float(&xv)[V]) {
    n += 1.f;
    const float inv = 1.f / n;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const float d = xv[v] - mean[v];
      mean[v] += d * inv;
      m2[v] += d * (xv[v] - mean[v]);
    }
  };
  if (active) {
    const std::int64_t step = std::int64_t{gridDim.y} * R;
    const N* base = x + pack * V;
    std::int64_t row = std::int64_t{blockIdx.y} * R + r;
    // Four loads in flight before the first use (memory-level parallelism); updates stay in row
    // order, so the result is the same as one row at a time.
    for (; row + 3 * step < M; row += 4 * step) {
      float xv[4][V];
#pragma unroll
      for (int u = 0; u < 4; ++u) load_pack<N, V>(base + (row + u * step) * C, xv[u]);
#pragma unroll
      for (int u = 0; u < 4; ++u) update(xv[u]);
    }
    for (; row < M; row += step) {
      float xv[V];
      load_pack<N, V>(base + row * C, xv);
      update(xv);
    }
  }
  s_n[threadIdx.x] = n;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    s_mean[threadIdx.x * V + v] = mean[v];
    s_m2[threadIdx.x * V + v] = m2[v];
  }
  __syncthreads();
  if (r == 0 && active) {
    for (int k = 1; k < R; ++k) {
      const int t = k * ppb + pl;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float nv = n;  // every channel of a pack shares the count
        welford_merge(nv, mean[v], m2[v], s_n[t], s_mean[t * V + v], s_m2[t * V + v]);
      }
      n += s_n[t];
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float* o = partial + (std::int64_t{blockIdx.y} * C + pack * V + v) * 3;
      o[0] = n;
      o[1] = mean[v];
      o[2] = m2[v];
    }
  }
}

/// The per-channel affine map y = x*scale + shift from (mean, invstd): one function for the
/// training forward's finalize and the rebuild from the saved statistics, with the rounding spelled
/// out (one product, one fused multiply-add: what the compiler contracted `beta - mean * sc` to),
/// so the two cannot differ by a contraction choice.
__device__ __forceinline__ void bn_affine_map(float mean, float invstd, float gamma, float beta, float& scale,
                                              float& shift) {
  const float sc = __fmul_rn(invstd, gamma);
  scale = sc;
  shift = __fmaf_rn(-mean, sc, beta);
}

/// Channel blockIdx.x's statistics from the partials, merged in a fixed order; valid in thread 0.
/// A channel has n_part * (L / C) partials (blocks down the rows x its slots c, c+C, ... of the
/// super-row). Each thread merges a fixed strided subset in order, then a fixed-shape tree merges
/// the threads: deterministic, and ~n_part/128 sequential merges instead of n_part (a single
/// thread per channel made this the slowest kernel of the step).
__device__ __forceinline__ void bn_merge_channel_stats(const float* __restrict__ partial, int n_part, int C, int L,
                                                       float& n_out, float& mean_out, float& m2_out) {
  const int c = blockIdx.x;
  const int per_part = L / C;
  const std::int64_t n_items = std::int64_t{n_part} * per_part;
  float n = 0.f, mean = 0.f, m2 = 0.f;
  for (std::int64_t k = threadIdx.x; k < n_items; k += kBnFinalizeThreads) {
    const std::int64_t j = k / per_part;
    const int slot = c + static_cast<int>(k % per_part) * C;
    const float* p = partial + (j * L + slot) * 3;
    welford_merge(n, mean, m2, p[0], p[1], p[2]);
  }
  __shared__ float s_n[kBnFinalizeThreads], s_mean[kBnFinalizeThreads], s_m2[kBnFinalizeThreads];
  s_n[threadIdx.x] = n;
  s_mean[threadIdx.x] = mean;
  s_m2[threadIdx.x] = m2;
  __syncthreads();
  for (int stride = kBnFinalizeThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      float a_n = s_n[threadIdx.x], a_mean = s_mean[threadIdx.x], a_m2 = s_m2[threadIdx.x];
      welford_merge(a_n, a_mean, a_m2, s_n[threadIdx.x + stride], s_mean[threadIdx.x + stride],
                    s_m2[threadIdx.x + stride]);
      s_n[threadIdx.x] = a_n;
      s_mean[threadIdx.x] = a_mean;
      s_m2[threadIdx.x] = a_m2;
    }
    __syncthreads();
  }
  n_out = s_n[0];
  mean_out = s_mean[0];
  m2_out = s_m2[0];
}

/// Per channel: merge the partials in order (block-major, then slot), then the statistics, running stats and the
/// normalisation as one affine map y = x*scale + shift. SyncBatchNorm passes the ranks' gathered
/// per-channel statistics as the partials (n_part = world size, L = C) and M of the global batch.
__global__ void __launch_bounds__(kBnFinalizeThreads)
bn_stats_finalize(const float* __restrict__ partial, int n_part, int C, int L, std::int64_t M,
                  const float* __restrict__ gamma, const float* __restrict__ beta,
                  float* __restrict__ running_mean, float* __restrict__ running_var,
                  float* __restrict__ save_mean, float* __restrict__ save_invstd,
                  float* __restrict__ scale, float* __restrict__ shift, float momentum, float eps) {
  const int c = blockIdx.x;
  float n, mean, m2;
  bn_merge_channel_stats(partial, n_part, C, L, n, mean, m2);
  if (threadIdx.x != 0) return;
  const float var = m2 / static_cast<float>(M);
  const float invstd = 1.f / sqrtf(var + eps);
  save_mean[c] = mean;
  save_invstd[c] = invstd;
  // As PyTorch: the running variance takes the unbiased estimate M/(M-1).
  const float unbiased = static_cast<float>(static_cast<double>(m2) / static_cast<double>(M - 1));
  running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean;
  running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
  bn_affine_map(mean, invstd, gamma[c], beta[c], scale[c], shift[c]);
}

/// SyncBatchNorm, before the exchange: this rank's per-channel (count, mean, M2) -> out[c * 3 ..].
__global__ void __launch_bounds__(kBnFinalizeThreads)
bn_stats_local(const float* __restrict__ partial, int n_part, int C, int L, float* __restrict__ out) {
  float n, mean, m2;
  bn_merge_channel_stats(partial, n_part, C, L, n, mean, m2);
  if (threadIdx.x != 0) return;
  out[blockIdx.x * 3 + 0] = n;
  out[blockIdx.x * 3 + 1] = mean;
  out[blockIdx.x * 3 + 2] = m2;
}

/// Rebuild (batch_norm_relu_forward_saved): the affine map from a training forward's saved
/// statistics, which are bn_stats_finalize's mean and invstd as it stored them.
__global__ void bn_saved_affine(int C, const float* __restrict__ gamma, const float* __restrict__ beta,
                                const float* __restrict__ save_mean, const float* __restrict__ save_invstd,
                                float* __restrict__ scale, float* __restrict__ shift) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  bn_affine_map(save_mean[c], save_invstd[c], gamma[c], beta[c], scale[c], shift[c]);
}

/// Inference: the affine map from the running statistics.
__global__ void bn_inference_affine(int C, const float* __restrict__ gamma, const float* __restrict__ beta,
                                    const float* __restrict__ running_mean,
                                    const float* __restrict__ running_var, float* __restrict__ scale,
                                    float* __restrict__ shift, float eps) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float s = gamma[c] / sqrtf(running_var[c] + eps);
  scale[c] = s;
  shift[c] = beta[c] - running_mean[c] * s;
}

/// y = epilogue(x*scale[c] + shift[c] [+ residual]).
template <class N, int V, BatchNormEpilogue E>
__global__ void bn_apply(const N* __restrict__ x, const N* __restrict__ residual,
                         const float* __restrict__ scale, const float* __restrict__ shift, N* __restrict__ y,
                         std::int64_t n_pack, int C) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  // The channel of a pack's first element, advanced by the grid stride (no 64-bit % per pack);
  // within a pack the channel wraps at C (flat layout; never wraps when C % V == 0).
  const int step_c = static_cast<int>((stride * V) % C);
  int c0 = static_cast<int>((i * V) % C);
  for (; i < n_pack; i += stride) {
    const std::int64_t off = i * V;
    float z[V];
    load_pack<N, V>(x + off, z);
    int c = c0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      z[v] = fmaf(z[v], __ldg(scale + c), __ldg(shift + c));
      c = c + 1 == C ? 0 : c + 1;
    }
    c0 += step_c;
    if (c0 >= C) c0 -= C;
    if constexpr (E == BatchNormEpilogue::kAddRelu) {
      float rv[V];
      load_pack<N, V>(residual + off, rv);
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] += rv[v];
    }
    if constexpr (E != BatchNormEpilogue::kNone) {
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] = z[v] > 0.f ? z[v] : 0.f;
    }
    store_pack<N, V>(y + off, z);
  }
}

/// y = epilogue(x*scale[c] + shift[c] [+ residual]) in the row tiling of the statistics kernels
/// (super-rows of L elements, thread = one pack slot, rows strided by gridDim.y * R): each thread
/// loads its V channels' scale/shift once, instead of 2V scattered per-element loads per pack
/// (those cost more L1 wavefronts than the data itself). Same arithmetic as bn_apply.
template <class N, int V, BatchNormEpilogue E>
__global__ void __launch_bounds__(kBnThreads)
    bn_apply_rows(const N* __restrict__ x, const N* __restrict__ residual, const float* __restrict__ scale,
                  const float* __restrict__ shift, N* __restrict__ y, std::int64_t rows, int L, int C, int ppb) {
  const int R = kBnThreads / ppb;
  const int r = threadIdx.x / ppb, pl = threadIdx.x % ppb;
  const int pack = blockIdx.x * ppb + pl;
  if (r >= R || pack * V >= L) return;
  float sc[V], sh[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = (pack * V + v) % C;  // slot -> channel
    sc[v] = scale[c];
    sh[v] = shift[c];
  }
  const std::int64_t step = std::int64_t{gridDim.y} * R;
  for (std::int64_t row = std::int64_t{blockIdx.y} * R + r; row < rows; row += step) {
    const std::int64_t off = row * L + pack * V;
    float z[V];
    load_pack<N, V>(x + off, z);
#pragma unroll
    for (int v = 0; v < V; ++v) z[v] = fmaf(z[v], sc[v], sh[v]);
    if constexpr (E == BatchNormEpilogue::kAddRelu) {
      float rv[V];
      load_pack<N, V>(residual + off, rv);
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] += rv[v];
    }
    if constexpr (E != BatchNormEpilogue::kNone) {
#pragma unroll
      for (int v = 0; v < V; ++v) z[v] = z[v] > 0.f ? z[v] : 0.f;
    }
    store_pack<N, V>(y + off, z);
  }
}

/// bn_grad_apply in the row tiling (see bn_apply_rows). Same arithmetic.
template <class N, int V, BatchNormEpilogue E>
__global__ void __launch_bounds__(kBnThreads)
    bn_grad_apply_rows(const N* __restrict__ x, const N* __restrict__ y, const N* __restrict__ dy,
                       const float* __restrict__ mean, const float* __restrict__ coef, N* __restrict__ dx,
                       N* __restrict__ dres, std::int64_t rows, int L, int C, int ppb) {
  const int R = kBnThreads / ppb;
  const int r = threadIdx.x / ppb, pl = threadIdx.x % ppb;
  const int pack = blockIdx.x * ppb + pl;
  if (r >= R || pack * V >= L) return;
  float ca[V], cb[V], ce[V], mu[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = (pack * V + v) % C;
    ca[v] = coef[c * 3];
    cb[v] = coef[c * 3 + 1];
    ce[v] = coef[c * 3 + 2];
    mu[v] = mean[c];
  }
  const std::int64_t step = std::int64_t{gridDim.y} * R;
  for (std::int64_t row = std::int64_t{blockIdx.y} * R + r; row < rows; row += step) {
    const std::int64_t off = row * L + pack * V;
    float xv[V], g[V];
    load_pack<N, V>(x + off, xv);
    load_pack<N, V>(dy + off, g);
    if constexpr (E != BatchNormEpilogue::kNone) {
      float yv[V];
      load_pack<N, V>(y + off, yv);
#pragma unroll
      for (int v = 0; v < V; ++v) g[v] = yv[v] > 0.f ? g[v] : 0.f;
    }
    if constexpr (E == BatchNormEpilogue::kAddRelu) store_pack<N, V>(dres + off, g);
    float out[V];
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = ca[v] * g[v] + cb[v] * (xv[v] - mu[v]) + ce[v];
    store_pack<N, V>(dx + off, out);
  }
}

/// Per block: sum(dz) and sum(dz * (x - mean)) for its rows; dz = dL_dy masked by y > 0 for the
/// fused variants. `C` is the super-row length L, `n_chan` the channel count. partial: (grid_y, L, 2).
template <class N, int V, BatchNormEpilogue E>
__global__ void __launch_bounds__(kBnThreads)
    bn_grad_partial(const N* __restrict__ x, const N* __restrict__ y, const N* __restrict__ dy,
                    const float* __restrict__ mean, std::int64_t M, int C, int n_chan, int ppb,
                    float* __restrict__ partial) {
  __shared__ float s_a[kBnThreads * V], s_b[kBnThreads * V];
  const int R = kBnThreads / ppb;
  const int r = threadIdx.x / ppb, pl = threadIdx.x % ppb;
  const int pack = blockIdx.x * ppb + pl;
  const bool active = r < R && pack * V < C;
  float sdz[V], sdzx[V], mu[V];
#pragma unroll
  for (int v = 0; v < V; ++v) sdz[v] = sdzx[v] = 0.f;
  // One row: loads, then the sums (in row order whatever the unrolling).
  auto load_row = [&](std::int64_t row, float(&xv)[V], float(&g)[V]) {
    const std::int64_t off = row * C + pack * V;
    load_pack<N, V>(x + off, xv);
    load_pack<N, V>(dy + off, g);
    if constexpr (E != BatchNormEpilogue::kNone) {
      float yv[V];
      load_pack<N, V>(y + off, yv);
#pragma unroll
      for (int v = 0; v < V; ++v) g[v] = yv[v] > 0.f ? g[v] : 0.f;
    }
  };
  auto accumulate = [&](const float(&xv)[V], const float(&g)[V]) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      sdz[v] += g[v];
      sdzx[v] = fmaf(g[v], xv[v] - mu[v], sdzx[v]);
    }
  };
  if (active) {
#pragma unroll
    for (int v = 0; v < V; ++v) mu[v] = mean[(pack * V + v) % n_chan];  // slot -> channel
    const std::int64_t step = std::int64_t{gridDim.y} * R;
    std::int64_t row = std::int64_t{blockIdx.y} * R + r;
    for (; row + step < M; row += 2 * step) {
      float xv[2][V], g[2][V];
#pragma unroll
      for (int u = 0; u < 2; ++u) load_row(row + u * step, xv[u], g[u]);
#pragma unroll
      for (int u = 0; u < 2; ++u) accumulate(xv[u], g[u]);
    }
    for (; row < M; row += step) {
      float xv[V], g[V];
      load_row(row, xv, g);
      accumulate(xv, g);
    }
  }
#pragma unroll
  for (int v = 0; v < V; ++v) {
    s_a[threadIdx.x * V + v] = sdz[v];
    s_b[threadIdx.x * V + v] = sdzx[v];
  }
  __syncthreads();
  if (r == 0 && active) {
    for (int k = 1; k < R; ++k) {
      const int t = k * ppb + pl;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        sdz[v] += s_a[t * V + v];
        sdzx[v] += s_b[t * V + v];
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float* o = partial + (std::int64_t{blockIdx.y} * C + pack * V + v) * 2;
      o[0] = sdz[v];
      o[1] = sdzx[v];
    }
  }
}

/// Channel blockIdx.x's sum(dz) and sum(dz * (x - mean)) from the partials; valid in thread 0.
/// Fixed strided subsets per thread, then a fixed-shape tree (as bn_merge_channel_stats):
/// deterministic.
__device__ __forceinline__ void bn_merge_channel_grads(const float* __restrict__ partial, int n_part, int C, int L,
                                                       float& sdz_out, float& sdzx_out) {
  const int c = blockIdx.x;
  const int per_part = L / C;
  const std::int64_t n_items = std::int64_t{n_part} * per_part;
  float sdz = 0.f, sdzx = 0.f;
  for (std::int64_t k = threadIdx.x; k < n_items; k += kBnFinalizeThreads) {
    const std::int64_t j = k / per_part;
    const int slot = c + static_cast<int>(k % per_part) * C;
    const float* p = partial + (j * L + slot) * 2;
    sdz += p[0];
    sdzx += p[1];
  }
  __shared__ float s_dz[kBnFinalizeThreads], s_dzx[kBnFinalizeThreads];
  s_dz[threadIdx.x] = sdz;
  s_dzx[threadIdx.x] = sdzx;
  __syncthreads();
  for (int stride = kBnFinalizeThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      s_dz[threadIdx.x] += s_dz[threadIdx.x + stride];
      s_dzx[threadIdx.x] += s_dzx[threadIdx.x + stride];
    }
    __syncthreads();
  }
  sdz_out = s_dz[0];
  sdzx_out = s_dzx[0];
}

/// Per channel: dgamma += sum(dz*xhat), dbeta += sum(dz), and dx = a*dz + b*(x - mean) + e with
/// a = gamma*invstd, b = -gamma*invstd^3*sum(dz*(x-mean))/M, e = -gamma*invstd*sum(dz)/M.
/// SyncBatchNorm: `global_sums` (sum(dz), sum(dz*(x-mean))) per channel over all ranks and M the
/// global batch's rows give dx, while dgamma and dbeta take this rank's own sums (the gradient of
/// this rank's loss; the data-parallel average over ranks then makes them the global batch's, as
/// torch.nn.SyncBatchNorm does). Null: this rank's sums for both.
__global__ void __launch_bounds__(kBnFinalizeThreads)
bn_grad_finalize(const float* __restrict__ partial, int n_part, int C, int L, std::int64_t M,
                 const float* __restrict__ gamma, const float* __restrict__ invstd,
                 float* __restrict__ dgamma, float* __restrict__ dbeta, float* __restrict__ coef,
                 const float* __restrict__ global_sums = nullptr) {
  const int c = blockIdx.x;
  float sdz, sdzx;
  bn_merge_channel_grads(partial, n_part, C, L, sdz, sdzx);
  if (threadIdx.x != 0) return;
  const float is = invstd[c], g = gamma[c], inv_m = 1.f / static_cast<float>(M);
  dgamma[c] += sdzx * is;
  dbeta[c] += sdz;
  if (global_sums) {
    sdz = global_sums[c * 2 + 0];
    sdzx = global_sums[c * 2 + 1];
  }
  coef[c * 3 + 0] = g * is;
  coef[c * 3 + 1] = -g * is * is * is * sdzx * inv_m;
  coef[c * 3 + 2] = -g * is * sdz * inv_m;
}

/// SyncBatchNorm, before the exchange: this rank's per-channel (sum(dz), sum(dz*(x-mean))) into
/// local[c * 2 ..] and the same into to_reduce[c * 2 ..], which the all-reduce then sums in place.
__global__ void __launch_bounds__(kBnFinalizeThreads)
bn_grad_local(const float* __restrict__ partial, int n_part, int C, int L, float* __restrict__ local,
              float* __restrict__ to_reduce) {
  float sdz, sdzx;
  bn_merge_channel_grads(partial, n_part, C, L, sdz, sdzx);
  if (threadIdx.x != 0) return;
  local[blockIdx.x * 2 + 0] = to_reduce[blockIdx.x * 2 + 0] = sdz;
  local[blockIdx.x * 2 + 1] = to_reduce[blockIdx.x * 2 + 1] = sdzx;
}

template <class N, int V, BatchNormEpilogue E>
__global__ void bn_grad_apply(const N* __restrict__ x, const N* __restrict__ y, const N* __restrict__ dy,
                              const float* __restrict__ mean, const float* __restrict__ coef,
                              N* __restrict__ dx, N* __restrict__ dres, std::int64_t n_pack, int C) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  const int step_c = static_cast<int>((stride * V) % C);  // as bn_apply
  int c0 = static_cast<int>((i * V) % C);
  for (; i < n_pack; i += stride) {
    const std::int64_t off = i * V;
    float xv[V], g[V];
    load_pack<N, V>(x + off, xv);
    load_pack<N, V>(dy + off, g);
    if constexpr (E != BatchNormEpilogue::kNone) {
      float yv[V];
      load_pack<N, V>(y + off, yv);
#pragma unroll
      for (int v = 0; v < V; ++v) g[v] = yv[v] > 0.f ? g[v] : 0.f;
    }
    if constexpr (E == BatchNormEpilogue::kAddRelu) store_pack<N, V>(dres + off, g);
    float out[V];
    int c = c0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      out[v] = __ldg(coef + c * 3) * g[v] + __ldg(coef + c * 3 + 1) * (xv[v] - __ldg(mean + c)) +
               __ldg(coef + c * 3 + 2);
      c = c + 1 == C ? 0 : c + 1;
    }
    c0 += step_c;
    if (c0 >= C) c0 -= C;
    store_pack<N, V>(dx + off, out);
  }
}

/// Call f.template operator()<V>() with the pack width for per-channel kernels.
template <StorageScalar T, class F>
void with_pack_width(int v, F&& f) {
  if constexpr (sizeof(T) == 2) {
    if (v == 8) return f.template operator()<8>();
  }
  if (v >= 4) return f.template operator()<4>();
  if (v == 2) return f.template operator()<2>();
  return f.template operator()<1>();
}

/// @param from_saved  (with training = false) the affine map from a.save_mean / a.save_invstd
///                    instead of the running statistics: batch_norm_relu_forward_saved, validated
///                    there; then the same elementwise pass as the training forward.
template <StorageScalar T>
void bn_forward(const Cuda& ctx, const ampkit::detail::BatchNormForwardArgs<T>& a, BatchNormEpilogue e,
                bool training, const BatchNormConfig& cfg, bool from_saved = false) {
  if (!from_saved) a.validate(ampkit::detail::bn_forward_name(e, training), e, training, cfg);
  using N = native_t<T>;
  const std::int64_t C64 = a.x.shape.c, M = a.x.shape.n * a.x.shape.h * a.x.shape.w;
  AMPKIT_CHECK(C64 < (1 << 26), "batch_norm: ", C64, " channels is more than the kernels index");
  const int C = static_cast<int>(C64);
  const int n_sm = ctx.device().multiprocessors;
  const BnLayout lay = bn_layout<T>(
      M, C, {a.x.data, a.y.data, e == BatchNormEpilogue::kAddRelu ? a.residual.data : nullptr});
  const int v = lay.v, L = static_cast<int>(lay.row_len);
  // Workspace: scale, shift (C each) + partial statistics (grid_y * L * 3) + under SyncBatchNorm
  // the ranks' gathered per-channel statistics (world size * C * 3).
  const BnTiling t = bn_tiling(lay.rows, L, v, n_sm);
  BatchNormSync* const sync = training ? ctx.batch_norm_sync() : nullptr;
  const std::size_t world = sync ? static_cast<std::size_t>(sync->world_size()) : 0;
  auto ws = ctx.workspace(sizeof(float) * (2 * std::size_t(C) + (training ? std::size_t(t.grid_y) * L * 3 : 0) +
                                           world * std::size_t(C) * 3));
  float* scale = reinterpret_cast<float*>(ws.data());
  float* shift = scale + C;
  float* partial = shift + C;
  const unsigned cblocks = static_cast<unsigned>((C + 127) / 128);
  with_pack_width<T>(v, [&]<int V>() {
    if (training) {
      bn_stats_partial<N, V><<<dim3(t.grid_x, t.grid_y), kBnThreads, 0, ctx.stream()>>>(
          native(a.x.data), lay.rows, L, t.packs_per_block, partial);
      AMPKIT_CUDA_CHECK_LAUNCH();
      if (sync) {
        // SyncBatchNorm: this rank's per-channel (count, mean, M2) into its slot, gathered from
        // every rank, then merged in rank order (the same Chan merge and order on every rank, so
        // every rank normalises with bit-identical statistics) over the global batch's rows.
        // Every rank has the same batch rows (the sampler pads its share), so M x world size.
        float* gathered = partial + std::size_t(t.grid_y) * L * 3;
        bn_stats_local<<<static_cast<unsigned>(C), kBnFinalizeThreads, 0, ctx.stream()>>>(
            partial, static_cast<int>(t.grid_y), C, L, gathered + std::size_t(sync->rank()) * C * 3);
        AMPKIT_CUDA_CHECK_LAUNCH();
        sync->all_gather(gathered, std::size_t(C) * 3, ctx.stream());
        bn_stats_finalize<<<static_cast<unsigned>(C), kBnFinalizeThreads, 0, ctx.stream()>>>(
            gathered, static_cast<int>(world), C, C, M * static_cast<std::int64_t>(world), a.gamma.data,
            a.beta.data, a.running_mean.data, a.running_var.data, a.save_mean.data, a.save_invstd.data, scale,
            shift, cfg.momentum, cfg.eps);
      } else {
        bn_stats_finalize<<<static_cast<unsigned>(C), kBnFinalizeThreads, 0, ctx.stream()>>>(
            partial, static_cast<int>(t.grid_y), C, L, M, a.gamma.data, a.beta.data, a.running_mean.data,
            a.running_var.data, a.save_mean.data, a.save_invstd.data, scale, shift, cfg.momentum, cfg.eps);
      }
      AMPKIT_CUDA_CHECK_LAUNCH();
    } else if (from_saved) {
      bn_saved_affine<<<cblocks, 128, 0, ctx.stream()>>>(C, a.gamma.data, a.beta.data, a.save_mean.data,
                                                          a.save_invstd.data, scale, shift);
      AMPKIT_CUDA_CHECK_LAUNCH();
    } else {
      bn_inference_affine<<<cblocks, 128, 0, ctx.stream()>>>(
          C, a.gamma.data, a.beta.data, a.running_mean.data, a.running_var.data, scale, shift, cfg.eps);
      AMPKIT_CUDA_CHECK_LAUNCH();
    }
    const std::int64_t n_pack = M * C / V;
    const unsigned grid = grid_for(n_pack, kBnThreads, n_sm);
    const bool rows_kernel = bn_flat_packs().load();  // the switch also selects the row-tiled passes
    const BnTiling ta = bn_apply_tiling(lay.rows, L, v, n_sm);
    auto apply = [&]<BatchNormEpilogue E>() {
      if (rows_kernel)
        bn_apply_rows<N, V, E><<<dim3(ta.grid_x, ta.grid_y), kBnThreads, 0, ctx.stream()>>>(
            native(a.x.data), native(a.residual.data), scale, shift, native(a.y.data), lay.rows, L, C,
            ta.packs_per_block);
      else
        bn_apply<N, V, E><<<grid, kBnThreads, 0, ctx.stream()>>>(native(a.x.data), native(a.residual.data),
                                                                 scale, shift, native(a.y.data), n_pack, C);
      AMPKIT_CUDA_CHECK_LAUNCH();
    };
    if (e == BatchNormEpilogue::kNone)
      apply.template operator()<BatchNormEpilogue::kNone>();
    else if (e == BatchNormEpilogue::kRelu)
      apply.template operator()<BatchNormEpilogue::kRelu>();
    else
      apply.template operator()<BatchNormEpilogue::kAddRelu>();
  });
}

template <StorageScalar T>
void bn_backward(const Cuda& ctx, const ampkit::detail::BatchNormBackwardArgs<T>& a, BatchNormEpilogue e) {
  a.validate(ampkit::detail::bn_backward_name(e), e);
  using N = native_t<T>;
  const std::int64_t C64 = a.x.shape.c, M = a.x.shape.n * a.x.shape.h * a.x.shape.w;
  AMPKIT_CHECK(C64 < (1 << 26), "batch_norm: ", C64, " channels is more than the kernels index");
  const int C = static_cast<int>(C64);
  const int n_sm = ctx.device().multiprocessors;
  const bool fused = e != BatchNormEpilogue::kNone;
  const BnLayout lay = bn_layout<T>(M, C, {a.x.data, a.dL_dy.data, a.dL_dx.data, fused ? a.y.data : nullptr,
                                           e == BatchNormEpilogue::kAddRelu ? a.dL_dresidual.data : nullptr});
  const int v = lay.v, L = static_cast<int>(lay.row_len);
  const BnTiling t = bn_tiling(lay.rows, L, v, n_sm);
  // Workspace: dx coefficients (3 C) + partial sums (grid_y * L * 2) + under SyncBatchNorm this
  // rank's and the global per-channel sums (2 C each).
  BatchNormSync* const sync = ctx.batch_norm_sync();
  auto ws = ctx.workspace(sizeof(float) * (3 * std::size_t(C) + std::size_t(t.grid_y) * L * 2 +
                                           (sync ? 4 * std::size_t(C) : 0)));
  float* coef = reinterpret_cast<float*>(ws.data());
  float* partial = coef + 3 * C;
  with_pack_width<T>(v, [&]<int V>() {
    auto run = [&]<BatchNormEpilogue E>() {
      bn_grad_partial<N, V, E><<<dim3(t.grid_x, t.grid_y), kBnThreads, 0, ctx.stream()>>>(
          native(a.x.data), native(a.y.data), native(a.dL_dy.data), a.save_mean.data, lay.rows, L, C,
          t.packs_per_block, partial);
      AMPKIT_CUDA_CHECK_LAUNCH();
      if (sync) {
        // SyncBatchNorm: this rank's per-channel sums, written twice: once kept, once summed over
        // the ranks; dx from the global sums over the global rows, dgamma / dbeta from this
        // rank's (bn_grad_finalize).
        float* local = partial + std::size_t(t.grid_y) * L * 2;
        float* global = local + 2 * std::size_t(C);
        bn_grad_local<<<static_cast<unsigned>(C), kBnFinalizeThreads, 0, ctx.stream()>>>(
            partial, static_cast<int>(t.grid_y), C, L, local, global);
        AMPKIT_CUDA_CHECK_LAUNCH();
        sync->all_reduce_sum(global, 2 * std::size_t(C), ctx.stream());
        bn_grad_finalize<<<static_cast<unsigned>(C), kBnFinalizeThreads, 0, ctx.stream()>>>(
            local, 1, C, C, M * static_cast<std::int64_t>(sync->world_size()), a.gamma.data, a.save_invstd.data,
            a.dL_dgamma.data, a.dL_dbeta.data, coef, global);
      } else {
        bn_grad_finalize<<<static_cast<unsigned>(C), kBnFinalizeThreads, 0, ctx.stream()>>>(
            partial, static_cast<int>(t.grid_y), C, L, M, a.gamma.data, a.save_invstd.data, a.dL_dgamma.data,
            a.dL_dbeta.data, coef);
      }
      AMPKIT_CUDA_CHECK_LAUNCH();
      const std::int64_t n_pack = M * C / V;
      if (bn_flat_packs().load()) {  // the switch also selects the row-tiled passes
        const BnTiling ta = bn_apply_tiling(lay.rows, L, V, n_sm);
        bn_grad_apply_rows<N, V, E><<<dim3(ta.grid_x, ta.grid_y), kBnThreads, 0, ctx.stream()>>>(
            native(a.x.data), native(a.y.data), native(a.dL_dy.data), a.save_mean.data, coef,
            native(a.dL_dx.data), native(a.dL_dresidual.data), lay.rows, L, C, ta.packs_per_block);
      } else {
        bn_grad_apply<N, V, E><<<grid_for(n_pack, kBnThreads, n_sm), kBnThreads, 0, ctx.stream()>>>(
            native(a.x.data), native(a.y.data), native(a.dL_dy.data), a.save_mean.data, coef,
            native(a.dL_dx.data), native(a.dL_dresidual.data), n_pack, C);
      }
      AMPKIT_CUDA_CHECK_LAUNCH();
    };
    if (e == BatchNormEpilogue::kNone)
      run.template operator()<BatchNormEpilogue::kNone>();
    else if (e == BatchNormEpilogue::kRelu)
      run.template operator()<BatchNormEpilogue::kRelu>();
    else
      run.template operator()<BatchNormEpilogue::kAddRelu>();
  });
}

}  // namespace cuda::detail

// ---- training forward --------------------------------------------------------------------------
template <StorageScalar T>
void batch_norm_forward_training(Cuda& ctx, TensorView<const T> x, TensorView<const float> gamma,
                                 TensorView<const float> beta, TensorView<float> running_mean,
                                 TensorView<float> running_var, TensorView<float> save_mean,
                                 TensorView<float> save_invstd, TensorView<T> y,
                                 const BatchNormConfig& cfg = {}) {
  cuda::detail::bn_forward<T>(ctx, {x, {}, gamma, beta, running_mean, running_var, save_mean, save_invstd, y},
                              BatchNormEpilogue::kNone, true, cfg);
}
template <StorageScalar T>
void batch_norm_relu_forward_training(Cuda& ctx, TensorView<const T> x, TensorView<const float> gamma,
                                      TensorView<const float> beta, TensorView<float> running_mean,
                                      TensorView<float> running_var, TensorView<float> save_mean,
                                      TensorView<float> save_invstd, TensorView<T> y,
                                      const BatchNormConfig& cfg = {}) {
  cuda::detail::bn_forward<T>(ctx, {x, {}, gamma, beta, running_mean, running_var, save_mean, save_invstd, y},
                              BatchNormEpilogue::kRelu, true, cfg);
}
template <StorageScalar T>
void batch_norm_add_relu_forward_training(Cuda& ctx, TensorView<const T> x, TensorView<const T> residual,
                                          TensorView<const float> gamma, TensorView<const float> beta,
                                          TensorView<float> running_mean, TensorView<float> running_var,
                                          TensorView<float> save_mean, TensorView<float> save_invstd,
                                          TensorView<T> y, const BatchNormConfig& cfg = {}) {
  cuda::detail::bn_forward<T>(
      ctx, {x, residual, gamma, beta, running_mean, running_var, save_mean, save_invstd, y},
      BatchNormEpilogue::kAddRelu, true, cfg);
}

// ---- rebuild from the saved statistics ----------------------------------------------------------
/// y = relu(bn(x)) with save_mean / save_invstd of the training forward that wrote them; nothing
/// is updated. The affine map goes through bn_affine_map as in that forward's finalize, and the
/// elementwise pass is the forward's own (bn_forward, same layout choice and kernels), so y is
/// bit-identical to the forward's on the same x (nn/ops/batch_norm.hpp).
template <StorageScalar T>
void batch_norm_relu_forward_saved(Cuda& ctx, TensorView<const T> x, TensorView<const float> gamma,
                                   TensorView<const float> beta, TensorView<const float> save_mean,
                                   TensorView<const float> save_invstd, TensorView<T> y) {
  ampkit::detail::BatchNormSavedArgs<T>{x, gamma, beta, save_mean, save_invstd, y}.validate(
      "batch_norm_relu_forward_saved");
  cuda::detail::bn_forward<T>(ctx,
                              {x,
                               {},
                               gamma,
                               beta,
                               {},
                               {},
                               {const_cast<float*>(save_mean.data), save_mean.shape},
                               {const_cast<float*>(save_invstd.data), save_invstd.shape},
                               y},
                              BatchNormEpilogue::kRelu, /*training=*/false, BatchNormConfig{}, /*from_saved=*/true);
}

// ---- inference forward -------------------------------------------------------------------------
template <StorageScalar T>
void batch_norm_forward_inference(Cuda& ctx, TensorView<const T> x, TensorView<const float> gamma,
                                  TensorView<const float> beta, TensorView<const float> running_mean,
                                  TensorView<const float> running_var, TensorView<T> y,
                                  const BatchNormConfig& cfg = {}) {
  cuda::detail::bn_forward<T>(ctx,
                              {x,
                               {},
                               gamma,
                               beta,
                               {const_cast<float*>(running_mean.data), running_mean.shape},
                               {const_cast<float*>(running_var.data), running_var.shape},
                               {},
                               {},
                               y},
                              BatchNormEpilogue::kNone, false, cfg);
}
template <StorageScalar T>
void batch_norm_relu_forward_inference(Cuda& ctx, TensorView<const T> x, TensorView<const float> gamma,
                                       TensorView<const float> beta, TensorView<const float> running_mean,
                                       TensorView<const float> running_var, TensorView<T> y,
                                       const BatchNormConfig& cfg = {}) {
  cuda::detail::bn_forward<T>(ctx,
                              {x,
                               {},
                               gamma,
                               beta,
                               {const_cast<float*>(running_mean.data), running_mean.shape},
                               {const_cast<float*>(running_var.data), running_var.shape},
                               {},
                               {},
                               y},
                              BatchNormEpilogue::kRelu, false, cfg);
}
template <StorageScalar T>
void batch_norm_add_relu_forward_inference(Cuda& ctx, TensorView<const T> x, TensorView<const T> residual,
                                           TensorView<const float> gamma, TensorView<const float> beta,
                                           TensorView<const float> running_mean,
                                           TensorView<const float> running_var, TensorView<T> y,
                                           const BatchNormConfig& cfg = {}) {
  cuda::detail::bn_forward<T>(ctx,
                              {x,
                               residual,
                               gamma,
                               beta,
                               {const_cast<float*>(running_mean.data), running_mean.shape},
                               {const_cast<float*>(running_var.data), running_var.shape},
                               {},
                               {},
                               y},
                              BatchNormEpilogue::kAddRelu, false, cfg);
}

// ---- training backward -------------------------------------------------------------------------
template <StorageScalar T>
void batch_norm_backward(Cuda& ctx, TensorView<const T> x, TensorView<const T> dL_dy,
                         TensorView<const float> gamma, TensorView<const float> save_mean,
                         TensorView<const float> save_invstd, TensorView<T> dL_dx,
                         TensorView<float> dL_dgamma, TensorView<float> dL_dbeta) {
  cuda::detail::bn_backward<T>(ctx,
                               {x, {}, dL_dy, gamma, save_mean, save_invstd, dL_dx, {}, dL_dgamma, dL_dbeta},
                               BatchNormEpilogue::kNone);
}
template <StorageScalar T>
void batch_norm_relu_backward(Cuda& ctx, TensorView<const T> x, TensorView<const T> y,
                              TensorView<const T> dL_dy, TensorView<const float> gamma,
                              TensorView<const float> save_mean, TensorView<const float> save_invstd,
                              TensorView<T> dL_dx, TensorView<float> dL_dgamma, TensorView<float> dL_dbeta) {
  cuda::detail::bn_backward<T>(ctx,
                               {x, y, dL_dy, gamma, save_mean, save_invstd, dL_dx, {}, dL_dgamma, dL_dbeta},
                               BatchNormEpilogue::kRelu);
}
template <StorageScalar T>
void batch_norm_add_relu_backward(Cuda& ctx, TensorView<const T> x, TensorView<const T> y,
                                  TensorView<const T> dL_dy, TensorView<const float> gamma,
                                  TensorView<const float> save_mean, TensorView<const float> save_invstd,
                                  TensorView<T> dL_dx, TensorView<T> dL_dresidual,
                                  TensorView<float> dL_dgamma, TensorView<float> dL_dbeta) {
  cuda::detail::bn_backward<T>(
      ctx, {x, y, dL_dy, gamma, save_mean, save_invstd, dL_dx, dL_dresidual, dL_dgamma, dL_dbeta},
      BatchNormEpilogue::kAddRelu);
}

}  // namespace ampkit

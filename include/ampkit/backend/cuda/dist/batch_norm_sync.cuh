/// @brief BatchNorm across ranks: averaging running statistics (mmengine's SyncBuffersHook, the
/// default at the end of each epoch) and, as an option, SyncBatchNorm's global batch statistics.
///
/// SyncBatchNorm numerics: each rank sums (x - K) and (x - K)^2 per channel over its N*H*W
/// values, where K is a per-channel shift every rank agrees on (the running mean, which SyncBN
/// keeps identical on all ranks); one all-reduce (sum) of [S1 | S2 | count] gives the global
/// mean K + S1/n and variance S2/n - (S1/n)^2. Without the shift, E[x^2] - E[x]^2 cancels
/// catastrophically in fp32 for channels whose mean is large next to their spread; with K close
/// to the mean both terms stay small. Sums accumulate in fp32 (count exact up to 2^24 values per
/// channel: 16.7M, e.g. 64 images of 512x512 at full resolution).
/// The same all-reduce serves backward: pack [sum(dL_dy) | sum(dL_dy * x_hat)] and sum it.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <span>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/dist/process_group.cuh"
#include "ampkit/core/tensor.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::dist {

/// Average fp32 buffers (running mean, running variance, ...) over the ranks, in one NCCL group.
inline void sync_batch_norm_buffers(ProcessGroup& pg, std::span<const std::span<float>> buffers,
                                    cudaStream_t stream) {
  std::vector<DeviceChunk> chunks;
  std::size_t n = 0;
  for (std::span<float> b : buffers) {
    if (b.empty()) continue;
    chunks.push_back({b.data(), b.size()});
    n += b.size();
  }
  if (chunks.empty()) return;
  pg.all_reduce_grouped(chunks, ncclFloat32, ReduceOp::kAvg, stream,
                        ::ampkit::detail::concat("all-reduce (avg) of ", format_count(n),
                                                 " BatchNorm running statistics"));
}

namespace detail {

// Block: 32 channels x 8 rows of the (N*H*W, C) matrix; each thread strides over rows.
template <class NT>
__global__ void shifted_channel_sums_kernel(const NT* __restrict__ g_x, const float* __restrict__ g_shift,
                                            std::int64_t rows, int channels, float* __restrict__ g_stats) {
  __shared__ float s1[8][33], s2[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float r1 = 0.f, r2 = 0.f;
  if (c < channels) {
    const float k = g_shift ? g_shift[c] : 0.f;
    for (std::int64_t m = blockIdx.y * 8 + threadIdx.y; m < rows; m += std::int64_t{gridDim.y} * 8) {
      const float d = static_cast<float>(g_x[m * channels + c]) - k;
      r1 += d;
      r2 += d * d;
    }
  }
  s1[threadIdx.y][threadIdx.x] = r1;
  s2[threadIdx.y][threadIdx.x] = r2;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int i = 1; i < 8; ++i) {
      r1 += s1[i][threadIdx.x];
      r2 += s2[i][threadIdx.x];
    }
    atomicAdd(&g_stats[c], r1);
    atomicAdd(&g_stats[channels + c], r2);
  }
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0)
    g_stats[2 * channels] = static_cast<float>(rows);
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) stats_from_sums_kernel(const float* __restrict__ g_stats, const float* __restrict__ g_shift,
                                              int channels, float* __restrict__ g_mean, float* __restrict__ g_var,
                                              float* __restrict__ g_running_mean, float* __restrict__ g_running_var,
                                              float momentum) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= channels) return;
  const float n = g_stats[2 * channels];
  const float m1 = g_stats[c] / n;
  const float mean = (g_shift ? g_shift[c] : 0.f) + m1;
  const float var = fmaxf(g_stats[channels + c] / n - m1 * m1, 0.f);  // biased: normalises the batch
  g_mean[c] = mean;
  g_var[c] = var;
  if (g_running_mean) g_running_mean[c] = (1.f - momentum) * g_running_mean[c] + momentum * mean;
  // Running variance is unbiased (n / (n - 1)), as in PyTorch's BatchNorm.
  if (g_running_var)
    g_running_var[c] = (1.f - momentum) * g_running_var[c] + momentum * (n > 1.f ? var * n / (n - 1.f) : var);
}

}  // namespace detail

/// One rank's per-channel sums of its batch x (N,H,W,C), shifted by `shift` (C floats, may be
/// null for no shift), written to `stats` (2C+1 floats: [S1 | S2 | count]).
template <StorageScalar T>
void batch_norm_shifted_sums(TensorView<const T> x, const float* shift, float* stats, cudaStream_t stream) {
  const int channels = static_cast<int>(x.shape.c);
  const std::int64_t rows = x.numel() / std::max<std::int64_t>(x.shape.c, 1);
  AMPKIT_CHECK(channels > 0 && rows > 0, "batch_norm_shifted_sums: empty input ", x.shape);
  AMPKIT_CHECK(rows <= (std::int64_t{1} << 24), "batch_norm_shifted_sums: ", rows,
               " values per channel: the fp32 count is exact only up to 2^24");
  AMPKIT_CUDA_CHECK(cudaMemsetAsync(stats, 0, sizeof(float) * (2 * static_cast<std::size_t>(channels) + 1), stream));
  const dim3 block(32, 8);
  const dim3 grid((channels + 31) / 32, static_cast<unsigned>(std::min<std::int64_t>((rows + 7) / 8, 256)));
  detail::shifted_channel_sums_kernel<<<grid, block, 0, stream>>>(
      reinterpret_cast<const native_t<T>*>(x.data), shift, rows, channels, stats);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// Sum every rank's [S1 | S2 | count] (2C+1 floats) in place: afterwards each rank holds the
/// global batch's sums.
inline void sync_batch_norm_sums(ProcessGroup& pg, float* stats, int channels, cudaStream_t stream) {
  pg.all_reduce(stats, 2 * static_cast<std::size_t>(channels) + 1, ncclFloat32, ReduceOp::kSum, stream,
                ::ampkit::detail::concat("all-reduce (sum) of SyncBatchNorm statistics (", channels, " channels)"));
}

/// Mean and biased variance (C floats each) from [S1 | S2 | count] and the same shift; optionally
/// update running statistics with `momentum` (PyTorch's convention: new = (1-m)*old + m*batch).
inline void batch_norm_stats_from_sums(const float* stats, const float* shift, int channels, float* mean,
                                       float* var, float* running_mean, float* running_var, float momentum,
                                       cudaStream_t stream) {
  AMPKIT_CHECK(channels > 0, "batch_norm_stats_from_sums: ", channels, " channels");
  constexpr int kThreads = 128;
  detail::stats_from_sums_kernel<kThreads><<<(channels + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      stats, shift, channels, mean, var, running_mean, running_var, momentum);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit::dist

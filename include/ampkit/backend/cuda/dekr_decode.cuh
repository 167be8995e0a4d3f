/// @brief DEKR decoding's map work on the device: flip-test combination, center NMS, top-k roots,
/// poses from the displacements and keypoint heat scores, read straight from the network's NHWC
/// outputs (float, half or bfloat16); only the <= max_instances x K x 3 results come back, and
/// rescoring, pose NMS and the image mapping reuse the host code (eval/dekr_decode.hpp).
///
/// Same results as the host decode (eval::dekr_candidates on the float-converted maps):
/// - every value the host computes is computed here by the same float operations in the same
///   order, with explicitly rounded intrinsics (__fadd_rn, __fmul_rn, ...) so nvcc cannot fuse a
///   multiply and an add into an FMA the host does not do;
/// - the flip-combined maps are never materialised: a combined value is (map + flipped map) / 2
///   recomputed where it is read (the root map once per pixel, the keypoint maps at the four
///   bilinear taps of each keypoint, the displacements at the roots only), which is bit-identical
///   to the host's combined tensors and reads ~1/10 of the bytes;
/// - top-k order is the host's: score descending, ties by lower pixel index (y * W + x) first.
///   Each pixel gets a unique 64-bit key (order-preserving bits of the score, then the inverted
///   index), so "k largest keys" is a total order with no ties left to break.
#pragma once

#include <cuda_runtime.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/sampling_common.cuh"
#include "ampkit/core/error.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/eval/dekr_decode.hpp"

namespace ampkit {

namespace cuda::dekr {

inline constexpr int kMaxKeypoints = 64;    ///< K limit of the by-value channel table
inline constexpr int kMaxInstances = 1024;  ///< top-k limit (one block round per root)
inline constexpr int kTopkThreads = 1024;

/// Everything the kernels need to read the (possibly flip-combined) maps of a batch.
template <class T>
struct Maps {
  const T* heatmaps;       // (N,H,W,K+1), root last
  const T* displacements;  // (N,H,W,2K)
  const T* heatmaps_flip;  // (N,H,W,K+1) of the flipped input, or nullptr: no flip test
  const T* displacements_flip;
  int n, h, w, k;
  bool shift_heatmap;
  float amend;                 // (s - 1) / s, s = input_w / W: the flip coordinate amendment
  int src[kMaxKeypoints + 1];  // flipped-pass channel feeding channel c (root maps to itself)
};

/// Heatmap channel c at (y, x) of image b, flip-combined as eval::dekr_flip_combine does it.
template <class T>
__device__ __forceinline__ float heat(const Maps<T>& m, int b, int y, int x, int c) {
  const std::int64_t C = m.k + 1;
  const std::int64_t row = (static_cast<std::int64_t>(b) * m.h + y) * m.w;
  const float v = sampling::load_f(m.heatmaps + (row + x) * C + c);
  if (m.heatmaps_flip == nullptr) return v;
  // flip back: column x reads flipped column W-1-x; the 1-px shift reads column x-1 of that.
  const int xs = m.shift_heatmap && x > 0 ? x - 1 : x;
  const float f = sampling::load_f(m.heatmaps_flip + (row + (m.w - 1 - xs)) * C + m.src[c]);
  return __fdiv_rn(__fadd_rn(v, f), 2.0f);
}

/// Displacement (dx, dy) of keypoint kp at (y, x) of image b, flip-combined (x negated + amended).
template <class T>
__device__ __forceinline__ float2 displacement(const Maps<T>& m, int b, int y, int x, int kp) {
  const std::int64_t C = 2 * m.k;
  const std::int64_t row = (static_cast<std::int64_t>(b) * m.h + y) * m.w;
  const T* d = m.displacements + (row + x) * C + 2 * kp;
  float dx = sampling::load_f(d), dy = sampling::load_f(d + 1);
  if (m.displacements_flip == nullptr) return make_float2(dx, dy);
  const T* f = m.displacements_flip + (row + (m.w - 1 - x)) * C + 2 * m.src[kp];
  const float fx = __fadd_rn(-sampling::load_f(f), m.amend);
  const float fy = sampling::load_f(f + 1);
  return make_float2(__fdiv_rn(__fadd_rn(dx, fx), 2.0f), __fdiv_rn(__fadd_rn(dy, fy), 2.0f));
}

/// Score bits in an order-preserving unsigned form; -0 is folded onto +0 first because the host
/// comparator treats them as equal (and then orders by index).
__device__ __forceinline__ std::uint32_t ordered_bits(float s) {
  const std::uint32_t u = s == 0.0f ? 0u : __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(std::uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

/// (N,H,W) root map, flip-combined.
template <class T>
__global__ void root_map_kernel(Maps<T> m, float* __restrict__ g_root) {
  const std::int64_t n_px = static_cast<std::int64_t>(m.n) * m.h * m.w;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n_px;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const int x = static_cast<int>(i % m.w);
    const int y = static_cast<int>((i / m.w) % m.h);
    const int b = static_cast<int>(i / (std::int64_t{m.w} * m.h));
    g_root[i] = heat(m, b, y, x, m.k);
  }
}

/// Center NMS key of every pixel: 0 when it is not a candidate (not the max of its window, or
/// not strictly above the threshold), else (ordered score bits << 32) | ~index. Keeping only
/// candidates above the threshold before the top-k gives the host's "top-k, then > threshold":
/// those above the threshold are a prefix of the score order.
__global__ void nms_key_kernel(const float* __restrict__ g_root, int n, int h, int w, int radius,
                               float threshold, unsigned long long* __restrict__ g_key) {
  const std::int64_t n_px = static_cast<std::int64_t>(n) * h * w;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n_px;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const int x = static_cast<int>(i % w);
    const int y = static_cast<int>((i / w) % h);
    const float* img = g_root + (i / (std::int64_t{w} * h)) * h * w;
    const float v = img[y * w + x];
    float mx = -INFINITY;
    for (int yy = max(0, y - radius); yy <= min(h - 1, y + radius); ++yy)
      for (int xx = max(0, x - radius); xx <= min(w - 1, x + radius); ++xx) {
        const float u = img[yy * w + xx];
        mx = mx < u ? u : mx;  // std::max's comparison, so NaNs behave as on the host
      }
    const float score = __fmul_rn(v, v == mx ? 1.0f : 0.0f);
    const auto index = static_cast<std::uint32_t>(y * w + x);
    g_key[i] = score > threshold
                   ? (static_cast<unsigned long long>(ordered_bits(score)) << 32) | (0xFFFFFFFFu - index)
                   : 0ull;
  }
}

/// Largest key of the block (every thread gets it). s_red holds kTopkThreads / 32 entries.
__device__ __forceinline__ unsigned long long block_max(unsigned long long v, unsigned long long* s_red) {
  for (int o = 16; o > 0; o /= 2) {
    const unsigned long long u = __shfl_down_sync(0xFFFFFFFFu, v, o);
    v = u > v ? u : v;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) s_red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? s_red[lane] : 0ull;
    for (int o = 16; o > 0; o /= 2) {
      const unsigned long long u = __shfl_down_sync(0xFFFFFFFFu, v, o);
      v = u > v ? u : v;
    }
    if (lane == 0) s_red[32] = v;
  }
  __syncthreads();
  const unsigned long long r = s_red[32];
  __syncthreads();  // s_red is reused by the next round
  return r;
}

/// Top-k keys of one image per block, by repeated block arg-max: each thread keeps the best key
/// of its own pixels; the winner's owner (keys are unique: exactly one thread) then looks for
/// its next best below the winner. k rounds of one block reduction each: a few microseconds for
/// k = 30, with no capacity limit on the number of candidates.
__global__ void topk_kernel(const unsigned long long* __restrict__ g_key, int n_px, int max_k,
                            std::int32_t* __restrict__ g_count, std::int32_t* __restrict__ g_index,
                            float* __restrict__ g_score) {
  __shared__ unsigned long long s_red[33];
  const unsigned long long* keys = g_key + static_cast<std::int64_t>(blockIdx.x) * n_px;
  auto best_below = [&](unsigned long long limit) {
    unsigned long long b = 0;
    for (int i = threadIdx.x; i < n_px; i += blockDim.x) {
      const unsigned long long k = keys[i];
      if (k < limit && k > b) b = k;
    }
    return b;
  };
  unsigned long long mine = best_below(~0ull);
  int count = 0;
  for (; count < max_k; ++count) {
    const unsigned long long win = block_max(mine, s_red);
    if (win == 0) break;  // no candidates left
    if (threadIdx.x == 0) {
      g_index[blockIdx.x * max_k + count] =
          static_cast<std::int32_t>(0xFFFFFFFFu - static_cast<std::uint32_t>(win));
      g_score[blockIdx.x * max_k + count] = from_ordered_bits(static_cast<std::uint32_t>(win >> 32));
    }
    if (mine == win) mine = best_below(win);
  }
  if (threadIdx.x == 0) g_count[blockIdx.x] = count;
}

/// grid_sample's source coordinate as eval::dekr_sample_heatmap computes it (normalised by
/// size - 1, unnormalised with align_corners=False, border-clamped).
__device__ __forceinline__ float sample_source(float p, int size) {
  const float n = __fsub_rn(__fmul_rn(__fdiv_rn(p, static_cast<float>(size - 1)), 2.0f), 1.0f);
  const float u = __fsub_rn(__fmul_rn(__fadd_rn(n, 1.0f), __fdiv_rn(static_cast<float>(size), 2.0f)), 0.5f);
  const float lo = u < 0.0f ? 0.0f : u;  // std::max(u, 0)
  const float hi = static_cast<float>(size - 1);
  return lo < hi ? lo : hi;  // std::min(size-1, .)
}

/// One thread per (image, root, keypoint): the keypoint from the displacement at the root, its
/// bilinear heat score from the combined keypoint map. Writes (x, y) in input-image coordinates
/// and the score.
template <class T>
__global__ void pose_kernel(Maps<T> m, int max_k, float sx, float sy,
                            const std::int32_t* __restrict__ g_count,
                            const std::int32_t* __restrict__ g_index, float* __restrict__ g_pose) {
  const std::int64_t total = static_cast<std::int64_t>(m.n) * max_k * m.k;
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < total;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const int kp = static_cast<int>(t % m.k);
    const int r = static_cast<int>((t / m.k) % max_k);
    const int b = static_cast<int>(t / (std::int64_t{m.k} * max_k));
    if (r >= g_count[b]) continue;
    const int index = g_index[b * max_k + r];
    const int y = index / m.w, x = index % m.w;
    const float2 d = displacement(m, b, y, x, kp);
    const float px = __fadd_rn(static_cast<float>(x), d.x);
    const float py = __fadd_rn(static_cast<float>(y), d.y);

    const float ix = sample_source(px, m.w), iy = sample_source(py, m.h);
    const float x0 = floorf(ix), y0 = floorf(iy);
    const float we = __fsub_rn(ix, x0), ea = __fsub_rn(1.0f, we);
    const float no = __fsub_rn(iy, y0), so = __fsub_rn(1.0f, no);
    const int xi = static_cast<int>(x0), yi = static_cast<int>(y0);
    auto at = [&](int yy, int xx) {
      return (xx >= 0 && xx < m.w && yy >= 0 && yy < m.h) ? heat(m, b, yy, xx, kp) : 0.0f;
    };
    float s = __fmul_rn(at(yi, xi), __fmul_rn(so, ea));
    s = __fadd_rn(s, __fmul_rn(at(yi, xi + 1), __fmul_rn(so, we)));
    s = __fadd_rn(s, __fmul_rn(at(yi + 1, xi), __fmul_rn(no, ea)));
    s = __fadd_rn(s, __fmul_rn(at(yi + 1, xi + 1), __fmul_rn(no, we)));

    float* out = g_pose + t * 3;
    out[0] = __fmul_rn(px, sx);
    out[1] = __fmul_rn(py, sy);
    out[2] = s;
  }
}

}  // namespace cuda::dekr

/// The map work of DEKR decoding for a batch on the device; returns one eval::DekrCandidates per
/// image, equal to eval::dekr_candidates on the host's (flip-combined) float maps. Synchronises
/// once (to copy the few results back).
/// @tparam T storage type of the network outputs (float, half, bfloat16)
/// @param heatmaps (N,H,W,K+1), root map last; displacements (N,H,W,2K)
/// @param heatmaps_flip, displacements_flip the flipped input's pass, same shapes; empty views
///        (null data) for no flip test
/// @param input_w, input_h the network input size (for the flip amendment and the x4 scaling)
template <StorageScalar T>
std::vector<eval::DekrCandidates> dekr_candidates(Cuda& ctx, TensorView<const T> heatmaps,
                                                  TensorView<const T> displacements,
                                                  TensorView<const T> heatmaps_flip,
                                                  TensorView<const T> displacements_flip, double input_w,
                                                  double input_h, const eval::DekrDecodeConfig& cfg = {}) {
  namespace dk = cuda::dekr;
  const Shape hs = heatmaps.shape;
  const std::int64_t N = hs.n, H = hs.h, W = hs.w, K = hs.c - 1;
  AMPKIT_CHECK(K > 0 && K <= dk::kMaxKeypoints, "dekr_decode (cuda): heatmaps ", hs, " need 2..",
               dk::kMaxKeypoints + 1, " channels (K keypoints + the root)");
  AMPKIT_CHECK(H > 1 && W > 1, "dekr_decode (cuda): maps of ", H, "x", W, " are too small to sample");
  check_shape("dekr_decode", "displacements", displacements, {N, H, W, 2 * K});
  const bool flip = heatmaps_flip.data != nullptr;
  AMPKIT_CHECK(flip == (displacements_flip.data != nullptr),
               "dekr_decode (cuda): give both flipped-pass maps or neither");
  if (flip) {
    check_shape("dekr_decode", "heatmaps_flip", heatmaps_flip, hs);
    check_shape("dekr_decode", "displacements_flip", displacements_flip, displacements.shape);
    AMPKIT_CHECK(static_cast<std::int64_t>(cfg.flip_indices.size()) == K,
                 "dekr_decode (cuda): ", cfg.flip_indices.size(), " flip indices for ", K, " keypoints");
  }
  AMPKIT_CHECK(cfg.nms_kernel > 0 && cfg.nms_kernel % 2 == 1,
               "dekr decode: the center NMS kernel must be odd, got ", cfg.nms_kernel);
  AMPKIT_CHECK(cfg.max_instances >= 0 && cfg.max_instances <= dk::kMaxInstances,
               "dekr_decode (cuda): max_instances ", cfg.max_instances, " outside [0, ", dk::kMaxInstances,
               "]");
  AMPKIT_CHECK(input_w > 0 && input_h > 0, "dekr_decode: the input transform has no input size");
  AMPKIT_CHECK(H * W < (std::int64_t{1} << 31), "dekr_decode (cuda): ", H, "x", W, " maps are too large");
  std::vector<eval::DekrCandidates> out(static_cast<std::size_t>(N));
  if (N == 0 || cfg.max_instances == 0) return out;

  dk::Maps<T> m{heatmaps.data,
                displacements.data,
                flip ? heatmaps_flip.data : nullptr,
                flip ? displacements_flip.data : nullptr,
                static_cast<int>(N),
                static_cast<int>(H),
                static_cast<int>(W),
                static_cast<int>(K),
                cfg.shift_heatmap,
                0.0f,
                {}};
  const double s = input_w / static_cast<double>(W);
  m.amend = static_cast<float>((s - 1) / s);  // the host computes it in double too
  for (std::int64_t c = 0; c < K; ++c) {
    const int f = flip ? cfg.flip_indices[static_cast<std::size_t>(c)] : static_cast<int>(c);
    AMPKIT_CHECK(f >= 0 && f < K, "dekr_decode (cuda): flip index ", f, " of keypoint ", c, " outside [0, ",
                 K, ")");
    m.src[c] = f;
  }
  m.src[K] = static_cast<int>(K);

  const int max_k = cfg.max_instances;
  const std::int64_t n_px = N * H * W;
  // Results in one block of 4-byte words, copied back with one memcpy:
  // count (N) | index (N, k) | score (N, k) | pose (N, k, K, 3).
  const std::size_t n_words = static_cast<std::size_t>(N + 2 * N * max_k + N * max_k * K * 3);
  auto root = ctx.alloc<float>(static_cast<std::size_t>(n_px));
  auto keys = ctx.alloc<unsigned long long>(static_cast<std::size_t>(n_px));
  auto res = ctx.alloc<std::uint32_t>(n_words);
  auto* count = reinterpret_cast<std::int32_t*>(res.data());
  auto* index = count + N;
  auto* score = reinterpret_cast<float*>(index + N * max_k);
  float* pose = score + N * max_k;

  // Slots past an image's count are never written, but the one memcpy below copies them too:
  // zero the block first so every byte that leaves the device is defined (compute-sanitizer's
  // initcheck reported the copy; the host never read those slots). A few KiB, one memset.
  AMPKIT_CUDA_CHECK(cudaMemsetAsync(res.data(), 0, n_words * sizeof(std::uint32_t), ctx.stream()));
  constexpr int kBlock = 256;
  dk::root_map_kernel<T><<<cuda::sampling::grid_for(n_px, kBlock), kBlock, 0, ctx.stream()>>>(m, root.data());
  AMPKIT_CUDA_CHECK_LAUNCH();
  dk::nms_key_kernel<<<cuda::sampling::grid_for(n_px, kBlock), kBlock, 0, ctx.stream()>>>(
      root.data(), m.n, m.h, m.w, cfg.nms_kernel / 2, cfg.root_threshold, keys.data());
  AMPKIT_CUDA_CHECK_LAUNCH();
  dk::topk_kernel<<<static_cast<unsigned>(N), dk::kTopkThreads, 0, ctx.stream()>>>(
      keys.data(), static_cast<int>(H * W), max_k, count, index, score);
  AMPKIT_CUDA_CHECK_LAUNCH();
  const float sx = static_cast<float>(input_w / static_cast<double>(W));
  const float sy = static_cast<float>(input_h / static_cast<double>(H));
  dk::pose_kernel<T><<<cuda::sampling::grid_for(N * max_k * K, kBlock), kBlock, 0, ctx.stream()>>>(
      m, max_k, sx, sy, count, index, pose);
  AMPKIT_CUDA_CHECK_LAUNCH();

  std::vector<std::uint32_t> host(n_words);
  AMPKIT_CUDA_CHECK(cudaMemcpyAsync(host.data(), res.data(), n_words * sizeof(std::uint32_t),
                                    cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();

  const auto word_i = [&](std::size_t w) { return static_cast<std::int32_t>(host[w]); };
  const auto word_f = [&](std::size_t w) { return std::bit_cast<float>(host[w]); };
  const auto Ku = static_cast<std::size_t>(K), ku = static_cast<std::size_t>(max_k);
  const std::size_t index_at = static_cast<std::size_t>(N),
                    score_at = index_at + static_cast<std::size_t>(N) * ku,
                    pose_at = score_at + static_cast<std::size_t>(N) * ku;
  for (std::size_t b = 0; b < static_cast<std::size_t>(N); ++b) {
    auto& c = out[b];
    const auto n = static_cast<std::size_t>(word_i(b));
    c.roots.resize(n);
    c.keypoints.resize(n * Ku * 2);
    c.heat.resize(n * Ku);
    for (std::size_t r = 0; r < n; ++r) {
      c.roots[r] = {word_i(index_at + b * ku + r), word_f(score_at + b * ku + r)};
      for (std::size_t k = 0; k < Ku; ++k) {
        const std::size_t p = pose_at + ((b * ku + r) * Ku + k) * 3;
        c.keypoints[(r * Ku + k) * 2] = word_f(p);
        c.keypoints[(r * Ku + k) * 2 + 1] = word_f(p + 1);
        c.heat[r * Ku + k] = word_f(p + 2);
      }
    }
  }
  return out;
}

/// Without flip test.
template <StorageScalar T>
std::vector<eval::DekrCandidates> dekr_candidates(Cuda& ctx, TensorView<const T> heatmaps,
                                                  TensorView<const T> displacements, double input_w,
                                                  double input_h, const eval::DekrDecodeConfig& cfg = {}) {
  return dekr_candidates<T>(ctx, heatmaps, displacements, {}, {}, input_w, input_h, cfg);
}

/// Full decode of a batch: the map work on the device, then rescoring (optional), pose NMS and
/// the mapping to image coordinates on the host, per image with its own transform (all images
/// of a batch share the input size).
template <StorageScalar T>
std::vector<std::vector<eval::DekrPose>> dekr_decode(Cuda& ctx, TensorView<const T> heatmaps,
                                                     TensorView<const T> displacements,
                                                     TensorView<const T> heatmaps_flip,
                                                     TensorView<const T> displacements_flip,
                                                     std::span<const eval::InputTransform> transforms,
                                                     const eval::DekrDecodeConfig& cfg = {},
                                                     const eval::RescoreNet* rescore = nullptr) {
  AMPKIT_CHECK(static_cast<std::int64_t>(transforms.size()) == heatmaps.shape.n,
               "dekr_decode (cuda): ", transforms.size(), " input transforms for a batch of ",
               heatmaps.shape.n);
  if (transforms.empty()) return {};
  for (const auto& tf : transforms)
    AMPKIT_CHECK(tf.input_w == transforms[0].input_w && tf.input_h == transforms[0].input_h,
                 "dekr_decode (cuda): the images of a batch must share the input size");
  const auto cands = dekr_candidates<T>(ctx, heatmaps, displacements, heatmaps_flip, displacements_flip,
                                        transforms[0].input_w, transforms[0].input_h, cfg);
  std::vector<std::vector<eval::DekrPose>> out;
  out.reserve(cands.size());
  for (std::size_t b = 0; b < cands.size(); ++b)
    out.push_back(eval::dekr_finish(cands[b], static_cast<std::size_t>(heatmaps.shape.c - 1), transforms[b],
                                    cfg, rescore));
  return out;
}

}  // namespace ampkit

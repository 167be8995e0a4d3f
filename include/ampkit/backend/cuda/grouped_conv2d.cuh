/// @brief Direct NHWC kernels for grouped Conv2d with few channels per group (DEKR's 17-group
/// 3x3 15->6 and 1x1 15->2 convs): forward (bias fused), backward data and backward filter.
/// conv2d.cuh dispatches here when grouped_conv_direct_ok() says the shape qualifies; cuDNN runs
/// everything else. Semantics and the gradient contract are nn/ops/conv2d.hpp's.
///
/// Why: cuDNN serves these shapes as 17 tiny GEMMs (K = 15 or 135, N = 6 or 2 per group) and
/// runs them several times slower than the bytes and FLOPs allow. Here a block owns one group
/// and one output tile: it stages the group's input patch (channels zero-padded to CIP, a
/// multiple of 8, in 16-byte chunks: [CIP/8][patch pixel][8]) and the group's weights (fp32,
/// [tap][c][k], zero-padded) in shared memory, and each thread accumulates P pixels x COP output
/// channels in fp32 registers. Zero padding means the inner loops have compile-time trip counts
/// and no guards. Warps read one group's weights (broadcast) and consecutive pixels' 16-byte
/// chunks (no bank conflicts at stride 1).
///
/// Backward data is the same kernel on dL_dy with the kernel flipped and channel roles swapped
/// (stride 1: dx[h] = sum_r dy[h + pad - r*dil] w[r] is a forward conv with offset
/// (R-1)*dil - pad). Backward filter: per block, fp32 sums over a fixed set of tiles, reduced
/// over the block's pixel slices in shared memory in a fixed order, written as per-block
/// partials; a second kernel sums the partials in block order and adds to dL_dw (+=, one
/// rounding to T). Every result is computed in a fixed order: deterministic run to run.
///
/// Only stride 1 qualifies (any padding and dilation); groups > 1, C/groups <= 32,
/// K/groups <= 32, shared memory within the device's opt-in limit.
///
/// Switch: cuda::conv_force_cudnn() = true (or env AMPKIT_CONV_FORCE_CUDNN=1 at first use) sends
/// every conv to cuDNN, the older path.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/packed_io.cuh"
#include "ampkit/core/env_choice.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/conv2d.hpp"

namespace ampkit {

namespace cuda {

/// Switch: true sends every conv to cuDNN (no direct grouped kernels). Default false; the
/// environment variable AMPKIT_CONV_FORCE_CUDNN=1 sets it at first use.
inline std::atomic<bool>& conv_force_cudnn() {
  static std::atomic<bool> on{env_choice("AMPKIT_CONV_FORCE_CUDNN", {{"1", true}, {"0", false}}, false, "0")};
  return on;
}

}  // namespace cuda

namespace cuda::detail {

inline constexpr int kGcThreads = 128;
inline constexpr int kGcTileW = 32;  ///< output tile width (one warp's consecutive pixels)

/// Pixels per thread for COP output channels per group: ~32 fp32 accumulators per thread.
template <int COP>
constexpr int gc_pixels() {
  return COP >= 32 ? 1 : (32 / COP > 8 ? 8 : 32 / COP);
}
inline int gc_pixels_rt(int cop) {
  return cop >= 32 ? 1 : std::min(8, 32 / cop);
}
/// Tile height: kGcThreads * P pixels in rows of kGcTileW.
inline int gc_tile_h(int cop) {
  return kGcThreads * gc_pixels_rt(cop) / kGcTileW;
}
inline int gc_pad_in(int c) {
  return c <= 8 ? 8 : c <= 16 ? 16 : 32;
}
inline int gc_pad_out(int k) {
  return k <= 2 ? 2 : k <= 8 ? 8 : k <= 16 ? 16 : 32;
}

/// One stride-1 direct launch: out(n, oh, ow, g*cout_g + k) = [bias] + sum_{r,s,c}
/// in(n, oh - off_h + r*dil_h, ow - off_w + s*dil_w, g*cin_g + c) * wt_g(r, s, c, k), taps outside
/// the input read zero.
struct GcGeom {
  int n, hi, wi, ci;  // input (N,Hi,Wi,Ci)
  int ho, wo, co;     // output (N,Ho,Wo,Co)
  int cin_g, cout_g, groups;
  int r, s, dil_h, dil_w, off_h, off_w;
  int th, ph, pw;  // tile height, patch height/width
  int tiles_h, tiles_w;
};

/// Stage the (n, group) input patch for the tile at (oh0, ow0): xs[c/8][py*pw + px][c%8], zero
/// outside the input and for c >= cin_g.
template <class N, int CIP>
__device__ __forceinline__ void gc_load_patch(const N* __restrict__ in, N* __restrict__ xs, const GcGeom& g,
                                              int n, int grp, int oh0, int ow0) {
  const int np = g.ph * g.pw;
  const int ih0 = oh0 - g.off_h, iw0 = ow0 - g.off_w;
  const N zero = from_float<N>(0.f);
  for (int i = threadIdx.x; i < np * CIP; i += kGcThreads) {
    const int c = i % CIP, pix = i / CIP;
    const int ih = ih0 + pix / g.pw, iw = iw0 + pix % g.pw;
    N v = zero;
    if (c < g.cin_g && ih >= 0 && ih < g.hi && iw >= 0 && iw < g.wi)
      v = in[((std::int64_t{n} * g.hi + ih) * g.wi + iw) * g.ci + grp * g.cin_g + c];
    xs[((c >> 3) * np + pix) * 8 + (c & 7)] = v;
  }
}

/// COP consecutive fp32 weights from shared memory (16- or 8-byte aligned by construction).
template <int COP>
__device__ __forceinline__ void gc_load_w(const float* p, float (&w)[COP]) {
  if constexpr (COP % 4 == 0) {
#pragma unroll
    for (int k = 0; k < COP; k += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + k);
      w[k] = q.x;
      w[k + 1] = q.y;
      w[k + 2] = q.z;
      w[k + 3] = q.w;
    }
  } else {
    static_assert(COP == 2);
    const float2 q = *reinterpret_cast<const float2*>(p);
    w[0] = q.x;
    w[1] = q.y;
  }
}

/// Forward (transposed = false: w is (K,R,S,C/groups), bias optional) or backward data
/// (transposed = true: `in` is dL_dy, `out` dL_dx, w the forward's weights read flipped with the
/// channel roles swapped, no bias). Output WRITTEN. grid (tiles_h*tiles_w, groups, N).
/// Dynamic shared memory: xs (CIP/8 * ph*pw * 8 of N), then ws (R*S*CIP*COP floats).
template <class N, int CIP, int COP>
__global__ void __launch_bounds__(kGcThreads)
    grouped_conv_direct(const N* __restrict__ in, const N* __restrict__ w, const N* __restrict__ bias,
                        N* __restrict__ out, GcGeom g, bool transposed) {
  constexpr int P = gc_pixels<COP>();
  extern __shared__ __align__(16) unsigned char ampkit_gc_smem[];
  const int np = g.ph * g.pw;
  N* xs = reinterpret_cast<N*>(ampkit_gc_smem);
  float* ws = reinterpret_cast<float*>(ampkit_gc_smem + sizeof(N) * (CIP / 8) * np * 8);
  const int grp = blockIdx.y, n = blockIdx.z;
  const int oh0 = (blockIdx.x / g.tiles_w) * g.th, ow0 = (blockIdx.x % g.tiles_w) * kGcTileW;
  const int RS = g.r * g.s;

  // Weights of this group as ws[tap][c][k] (fp32, zero-padded).
  for (int i = threadIdx.x; i < RS * CIP * COP; i += kGcThreads) {
    const int k = i % COP, c = (i / COP) % CIP, tap = i / (COP * CIP);
    float v = 0.f;
    if (c < g.cin_g && k < g.cout_g) {
      const int r = tap / g.s, s = tap % g.s;
      // forward: w[g*cout_g + k][r][s][c]; transposed: w[g*cin_g + c][R-1-r][S-1-s][k]
      const std::int64_t idx =
          transposed
              ? ((std::int64_t{grp * g.cin_g + c} * g.r + (g.r - 1 - r)) * g.s + (g.s - 1 - s)) * g.cout_g + k
              : ((std::int64_t{grp * g.cout_g + k} * g.r + r) * g.s + s) * g.cin_g + c;
      v = to_float(w[idx]);
    }
    ws[i] = v;
  }
  gc_load_patch<N, CIP>(in, xs, g, n, grp, oh0, ow0);
  __syncthreads();

  // Thread t owns pixels (t / 32 + 4j, t % 32) of the tile, j < P.
  const int ly = threadIdx.x / kGcTileW, lx = threadIdx.x % kGcTileW;
  constexpr int kRowsPerJ = kGcThreads / kGcTileW;
  float acc[P][COP];
#pragma unroll
  for (int k = 0; k < COP; ++k) {
    const float b = (bias != nullptr && k < g.cout_g) ? to_float(bias[grp * g.cout_g + k]) : 0.f;
#pragma unroll
    for (int j = 0; j < P; ++j) acc[j][k] = b;
  }
  for (int r = 0; r < g.r; ++r)
    for (int s = 0; s < g.s; ++s) {
      const int tap = r * g.s + s;
      const int base = (ly + r * g.dil_h) * g.pw + lx + s * g.dil_w;
#pragma unroll
      for (int q = 0; q < CIP / 8; ++q) {
        float xv[P][8];
#pragma unroll
        for (int j = 0; j < P; ++j) load_pack<N, 8>(xs + (q * np + base + j * kRowsPerJ * g.pw) * 8, xv[j]);
#pragma unroll
        for (int cc = 0; cc < 8; ++cc) {
          float wv[COP];
          gc_load_w<COP>(ws + (tap * CIP + q * 8 + cc) * COP, wv);
#pragma unroll
          for (int j = 0; j < P; ++j)
#pragma unroll
            for (int k = 0; k < COP; ++k) acc[j][k] = fmaf(xv[j][cc], wv[k], acc[j][k]);
        }
      }
    }
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int oh = oh0 + ly + j * kRowsPerJ, ow = ow0 + lx;
    if (oh < g.ho && ow < g.wo) {
      N* o = out + ((std::int64_t{n} * g.ho + oh) * g.wo + ow) * g.co + grp * g.cout_g;
#pragma unroll
      for (int k = 0; k < COP; ++k)
        if (k < g.cout_g) o[k] = from_float<N>(acc[j][k]);
    }
  }
}

/// Backward filter, per block: sums over the tiles blockIdx.x, blockIdx.x + gridDim.x, ... (all
/// images) for group blockIdx.y, written to partial[(blockIdx.x * groups + group) * E + e] with
/// E = R*S*CIP*COP, e = unit * (8*KC) + ci*KC + ki, unit = (tap*(CIP/8) + cchunk)*(COP/KC) + kchunk.
/// Thread t works on unit t % U over the pixel slice t / U (U units, NT/U slices, U <= NT).
/// Dynamic shared memory: max(xs + dys (tile pixels * COP floats), NT * 8*KC floats).
template <class N, int CIP, int COP>
__global__ void __launch_bounds__(kGcThreads)
    grouped_conv_wgrad_partial(const N* __restrict__ x, const N* __restrict__ dy, float* __restrict__ partial,
                               GcGeom g) {
  constexpr int KC = COP < 8 ? COP : 8, KCH = COP / KC, CCH = CIP / 8, ACC = 8 * KC;
  extern __shared__ __align__(16) unsigned char ampkit_gc_smem[];
  const int np = g.ph * g.pw, tp = g.th * kGcTileW;
  N* xs = reinterpret_cast<N*>(ampkit_gc_smem);
  float* dys = reinterpret_cast<float*>(ampkit_gc_smem + sizeof(N) * CCH * np * 8);
  const int grp = blockIdx.y;
  const int U = g.r * g.s * CCH * KCH, n_slices = kGcThreads / U;
  const int u = threadIdx.x % U, sl = threadIdx.x / U;
  const bool active = sl < n_slices;
  const int kch = u % KCH, cch = (u / KCH) % CCH, tap = u / (KCH * CCH);
  const int r = tap / g.s, s = tap % g.s;
  float acc[8][KC];
#pragma unroll
  for (int ci = 0; ci < 8; ++ci)
#pragma unroll
    for (int ki = 0; ki < KC; ++ki) acc[ci][ki] = 0.f;

  const int tiles_per_image = g.tiles_h * g.tiles_w;
  const int tiles = g.n * tiles_per_image;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int n = t / tiles_per_image, tt = t % tiles_per_image;
    const int oh0 = (tt / g.tiles_w) * g.th, ow0 = (tt % g.tiles_w) * kGcTileW;
    __syncthreads();  // the previous tile's reads are done
    gc_load_patch<N, CIP>(x, xs, g, n, grp, oh0, ow0);
    for (int i = threadIdx.x; i < tp * COP; i += kGcThreads) {
      const int k = i % COP, pix = i / COP;
      const int oh = oh0 + pix / kGcTileW, ow = ow0 + pix % kGcTileW;
      float v = 0.f;
      if (k < g.cout_g && oh < g.ho && ow < g.wo)
        v = to_float(dy[((std::int64_t{n} * g.ho + oh) * g.wo + ow) * g.co + grp * g.cout_g + k]);
      dys[i] = v;
    }
    __syncthreads();
    if (active) {
      for (int pix = sl; pix < tp; pix += n_slices) {
        const int ly = pix / kGcTileW, lx = pix % kGcTileW;
        float xv[8], dv[KC];
        load_pack<N, 8>(xs + (cch * np + (ly + r * g.dil_h) * g.pw + lx + s * g.dil_w) * 8, xv);
        gc_load_w<KC>(dys + pix * COP + kch * KC, dv);
#pragma unroll
        for (int ci = 0; ci < 8; ++ci)
#pragma unroll
          for (int ki = 0; ki < KC; ++ki) acc[ci][ki] = fmaf(xv[ci], dv[ki], acc[ci][ki]);
      }
    }
  }
  __syncthreads();  // reuse shared memory for the slice reduction
  float* red = reinterpret_cast<float*>(ampkit_gc_smem);
  if (active) {
#pragma unroll
    for (int ci = 0; ci < 8; ++ci)
#pragma unroll
      for (int ki = 0; ki < KC; ++ki) red[(sl * U + u) * ACC + ci * KC + ki] = acc[ci][ki];
  }
  __syncthreads();
  const int E = U * ACC;
  float* o = partial + (std::int64_t{blockIdx.x} * g.groups + grp) * E;
  for (int e = threadIdx.x; e < E; e += kGcThreads) {
    float sum = 0.f;
    for (int k = 0; k < n_slices; ++k) sum += red[k * E + e];  // fixed order
    o[e] = sum;
  }
}

/// dw[g*cout_g + k][r][s][c] += sum over blocks (in order) of the partials. One thread per entry.
template <class N>
__global__ void grouped_conv_wgrad_finalize(const float* __restrict__ partial, int n_blocks, GcGeom g, int cip,
                                            int cop, N* __restrict__ dw) {
  const int kc = cop < 8 ? cop : 8, kch_n = cop / kc, cch_n = cip / 8, acc_n = 8 * kc;
  const int E = g.r * g.s * cip * cop;
  const std::int64_t idx = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (idx >= std::int64_t{g.groups} * E) return;
  const int grp = static_cast<int>(idx / E), e = static_cast<int>(idx % E);
  const int unit = e / acc_n, a = e % acc_n;
  const int ci = a / kc, ki = a % kc;
  const int kch = unit % kch_n, cch = (unit / kch_n) % cch_n, tap = unit / (kch_n * cch_n);
  const int c = cch * 8 + ci, k = kch * kc + ki;
  if (c >= g.cin_g || k >= g.cout_g) return;
  float sum = 0.f;
  for (int b = 0; b < n_blocks; ++b) sum += partial[(std::int64_t{b} * g.groups + grp) * E + e];
  const int r = tap / g.s, s = tap % g.s;
  N* p = dw + ((std::int64_t{grp * g.cout_g + k} * g.r + r) * g.s + s) * g.cin_g + c;
  *p = from_float<N>(to_float(*p) + sum);
}

/// Geometry of the forward (or, transposed, backward data) launch for x (N,H,W,C), w (K,R,S,C/g).
inline GcGeom gc_geom(Shape x, Shape w, const Conv2dParams& p, bool transposed) {
  const Shape y = conv2d_output_shape(x, w, p);
  GcGeom g{};
  const int groups = static_cast<int>(p.groups);
  const int cg = static_cast<int>(x.c / p.groups), kg = static_cast<int>(w.n / p.groups);
  g.n = static_cast<int>(x.n);
  g.groups = groups;
  g.r = static_cast<int>(w.h);
  g.s = static_cast<int>(w.w);
  g.dil_h = static_cast<int>(p.dilation_h);
  g.dil_w = static_cast<int>(p.dilation_w);
  if (!transposed) {
    g.hi = static_cast<int>(x.h), g.wi = static_cast<int>(x.w), g.ci = static_cast<int>(x.c);
    g.ho = static_cast<int>(y.h), g.wo = static_cast<int>(y.w), g.co = static_cast<int>(y.c);
    g.cin_g = cg, g.cout_g = kg;
    g.off_h = static_cast<int>(p.pad_h), g.off_w = static_cast<int>(p.pad_w);
  } else {
    g.hi = static_cast<int>(y.h), g.wi = static_cast<int>(y.w), g.ci = static_cast<int>(y.c);
    g.ho = static_cast<int>(x.h), g.wo = static_cast<int>(x.w), g.co = static_cast<int>(x.c);
    g.cin_g = kg, g.cout_g = cg;
    g.off_h = static_cast<int>((w.h - 1) * p.dilation_h - p.pad_h);
    g.off_w = static_cast<int>((w.w - 1) * p.dilation_w - p.pad_w);
  }
  g.th = gc_tile_h(gc_pad_out(g.cout_g));
  g.ph = g.th + (g.r - 1) * g.dil_h;
  g.pw = kGcTileW + (g.s - 1) * g.dil_w;
  g.tiles_h = (g.ho + g.th - 1) / g.th;
  g.tiles_w = (g.wo + kGcTileW - 1) / kGcTileW;
  return g;
}

inline std::size_t gc_smem_direct(const GcGeom& g, std::size_t elem) {
  const int cip = gc_pad_in(g.cin_g), cop = gc_pad_out(g.cout_g);
  return elem * std::size_t(cip) * g.ph * g.pw + sizeof(float) * std::size_t(g.r) * g.s * cip * cop;
}
inline int gc_wgrad_units(const GcGeom& g) {
  const int cip = gc_pad_in(g.cin_g), cop = gc_pad_out(g.cout_g);
  return g.r * g.s * (cip / 8) * (cop / std::min(cop, 8));
}
inline std::size_t gc_smem_wgrad(const GcGeom& g, std::size_t elem) {
  const int cip = gc_pad_in(g.cin_g), cop = gc_pad_out(g.cout_g);
  const std::size_t tiles = elem * std::size_t(cip) * g.ph * g.pw + sizeof(float) * std::size_t(g.th) * kGcTileW * cop;
  const std::size_t red = sizeof(float) * kGcThreads * 8 * std::min(cop, 8);
  return std::max(tiles, red);
}

/// Largest dynamic shared memory a block may opt in to on the current device.
inline std::size_t gc_smem_limit(int device) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 48 * 1024;
  }
  return static_cast<std::size_t>(v);
}

/// Whether the direct kernels take conv(x, w, p) (all three directions, so a shape stays on one
/// path), given the storage element size.
inline bool grouped_conv_direct_ok(Shape x, Shape w, const Conv2dParams& p, std::size_t elem, int device) {
  if (conv_force_cudnn().load()) return false;
  if (p.groups <= 1 || p.stride_h != 1 || p.stride_w != 1) return false;
  if (x.c / p.groups > 32 || w.n / p.groups > 32) return false;
  if (p.groups > 65535 || x.n > 65535) return false;
  const Shape y = conv2d_output_shape(x, w, p);
  // int indexing of per-image offsets and tile counts
  if (x.h * x.w * x.c >= (std::int64_t{1} << 31) || y.h * y.w * y.c >= (std::int64_t{1} << 31)) return false;
  if (w.h * w.w > 64 || p.dilation_h > 8 || p.dilation_w > 8) return false;
  const GcGeom f = gc_geom(x, w, p, false), b = gc_geom(x, w, p, true);
  if (gc_wgrad_units(f) > kGcThreads) return false;
  if (std::int64_t{f.n} * f.tiles_h * f.tiles_w >= (std::int64_t{1} << 31)) return false;
  const std::size_t lim = std::min<std::size_t>(gc_smem_limit(device), 200 * 1024);
  return gc_smem_direct(f, elem) <= lim && gc_smem_direct(b, elem) <= lim && gc_smem_wgrad(f, elem) <= lim;
}

/// Call f.template operator()<CIP, COP>() for the padded per-group channel counts.
template <class F>
void gc_dispatch(int cip, int cop, F&& f) {
  auto with_cop = [&]<int CIP>() {
    switch (cop) {
      case 2: return f.template operator()<CIP, 2>();
      case 8: return f.template operator()<CIP, 8>();
      case 16: return f.template operator()<CIP, 16>();
      default: return f.template operator()<CIP, 32>();
    }
  };
  switch (cip) {
    case 8: return with_cop.template operator()<8>();
    case 16: return with_cop.template operator()<16>();
    default: return with_cop.template operator()<32>();
  }
}

template <class K>
void gc_set_smem(K kernel, std::size_t smem) {
  if (smem > 48 * 1024)
    AMPKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
}

template <StorageScalar T>
void gc_run_direct(const Cuda& ctx, const T* in, const T* w, const T* bias, T* out, const GcGeom& g,
                   bool transposed) {
  using N = native_t<T>;
  const std::size_t smem = gc_smem_direct(g, sizeof(T));
  gc_dispatch(gc_pad_in(g.cin_g), gc_pad_out(g.cout_g), [&]<int CIP, int COP>() {
    auto* kernel = &grouped_conv_direct<N, CIP, COP>;
    gc_set_smem(kernel, smem);
    const dim3 grid(static_cast<unsigned>(g.tiles_h * g.tiles_w), static_cast<unsigned>(g.groups),
                    static_cast<unsigned>(g.n));
    kernel<<<grid, kGcThreads, smem, ctx.stream()>>>(native(in), native(w), native(bias), native(out), g,
                                                     transposed);
    AMPKIT_CUDA_CHECK_LAUNCH();
  });
}

/// y = conv(x, w) + bias (bias may be null), WRITTEN.
template <StorageScalar T>
void grouped_conv_forward(const Cuda& ctx, TensorView<const T> x, TensorView<const T> w,
                          TensorView<const T> bias, TensorView<T> y, const Conv2dParams& p) {
  gc_run_direct<T>(ctx, x.data, w.data, bias.data, y.data, gc_geom(x.shape, w.shape, p, false), false);
}

/// dL_dx = conv_transpose(dL_dy, w), WRITTEN.
template <StorageScalar T>
void grouped_conv_backward_data(const Cuda& ctx, TensorView<const T> dL_dy, TensorView<const T> w,
                                TensorView<T> dL_dx, const Conv2dParams& p) {
  gc_run_direct<T>(ctx, dL_dy.data, w.data, nullptr, dL_dx.data, gc_geom(dL_dx.shape, w.shape, p, true), true);
}

/// dL_dw += sum over pixels of x-patch * dL_dy, deterministic.
template <StorageScalar T>
void grouped_conv_backward_filter(const Cuda& ctx, TensorView<const T> x, TensorView<const T> dL_dy,
                                  TensorView<T> dL_dw, const Conv2dParams& p) {
  using N = native_t<T>;
  const GcGeom g = gc_geom(x.shape, dL_dw.shape, p, false);
  const int cip = gc_pad_in(g.cin_g), cop = gc_pad_out(g.cout_g);
  const std::size_t smem = gc_smem_wgrad(g, sizeof(T));
  const std::int64_t tiles = std::int64_t{g.n} * g.tiles_h * g.tiles_w;
  const int E = g.r * g.s * cip * cop;
  gc_dispatch(cip, cop, [&]<int CIP, int COP>() {
    auto* kernel = &grouped_conv_wgrad_partial<N, CIP, COP>;
    gc_set_smem(kernel, smem);
    int per_sm = 0;
    AMPKIT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGcThreads, smem));
    // Enough blocks to fill the device once; each sums many tiles (few partials to merge).
    const std::int64_t want =
        std::max<std::int64_t>(1, std::int64_t{ctx.device().multiprocessors} * std::max(per_sm, 1) / g.groups);
    const int nb = static_cast<int>(std::clamp<std::int64_t>(want, 1, std::min<std::int64_t>(tiles, 65535)));
    auto ws = ctx.workspace(sizeof(float) * std::size_t(nb) * g.groups * E);
    float* partial = reinterpret_cast<float*>(ws.data());
    kernel<<<dim3(static_cast<unsigned>(nb), static_cast<unsigned>(g.groups)), kGcThreads, smem, ctx.stream()>>>(
        native(x.data), native(dL_dy.data), partial, g);
    AMPKIT_CUDA_CHECK_LAUNCH();
    const std::int64_t entries = std::int64_t{g.groups} * E;
    grouped_conv_wgrad_finalize<N><<<static_cast<unsigned>((entries + 255) / 256), 256, 0, ctx.stream()>>>(
        partial, nb, g, cip, cop, native(dL_dw.data));
    AMPKIT_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda::detail
}  // namespace ampkit

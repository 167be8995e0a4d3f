/// @brief CUDA backend: deformable convolution (torchvision `deform_conv2d` semantics, no mask),
/// forward and backward w.r.t. input, offsets and weights. Layouts and the sampling rule are in
/// nn/ops/deform_conv2d.hpp.
///
/// Structure (per chunk of images, so scratch stays bounded; DEKR-W32 at batch 32 uses 2 images
/// per chunk):
///   forward   im2col: bilinear samples into a storage-type column matrix (rows = output pixels,
///             columns = [group][tap][channel]) → one strided-batched GEMM over the groups on
///             tensor cores (cuBLAS, fp32 accumulation) writing y in NHWC directly.
///   backward  im2col again → dL_dw += col^T·dL_dy (fp32 scratch, accumulated over chunks, added
///             to dL_dw once at the end so T-rounding happens once) → dcol = W·dL_dy (fp32) →
///             one fused kernel per chunk that scatters dcol to dL_dx (fp32 atomics into scratch;
///             the sample points are data-dependent, so a gather has no bounded source set) and
///             reduces the offset gradients in registers + warp shuffles (no atomics).
/// Why fp32 for dcol and the input-gradient scratch: the scatter sums up to taps·K/groups terms
/// per input element and the offset gradient is a difference of corner values; rounding those to
/// fp16 first would cost ~3 bits against torchvision's fp32 reference. The forward column matrix
/// is in the storage type because it is a GEMM operand (tensor cores) and holds interpolated
/// storage values.
///
/// Threads of the two sampling kernels are arranged as L lanes per (output pixel, offset group),
/// L = min(32, next power of two ≥ C/offset_groups): the lanes walk the contiguous channels of the
/// group (coalesced NHWC reads, contiguous column writes) and share one sample point per tap.
///
/// Fused path (DeformConvAlgo::kFused, the default when the shape qualifies: groups =
/// offset_groups, C/groups <= 32, K/groups <= 32; DEKR's 3×3, 17 groups of 15 channels). The
/// column matrix above is 9× the input (2.4 GB at DEKR batch 32) and the per-group GEMMs are tiny
/// (K = 135, N = 15), so the op is bound by memory traffic and badly shaped GEMMs, not by FLOPs
/// (36 GFLOP forward). The fused kernels never materialise columns:
///   forward   one block per (group, pixel chunk), the group's weights in shared memory (fp32,
///             [tap][c][k], rows padded by 4 floats so 16-byte reads of 8 lanes hit distinct
///             banks). P = next power of two >= max(C/g, K/g) lanes per pixel, lane = input
///             channel: each lane samples its channel at every tap and accumulates
///             W[k][t][c]·sample for all k in registers, then a butterfly reduce-scatter over the
///             P lanes leaves output channel k on lane k (P - 1 shuffles, no shared memory).
///   backward  one block per (group, tap, pixel chunk), so a lane keeps its column of W[:, t, c]
///             in registers and its share of dW[:, t, c] as P²/32 accumulators: per pixel
///             dcol = W^T·dL_dy (dL_dy broadcast through 32 floats of shared memory per warp), the
///             offset gradient reduced over the P lanes by shuffles (written, no atomics), dL_dx
///             scattered with fp32 atomics into scratch (order-dependent rounding: dL_dx is not
///             bitwise deterministic, as in torchvision), dW accumulated in registers, summed over
///             the block's warps in shared memory and written as one partial per block; a final
///             kernel adds the partials in a fixed order (dL_dw is deterministic).
/// Samples are never rounded to T in the fused path (the product is in fp32 FMAs).
///
/// Tensor-core path (DeformConvAlgo::kMma, fp16/bf16, at most 16 channels and filters per group,
/// compute capability 8.0+; what kAuto runs there since its backward was reworked: fp16 batch 32
/// at the DEKR-W32 head shape, forward 7.42 -> 6.52 ms and forward+backward 27.4 -> 22.6 ms
/// against kFused, bench/results/gpu_h200_20261201_0543.md): the same two kernels with the
/// per-group products as mma.sync m16n8k16 on 16-pixel tiles (forward: the samples of a tile and
/// tap are one A fragment built in registers; backward: dcol = dL_dy·W_t staged in shared memory,
/// sampling, scatter and offset gradients in kFused's layout, dW_t += dL_dyᵀ·col with the
/// samples read back from shared memory as B fragments).
///
/// Gradient contract: dL_dx and dL_doffsets are written (=); dL_dw is accumulated (+=).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/sampling_common.cuh"
#include "ampkit/backend/cuda/sanitizer_marks.cuh"
#include "ampkit/core/env_choice.hpp"
#include "ampkit/nn/ops/deform_conv2d.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {
namespace cuda::sampling {

/// Scratch budget of one deform_conv2d call (default 768 MiB); chunks of whole images are sized to
/// fit it (at least one image per chunk). Tests lower it to exercise several chunks.
inline std::size_t& deform_workspace_bytes() {
  static std::size_t bytes = std::size_t{768} << 20;
  return bytes;
}

/// Everything a sampling kernel needs to index a chunk; plain ints (every extent fits).
struct DeformGeom {
  int h, w, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw;
  int taps, groups, c_per_group, offset_groups, c_per_offset_group;
  int lanes_log2;  // L = 1 << lanes_log2 lanes per (pixel, offset group)
  int col_group_stride;  // taps·C/groups rounded up to 8 elements: 16-byte aligned GEMM operands
  std::int64_t rows;  // output pixels in the chunk

  __host__ __device__ std::int64_t ld_col() const { return std::int64_t(groups) * col_group_stride; }
};

inline DeformGeom make_geom(Shape x, Shape y, const DeformConv2dParams& p, std::int64_t images) {
  DeformGeom g{};
  g.h = int(x.h), g.w = int(x.w), g.c = int(x.c), g.ho = int(y.h), g.wo = int(y.w);
  g.kh = p.kernel_h, g.kw = p.kernel_w, g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.pad_h, g.pw = p.pad_w;
  g.dh = p.dilation_h, g.dw = p.dilation_w, g.taps = p.taps(), g.groups = p.groups;
  g.c_per_group = int(x.c / p.groups), g.offset_groups = p.offset_groups;
  g.c_per_offset_group = int(x.c / p.offset_groups);
  int l = 0;
  while ((1 << l) < g.c_per_offset_group && l < 5) ++l;
  g.lanes_log2 = l;
  g.col_group_stride = (g.taps * g.c_per_group + 7) / 8 * 8;
  g.rows = images * y.h * y.w;
  return g;
}

/// Sample point of tap t of output row `row` for offset group og (offsets of the chunk).
template <class T>
__device__ __forceinline__ ::ampkit::detail::BilinearPoint<float> sample_point(const DeformGeom& g, const T* off,
                                                                    std::int64_t row, int og, int t) {
  const int ow = int(row % g.wo), oh = int((row / g.wo) % g.ho);
  const int i = t / g.kw, j = t % g.kw;
  const T* o = off + row * (2 * g.offset_groups * g.taps) + (og * g.taps + t) * 2;
  const float py = float(oh * g.sh - g.ph + i * g.dh) + load_f(o);
  const float px = float(ow * g.sw - g.pw + j * g.dw) + load_f(o + 1);
  return ::ampkit::detail::BilinearPoint<float>(py, px, g.h, g.w);
}

/// col[row][grp·stride + t·Cg + cg] = bilinear sample of channel grp·Cg + cg at tap t.  x: the chunk's images.
template <class T>
__global__ void deform_im2col_kernel(const T* __restrict__ x, const T* __restrict__ off, T* __restrict__ col,
                                     DeformGeom g) {
  const int lanes = 1 << g.lanes_log2;
  const std::int64_t units = g.rows * g.offset_groups;
  for (std::int64_t tid = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; tid < units * lanes;
       tid += std::int64_t(gridDim.x) * blockDim.x) {
    const int lane = int(tid & (lanes - 1));
    const std::int64_t unit = tid >> g.lanes_log2, row = unit / g.offset_groups;
    const int og = int(unit % g.offset_groups);
    const std::int64_t n = row / (std::int64_t(g.ho) * g.wo);
    const T* xn = x + n * g.h * std::int64_t(g.w) * g.c;
    T* crow = col + row * g.ld_col();
    for (int t = 0; t < g.taps; ++t) {
      const auto b = sample_point(g, off, row, og, t);
      const float hy = 1.f - b.ly, hx = 1.f - b.lx;
      for (int cc = lane; cc < g.c_per_offset_group; cc += lanes) {
        const int c = og * g.c_per_offset_group + cc;
        float v = 0.f;
        if (b.in_range) {
          const T* p = xn + (std::int64_t(b.y0) * g.w + b.x0) * g.c + c;
          if (b.v00) v += hy * hx * load_f(p);
          if (b.v01) v += hy * b.lx * load_f(p + g.c);
          if (b.v10) v += b.ly * hx * load_f(p + std::int64_t(g.w) * g.c);
          if (b.v11) v += b.ly * b.lx * load_f(p + std::int64_t(g.w + 1) * g.c);
        }
        const int grp = c / g.c_per_group, cg = c % g.c_per_group;
        store_f(crow + grp * g.col_group_stride + t * g.c_per_group + cg, v);
      }
    }
  }
}

/// Backward of the sampling: scatter dcol into dx32 (fp32, the chunk's images) and write the
/// offset gradients (torchvision's col2im + col2im_coord, fused). dcol has im2col's layout.
template <class T>
__global__ void deform_col2im_kernel(const T* __restrict__ x, const T* __restrict__ off,
                                     const float* __restrict__ dcol, float* __restrict__ dx32, T* __restrict__ doff,
                                     DeformGeom g) {
  const int lanes = 1 << g.lanes_log2;
  const std::int64_t units = g.rows * g.offset_groups;
  const std::int64_t total = (units * lanes + 31) / 32 * 32;  // whole warps: every lane reaches the shuffles
  for (std::int64_t tid = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; tid < total;
       tid += std::int64_t(gridDim.x) * blockDim.x) {
    const int lane = int(tid & (lanes - 1));
    const std::int64_t unit = tid >> g.lanes_log2;
    const bool active = unit < units;
    const std::int64_t row = active ? unit / g.offset_groups : 0;
    const int og = active ? int(unit % g.offset_groups) : 0;
    const std::int64_t n = row / (std::int64_t(g.ho) * g.wo);
    const T* xn = x + n * g.h * std::int64_t(g.w) * g.c;
    float* dxn = dx32 + n * g.h * std::int64_t(g.w) * g.c;
    const float* drow = dcol + row * g.ld_col();
    for (int t = 0; t < g.taps; ++t) {
      const auto b = sample_point(g, off, row, og, t);
      const float hy = 1.f - b.ly, hx = 1.f - b.lx;
      float g_dy = 0.f, g_dx = 0.f;
      if (active) {
        for (int cc = lane; cc < g.c_per_offset_group; cc += lanes) {
          const int c = og * g.c_per_offset_group + cc;
          const int grp = c / g.c_per_group, cg = c % g.c_per_group;
          const float gc = drow[grp * g.col_group_stride + t * g.c_per_group + cg];
          const std::int64_t base = (std::int64_t(b.y0) * g.w + b.x0) * g.c + c;
          const std::int64_t down = std::int64_t(g.w) * g.c;
          const float v00 = b.v00 ? load_f(xn + base) : 0.f;
          const float v01 = b.v01 ? load_f(xn + base + g.c) : 0.f;
          const float v10 = b.v10 ? load_f(xn + base + down) : 0.f;
          const float v11 = b.v11 ? load_f(xn + base + down + g.c) : 0.f;
          g_dy += gc * (hx * (v10 - v00) + b.lx * (v11 - v01));
          g_dx += gc * (hy * (v01 - v00) + b.ly * (v11 - v10));
          if (b.v00) atomicAdd(dxn + base, hy * hx * gc);
          if (b.v01) atomicAdd(dxn + base + g.c, hy * b.lx * gc);
          if (b.v10) atomicAdd(dxn + base + down, b.ly * hx * gc);
          if (b.v11) atomicAdd(dxn + base + down + g.c, b.ly * b.lx * gc);
        }
      }
      // Reduce over the L lanes of this unit (they are consecutive lanes of one warp).
      for (int s = lanes / 2; s > 0; s /= 2) {
        g_dy += __shfl_xor_sync(0xffffffffu, g_dy, s, lanes);
        g_dx += __shfl_xor_sync(0xffffffffu, g_dx, s, lanes);
      }
      if (active && lane == 0) {
        T* o = doff + row * (2 * g.offset_groups * g.taps) + (og * g.taps + t) * 2;
        store_f(o, g_dy);
        store_f(o + 1, g_dx);
      }
    }
  }
}

/// dst[i] = src[i] (fp32 -> T), or dst[i] += src[i] when accumulate.
template <class T>
__global__ void store_f32_kernel(const float* __restrict__ src, T* __restrict__ dst, std::int64_t n, bool accumulate) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    store_f(dst + i, accumulate ? load_f(dst + i) + src[i] : src[i]);
}

/// Blocks for the sampling kernels: enough warps to cover every (pixel, group) unit once.
inline unsigned sampling_grid(const DeformGeom& g, int block) {
  return grid_for(g.rows * g.offset_groups * (std::int64_t(1) << g.lanes_log2), block);
}

template <class T>
void im2col(Cuda& ctx, const T* x, const T* off, T* col, const DeformGeom& g) {
  deform_im2col_kernel<T><<<sampling_grid(g, 256), 256, 0, ctx.stream()>>>(x, off, col, g);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// C[grp] = op(A[grp]) · op(B[grp]) for every group, column-major cuBLAS view of our row-major
/// NHWC matrices, fp32 accumulation (CUBLAS_COMPUTE_32F: no TF32 for fp32 storage).
inline void gemm_groups(Cuda& ctx, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k,
                        const void* a, cudaDataType_t ta, int lda, long long stride_a, const void* b,
                        cudaDataType_t tb, int ldb, long long stride_b, float beta, void* c, cudaDataType_t tc,
                        int ldc, long long stride_c, int batch) {
  const float alpha = 1.f;
  AMPKIT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.cublas(), op_a, op_b, m, n, k, &alpha, a, ta, lda, stride_a, b,
                                                 tb, ldb, stride_b, &beta, c, tc, ldc, stride_c, batch,
                                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  // cuBLAS's output (column-major m x n per group, groups stride_c apart): initcheck may not see
  // its stores (sanitizer_marks.cuh).
  const std::size_t elems = static_cast<std::size_t>(stride_c) * static_cast<std::size_t>(batch - 1) +
                            static_cast<std::size_t>(ldc) * static_cast<std::size_t>(n - 1) + static_cast<std::size_t>(m);
  mark_initialized(ctx.stream(), c, elems * (tc == CUDA_R_32F ? 4 : 2));
}

inline std::int64_t images_per_chunk(std::int64_t n_images, std::size_t bytes_per_image) {
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(deform_workspace_bytes() / std::max<std::size_t>(bytes_per_image, 1)),
                                  1, std::max<std::int64_t>(n_images, 1));
}


// ---------------------------------------------------------------------------------------------
// Fused path
// ---------------------------------------------------------------------------------------------

/// Which implementation the CUDA deform_conv2d runs.
enum class DeformConvAlgo {
  kAuto,    ///< fp16/bf16 on compute capability 8.0+: kMma where deform_mma_supported(); then
            ///< kFused where deform_fused_supported(); otherwise kIm2col
  kFused,   ///< fused sampling + per-group product (no column matrix); an unsupported shape is an error
  kIm2col,  ///< column matrix + cuBLAS batched GEMM; any configuration
  kMma,     ///< fp16/bf16: the fused kernels with the per-group products on tensor cores (mma.sync,
            ///< samples rounded to the storage type as in kIm2col); at most 16 channels and 16
            ///< filters per group, compute capability 8.0+; fp32 storage runs kFused
};

/// The algorithm every deform_conv2d call uses (process-wide switch). Starts from the environment
/// variable AMPKIT_DEFORM_CONV_ALGO (auto | fused | im2col | mma; unset = auto), so a path can be
/// chosen without rebuilding; tests and the benchmark set it directly.
inline DeformConvAlgo& deform_conv_algo() {
  static DeformConvAlgo algo = env_choice(
      "AMPKIT_DEFORM_CONV_ALGO",
      {{"auto", DeformConvAlgo::kAuto},
       {"fused", DeformConvAlgo::kFused},
       {"im2col", DeformConvAlgo::kIm2col},
       {"mma", DeformConvAlgo::kMma}},
      DeformConvAlgo::kAuto, "auto");
  return algo;
}

/// Output pixels one fused block walks (forward and backward); tests lower it to get many blocks,
/// partial tiles and many dW partials. 4096 gives DEKR batch 32 128 chunks per group.
inline int& deform_fused_pixels_per_block() {
  static int pixels = 4096;
  return pixels;
}

inline constexpr int kFusedWarps = 8;
inline constexpr int kFusedThreads = kFusedWarps * 32;

/// Lanes per pixel (and padded channels/filters per group) of the fused kernels: 8, 16 or 32.
inline int fused_lanes(std::int64_t c_per_group, std::int64_t k_per_group) {
  return std::max<int>(8, static_cast<int>(std::bit_ceil(static_cast<std::uint64_t>(std::max(c_per_group, k_per_group)))));
}

/// Dynamic shared memory of the fused forward: weights [taps][P][P+4] fp32 + per-warp sample points.
inline std::size_t fused_forward_smem(int lanes, int taps) {
  const int pixels_per_lane = lanes >= 32 ? 1 : 2, units = 32 / lanes;
  return std::size_t(taps) * lanes * (lanes + 4) * sizeof(float) +
         std::size_t(kFusedWarps) * pixels_per_lane * units * taps * 16;
}

inline constexpr std::size_t kFusedMaxSmem = 96 * 1024;

/// True when the fused kernels handle this configuration (any kernel size, stride, padding,
/// dilation; groups = offset_groups; at most 32 input and 32 output channels per group).
inline bool deform_fused_supported(Shape x, std::int64_t k_out, const DeformConv2dParams& p) {
  if (p.offset_groups != p.groups) return false;
  const std::int64_t cg = x.c / p.groups, kg = k_out / p.groups;
  if (cg < 1 || kg < 1 || cg > 32 || kg > 32) return false;
  return fused_forward_smem(fused_lanes(cg, kg), p.taps()) <= kFusedMaxSmem;
}

/// Whether this call runs the fused path; kFused on an unsupported shape is an error naming it.
/// (kMma calls with fp32 storage reach here: they run kFused's rules.)
inline bool use_fused(Shape x, std::int64_t k_out, const DeformConv2dParams& p) {
  const DeformConvAlgo a = deform_conv_algo();
  if (a == DeformConvAlgo::kIm2col) return false;
  const bool ok = deform_fused_supported(x, k_out, p);
  AMPKIT_CHECK(ok || a == DeformConvAlgo::kAuto, "deform_conv2d: DeformConvAlgo::kFused needs groups == "
               "offset_groups and at most 32 channels and 32 filters per group; given input ", x, ", ", k_out,
               " filters, groups ", p.groups, ", offset_groups ", p.offset_groups, ", kernel ", p.kernel_h, "x",
               p.kernel_w);
  return ok;
}

/// Dynamic shared memory of the tensor-core forward: per-warp sample points [warps][taps][16]
/// (float4) + the group's weights [taps][16 filters][kMmaRow] in the storage type.
inline constexpr int kMmaRow = 24;  // 16 channels + 8 pad: the B-fragment loads hit distinct banks
inline std::size_t mma_forward_smem(int taps) {
  return std::size_t(kFusedWarps) * taps * 16 * 16 + std::size_t(taps) * 16 * kMmaRow * 2;
}

/// True when the tensor-core kernels handle this shape: groups = offset_groups, at most 16 input
/// channels and 16 filters per group (one m16n8k16 K-step per tap, two n-tiles), shared memory
/// within kFusedMaxSmem. The storage type and the device are checked by use_mma.
inline bool deform_mma_supported(Shape x, std::int64_t k_out, const DeformConv2dParams& p) {
  if (p.offset_groups != p.groups) return false;
  const std::int64_t cg = x.c / p.groups, kg = k_out / p.groups;
  return cg >= 1 && kg >= 1 && cg <= 16 && kg <= 16 && mma_forward_smem(p.taps()) <= kFusedMaxSmem;
}

/// Whether this call runs the tensor-core kernels: fp16/bf16 storage under DeformConvAlgo::kMma,
/// or under kAuto where the shape and the device allow. Under kMma an unsupported shape or a
/// device below compute capability 8.0 is an error saying what to use.
template <class T>
bool use_mma(const Cuda& ctx, Shape x, std::int64_t k_out, const DeformConv2dParams& p) {
  if constexpr (std::is_same_v<T, float>) return false;
  const DeformConvAlgo a = deform_conv_algo();
  if (a == DeformConvAlgo::kAuto) return ctx.device().cc_major >= 8 && deform_mma_supported(x, k_out, p);
  if (a != DeformConvAlgo::kMma) return false;
  AMPKIT_CHECK(deform_mma_supported(x, k_out, p), "deform_conv2d: DeformConvAlgo::kMma needs groups == "
               "offset_groups and at most 16 channels and 16 filters per group; given input ", x, ", ", k_out,
               " filters, groups ", p.groups, ", offset_groups ", p.offset_groups, ", kernel ", p.kernel_h, "x",
               p.kernel_w, ". Use AMPKIT_DEFORM_CONV_ALGO=auto (fused or im2col)");
  AMPKIT_CHECK(ctx.device().cc_major >= 8, "deform_conv2d: DeformConvAlgo::kMma needs compute capability 8.0 "
               "(mma.sync m16n8k16); this GPU has ", ctx.device().cc_major, ".", ctx.device().cc_minor,
               ". Use AMPKIT_DEFORM_CONV_ALGO=auto");
  return true;
}

/// Geometry of one fused launch (a chunk of whole images).
struct FusedGeom {
  int h, w, c, k, ho, wo, kw, sh, sw, ph, pw, dh, dw;
  int taps, groups, cg, kg;      // cg/kg: input channels / filters per group
  std::int64_t pixels;           // output pixels of the chunk (images · Ho · Wo)
  int pixels_per_block;
};

inline FusedGeom make_fused_geom(Shape x, Shape y, const DeformConv2dParams& p, std::int64_t images,
                                 std::int64_t& blocks) {
  FusedGeom g{};
  g.h = int(x.h), g.w = int(x.w), g.c = int(x.c), g.k = int(y.c), g.ho = int(y.h), g.wo = int(y.w);
  g.kw = p.kernel_w, g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.pad_h, g.pw = p.pad_w;
  g.dh = p.dilation_h, g.dw = p.dilation_w, g.taps = p.taps(), g.groups = p.groups;
  g.cg = int(x.c / p.groups), g.kg = int(y.c / p.groups);
  g.pixels = images * y.h * y.w;
  // Grid y/z hold the chunk index: at most 65535 chunks.
  const std::int64_t ppb = std::max<std::int64_t>({1, deform_fused_pixels_per_block(), (g.pixels + 65534) / 65535});
  g.pixels_per_block = int(ppb);
  blocks = (g.pixels + ppb - 1) / ppb;
  return g;
}

/// Sample point of tap t of output pixel `pix` (chunk-relative) for group grp, packed as
/// {ly, lx, y0 bits, x0 bits}; the corners' validity is recomputed from y0/x0 (the sentinel -4
/// of BilinearPoint for far-away points makes every corner invalid).
template <class T>
__device__ __forceinline__ float4 fused_sample_point(const FusedGeom& g, const T* __restrict__ off, std::int64_t pix,
                                                     int grp, int t) {
  const int ow = int(pix % g.wo), oh = int((pix / g.wo) % g.ho);
  const int i = t / g.kw, j = t - i * g.kw;
  const T* o = off + pix * (2 * g.groups * g.taps) + (grp * g.taps + t) * 2;
  const float py = float(oh * g.sh - g.ph + i * g.dh) + load_f(o);
  const float px = float(ow * g.sw - g.pw + j * g.dw) + load_f(o + 1);
  const ::ampkit::detail::BilinearPoint<float> b(py, px, g.h, g.w);
  return make_float4(b.ly, b.lx, __int_as_float(b.y0), __int_as_float(b.x0));
}

/// The four corner values of one channel (0 outside the image). xc: image base + channel.
struct Corners {
  float v00, v01, v10, v11;
};

template <class T>
__device__ __forceinline__ Corners fused_corners(const T* __restrict__ xc, int y0, int x0, const FusedGeom& g) {
  const bool ya = unsigned(y0) < unsigned(g.h), yb = unsigned(y0 + 1) < unsigned(g.h);
  const bool xa = unsigned(x0) < unsigned(g.w), xb = unsigned(x0 + 1) < unsigned(g.w);
  const std::int64_t p = (std::int64_t(y0) * g.w + x0) * g.c, right = g.c, down = std::int64_t(g.w) * g.c;
  Corners r;
  r.v00 = ya && xa ? load_f(xc + p) : 0.f;
  r.v01 = ya && xb ? load_f(xc + p + right) : 0.f;
  r.v10 = yb && xa ? load_f(xc + p + down) : 0.f;
  r.v11 = yb && xb ? load_f(xc + p + down + right) : 0.f;
  return r;
}

/// One channel's part of the backward at one sample point s (fused_sample_point's packing) with
/// column gradient dc: returns the sample, adds the channel's offset-gradient terms to g_dy / g_dx
/// and scatters dc into the four corners of dxc (fp32 atomics). xc / dxc: image base + channel.
/// Shared by the fused and the tensor-core backward, which differ only in where dc comes from.
template <class T>
__device__ __forceinline__ float backward_sample_scatter(const T* __restrict__ xc, float* __restrict__ dxc, float4 s,
                                                         float dc, const FusedGeom& g, float& g_dy, float& g_dx) {
  const int y0 = __float_as_int(s.z), x0 = __float_as_int(s.w);
  const float ly = s.x, lx = s.y, hy = 1.f - ly, hx = 1.f - lx;
  const Corners q = fused_corners(xc, y0, x0, g);
  const float col = hy * hx * q.v00 + hy * lx * q.v01 + ly * hx * q.v10 + ly * lx * q.v11;
  g_dy = dc * (hx * (q.v10 - q.v00) + lx * (q.v11 - q.v01));
  g_dx = dc * (hy * (q.v01 - q.v00) + ly * (q.v11 - q.v10));
  const bool ya = unsigned(y0) < unsigned(g.h), yb = unsigned(y0 + 1) < unsigned(g.h);
  const bool xa = unsigned(x0) < unsigned(g.w), xb = unsigned(x0 + 1) < unsigned(g.w);
  const std::int64_t p = (std::int64_t(y0) * g.w + x0) * g.c, down = std::int64_t(g.w) * g.c;
  if (ya && xa) atomicAdd(dxc + p, hy * hx * dc);
  if (ya && xb) atomicAdd(dxc + p + g.c, hy * lx * dc);
  if (yb && xa) atomicAdd(dxc + p + down, ly * hx * dc);
  if (yb && xb) atomicAdd(dxc + p + down + g.c, ly * lx * dc);
  return col;
}

/// Butterfly reduce-scatter over the N lanes of an aligned lane group, N values per lane: after it
/// v[0] on lane l holds the group's sum of value (l mod N). Each step halves the values a lane
/// holds: it keeps the half selected by its lane bit and adds the partner's copy of that half.
template <int N>
__device__ __forceinline__ void reduce_scatter(float* v, int lane) {
  if constexpr (N > 1) {
    constexpr int H = N / 2;
    const bool upper = (lane & H) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const float keep = upper ? v[i + H] : v[i];
      const float send = upper ? v[i] : v[i + H];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, H);
    }
    reduce_scatter<H>(v, lane);
  }
}

/// Fused forward. Grid (groups, pixel chunks), kFusedThreads threads, fused_forward_smem bytes.
/// Lane (u, c) of a warp: pixel slot u (U = 32/P per pass, R passes interleaved per lane for
/// independent loads and to reuse each weight read), input channel c of the group.
template <class T, int P>
__global__ void __launch_bounds__(kFusedThreads) deform_fused_forward_kernel(const T* __restrict__ x,
                                                                            const T* __restrict__ off,
                                                                            const T* __restrict__ wt,
                                                                            T* __restrict__ y, FusedGeom g) {
  constexpr int U = 32 / P, R = P >= 32 ? 1 : 2, kRow = P + 4;
  extern __shared__ float4 fused_smem[];
  float* ws = reinterpret_cast<float*>(fused_smem);  // [taps][P][kRow]: ws[t][c][k] = W[grp·kg + k][t][c]
  float4* info = fused_smem + g.taps * P * kRow / 4;  // [warps][R·U][taps] sample points
  const int grp = blockIdx.x;
  for (int e = threadIdx.x; e < g.taps * P * kRow; e += blockDim.x) {
    const int k = e % kRow, c = (e / kRow) % P, t = e / (kRow * P);
    ws[e] = k < g.kg && c < g.cg ? load_f(wt + (std::int64_t(grp * g.kg + k) * g.taps + t) * g.cg + c) : 0.f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, u = lane / P, c = lane % P;
  float4* winfo = info + warp * (R * U) * g.taps;
  const std::int64_t pix_begin = std::int64_t(blockIdx.y) * g.pixels_per_block;
  const std::int64_t pix_end = ::min(pix_begin + std::int64_t(g.pixels_per_block), g.pixels);
  const std::int64_t image_pixels = std::int64_t(g.ho) * g.wo, image_elems = std::int64_t(g.h) * g.w * g.c;
  // The loop condition depends on the warp only: all 32 lanes reach every shuffle.
  for (std::int64_t base = pix_begin + warp * (R * U); base < pix_end; base += kFusedWarps * (R * U)) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const std::int64_t pix = base + r * U + u;
      if (pix < pix_end)
        for (int t = c; t < g.taps; t += P) winfo[(r * U + u) * g.taps + t] = fused_sample_point(g, off, pix, grp, t);
    }
    __syncwarp();
    const T* xc[R];
    bool live[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const std::int64_t pix = base + r * U + u;
      live[r] = pix < pix_end && c < g.cg;
      xc[r] = x + (live[r] ? pix / image_pixels : 0) * image_elems + grp * g.cg + c;
    }
    float acc[R][P];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int k = 0; k < P; ++k) acc[r][k] = 0.f;
    for (int t = 0; t < g.taps; ++t) {
      float v[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        v[r] = 0.f;
        if (live[r]) {
          const float4 s = winfo[(r * U + u) * g.taps + t];
          const Corners q = fused_corners(xc[r], __float_as_int(s.z), __float_as_int(s.w), g);
          const float ly = s.x, lx = s.y, hy = 1.f - ly, hx = 1.f - lx;
          // Same terms and order as the host reference's forward sample.
          v[r] = hy * hx * q.v00 + hy * lx * q.v01 + ly * hx * q.v10 + ly * lx * q.v11;
        }
      }
      const float4* wrow = reinterpret_cast<const float4*>(ws + (t * P + c) * kRow);
#pragma unroll
      for (int k4 = 0; k4 < P / 4; ++k4) {
        const float4 w4 = wrow[k4];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[r][4 * k4 + 0] = fmaf(w4.x, v[r], acc[r][4 * k4 + 0]);
          acc[r][4 * k4 + 1] = fmaf(w4.y, v[r], acc[r][4 * k4 + 1]);
          acc[r][4 * k4 + 2] = fmaf(w4.z, v[r], acc[r][4 * k4 + 2]);
          acc[r][4 * k4 + 3] = fmaf(w4.w, v[r], acc[r][4 * k4 + 3]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      reduce_scatter<P>(acc[r], lane);  // lane (u, k) now holds output channel k of pixel slot (r, u)
      const std::int64_t pix = base + r * U + u;
      if (pix < pix_end && c < g.kg) store_f(y + pix * g.k + grp * g.kg + c, acc[r][0]);
    }
    __syncwarp();  // every lane is done reading winfo before the next pass overwrites it
  }
}

/// Fused backward. Grid (groups, taps, pixel chunks), kFusedThreads threads. Writes dL_doffsets of
/// its (group, tap), adds into dx32 (fp32, zeroed by the caller) and writes its dW partial
/// dw_part[chunk][K][taps][C/groups].
template <class T, int P>
__global__ void __launch_bounds__(kFusedThreads) deform_fused_backward_kernel(
    const T* __restrict__ x, const T* __restrict__ off, const T* __restrict__ wt, const T* __restrict__ dy,
    float* __restrict__ dx32, T* __restrict__ doff, float* __restrict__ dw_part, FusedGeom g) {
  constexpr int U = 32 / P, KW = P / U;  // KW: dW accumulators per lane (filters u·KW .. u·KW+KW-1)
  __shared__ __align__(16) float dys[kFusedWarps][32];  // dL_dy of the warp's U pixels, P per pixel
  __shared__ float red[kFusedWarps][P][P];               // per-warp dW[k][c] for the block reduction
  const int grp = blockIdx.x, t = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, u = lane / P, c = lane % P;
  float wreg[P];  // W[grp·kg + k][t][c], 0 for padding
#pragma unroll
  for (int k = 0; k < P; ++k)
    wreg[k] = k < g.kg && c < g.cg ? load_f(wt + (std::int64_t(grp * g.kg + k) * g.taps + t) * g.cg + c) : 0.f;
  float accw[KW];
#pragma unroll
  for (int i = 0; i < KW; ++i) accw[i] = 0.f;
  const std::int64_t pix_begin = std::int64_t(blockIdx.z) * g.pixels_per_block;
  const std::int64_t pix_end = ::min(pix_begin + std::int64_t(g.pixels_per_block), g.pixels);
  const std::int64_t image_pixels = std::int64_t(g.ho) * g.wo, image_elems = std::int64_t(g.h) * g.w * g.c;
  const int ch = grp * g.cg + c;
  for (std::int64_t base = pix_begin + warp * U; base < pix_end; base += kFusedWarps * U) {
    const std::int64_t pix = base + u;
    const bool active = pix < pix_end;
    dys[warp][lane] = active && c < g.kg ? load_f(dy + pix * g.k + grp * g.kg + c) : 0.f;
    __syncwarp();
    // dcol = Σ_k W[k][t][c] · dL_dy[k]
    float dcol = 0.f;
    const float4* d4 = reinterpret_cast<const float4*>(&dys[warp][u * P]);
#pragma unroll
    for (int k4 = 0; k4 < P / 4; ++k4) {
      const float4 d = d4[k4];
      dcol = fmaf(wreg[4 * k4 + 0], d.x, dcol);
      dcol = fmaf(wreg[4 * k4 + 1], d.y, dcol);
      dcol = fmaf(wreg[4 * k4 + 2], d.z, dcol);
      dcol = fmaf(wreg[4 * k4 + 3], d.w, dcol);
    }
    float col = 0.f, g_dy = 0.f, g_dx = 0.f;
    if (active && c < g.cg) {
      const float4 s = fused_sample_point(g, off, pix, grp, t);
      const std::int64_t img = pix / image_pixels;
      col = backward_sample_scatter(x + img * image_elems + ch, dx32 + img * image_elems + ch, s, dcol, g, g_dy,
                                    g_dx);
    }
    // Offset gradient of (pixel, group, tap): sum over the pixel's P lanes (aligned lane group).
#pragma unroll
    for (int sft = P / 2; sft > 0; sft /= 2) {
      g_dy += __shfl_xor_sync(0xffffffffu, g_dy, sft);
      g_dx += __shfl_xor_sync(0xffffffffu, g_dx, sft);
    }
    if (active && c == 0) {
      T* o = doff + pix * (2 * g.groups * g.taps) + (grp * g.taps + t) * 2;
      store_f(o, g_dy);
      store_f(o + 1, g_dx);
    }
    // dW[k][t][c] += Σ over the warp's U pixels of dL_dy[k] · col[c]; lane (u, c) owns k in [u·KW, u·KW + KW).
#pragma unroll
    for (int v = 0; v < U; ++v) {
      const float colv = __shfl_sync(0xffffffffu, col, v * P + c);
      const float* dv = &dys[warp][v * P + u * KW];
#pragma unroll
      for (int i = 0; i < KW; ++i) accw[i] = fmaf(dv[i], colv, accw[i]);
    }
    __syncwarp();  // dys is rewritten by the next pass
  }
#pragma unroll
  for (int i = 0; i < KW; ++i) red[warp][u * KW + i][c] = accw[i];
  __syncthreads();
  for (int e = threadIdx.x; e < P * P; e += blockDim.x) {
    const int k = e / P, cc = e % P;
    if (k < g.kg && cc < g.cg) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < kFusedWarps; ++w) sum += red[w][k][cc];  // fixed order: deterministic
      dw_part[((std::int64_t(blockIdx.z) * g.k + grp * g.kg + k) * g.taps + t) * g.cg + cc] = sum;
    }
  }
}

/// dw32[e] += Σ_chunk part[chunk][e] in chunk order (deterministic).
template <class A>  // A = float; a template so the header can be included by several TUs
__global__ void deform_dw_partials_kernel(const A* __restrict__ part, int chunks, std::int64_t n, A* __restrict__ dw32) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < n;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    A s = dw32[e];
    for (int i = 0; i < chunks; ++i) s += part[i * n + e];
    dw32[e] = s;
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path (DeformConvAlgo::kMma): the fused kernels' structure, with the per-group
// products as mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulation). A warp owns a tile of 16
// output pixels; per tap, the tile's 16 pixels x 16 channels of bilinear samples are the A
// operand (one K-step), built in registers in the fragment layout:
//   lane = 4·gid + tig holds rows (pixels) gid and gid + 8, columns (channels) 2·tig, 2·tig + 1,
//   2·tig + 8, 2·tig + 9, as four registers of two values: {row gid, cols 2tig..}, {row gid + 8,
//   cols 2tig..}, {row gid, cols 2tig + 8..}, {row gid + 8, cols 2tig + 8..} (PTX ISA, "Matrix
//   fragments for mma.m16n8k16"). B fragments (16 x 8, k-major pairs): rows 2·tig, +1 and +8, +9,
//   column gid. C/D (16 x 8, fp32): rows gid / gid + 8, columns 2·tig, +1.
// The samples are rounded to the storage type to enter the tensor cores (as kIm2col's column
// matrix is); every product and sum after that is fp32.
// ---------------------------------------------------------------------------------------------

/// Two floats rounded to T (round to nearest even) and packed, the first in the low half.
template <class T>
__device__ __forceinline__ std::uint32_t pack2_rn(float lo, float hi) {
  if constexpr (std::is_same_v<T, half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  }
}

/// The raw 16 bits of a storage value (0 when `ok` is false), for operands already in T.
template <class T>
__device__ __forceinline__ std::uint32_t bits16(const T* p, bool ok) {
  return ok ? std::uint32_t(*reinterpret_cast<const std::uint16_t*>(p)) : 0u;
}

/// d += a · b on tensor cores: a 16 x 16 (row), b 16 x 8 (col), d 16 x 8 fp32.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, half>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // use_mma refuses devices below 8.0; this keeps the fat binary's sm_75 image linkable
#endif
}

/// The 8 x 8 transpose of a fragment register across the warp (lane 4·r + q holds row r, columns
/// 2q, 2q + 1 before and after).
__device__ __forceinline__ std::uint32_t transpose_8x8(std::uint32_t a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  std::uint32_t d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
  return d;
#else
  __trap();
  return a;
#endif
}

/// Tensor-core forward. Grid (groups, pixel chunks), kFusedThreads threads, mma_forward_smem bytes.
/// Per warp and 16-pixel tile: the tile's sample points for every tap into shared memory, then per
/// tap one A fragment of samples and two mma (filters 0-7, 8-15) against the group's weights.
template <class T>
__global__ void __launch_bounds__(kFusedThreads) deform_mma_forward_kernel(const T* __restrict__ x,
                                                                          const T* __restrict__ off,
                                                                          const T* __restrict__ wt,
                                                                          T* __restrict__ y, FusedGeom g) {
  extern __shared__ float4 mma_smem[];
  float4* pts = mma_smem;  // [warps][taps][16 pixels]
  // bs[t][k][c] = W[grp·kg + k][t][c] (0 beyond kg / cg): the B operand, k-dim = channel c
  std::uint16_t* bs = reinterpret_cast<std::uint16_t*>(pts + kFusedWarps * g.taps * 16);
  const int grp = blockIdx.x;
  for (int e = threadIdx.x; e < g.taps * 16 * kMmaRow; e += blockDim.x) {
    const int c = e % kMmaRow, k = (e / kMmaRow) % 16, t = e / (kMmaRow * 16);
    bs[e] = std::uint16_t(bits16(wt + (std::int64_t(grp * g.kg + k) * g.taps + t) * g.cg + c, k < g.kg && c < g.cg));
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  float4* wpts = pts + warp * g.taps * 16;
  const std::int64_t pix_begin = std::int64_t(blockIdx.y) * g.pixels_per_block;
  const std::int64_t pix_end = ::min(pix_begin + std::int64_t(g.pixels_per_block), g.pixels);
  const std::int64_t image_pixels = std::int64_t(g.ho) * g.wo, image_elems = std::int64_t(g.h) * g.w * g.c;
  // A point whose four corners are all outside the image (BilinearPoint's far-away sentinel).
  const float4 nowhere = make_float4(0.f, 0.f, __int_as_float(-4), __int_as_float(-4));
  // The loop condition depends on the warp only: all 32 lanes reach every mma and shuffle.
  for (std::int64_t base = pix_begin + warp * 16; base < pix_end; base += kFusedWarps * 16) {
    for (int e = lane; e < 16 * g.taps; e += 32) {
      const int pp = e % 16, t = e / 16;
      const std::int64_t pix = base + pp;
      wpts[t * 16 + pp] = pix < pix_end ? fused_sample_point(g, off, pix, grp, t) : nowhere;
    }
    __syncwarp();
    const T* xr[2];  // image base + the group's first channel, rows gid and gid + 8
    bool live[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const std::int64_t pix = base + gid + 8 * h;
      live[h] = pix < pix_end;
      xr[h] = x + (live[h] ? pix / image_pixels : 0) * image_elems + grp * g.cg;
    }
    float acc[2][4] = {};
    for (int t = 0; t < g.taps; ++t) {
      std::uint32_t a[4];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float4 s = wpts[t * 16 + gid + 8 * h];
        const int y0 = __float_as_int(s.z), x0 = __float_as_int(s.w);
        const float ly = s.x, lx = s.y, hy = 1.f - ly, hx = 1.f - lx;
        float v[4];  // channels 2·tig, 2·tig + 1, 2·tig + 8, 2·tig + 9
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int c = 2 * tig + (j & 1) + 8 * (j >> 1);
          v[j] = 0.f;
          if (c < g.cg) {
            const Corners q = fused_corners(xr[h] + c, y0, x0, g);
            // Same terms and order as the host reference's forward sample.
            v[j] = hy * hx * q.v00 + hy * lx * q.v01 + ly * hx * q.v10 + ly * lx * q.v11;
          }
        }
        a[h] = pack2_rn<T>(v[0], v[1]);
        a[2 + h] = pack2_rn<T>(v[2], v[3]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {  // filters 8j .. 8j + 7
        const std::uint16_t* brow = bs + (t * 16 + 8 * j + gid) * kMmaRow + 2 * tig;
        mma_16816<T>(acc[j], a, *reinterpret_cast<const std::uint32_t*>(brow),
                     *reinterpret_cast<const std::uint32_t*>(brow + 8));
      }
    }
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = 8 * j + 2 * tig + e;
          if (live[h] && k < g.kg) store_f(y + (base + gid + 8 * h) * g.k + grp * g.kg + k, acc[j][2 * h + e]);
        }
    __syncwarp();  // every lane is done reading wpts before the next tile overwrites it
  }
}

/// Tensor-core backward. Grid (groups, taps, pixel chunks), kFusedThreads threads. Per warp and
/// 16-pixel tile of its tap:
///   1. dcol = dL_dy · W_t on tensor cores (two mma, fp32 accumulators), staged in shared memory;
///   2. sampling, scatter and offset gradients in kFused's layout (16 lanes = one pixel's
///      channels, two pixels per pass, eight passes; the tile's 16 sample points computed once
///      per pixel into shared memory first): each atomic instruction covers one pixel's
///      contiguous channels, and the offset gradient is a 16-lane shuffle sum. The first GPU
///      version did this step in the mma fragment layout (lane: channels 2·tig, +1, +8, +9 of
///      two pixels), whose gathers and atomics each span 8 pixels: its backward measured 28.7 ms
///      against kFused's 20.2 (bench/results/gpu_h200_20261201_0241.md);
///   3. the samples, rounded to T, staged transposed (channel rows, pixel pairs contiguous) and
///      read back as B fragments: dW_t += dL_dyᵀ · col in two mma, A = dL_dy's fragment
///      transposed by movmatrix.
/// Writes dw_part like the fused kernel. Three blocks per SM, as kFused's backward.
template <class T>
__global__ void __launch_bounds__(kFusedThreads, 3) deform_mma_backward_kernel(
    const T* __restrict__ x, const T* __restrict__ off, const T* __restrict__ wt, const T* __restrict__ dy,
    float* __restrict__ dx32, T* __restrict__ doff, float* __restrict__ dw_part, FusedGeom g) {
  __shared__ float red[kFusedWarps][16][17];   // per-warp dW[k][c] for the block reduction
  // The tile's dcol [pixel][channel]. Pitch 24 with float2 stores: the fragment-layout writes
  // (rows gid, columns 2·tig) hit distinct banks per half-warp; the sampling reads are 2-way.
  __shared__ __align__(16) float dcs[kFusedWarps][16][24];
  __shared__ __align__(16) std::uint16_t cst[kFusedWarps][16][kMmaRow];  // samples [channel][pixel], T bits
  __shared__ float4 pts[kFusedWarps][16];     // the tile's sample points, one per pixel
  const int grp = blockIdx.x, t = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int u = lane / 16, c = lane % 16;  // the sampling layout: pixel 2·pass + u, channel c
  // B fragments of W_t (k-dim: filter k, column: channel c = 8j + gid), fixed for the block.
  std::uint32_t bw[2][2];
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * tig + 8 * r, cc = 8 * j + gid;
      const T* p = wt + (std::int64_t(grp * g.kg + k) * g.taps + t) * g.cg + cc;
      bw[j][r] = bits16(p, k < g.kg && cc < g.cg) |
                 (bits16(p + std::int64_t(g.taps) * g.cg, k + 1 < g.kg && cc < g.cg) << 16);
    }
  float dwacc[2][4] = {};  // dW_t[k][c]: n-tile j holds channels 8j..8j+7
  const std::int64_t pix_begin = std::int64_t(blockIdx.z) * g.pixels_per_block;
  const std::int64_t pix_end = ::min(pix_begin + std::int64_t(g.pixels_per_block), g.pixels);
  const std::int64_t image_pixels = std::int64_t(g.ho) * g.wo, image_elems = std::int64_t(g.h) * g.w * g.c;
  const bool chan = c < g.cg;
  const int ch = grp * g.cg + c;
  for (std::int64_t base = pix_begin + warp * 16; base < pix_end; base += kFusedWarps * 16) {
    std::uint32_t ad[4];  // dL_dy of the tile as an A fragment (rows: pixels, k-dim: filters)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const std::int64_t pix = base + gid + 8 * h;
      const bool live = pix < pix_end;
      const T* d = dy + (live ? pix : 0) * g.k + grp * g.kg;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int k = 2 * tig + 8 * q;
        ad[h + 2 * q] = bits16(d + k, live && k < g.kg) | (bits16(d + k + 1, live && k + 1 < g.kg) << 16);
      }
    }
    // Each pixel's sample point once (lanes 0-15), not once per channel lane as kFused does.
    if (lane < 16 && base + lane < pix_end) pts[warp][lane] = fused_sample_point(g, off, base + lane, grp, t);
    {
      float dcol[2][4] = {};  // [j][2h + e]: pixel gid + 8h, channel 8j + 2·tig + e
      mma_16816<T>(dcol[0], ad, bw[0][0], bw[0][1]);
      mma_16816<T>(dcol[1], ad, bw[1][0], bw[1][1]);
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<float2*>(&dcs[warp][gid + 8 * h][8 * j + 2 * tig]) =
              make_float2(dcol[j][2 * h], dcol[j][2 * h + 1]);
    }
    __syncwarp();
#pragma unroll 2
    for (int pass = 0; pass < 8; ++pass) {
      const int r = 2 * pass + u;
      const std::int64_t pix = base + r;
      const bool active = pix < pix_end;
      float col = 0.f, g_dy = 0.f, g_dx = 0.f;
      if (active && chan) {
        const std::int64_t img = pix / image_pixels;
        col = backward_sample_scatter(x + img * image_elems + ch, dx32 + img * image_elems + ch, pts[warp][r],
                                      dcs[warp][r][c], g, g_dy, g_dx);
      }
      // Offset gradient of (pixel, group, tap): the sum over the pixel's 16 lanes.
#pragma unroll
      for (int sft = 8; sft > 0; sft /= 2) {
        g_dy += __shfl_xor_sync(0xffffffffu, g_dy, sft);
        g_dx += __shfl_xor_sync(0xffffffffu, g_dx, sft);
      }
      if (active && c == 0) {
        T* o = doff + pix * (2 * g.groups * g.taps) + (grp * g.taps + t) * 2;
        store_f(o, g_dy);
        store_f(o + 1, g_dx);
      }
      cst[warp][c][r] = std::uint16_t(pack2_rn<T>(col, 0.f) & 0xffffu);  // 0 for idle pixels / channels
    }
    __syncwarp();
    // dW_t[k][c] += Σ_pixels dL_dy[pixel][k] · col[pixel][c]: A = dL_dyᵀ (rows k, k-dim pixels;
    // the 16 x 16 transpose swaps the off-diagonal 8 x 8 blocks), B = col (k-dim pixels 2·tig, +1
    // and +8, +9; column channel 8j + gid), pixel pairs read as one word from the transposed stage.
    const std::uint32_t adt[4] = {transpose_8x8(ad[0]), transpose_8x8(ad[2]), transpose_8x8(ad[1]),
                                  transpose_8x8(ad[3])};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const std::uint32_t* row = reinterpret_cast<const std::uint32_t*>(&cst[warp][8 * j + gid][0]);
      mma_16816<T>(dwacc[j], adt, row[tig], row[tig + 4]);
    }
    __syncwarp();  // dcs and cst are rewritten by the next tile
  }
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) red[warp][gid + 8 * h][8 * j + 2 * tig + e] = dwacc[j][2 * h + e];
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * 16; e += blockDim.x) {
    const int k = e / 16, cc = e % 16;
    if (k < g.kg && cc < g.cg) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < kFusedWarps; ++w) sum += red[w][k][cc];  // fixed order: deterministic
      dw_part[((std::int64_t(blockIdx.z) * g.k + grp * g.kg + k) * g.taps + t) * g.cg + cc] = sum;
    }
  }
}

template <class T, int P>
void fused_forward_launch(Cuda& ctx, const T* x, const T* off, const T* w, T* y, const FusedGeom& g,
                          std::int64_t blocks) {
  const std::size_t smem = fused_forward_smem(P, g.taps);
  if (smem > 48 * 1024)
    AMPKIT_CUDA_CHECK(cudaFuncSetAttribute(deform_fused_forward_kernel<T, P>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  deform_fused_forward_kernel<T, P><<<dim3(unsigned(g.groups), unsigned(blocks)), kFusedThreads, smem, ctx.stream()>>>(
      x, off, w, y, g);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

template <class T, int P>
void fused_backward_launch(Cuda& ctx, const T* x, const T* off, const T* w, const T* dy, float* dx32, T* doff,
                           float* part, const FusedGeom& g, std::int64_t blocks) {
  deform_fused_backward_kernel<T, P>
      <<<dim3(unsigned(g.groups), unsigned(g.taps), unsigned(blocks)), kFusedThreads, 0, ctx.stream()>>>(
          x, off, w, dy, dx32, doff, part, g);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

template <class T>
void mma_forward_launch(Cuda& ctx, const T* x, const T* off, const T* w, T* y, const FusedGeom& g,
                        std::int64_t blocks) {
  if constexpr (std::is_same_v<T, float>) {
    AMPKIT_FAIL("deform_conv2d: the tensor-core kernels take fp16/bf16 storage (use_mma excludes fp32)");
  } else {
    const std::size_t smem = mma_forward_smem(g.taps);
    if (smem > 48 * 1024)
      AMPKIT_CUDA_CHECK(cudaFuncSetAttribute(deform_mma_forward_kernel<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    deform_mma_forward_kernel<T><<<dim3(unsigned(g.groups), unsigned(blocks)), kFusedThreads, smem, ctx.stream()>>>(
        x, off, w, y, g);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void mma_backward_launch(Cuda& ctx, const T* x, const T* off, const T* w, const T* dy, float* dx32, T* doff,
                         float* part, const FusedGeom& g, std::int64_t blocks) {
  if constexpr (std::is_same_v<T, float>) {
    AMPKIT_FAIL("deform_conv2d: the tensor-core kernels take fp16/bf16 storage (use_mma excludes fp32)");
  } else {
    deform_mma_backward_kernel<T>
        <<<dim3(unsigned(g.groups), unsigned(g.taps), unsigned(blocks)), kFusedThreads, 0, ctx.stream()>>>(
            x, off, w, dy, dx32, doff, part, g);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void fused_forward(Cuda& ctx, TensorView<const T> x, TensorView<const T> off, TensorView<const T> w, TensorView<T> y,
                   const DeformConv2dParams& p, bool mma = false) {
  std::int64_t blocks = 0;
  const FusedGeom g = make_fused_geom(x.shape, y.shape, p, x.shape.n, blocks);
  if (mma) return mma_forward_launch<T>(ctx, x.data, off.data, w.data, y.data, g, blocks);
  switch (fused_lanes(g.cg, g.kg)) {
    case 8: fused_forward_launch<T, 8>(ctx, x.data, off.data, w.data, y.data, g, blocks); break;
    case 16: fused_forward_launch<T, 16>(ctx, x.data, off.data, w.data, y.data, g, blocks); break;
    default: fused_forward_launch<T, 32>(ctx, x.data, off.data, w.data, y.data, g, blocks); break;
  }
}

/// The fused backward (mma: the tensor-core kernel; same scratch, partials and conversions).
template <class T>
void fused_backward(Cuda& ctx, TensorView<const T> x, TensorView<const T> off, TensorView<const T> w,
                    TensorView<const T> dy, TensorView<T> dx, TensorView<T> doff, TensorView<T> dw,
                    const DeformConv2dParams& p, bool mma = false) {
  constexpr bool kDirect = std::is_same_v<T, float>;  // fp32 storage: atomics straight into dL_dx
  const std::int64_t pix_in = x.shape.h * x.shape.w * x.shape.c, pix_out = dy.shape.h * dy.shape.w;
  // Images per launch: the fp32 dx scratch stays within the workspace budget (DEKR batch 32: 535 MB, one launch).
  const std::int64_t chunk =
      kDirect ? std::max<std::int64_t>(x.shape.n, 1)
              : images_per_chunk(x.shape.n, static_cast<std::size_t>(pix_in) * sizeof(float));
  // Blocks per launch for the full and the last (remainder) image chunk; the 65535-chunk clamp in
  // make_fused_geom makes the count non-monotonic in the pixel count, so take the larger.
  std::int64_t max_blocks = 0, last_blocks = 0;
  (void)make_fused_geom(x.shape, dy.shape, p, chunk, max_blocks);
  if (x.shape.n % chunk) (void)make_fused_geom(x.shape, dy.shape, p, x.shape.n % chunk, last_blocks);
  max_blocks = std::max(max_blocks, last_blocks);
  const std::int64_t n_dw = w.numel();
  const std::size_t dw_bytes = (static_cast<std::size_t>(n_dw) * sizeof(float) + 255) / 256 * 256;
  const std::size_t part_bytes = (static_cast<std::size_t>(max_blocks * n_dw) * sizeof(float) + 255) / 256 * 256;
  const std::size_t dx_bytes = kDirect ? 0 : static_cast<std::size_t>(chunk * pix_in) * sizeof(float);
  auto ws = ctx.workspace(dw_bytes + part_bytes + dx_bytes);
  float* dw32 = reinterpret_cast<float*>(ws.data());
  float* part = reinterpret_cast<float*>(ws.data() + dw_bytes);
  float* dx32 = kDirect ? reinterpret_cast<float*>(dx.data) : reinterpret_cast<float*>(ws.data() + dw_bytes + part_bytes);
  AMPKIT_CUDA_CHECK(cudaMemsetAsync(dw32, 0, static_cast<std::size_t>(n_dw) * sizeof(float), ctx.stream()));
  if (kDirect)
    AMPKIT_CUDA_CHECK(cudaMemsetAsync(dx.data, 0, static_cast<std::size_t>(dx.numel()) * sizeof(float), ctx.stream()));
  const int lanes = fused_lanes(x.shape.c / p.groups, dy.shape.c / p.groups);
  for (std::int64_t n0 = 0; n0 < x.shape.n; n0 += chunk) {
    const std::int64_t nb = std::min(chunk, x.shape.n - n0);
    std::int64_t blocks = 0;
    const FusedGeom g = make_fused_geom(x.shape, dy.shape, p, nb, blocks);
    const T* xc = x.data + n0 * pix_in;
    const T* oc = off.data + n0 * pix_out * p.offset_channels();
    const T* dyc = dy.data + n0 * pix_out * dy.shape.c;
    T* doffc = doff.data + n0 * pix_out * p.offset_channels();
    float* dxc = kDirect ? dx32 + n0 * pix_in : dx32;
    if (!kDirect)
      AMPKIT_CUDA_CHECK(cudaMemsetAsync(dx32, 0, static_cast<std::size_t>(nb * pix_in) * sizeof(float), ctx.stream()));
    if (mma) mma_backward_launch<T>(ctx, xc, oc, w.data, dyc, dxc, doffc, part, g, blocks);
    else switch (lanes) {
      case 8: fused_backward_launch<T, 8>(ctx, xc, oc, w.data, dyc, dxc, doffc, part, g, blocks); break;
      case 16: fused_backward_launch<T, 16>(ctx, xc, oc, w.data, dyc, dxc, doffc, part, g, blocks); break;
      default: fused_backward_launch<T, 32>(ctx, xc, oc, w.data, dyc, dxc, doffc, part, g, blocks); break;
    }
    deform_dw_partials_kernel<float><<<grid_for(n_dw, 256), 256, 0, ctx.stream()>>>(part, int(blocks), n_dw, dw32);
    AMPKIT_CUDA_CHECK_LAUNCH();
    if (!kDirect) {
      store_f32_kernel<T><<<grid_for(nb * pix_in, 256), 256, 0, ctx.stream()>>>(dx32, dx.data + n0 * pix_in,
                                                                               nb * pix_in, false);
      AMPKIT_CUDA_CHECK_LAUNCH();
    }
  }
  store_f32_kernel<T><<<grid_for(n_dw, 256), 256, 0, ctx.stream()>>>(dw32, dw.data, n_dw, true);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda::sampling

/// y = deform_conv2d(x, offsets, weight). x (N,H,W,C), offsets (N,Ho,Wo,2·og·kh·kw),
/// weight (K,kh,kw,C/groups), y (N,Ho,Wo,K). fp32 accumulation on tensor cores.
template <StorageScalar T>
void deform_conv2d_forward(Cuda& ctx, TensorView<const T> x, TensorView<const T> offsets, TensorView<const T> weight,
                           TensorView<T> y, const DeformConv2dParams& p) {
  namespace s = cuda::sampling;
  check_deform_conv2d("deform_conv2d", x, offsets, weight, y, p);
  if (y.numel() == 0) return;
  if (s::use_mma<T>(ctx, x.shape, y.shape.c, p)) return s::fused_forward<T>(ctx, x, offsets, weight, y, p, true);
  if (s::use_fused(x.shape, y.shape.c, p)) return s::fused_forward<T>(ctx, x, offsets, weight, y, p);
  const std::int64_t k = y.shape.c, pix_in = x.shape.h * x.shape.w * x.shape.c, pix_out = y.shape.h * y.shape.w;
  const std::int64_t ld_col = s::make_geom(x.shape, y.shape, p, 1).ld_col();
  const std::int64_t chunk = s::images_per_chunk(x.shape.n, static_cast<std::size_t>(pix_out * ld_col) * sizeof(T));
  auto ws = ctx.workspace(static_cast<std::size_t>(chunk * pix_out * ld_col) * sizeof(T));
  T* col = reinterpret_cast<T*>(ws.data());
  const int kg = int(k / p.groups), cg_taps = int(x.shape.c / p.groups) * p.taps();
  for (std::int64_t n0 = 0; n0 < x.shape.n; n0 += chunk) {
    const std::int64_t nb = std::min(chunk, x.shape.n - n0);
    const s::DeformGeom g = s::make_geom(x.shape, y.shape, p, nb);
    s::im2col<T>(ctx, x.data + n0 * pix_in, offsets.data + n0 * pix_out * p.offset_channels(), col, g);
    // y^T (K × rows, ld K) per group: W_g (cg_taps × kg, col-major)^T · col_g (cg_taps × rows, ld ld_col).
    s::gemm_groups(ctx, CUBLAS_OP_T, CUBLAS_OP_N, kg, int(g.rows), cg_taps, weight.data, cublas_type_v<T>, cg_taps,
                   std::int64_t(kg) * cg_taps, col, cublas_type_v<T>, int(ld_col), g.col_group_stride, 0.f,
                   y.data + n0 * pix_out * k, cublas_type_v<T>, int(k), kg, p.groups);
  }
}

/// dL_dx (=), dL_doffsets (=), dL_dw (+=) from dL_dy (N,Ho,Wo,K).
template <StorageScalar T>
void deform_conv2d_backward(Cuda& ctx, TensorView<const T> x, TensorView<const T> offsets, TensorView<const T> weight,
                            TensorView<const T> dL_dy, TensorView<T> dL_dx, TensorView<T> dL_doffsets,
                            TensorView<T> dL_dw, const DeformConv2dParams& p) {
  namespace s = cuda::sampling;
  check_deform_conv2d("deform_conv2d", x, offsets, weight, dL_dy, p, "dL_dy");
  check_shape("deform_conv2d", "dL_dx", dL_dx, x.shape);
  check_shape("deform_conv2d", "dL_doffsets", dL_doffsets, offsets.shape);
  check_shape("deform_conv2d", "dL_dw", dL_dw, weight.shape);
  if (x.numel() == 0) return;
  if (s::use_mma<T>(ctx, x.shape, dL_dy.shape.c, p))
    return s::fused_backward<T>(ctx, x, offsets, weight, dL_dy, dL_dx, dL_doffsets, dL_dw, p, true);
  if (s::use_fused(x.shape, dL_dy.shape.c, p))
    return s::fused_backward<T>(ctx, x, offsets, weight, dL_dy, dL_dx, dL_doffsets, dL_dw, p);
  const std::int64_t k = dL_dy.shape.c, pix_in = x.shape.h * x.shape.w * x.shape.c,
                     pix_out = dL_dy.shape.h * dL_dy.shape.w;
  const std::int64_t ld_col = s::make_geom(x.shape, dL_dy.shape, p, 1).ld_col();
  const std::size_t per_image = static_cast<std::size_t>(pix_out * ld_col) * (sizeof(T) + sizeof(float)) +
                                static_cast<std::size_t>(pix_in) * sizeof(float);
  const std::int64_t chunk = s::images_per_chunk(x.shape.n, per_image);
  const std::size_t col_bytes = (static_cast<std::size_t>(chunk * pix_out * ld_col) * sizeof(T) + 255) / 256 * 256;
  const std::size_t dcol_bytes = static_cast<std::size_t>(chunk * pix_out * ld_col) * sizeof(float);
  const std::size_t dx_bytes = static_cast<std::size_t>(chunk * pix_in) * sizeof(float);
  const std::size_t dw_bytes = (static_cast<std::size_t>(weight.numel()) * sizeof(float) + 255) / 256 * 256;
  auto ws = ctx.workspace(dw_bytes + col_bytes + dcol_bytes + dx_bytes);
  float* dw32 = reinterpret_cast<float*>(ws.data());
  T* col = reinterpret_cast<T*>(ws.data() + dw_bytes);
  float* dcol = reinterpret_cast<float*>(ws.data() + dw_bytes + col_bytes);
  float* dx32 = reinterpret_cast<float*>(ws.data() + dw_bytes + col_bytes + dcol_bytes);
  AMPKIT_CUDA_CHECK(cudaMemsetAsync(dw32, 0, static_cast<std::size_t>(weight.numel()) * sizeof(float), ctx.stream()));
  const int kg = int(k / p.groups), cg_taps = int(x.shape.c / p.groups) * p.taps();
  for (std::int64_t n0 = 0; n0 < x.shape.n; n0 += chunk) {
    const std::int64_t nb = std::min(chunk, x.shape.n - n0);
    const s::DeformGeom g = s::make_geom(x.shape, dL_dy.shape, p, nb);
    const T* xc = x.data + n0 * pix_in;
    const T* oc = offsets.data + n0 * pix_out * p.offset_channels();
    const T* dyc = dL_dy.data + n0 * pix_out * k;
    s::im2col<T>(ctx, xc, oc, col, g);
    // dW_g (cg_taps × kg, col-major = KRSC rows) += col_g (cg_taps × rows) · dy_g^T (rows × kg).
    s::gemm_groups(ctx, CUBLAS_OP_N, CUBLAS_OP_T, cg_taps, kg, int(g.rows), col, cublas_type_v<T>, int(ld_col),
                   g.col_group_stride, dyc, cublas_type_v<T>, int(k), kg, 1.f, dw32, CUDA_R_32F, cg_taps,
                   std::int64_t(kg) * cg_taps, p.groups);
    // dcol_g (cg_taps × rows, ld ld_col) = W_g (cg_taps × kg) · dy_g (kg × rows, ld K).
    s::gemm_groups(ctx, CUBLAS_OP_N, CUBLAS_OP_N, cg_taps, int(g.rows), kg, weight.data, cublas_type_v<T>, cg_taps,
                   std::int64_t(kg) * cg_taps, dyc, cublas_type_v<T>, int(k), kg, 0.f, dcol, CUDA_R_32F,
                   int(ld_col), g.col_group_stride, p.groups);
    AMPKIT_CUDA_CHECK(cudaMemsetAsync(dx32, 0, static_cast<std::size_t>(nb * pix_in) * sizeof(float), ctx.stream()));
    s::deform_col2im_kernel<T><<<s::sampling_grid(g, 256), 256, 0, ctx.stream()>>>(
        xc, oc, dcol, dx32, dL_doffsets.data + n0 * pix_out * p.offset_channels(), g);
    AMPKIT_CUDA_CHECK_LAUNCH();
    s::store_f32_kernel<T><<<s::grid_for(nb * pix_in, 256), 256, 0, ctx.stream()>>>(dx32, dL_dx.data + n0 * pix_in,
                                                                                   nb * pix_in, false);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
  s::store_f32_kernel<T><<<s::grid_for(weight.numel(), 256), 256, 0, ctx.stream()>>>(dw32, dL_dw.data,
                                                                                    weight.numel(), true);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace ampkit

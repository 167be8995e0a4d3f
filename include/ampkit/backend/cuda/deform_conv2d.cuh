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
/// Gradient contract: dL_dx and dL_doffsets are written (=); dL_dw is accumulated (+=).
#pragma once

#include <algorithm>
#include <cstdint>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/sampling_common.cuh"
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
}

inline std::int64_t images_per_chunk(std::int64_t n_images, std::size_t bytes_per_image) {
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(deform_workspace_bytes() / std::max<std::size_t>(bytes_per_image, 1)),
                                  1, std::max<std::int64_t>(n_images, 1));
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

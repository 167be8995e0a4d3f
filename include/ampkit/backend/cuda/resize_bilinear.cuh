/// @brief CUDA backend: bilinear resize (`align_corners=False`), forward and backward, plus the
/// channel-slice kernels that concat/resize_concat reuse.
///
/// The backward is a gather, not a scatter: each input pixel sums the output pixels that read it
/// (found from the same ::ampkit::detail::linear_tap the forward uses), so there are no atomics and the
/// result is deterministic.
#pragma once

#include <cmath>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/sampling_common.cuh"
#include "ampkit/backend/cuda/upsample_nearest.cuh"
#include "ampkit/nn/ops/resize_bilinear.hpp"

namespace ampkit {
namespace cuda::sampling {

/// Resize x (N,h,w,Cx) into channels [c0, c0+Cx) of y (N,H,W,Cy); an exact copy at equal sizes.
template <class T, int V>
__global__ void resize_into_kernel(const T* __restrict__ x, Shape xs, T* __restrict__ y, Shape ys, std::int64_t c0) {
  const std::int64_t cv = xs.c / V, n_items = ys.n * ys.h * ys.w * cv;
  const bool same = xs.h == ys.h && xs.w == ys.w;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n_items;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t c = (idx % cv) * V, pix = idx / cv;
    const int j = static_cast<int>(pix % ys.w), i = static_cast<int>((pix / ys.w) % ys.h);
    const std::int64_t n = pix / (ys.w * ys.h);
    auto* dst = reinterpret_cast<Vec<T, V>*>(y + pix * ys.c + c0 + c);
    auto at = [&](int a, int b) { return *reinterpret_cast<const Vec<T, V>*>(x + ((n * xs.h + a) * xs.w + b) * xs.c + c); };
    if (same) {
      *dst = at(i, j);
      continue;
    }
    const ::ampkit::detail::LinearTap ty = ::ampkit::detail::linear_tap(i, static_cast<int>(xs.h), static_cast<int>(ys.h));
    const ::ampkit::detail::LinearTap tx = ::ampkit::detail::linear_tap(j, static_cast<int>(xs.w), static_cast<int>(ys.w));
    const auto v00 = at(ty.i0, tx.i0), v01 = at(ty.i0, tx.i1), v10 = at(ty.i1, tx.i0), v11 = at(ty.i1, tx.i1);
    Vec<T, V> out;
#pragma unroll
    for (int e = 0; e < V; ++e)
      store_f(&out.v[e], ty.w0 * (tx.w0 * load_f(&v00.v[e]) + tx.w1 * load_f(&v01.v[e])) +
                             ty.w1 * (tx.w0 * load_f(&v10.v[e]) + tx.w1 * load_f(&v11.v[e])));
    *dst = out;
  }
}

/// Conservative range of output indices whose linear taps may read input index i; the exact
/// weight is recomputed with linear_tap for every candidate, so the margin only costs a few
/// zero-weight iterations.
__device__ __forceinline__ void gather_range(int i, int in_size, int out_size, int& lo, int& hi) {
  const double scale = static_cast<double>(in_size) / out_size;
  lo = max(0, static_cast<int>(floor((i - 0.5) / scale - 0.5)) - 1);
  hi = min(out_size - 1, static_cast<int>(ceil((i + 1.5) / scale - 0.5)) + 1);
}

__device__ __forceinline__ float tap_weight(int i, int dst, int in_size, int out_size) {
  const ::ampkit::detail::LinearTap t = ::ampkit::detail::linear_tap(dst, in_size, out_size);
  return (t.i0 == i ? t.w0 : 0.f) + (t.i1 == i ? t.w1 : 0.f);
}

/// dL_dx (N,h,w,Cx) = adjoint of resize_into applied to channels [c0, c0+Cx) of dL_dy (N,H,W,Cy).
template <class T, int V>
__global__ void resize_from_kernel(const T* __restrict__ dy, Shape ys, T* __restrict__ dx, Shape xs, std::int64_t c0) {
  const std::int64_t cv = xs.c / V, n_items = xs.n * xs.h * xs.w * cv;
  const bool same = xs.h == ys.h && xs.w == ys.w;
  const int hx = static_cast<int>(xs.h), wx = static_cast<int>(xs.w), hy = static_cast<int>(ys.h),
            wy = static_cast<int>(ys.w);
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n_items;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t c = (idx % cv) * V, pix = idx / cv;
    const int j = static_cast<int>(pix % xs.w), i = static_cast<int>((pix / xs.w) % xs.h);
    const std::int64_t n = pix / (xs.w * xs.h);
    auto* dst = reinterpret_cast<Vec<T, V>*>(dx + pix * xs.c + c);
    auto at = [&](int a, int b) {
      return *reinterpret_cast<const Vec<T, V>*>(dy + ((n * ys.h + a) * ys.w + b) * ys.c + c0 + c);
    };
    if (same) {
      *dst = at(i, j);
      continue;
    }
    float acc[V] = {};
    int a_lo, a_hi, b_lo, b_hi;
    gather_range(i, hx, hy, a_lo, a_hi);
    gather_range(j, wx, wy, b_lo, b_hi);
    for (int a = a_lo; a <= a_hi; ++a) {
      const float w_a = tap_weight(i, a, hx, hy);
      if (w_a == 0.f) continue;
      for (int b = b_lo; b <= b_hi; ++b) {
        const float w_b = tap_weight(j, b, wx, wy);
        if (w_b == 0.f) continue;
        const float w = w_a * w_b;
        const auto g = at(a, b);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += w * load_f(&g.v[e]);
      }
    }
    Vec<T, V> out;
#pragma unroll
    for (int e = 0; e < V; ++e) store_f(&out.v[e], acc[e]);
    *dst = out;
  }
}

template <class T, int V>
struct ResizeIntoLaunch {
  static void run(Cuda& ctx, TensorView<const T> x, TensorView<T> y, std::int64_t c0) {
    const std::int64_t n = y.shape.n * y.shape.h * y.shape.w * (x.shape.c / V);
    resize_into_kernel<T, V><<<grid_for(n, 256), 256, 0, ctx.stream()>>>(x.data, x.shape, y.data, y.shape, c0);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
};
template <class T, int V>
struct ResizeFromLaunch {
  static void run(Cuda& ctx, TensorView<const T> dy, TensorView<T> dx, std::int64_t c0) {
    const std::int64_t n = dx.numel() / V;
    resize_from_kernel<T, V><<<grid_for(n, 256), 256, 0, ctx.stream()>>>(dy.data, dy.shape, dx.data, dx.shape, c0);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
};

template <class T>
void resize_into(Cuda& ctx, TensorView<const T> x, TensorView<T> y, std::int64_t c0) {
  if (y.shape.n * y.shape.h * y.shape.w * x.shape.c == 0) return;
  const int v = vector_width<T>({x.shape.c, y.shape.c, c0}, {x.data, y.data});
  dispatch_vector<T, ResizeIntoLaunch>(v, ctx, x, y, c0);
}
template <class T>
void resize_from(Cuda& ctx, TensorView<const T> dy, TensorView<T> dx, std::int64_t c0) {
  if (dx.numel() == 0) return;
  const int v = vector_width<T>({dx.shape.c, dy.shape.c, c0}, {dx.data, dy.data});
  dispatch_vector<T, ResizeFromLaunch>(v, ctx, dy, dx, c0);
}

}  // namespace cuda::sampling

/// y (N,H,W,C) = bilinear resize of x (N,h,w,C) to y's size (align_corners=False).
template <StorageScalar T>
void resize_bilinear_forward(Cuda& ctx, TensorView<const T> x, TensorView<T> y) {
  check_resize_bilinear("resize_bilinear", x, y, "x", "y");
  cuda::sampling::resize_into<T>(ctx, x, y, 0);
}

/// dL_dx (N,h,w,C) (=) adjoint of the resize applied to dL_dy (N,H,W,C).
template <StorageScalar T>
void resize_bilinear_backward(Cuda& ctx, TensorView<const T> dL_dy, TensorView<T> dL_dx) {
  check_resize_bilinear("resize_bilinear", dL_dx, dL_dy, "dL_dx", "dL_dy");
  cuda::sampling::resize_from<T>(ctx, dL_dy, dL_dx, 0);
}

}  // namespace ampkit

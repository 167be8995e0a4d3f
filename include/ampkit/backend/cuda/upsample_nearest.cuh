/// @brief CUDA backend: nearest-neighbour upsampling by an integer factor, forward and backward.
/// Both directions are gathers (no atomics), vectorised along the contiguous channels.
#pragma once

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/sampling_common.cuh"
#include "ampkit/nn/ops/upsample_nearest.hpp"

namespace ampkit {
namespace cuda::sampling {

template <class T, int V>
__global__ void upsample_nearest_forward_kernel(const T* __restrict__ x, T* __restrict__ y, Shape ys, int scale,
                                                bool accumulate) {
  const std::int64_t cv = ys.c / V, n_items = ys.n * ys.h * ys.w * cv;
  const std::int64_t hs = ys.h / scale, ws = ys.w / scale;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n_items;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t c = idx % cv, pix = idx / cv;
    const std::int64_t j = pix % ys.w, i = (pix / ys.w) % ys.h, n = pix / (ys.w * ys.h);
    const auto src = reinterpret_cast<const Vec<T, V>*>(x)[((n * hs + i / scale) * ws + j / scale) * cv + c];
    auto* dst = reinterpret_cast<Vec<T, V>*>(y) + idx;
    if (!accumulate) {
      *dst = src;
    } else {
      Vec<T, V> d = *dst;
#pragma unroll
      for (int e = 0; e < V; ++e) store_f(&d.v[e], load_f(&d.v[e]) + load_f(&src.v[e]));
      *dst = d;
    }
  }
}

template <class T, int V>
__global__ void upsample_nearest_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, Shape xs, int scale,
                                                 bool accumulate) {
  const std::int64_t cv = xs.c / V, n_items = xs.n * xs.h * xs.w * cv;
  const std::int64_t hy = xs.h * scale, wy = xs.w * scale;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n_items;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t c = idx % cv, pix = idx / cv;
    const std::int64_t j = pix % xs.w, i = (pix / xs.w) % xs.h, n = pix / (xs.w * xs.h);
    float acc[V];
    auto* dst = reinterpret_cast<Vec<T, V>*>(dx) + idx;
    Vec<T, V> d;
    if (accumulate) d = *dst;
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = accumulate ? load_f(&d.v[e]) : 0.f;
    for (int a = 0; a < scale; ++a)
      for (int b = 0; b < scale; ++b) {
        const auto g = reinterpret_cast<const Vec<T, V>*>(dy)[((n * hy + i * scale + a) * wy + j * scale + b) * cv + c];
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += load_f(&g.v[e]);
      }
#pragma unroll
    for (int e = 0; e < V; ++e) store_f(&d.v[e], acc[e]);
    *dst = d;
  }
}

template <class T, template <class, int> class Launch, class... Args>
void dispatch_vector(int v, Args&&... args) {
  constexpr int kMax = static_cast<int>(16 / sizeof(T));
  if (v >= 8 && kMax >= 8)
    Launch<T, (kMax >= 8 ? 8 : 1)>::run(args...);
  else if (v >= 4)
    Launch<T, 4>::run(args...);
  else if (v >= 2)
    Launch<T, 2>::run(args...);
  else
    Launch<T, 1>::run(args...);
}

template <class T, int V>
struct UpsampleForwardLaunch {
  static void run(Cuda& ctx, const T* x, T* y, Shape ys, int scale, bool acc) {
    const std::int64_t n = ys.numel() / V;
    upsample_nearest_forward_kernel<T, V><<<grid_for(n, 256), 256, 0, ctx.stream()>>>(x, y, ys, scale, acc);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
};
template <class T, int V>
struct UpsampleBackwardLaunch {
  static void run(Cuda& ctx, const T* dy, T* dx, Shape xs, int scale, bool acc) {
    const std::int64_t n = xs.numel() / V;
    upsample_nearest_backward_kernel<T, V><<<grid_for(n, 256), 256, 0, ctx.stream()>>>(dy, dx, xs, scale, acc);
    AMPKIT_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace cuda::sampling

/// y(n,i,j,c) (=|+=) x(n, i/s, j/s, c).  x (N,H,W,C) -> y (N,H·s,W·s,C).
template <StorageScalar T>
void upsample_nearest_forward(Cuda& ctx, TensorView<const T> x, TensorView<T> y, int scale,
                              Accumulate mode = Accumulate::kNo) {
  check_upsample_nearest(x, y, scale, "x", "y");
  if (y.numel() == 0) return;
  const int v = cuda::sampling::vector_width<T>({x.shape.c}, {x.data, y.data});
  cuda::sampling::dispatch_vector<T, cuda::sampling::UpsampleForwardLaunch>(v, ctx, x.data, y.data, y.shape, scale,
                                                                             mode == Accumulate::kYes);
}

/// dL_dx(n,i,j,c) (=|+=) sum over the s×s block of dL_dy, summed in float.
template <StorageScalar T>
void upsample_nearest_backward(Cuda& ctx, TensorView<const T> dL_dy, TensorView<T> dL_dx, int scale,
                               Accumulate mode = Accumulate::kNo) {
  check_upsample_nearest(dL_dx, dL_dy, scale, "dL_dx", "dL_dy");
  if (dL_dx.numel() == 0) return;
  const int v = cuda::sampling::vector_width<T>({dL_dx.shape.c}, {dL_dx.data, dL_dy.data});
  cuda::sampling::dispatch_vector<T, cuda::sampling::UpsampleBackwardLaunch>(
      v, ctx, dL_dy.data, dL_dx.data, dL_dx.shape, scale, mode == Accumulate::kYes);
}

}  // namespace ampkit

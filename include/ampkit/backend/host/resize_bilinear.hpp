/// @brief Host backend: bilinear resize (`align_corners=False`), forward and backward, plus the
/// channel-slice core that concat/resize_concat reuse.
#pragma once

#include <algorithm>
#include <vector>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/resize_bilinear.hpp"

namespace ampkit {
namespace detail {

/// Resize x (N,h,w,Cx) into channels [c0, c0+Cx) of y (N,H,W,Cy). Same size: an exact copy.
/// Works in any precision T (double for finite-difference checks), computing in host_acc_t<T>.
template <class T>
void host_resize_into(TensorView<const T> x, TensorView<T> y, std::int64_t c0) {
  using A = host_acc_t<T>;
  const Shape xs = x.shape, ys = y.shape;
  std::vector<LinearTap> ty(static_cast<std::size_t>(ys.h)), tx(static_cast<std::size_t>(ys.w));
  for (int i = 0; i < ys.h; ++i) ty[i] = linear_tap(i, static_cast<int>(xs.h), static_cast<int>(ys.h));
  for (int j = 0; j < ys.w; ++j) tx[j] = linear_tap(j, static_cast<int>(xs.w), static_cast<int>(ys.w));
  const bool same = xs.h == ys.h && xs.w == ys.w;
  for (std::int64_t n = 0; n < ys.n; ++n)
    for (std::int64_t i = 0; i < ys.h; ++i)
      for (std::int64_t j = 0; j < ys.w; ++j) {
        T* dst = &y(n, i, j, c0);
        if (same) {
          const T* src = &x(n, i, j, 0);
          for (std::int64_t c = 0; c < xs.c; ++c) dst[c] = src[c];
          continue;
        }
        const LinearTap a = ty[i], b = tx[j];
        const T* p00 = &x(n, a.i0, b.i0, 0);
        const T* p01 = &x(n, a.i0, b.i1, 0);
        const T* p10 = &x(n, a.i1, b.i0, 0);
        const T* p11 = &x(n, a.i1, b.i1, 0);
        for (std::int64_t c = 0; c < xs.c; ++c) {
          // PyTorch's order: h0lambda·(w0lambda·v00 + w1lambda·v01) + h1lambda·(...)
          const A v = A(a.w0) * (A(b.w0) * load_as<A>(p00[c]) + A(b.w1) * load_as<A>(p01[c])) +
                      A(a.w1) * (A(b.w0) * load_as<A>(p10[c]) + A(b.w1) * load_as<A>(p11[c]));
          dst[c] = store_as<T>(v);
        }
      }
}

/// Backward of host_resize_into: dL_dx (N,h,w,Cx) = scatter of channels [c0, c0+Cx) of dL_dy.
template <class T>
void host_resize_from(TensorView<const T> dL_dy, TensorView<T> dL_dx, std::int64_t c0) {
  using A = host_acc_t<T>;
  const Shape xs = dL_dx.shape, ys = dL_dy.shape;
  if (xs.h == ys.h && xs.w == ys.w) {  // identity: an exact copy (no 0·inf = NaN from zero weights)
    for (std::int64_t n = 0; n < xs.n; ++n)
      for (std::int64_t i = 0; i < xs.h; ++i)
        for (std::int64_t j = 0; j < xs.w; ++j)
          for (std::int64_t c = 0; c < xs.c; ++c) dL_dx(n, i, j, c) = dL_dy(n, i, j, c0 + c);
    return;
  }
  std::vector<A> acc(static_cast<std::size_t>(xs.h * xs.w * xs.c));
  for (std::int64_t n = 0; n < xs.n; ++n) {
    std::fill(acc.begin(), acc.end(), A(0));
    auto at = [&](std::int64_t i, std::int64_t j) { return &acc[static_cast<std::size_t>((i * xs.w + j) * xs.c)]; };
    for (int i = 0; i < ys.h; ++i) {
      const LinearTap a = linear_tap(i, static_cast<int>(xs.h), static_cast<int>(ys.h));
      for (int j = 0; j < ys.w; ++j) {
        const LinearTap b = linear_tap(j, static_cast<int>(xs.w), static_cast<int>(ys.w));
        const T* g = &dL_dy(n, i, j, c0);
        A *q00 = at(a.i0, b.i0), *q01 = at(a.i0, b.i1), *q10 = at(a.i1, b.i0), *q11 = at(a.i1, b.i1);
        const A w00 = A(a.w0) * A(b.w0), w01 = A(a.w0) * A(b.w1), w10 = A(a.w1) * A(b.w0), w11 = A(a.w1) * A(b.w1);
        for (std::int64_t c = 0; c < xs.c; ++c) {
          const A v = load_as<A>(g[c]);
          q00[c] += w00 * v;
          q01[c] += w01 * v;
          q10[c] += w10 * v;
          q11[c] += w11 * v;
        }
      }
    }
    for (std::int64_t i = 0; i < xs.h * xs.w * xs.c; ++i)
      dL_dx.data[n * xs.h * xs.w * xs.c + i] = store_as<T>(acc[static_cast<std::size_t>(i)]);
  }
}

}  // namespace detail

/// y (N,H,W,C) = bilinear resize of x (N,h,w,C) to y's size (align_corners=False).
template <StorageScalar T>
void resize_bilinear_forward(Host&, TensorView<const T> x, TensorView<T> y) {
  check_resize_bilinear("resize_bilinear", x, y, "x", "y");
  detail::host_resize_into<T>(x, y, 0);
}

/// dL_dx (N,h,w,C) (=) adjoint of the resize applied to dL_dy (N,H,W,C).
template <StorageScalar T>
void resize_bilinear_backward(Host&, TensorView<const T> dL_dy, TensorView<T> dL_dx) {
  check_resize_bilinear("resize_bilinear", dL_dx, dL_dy, "dL_dx", "dL_dy");
  detail::host_resize_from<T>(dL_dy, dL_dx, 0);
}

}  // namespace ampkit

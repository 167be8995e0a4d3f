/// @brief Host backend Conv2d (forward, backward data, backward filter, backward bias): im2col
/// plus an Eigen GEMM per image and group, fp32 accumulation, one rounding to T per output.
///
/// Reference semantics and the gradient contract are in nn/ops/conv2d.hpp. This is the reference
/// the cuDNN path is tested against; it favours clarity over speed (one image at a time).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <vector>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/backend/host/host_scalar.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/conv2d.hpp"

namespace ampkit {

namespace host::detail {

template <class A>
using RowMatrix = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// im2col of one image and one group: col (P*Q, R*S*Cg), row = output pixel, column = (r,s,c').
template <HostScalar T>
void im2col(TensorView<const T> x, std::int64_t n, std::int64_t g, Shape w, Shape y, const Conv2dParams& p,
            RowMatrix<acc_t<T>>& col) {
  const std::int64_t cg = w.c;
  col.resize(y.h * y.w, w.h * w.w * cg);
  for (std::int64_t oh = 0; oh < y.h; ++oh)
    for (std::int64_t ow = 0; ow < y.w; ++ow) {
      auto* dst = col.data() + (oh * y.w + ow) * col.cols();
      for (std::int64_t r = 0; r < w.h; ++r) {
        const std::int64_t ih = oh * p.stride_h - p.pad_h + r * p.dilation_h;
        for (std::int64_t s = 0; s < w.w; ++s, dst += cg) {
          const std::int64_t iw = ow * p.stride_w - p.pad_w + s * p.dilation_w;
          if (ih < 0 || ih >= x.shape.h || iw < 0 || iw >= x.shape.w) {
            std::fill(dst, dst + cg, acc_t<T>(0));
            continue;
          }
          const T* src = &x(n, ih, iw, g * cg);
          for (std::int64_t c = 0; c < cg; ++c) dst[c] = widen(src[c]);
        }
      }
    }
}

/// The reverse scatter: dx_acc (H,W,C) += col2im(dcol) for one image and group.
template <class A>
void col2im(const RowMatrix<A>& dcol, std::int64_t g, Shape xs, Shape w, Shape y, const Conv2dParams& p,
            std::vector<A>& dx_acc) {
  const std::int64_t cg = w.c;
  for (std::int64_t oh = 0; oh < y.h; ++oh)
    for (std::int64_t ow = 0; ow < y.w; ++ow) {
      const A* src = dcol.data() + (oh * y.w + ow) * dcol.cols();
      for (std::int64_t r = 0; r < w.h; ++r) {
        const std::int64_t ih = oh * p.stride_h - p.pad_h + r * p.dilation_h;
        for (std::int64_t s = 0; s < w.w; ++s, src += cg) {
          const std::int64_t iw = ow * p.stride_w - p.pad_w + s * p.dilation_w;
          if (ih < 0 || ih >= xs.h || iw < 0 || iw >= xs.w) continue;
          A* dst = dx_acc.data() + (ih * xs.w + iw) * xs.c + g * cg;
          for (std::int64_t c = 0; c < cg; ++c) dst[c] += src[c];
        }
      }
    }
}

/// Weights of group g as a (Kg, R*S*Cg) matrix in the accumulation type.
template <HostScalar T>
RowMatrix<acc_t<T>> group_weights(TensorView<const T> w, std::int64_t g, std::int64_t groups) {
  const std::int64_t kg = w.shape.n / groups, cols = w.shape.h * w.shape.w * w.shape.c;
  RowMatrix<acc_t<T>> m(kg, cols);
  const T* src = w.data + g * kg * cols;
  for (std::int64_t i = 0; i < kg * cols; ++i) m.data()[i] = widen(src[i]);
  return m;
}

/// Output/grad-output pixels of image n, group g as a (P*Q, Kg) matrix.
template <HostScalar T>
RowMatrix<acc_t<T>> group_rows(TensorView<const T> y, std::int64_t n, std::int64_t g, std::int64_t kg) {
  RowMatrix<acc_t<T>> m(y.shape.h * y.shape.w, kg);
  for (std::int64_t i = 0; i < m.rows(); ++i) {
    const T* src = y.data + (n * y.shape.h * y.shape.w + i) * y.shape.c + g * kg;
    for (std::int64_t k = 0; k < kg; ++k) m(i, k) = widen(src[k]);
  }
  return m;
}

}  // namespace host::detail

/// y = conv2d(x, w) + bias (bias may be an empty view). Output WRITTEN.
/// @tparam T  storage type (float, half, bfloat16) or double (gradient checks)
template <HostScalar T>
void conv2d_forward(Host&, TensorView<const T> x, TensorView<const T> w, TensorView<const T> bias,
                    TensorView<T> y, const Conv2dParams& p) {
  detail::check_conv2d("conv2d_forward", x.shape, w.shape, y.shape, &bias, p);
  check_shape("conv2d_forward", "x", x, x.shape);
  check_shape("conv2d_forward", "w", w, w.shape);
  check_shape("conv2d_forward", "y", y, y.shape);
  using A = host::acc_t<T>;
  const std::int64_t kg = w.shape.n / p.groups;
  host::detail::RowMatrix<A> col, out;
  for (std::int64_t g = 0; g < p.groups; ++g) {
    const auto wg = host::detail::group_weights(w, g, p.groups);
    for (std::int64_t n = 0; n < x.shape.n; ++n) {
      host::detail::im2col(x, n, g, w.shape, y.shape, p, col);
      out.noalias() = col * wg.transpose();  // (PQ, Kg)
      for (std::int64_t i = 0; i < out.rows(); ++i) {
        T* dst = y.data + (n * y.shape.h * y.shape.w + i) * y.shape.c + g * kg;
        for (std::int64_t k = 0; k < kg; ++k) {
          A v = out(i, k);
          if (bias.data) v += host::widen(bias.data[g * kg + k]);
          dst[k] = host::narrow<T>(v);
        }
      }
    }
  }
}

/// dL_dx = conv2d_backward_data(dL_dy, w). dL_dx WRITTEN.
template <HostScalar T>
void conv2d_backward_data(Host&, TensorView<const T> dL_dy, TensorView<const T> w, TensorView<T> dL_dx,
                          const Conv2dParams& p) {
  detail::check_conv2d<const T>("conv2d_backward_data", dL_dx.shape, w.shape, dL_dy.shape, nullptr, p);
  check_shape("conv2d_backward_data", "dL_dy", dL_dy, dL_dy.shape);
  check_shape("conv2d_backward_data", "w", w, w.shape);
  check_shape("conv2d_backward_data", "dL_dx", dL_dx, dL_dx.shape);
  using A = host::acc_t<T>;
  const Shape xs = dL_dx.shape;
  const std::int64_t kg = w.shape.n / p.groups;
  std::vector<A> acc(static_cast<std::size_t>(xs.h * xs.w * xs.c));
  host::detail::RowMatrix<A> dcol;
  std::vector<host::detail::RowMatrix<A>> wgs;
  for (std::int64_t g = 0; g < p.groups; ++g) wgs.push_back(host::detail::group_weights(w, g, p.groups));
  for (std::int64_t n = 0; n < xs.n; ++n) {
    std::fill(acc.begin(), acc.end(), A(0));
    for (std::int64_t g = 0; g < p.groups; ++g) {
      dcol.noalias() = host::detail::group_rows(dL_dy, n, g, kg) * wgs[g];  // (PQ, RSCg)
      host::detail::col2im(dcol, g, xs, w.shape, dL_dy.shape, p, acc);
    }
    T* dst = dL_dx.data + n * xs.h * xs.w * xs.c;
    for (std::size_t i = 0; i < acc.size(); ++i) dst[i] = host::narrow<T>(acc[i]);
  }
}

/// dL_dw += conv2d_backward_filter(x, dL_dy), summed over the batch in the accumulation type.
template <HostScalar T>
void conv2d_backward_filter(Host&, TensorView<const T> x, TensorView<const T> dL_dy, TensorView<T> dL_dw,
                            const Conv2dParams& p) {
  detail::check_conv2d<const T>("conv2d_backward_filter", x.shape, dL_dw.shape, dL_dy.shape, nullptr, p);
  check_shape("conv2d_backward_filter", "x", x, x.shape);
  check_shape("conv2d_backward_filter", "dL_dy", dL_dy, dL_dy.shape);
  check_shape("conv2d_backward_filter", "dL_dw", dL_dw, dL_dw.shape);
  using A = host::acc_t<T>;
  const Shape ws = dL_dw.shape;
  const std::int64_t kg = ws.n / p.groups, cols = ws.h * ws.w * ws.c;
  host::detail::RowMatrix<A> col, acc(kg, cols);
  for (std::int64_t g = 0; g < p.groups; ++g) {
    acc.setZero();
    for (std::int64_t n = 0; n < x.shape.n; ++n) {
      host::detail::im2col(x, n, g, ws, dL_dy.shape, p, col);
      acc.noalias() += host::detail::group_rows(dL_dy, n, g, kg).transpose() * col;  // (Kg, RSCg)
    }
    T* dst = dL_dw.data + g * kg * cols;
    for (std::int64_t i = 0; i < kg * cols; ++i)
      dst[i] = host::narrow<T>(host::widen(dst[i]) + acc.data()[i]);
  }
}

/// dL_db += sum over (N,H,W) of dL_dy.
template <HostScalar T>
void conv2d_backward_bias(Host&, TensorView<const T> dL_dy, TensorView<T> dL_db) {
  check_shape("conv2d_backward_bias", "dL_dy", dL_dy, dL_dy.shape);
  check_shape("conv2d_backward_bias", "dL_db", dL_db, Shape{1, 1, 1, dL_dy.shape.c});
  using A = host::acc_t<T>;
  std::vector<A> acc(static_cast<std::size_t>(dL_dy.shape.c), A(0));
  const std::int64_t rows = dL_dy.shape.n * dL_dy.shape.h * dL_dy.shape.w;
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t k = 0; k < dL_dy.shape.c; ++k) acc[k] += host::widen(dL_dy.data[i * dL_dy.shape.c + k]);
  for (std::int64_t k = 0; k < dL_dy.shape.c; ++k)
    dL_db.data[k] = host::narrow<T>(host::widen(dL_db.data[k]) + acc[k]);
}

}  // namespace ampkit

/// @brief Host backend: deformable convolution (torchvision `deform_conv2d` semantics, no mask),
/// forward and backward w.r.t. input, offsets and weights. The reference the CUDA kernels are
/// tested against; see nn/ops/deform_conv2d.hpp for layouts and the sampling rule.
///
/// Gradient contract: dL_dx and dL_doffsets are written (=); dL_dw is accumulated (+=).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/deform_conv2d.hpp"
#include "ampkit/nn/ops/sampling_common.hpp"

namespace ampkit {
namespace detail {

/// Sizes of one deformable convolution, derived once from the validated shapes.
struct DeformDims {
  std::int64_t n, h, w, c, k, ho, wo;
  int taps, groups, c_per_group, k_per_group, offset_groups, c_per_offset_group;

  DeformDims(Shape x, Shape y, const DeformConv2dParams& p)
      : n(x.n), h(x.h), w(x.w), c(x.c), k(y.c), ho(y.h), wo(y.w), taps(p.taps()), groups(p.groups),
        c_per_group(static_cast<int>(x.c / p.groups)), k_per_group(static_cast<int>(y.c / p.groups)),
        offset_groups(p.offset_groups), c_per_offset_group(static_cast<int>(x.c / p.offset_groups)) {}
};

/// The bilinear sample of every (tap, channel) of output pixel (n, oh, ow): col[t·C + c].
template <class T, class A>
void host_deform_gather(TensorView<const T> x, TensorView<const T> off, const DeformConv2dParams& p,
                        const DeformDims& d, std::int64_t n, std::int64_t oh, std::int64_t ow, std::vector<A>& col) {
  const T* offp = &off(n, oh, ow, 0);
  for (int og = 0; og < d.offset_groups; ++og)
    for (int t = 0; t < d.taps; ++t) {
      const int i = t / p.kernel_w, j = t % p.kernel_w;
      const A py = A(oh * p.stride_h - p.pad_h + i * p.dilation_h) + load_as<A>(offp[(og * d.taps + t) * 2]);
      const A px = A(ow * p.stride_w - p.pad_w + j * p.dilation_w) + load_as<A>(offp[(og * d.taps + t) * 2 + 1]);
      const BilinearPoint<A> b(py, px, static_cast<int>(d.h), static_cast<int>(d.w));
      const A hy = A(1) - b.ly, hx = A(1) - b.lx;
      for (int cc = 0; cc < d.c_per_offset_group; ++cc) {
        const std::int64_t c = og * d.c_per_offset_group + cc;
        A v = 0;
        if (b.in_range) {
          if (b.v00) v += hy * hx * load_as<A>(x(n, b.y0, b.x0, c));
          if (b.v01) v += hy * b.lx * load_as<A>(x(n, b.y0, b.x0 + 1, c));
          if (b.v10) v += b.ly * hx * load_as<A>(x(n, b.y0 + 1, b.x0, c));
          if (b.v11) v += b.ly * b.lx * load_as<A>(x(n, b.y0 + 1, b.x0 + 1, c));
        }
        col[static_cast<std::size_t>(t * d.c + c)] = v;
      }
    }
}

/// Forward in any precision T (double for finite-difference checks).
template <class T>
void host_deform_conv2d_forward(TensorView<const T> x, TensorView<const T> off, TensorView<const T> wt,
                                TensorView<T> y, const DeformConv2dParams& p) {
  using A = host_acc_t<T>;
  const DeformDims d(x.shape, y.shape, p);
  std::vector<A> col(static_cast<std::size_t>(d.taps * d.c));
  for (std::int64_t n = 0; n < d.n; ++n)
    for (std::int64_t oh = 0; oh < d.ho; ++oh)
      for (std::int64_t ow = 0; ow < d.wo; ++ow) {
        host_deform_gather<T, A>(x, off, p, d, n, oh, ow, col);
        for (std::int64_t k = 0; k < d.k; ++k) {
          const std::int64_t g = k / d.k_per_group;
          const T* wk = wt.data + k * d.taps * d.c_per_group;  // (kh, kw, C/groups) of filter k
          A acc = 0;
          for (int t = 0; t < d.taps; ++t) {
            const A* cp = &col[static_cast<std::size_t>(t * d.c + g * d.c_per_group)];
            for (int cg = 0; cg < d.c_per_group; ++cg) acc += load_as<A>(wk[t * d.c_per_group + cg]) * cp[cg];
          }
          y(n, oh, ow, k) = store_as<T>(acc);
        }
      }
}

/// Backward in any precision T: dL_dx, dL_doff written; dL_dw accumulated.
template <class T>
void host_deform_conv2d_backward(TensorView<const T> x, TensorView<const T> off, TensorView<const T> wt,
                                 TensorView<const T> dL_dy, TensorView<T> dL_dx, TensorView<T> dL_doff,
                                 TensorView<T> dL_dw, const DeformConv2dParams& p) {
  using A = host_acc_t<T>;
  const DeformDims d(x.shape, dL_dy.shape, p);
  std::vector<A> col(static_cast<std::size_t>(d.taps * d.c)), dcol(col.size());
  std::vector<A> dx(static_cast<std::size_t>(d.h * d.w * d.c));
  std::vector<A> dw(static_cast<std::size_t>(dL_dw.numel()), A(0));
  for (std::int64_t n = 0; n < d.n; ++n) {
    std::fill(dx.begin(), dx.end(), A(0));
    auto dx_at = [&](std::int64_t i, std::int64_t j, std::int64_t c) -> A& {
      return dx[static_cast<std::size_t>((i * d.w + j) * d.c + c)];
    };
    for (std::int64_t oh = 0; oh < d.ho; ++oh)
      for (std::int64_t ow = 0; ow < d.wo; ++ow) {
        host_deform_gather<T, A>(x, off, p, d, n, oh, ow, col);
        std::fill(dcol.begin(), dcol.end(), A(0));
        for (std::int64_t k = 0; k < d.k; ++k) {
          const std::int64_t g = k / d.k_per_group;
          const A gk = load_as<A>(dL_dy(n, oh, ow, k));
          const T* wk = wt.data + k * d.taps * d.c_per_group;
          A* dwk = &dw[static_cast<std::size_t>(k * d.taps * d.c_per_group)];
          for (int t = 0; t < d.taps; ++t)
            for (int cg = 0; cg < d.c_per_group; ++cg) {
              const std::size_t ci = static_cast<std::size_t>(t * d.c + g * d.c_per_group + cg);
              dcol[ci] += load_as<A>(wk[t * d.c_per_group + cg]) * gk;
              dwk[t * d.c_per_group + cg] += gk * col[ci];
            }
        }
        // Scatter the column gradient to the input and reduce it against the sample's slope
        // for the offsets (torchvision's col2im and col2im_coord, fused per tap).
        const T* offp = &off(n, oh, ow, 0);
        T* doffp = &dL_doff(n, oh, ow, 0);
        for (int og = 0; og < d.offset_groups; ++og)
          for (int t = 0; t < d.taps; ++t) {
            const int i = t / p.kernel_w, j = t % p.kernel_w;
            const A py = A(oh * p.stride_h - p.pad_h + i * p.dilation_h) + load_as<A>(offp[(og * d.taps + t) * 2]);
            const A px = A(ow * p.stride_w - p.pad_w + j * p.dilation_w) + load_as<A>(offp[(og * d.taps + t) * 2 + 1]);
            const BilinearPoint<A> b(py, px, static_cast<int>(d.h), static_cast<int>(d.w));
            const A hy = A(1) - b.ly, hx = A(1) - b.lx;
            A g_dy = 0, g_dx = 0;
            for (int cc = 0; cc < d.c_per_offset_group; ++cc) {
              const std::int64_t c = og * d.c_per_offset_group + cc;
              const A gc = dcol[static_cast<std::size_t>(t * d.c + c)];
              const A v00 = b.v00 ? load_as<A>(x(n, b.y0, b.x0, c)) : A(0);
              const A v01 = b.v01 ? load_as<A>(x(n, b.y0, b.x0 + 1, c)) : A(0);
              const A v10 = b.v10 ? load_as<A>(x(n, b.y0 + 1, b.x0, c)) : A(0);
              const A v11 = b.v11 ? load_as<A>(x(n, b.y0 + 1, b.x0 + 1, c)) : A(0);
              g_dy += gc * (hx * (v10 - v00) + b.lx * (v11 - v01));
              g_dx += gc * (hy * (v01 - v00) + b.ly * (v11 - v10));
              if (b.v00) dx_at(b.y0, b.x0, c) += hy * hx * gc;
              if (b.v01) dx_at(b.y0, b.x0 + 1, c) += hy * b.lx * gc;
              if (b.v10) dx_at(b.y0 + 1, b.x0, c) += b.ly * hx * gc;
              if (b.v11) dx_at(b.y0 + 1, b.x0 + 1, c) += b.ly * b.lx * gc;
            }
            doffp[(og * d.taps + t) * 2] = store_as<T>(g_dy);
            doffp[(og * d.taps + t) * 2 + 1] = store_as<T>(g_dx);
          }
      }
    for (std::int64_t i = 0; i < d.h * d.w * d.c; ++i)
      dL_dx.data[n * d.h * d.w * d.c + i] = store_as<T>(dx[static_cast<std::size_t>(i)]);
  }
  for (std::int64_t i = 0; i < dL_dw.numel(); ++i)
    dL_dw.data[i] = store_as<T>(load_as<A>(dL_dw.data[i]) + dw[static_cast<std::size_t>(i)]);
}

}  // namespace detail

/// y = deform_conv2d(x, offsets, weight). x (N,H,W,C), offsets (N,Ho,Wo,2·og·kh·kw),
/// weight (K,kh,kw,C/groups), y (N,Ho,Wo,K). Computes in float, rounds y once to T.
template <StorageScalar T>
void deform_conv2d_forward(Host&, TensorView<const T> x, TensorView<const T> offsets, TensorView<const T> weight,
                           TensorView<T> y, const DeformConv2dParams& p) {
  check_deform_conv2d("deform_conv2d", x, offsets, weight, y, p);
  detail::host_deform_conv2d_forward<T>(x, offsets, weight, y, p);
}

/// dL_dx (=), dL_doffsets (=), dL_dw (+=) from dL_dy (N,Ho,Wo,K).
template <StorageScalar T>
void deform_conv2d_backward(Host&, TensorView<const T> x, TensorView<const T> offsets, TensorView<const T> weight,
                            TensorView<const T> dL_dy, TensorView<T> dL_dx, TensorView<T> dL_doffsets,
                            TensorView<T> dL_dw, const DeformConv2dParams& p) {
  check_deform_conv2d("deform_conv2d", x, offsets, weight, dL_dy, p, "dL_dy");
  check_shape("deform_conv2d", "dL_dx", dL_dx, x.shape);
  check_shape("deform_conv2d", "dL_doffsets", dL_doffsets, offsets.shape);
  check_shape("deform_conv2d", "dL_dw", dL_dw, weight.shape);
  detail::host_deform_conv2d_backward<T>(x, offsets, weight, dL_dy, dL_dx, dL_doffsets, dL_dw, p);
}

}  // namespace ampkit

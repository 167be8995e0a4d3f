/// @brief Deformable convolution (torchvision `deform_conv2d` semantics, no mask): parameters,
/// output shape and validation shared by the host and CUDA backends, and the bilinear sampling
/// rule both backends apply.
///
/// Layouts (all NHWC, see core/tensor.hpp):
///   x        (N, H, W, C)
///   weight   (K, kh, kw, C/groups)                         KRSC, as every ampkit conv
///   offsets  (N, Ho, Wo, 2·offset_groups·kh·kw)
///   y        (N, Ho, Wo, K)
/// The offset channel order is torchvision's exactly: channel ((g·kh + i)·kw + j)·2 + {0: dy, 1: dx}
/// for offset group g and kernel tap (i, j). So an NHWC offsets tensor is torchvision's NCHW
/// offset permuted (0, 2, 3, 1) and nothing else, and it is what DEKR's affine offsets produce
/// before mmpose's final permute (nn/ops/affine_offsets.hpp). Keeping the 2·kh·kw values of one
/// (pixel, group) contiguous means one sampling thread group reads all its offsets in one line.
///
/// Tap (i, j) of output pixel (oh, ow) samples input channel c (offset group g = c / (C/og)) at
///   py = oh·stride_h − pad_h + i·dilation_h + dy,   px = ow·stride_w − pad_w + j·dilation_w + dx
/// bilinearly, with zeros outside the image (a sample is 0 when py <= −1, py >= H, px <= −1 or
/// px >= W; corners outside the image contribute 0). Then y = grouped conv of the samples.
///
/// Gradient contract: dL_dx and dL_doffsets are written (=); dL_dw is accumulated (+=) in T.
#pragma once

#include <cmath>
#include <cstdint>

#include "ampkit/config.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// Hyper-parameters of a deformable convolution. DEKR's adaptive block: 3×3, stride 1, pad 1,
/// groups = offset_groups = 17.
struct DeformConv2dParams {
  int kernel_h = 3, kernel_w = 3;
  int stride_h = 1, stride_w = 1;
  int pad_h = 1, pad_w = 1;
  int dilation_h = 1, dilation_w = 1;
  int groups = 1;         ///< weight groups: output channel k sees input channels of group k/(K/groups)
  int offset_groups = 1;  ///< input channels c of group c/(C/offset_groups) share one offset field

  constexpr int taps() const { return kernel_h * kernel_w; }
  /// Channels of the offsets tensor: 2 · offset_groups · kh · kw.
  constexpr int offset_channels() const { return 2 * offset_groups * kernel_h * kernel_w; }
};

inline std::int64_t deform_conv2d_output_extent(std::int64_t in, int kernel, int stride, int pad, int dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

/// (N, H, W, C) input and K output channels -> (N, Ho, Wo, K).
inline Shape deform_conv2d_output_shape(Shape x, std::int64_t k_out, const DeformConv2dParams& p) {
  return {x.n, deform_conv2d_output_extent(x.h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h),
          deform_conv2d_output_extent(x.w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w), k_out};
}

/// Check the hyper-parameters and every shape; messages name the op, the argument and both values.
template <class X, class O, class W, class Y>
void check_deform_conv2d(const char* op, const TensorView<X>& x, const TensorView<O>& offsets,
                         const TensorView<W>& weight, const TensorView<Y>& y, const DeformConv2dParams& p,
                         const char* y_name = "y") {
  AMPKIT_CHECK(p.kernel_h >= 1 && p.kernel_w >= 1, op, ": kernel must be at least 1x1, given ", p.kernel_h, "x",
               p.kernel_w);
  AMPKIT_CHECK(p.stride_h >= 1 && p.stride_w >= 1, op, ": stride must be >= 1, given ", p.stride_h, "x",
               p.stride_w);
  AMPKIT_CHECK(p.dilation_h >= 1 && p.dilation_w >= 1, op, ": dilation must be >= 1, given ", p.dilation_h, "x",
               p.dilation_w);
  AMPKIT_CHECK(p.pad_h >= 0 && p.pad_w >= 0, op, ": padding must be >= 0, given ", p.pad_h, "x", p.pad_w);
  AMPKIT_CHECK(p.groups >= 1 && p.offset_groups >= 1, op, ": groups (", p.groups, ") and offset_groups (",
               p.offset_groups, ") must be >= 1");
  const Shape xs = x.shape, ws = weight.shape;
  AMPKIT_CHECK(xs.c % p.groups == 0, op, ": input channels ", xs.c, " are not divisible by groups ", p.groups);
  AMPKIT_CHECK(xs.c % p.offset_groups == 0, op, ": input channels ", xs.c, " are not divisible by offset_groups ",
               p.offset_groups);
  AMPKIT_CHECK(ws.n % p.groups == 0, op, ": output channels ", ws.n, " (weight dim 0) are not divisible by groups ",
               p.groups);
  const Shape w_want{ws.n, p.kernel_h, p.kernel_w, xs.c / p.groups};
  AMPKIT_CHECK(ws == w_want, op, ": weight has shape ", ws, ", expected ", w_want,
               " (K, kh, kw, C/groups) for input ", xs, " and groups ", p.groups);
  const Shape y_want = deform_conv2d_output_shape(xs, ws.n, p);
  AMPKIT_CHECK(y_want.h >= 1 && y_want.w >= 1, op, ": input ", xs.h, "x", xs.w, " is too small for kernel ",
               p.kernel_h, "x", p.kernel_w, " with padding ", p.pad_h, "x", p.pad_w, " and dilation ", p.dilation_h,
               "x", p.dilation_w);
  check_shape(op, "offsets", offsets, Shape{xs.n, y_want.h, y_want.w, p.offset_channels()});
  check_shape(op, y_name, y, y_want);
  AMPKIT_CHECK(x.data != nullptr || x.numel() == 0, op, ": x has no data");
  AMPKIT_CHECK(weight.data != nullptr || weight.numel() == 0, op, ": weight has no data");
}

namespace detail {

/// Bilinear weights and corner validity of one sample point; shared by forward, the input
/// gradient and the offset gradient so all three agree with torchvision to the corner.
template <class A>
struct BilinearPoint {
  int y0, x0;             // top-left corner (floor)
  A ly, lx;               // fractional parts
  bool in_range;          // false: the forward sample is 0 (py <= -1, py >= H, px <= -1, px >= W)
  bool v00, v01, v10, v11;  // corner (y0 + a, x0 + b) lies inside the image

  AMPKIT_HOST_DEVICE AMPKIT_FORCEINLINE BilinearPoint(A py, A px, int h, int w) {
    using std::floor;
    in_range = !(py <= A(-1) || py >= A(h) || px <= A(-1) || px >= A(w));
    const A fy = floor(py), fx = floor(px);
    // Far outside the image the integer conversion could overflow; every corner is invalid there.
    const bool finite = fy > A(-4) && fy < A(h + 4) && fx > A(-4) && fx < A(w + 4);
    y0 = finite ? static_cast<int>(fy) : -4;
    x0 = finite ? static_cast<int>(fx) : -4;
    ly = py - fy;
    lx = px - fx;
    const bool ya = y0 >= 0 && y0 < h, yb = y0 + 1 >= 0 && y0 + 1 < h;
    const bool xa = x0 >= 0 && x0 < w, xb = x0 + 1 >= 0 && x0 + 1 < w;
    v00 = ya && xa;
    v01 = ya && xb;
    v10 = yb && xa;
    v11 = yb && xb;
  }
};

}  // namespace detail
}  // namespace ampkit

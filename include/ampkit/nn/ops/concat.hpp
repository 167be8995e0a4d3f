/// @brief Channel concatenation (and its backward, the split), optionally resizing every input
/// bilinearly to the output size first: the DEKR neck (4 HRNet branches resized to 1/4 and
/// concatenated to 480 channels) in one pass. Validation shared by the host and CUDA backends.
///
/// `concat`: every input has the output's N, H, W; y = [x_0 | x_1 | ...] along C.
/// `resize_concat`: every input has the output's N; input i is resized with
/// F.interpolate(mode='bilinear', align_corners=False) to (H, W) (an input already at (H, W) is
/// copied exactly) and written to its channel slice. Backward writes (=) every input gradient.
#pragma once

#include <cstdint>
#include <span>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/nn/ops/sampling_common.hpp"

namespace ampkit {

/// Validate the inputs (or their gradients) against the output (or its gradient).
/// @param resize  false for concat (spatial sizes must match), true for resize_concat.
template <class X, class Y>
void check_concat(const char* op, std::span<const TensorView<X>> xs, const TensorView<Y>& y, bool resize) {
  AMPKIT_CHECK(!xs.empty(), op, ": needs at least one input");
  AMPKIT_CHECK(y.data != nullptr || y.numel() == 0, op, ": output has no data");
  std::int64_t c_total = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape s = xs[i].shape;
    AMPKIT_CHECK(xs[i].data != nullptr || xs[i].numel() == 0, op, ": input ", i, " has no data");
    AMPKIT_CHECK(s.n == y.shape.n, op, ": input ", i, " has batch ", s.n, ", output has batch ", y.shape.n);
    if (!resize) {
      AMPKIT_CHECK(s.h == y.shape.h && s.w == y.shape.w, op, ": input ", i, " is ", s.h, "x", s.w,
                   ", output is ", y.shape.h, "x", y.shape.w, " (use resize_concat to resize)");
    } else {
      AMPKIT_CHECK(y.numel() == 0 || (s.h > 0 && s.w > 0), op, ": input ", i, " of shape ", s,
                   " is empty and cannot be resized");
    }
    c_total += s.c;
  }
  AMPKIT_CHECK(c_total == y.shape.c, op, ": inputs have ", c_total, " channels in total, output has ",
               y.shape.c);
}

}  // namespace ampkit

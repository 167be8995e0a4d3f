/// @brief Host DEKR loss (forward and backward): the reference the CUDA kernels are tested
/// against. Sums in double, so its value is the exact fp32-input result to ~1e-15; the math is in
/// loss/dekr_loss.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/loss/dekr_loss.hpp"

namespace ampkit {

namespace host::detail {
/// Mask value of element i of a heatmap tensor with c channels (mask may be per pixel or per element).
inline float heatmap_mask_at(const TensorView<const float>& mask, std::int64_t i, std::int64_t c) {
  if (!mask.data) return 1.f;
  return mask.shape.c == 1 ? mask.data[i / c] : mask.data[i];
}
}  // namespace host::detail

/// result = [total, heatmap, displacement, N_pos] (fp32, (1,1,1,4)), WRITTEN.
template <StorageScalar T>
void dekr_loss_forward(Host&, const DekrLossInputs<T>& in, TensorView<float> result, const DekrLossConfig& cfg) {
  in.validate("dekr_loss_forward");
  ampkit::detail::check_dekr_loss_result("dekr_loss_forward", result);
  const std::int64_t nh = in.heatmaps.numel(), ch = in.heatmaps.shape.c;
  double hm = 0;
  for (std::int64_t i = 0; i < nh; ++i) {
    const double diff = static_cast<double>(static_cast<float>(in.heatmaps.data[i])) - in.gt_heatmaps.data[i];
    hm += static_cast<double>(host::detail::heatmap_mask_at(in.heatmap_mask, i, ch)) * in.heatmap_weights.data[i] *
          diff * diff;
  }
  const double beta = cfg.beta;
  double disp = 0;
  std::int64_t n_pos = 0;
  for (std::int64_t i = 0; i < in.displacements.numel(); ++i) {
    const double w = in.displacement_weights.data[i];
    if (w > 0) ++n_pos;
    const double d = static_cast<double>(static_cast<float>(in.displacements.data[i])) - in.gt_displacements.data[i];
    const double ad = std::abs(d);
    disp += w * (ad < beta ? d * d / (2 * beta) : ad - beta / 2);
  }
  const double l_hm = cfg.heatmap_weight * hm / static_cast<double>(nh);
  const double l_disp = cfg.displacement_weight * disp / static_cast<double>(std::max<std::int64_t>(n_pos, 1));
  result.data[0] = static_cast<float>(l_hm + l_disp);
  result.data[1] = static_cast<float>(l_hm);
  result.data[2] = static_cast<float>(l_disp);
  result.data[3] = static_cast<float>(n_pos);
}

/// dL_dheatmaps, dL_ddisplacements WRITTEN: the loss gradient × (*scale, if given) × factor.
template <StorageScalar T>
void dekr_loss_backward(Host&, const DekrLossInputs<T>& in, TensorView<const float> result,
                        TensorView<const float> scale, float factor, TensorView<T> dL_dheatmaps,
                        TensorView<T> dL_ddisplacements, const DekrLossConfig& cfg) {
  in.validate("dekr_loss_backward");
  ampkit::detail::check_dekr_loss_result("dekr_loss_backward", result);
  check_shape("dekr_loss_backward", "dL_dheatmaps", dL_dheatmaps, in.heatmaps.shape);
  check_shape("dekr_loss_backward", "dL_ddisplacements", dL_ddisplacements, in.displacements.shape);
  if (scale.data) check_shape("dekr_loss_backward", "scale", scale, Shape{1, 1, 1, 1});
  const float s = (scale.data ? scale.data[0] : 1.f) * factor;
  const std::int64_t nh = in.heatmaps.numel(), ch = in.heatmaps.shape.c;
  // Same fp32 expression order as the CUDA kernel: c_hm = 2·w_hm·s/numel once, then per element.
  const float c_hm = 2.f * cfg.heatmap_weight * s / static_cast<float>(nh);
  for (std::int64_t i = 0; i < nh; ++i) {
    const float diff = static_cast<float>(in.heatmaps.data[i]) - in.gt_heatmaps.data[i];
    const float mw = host::detail::heatmap_mask_at(in.heatmap_mask, i, ch) * in.heatmap_weights.data[i];
    dL_dheatmaps.data[i] = convert<T>(c_hm * (mw * diff));
  }
  const float c_d = cfg.displacement_weight * s / std::max(result.data[3], 1.f);
  const float beta = cfg.beta;
  for (std::int64_t i = 0; i < in.displacements.numel(); ++i) {
    const float d = static_cast<float>(in.displacements.data[i]) - in.gt_displacements.data[i];
    const float ds = std::abs(d) < beta ? d / beta : (d > 0 ? 1.f : (d < 0 ? -1.f : 0.f));
    dL_ddisplacements.data[i] = convert<T>(c_d * (in.displacement_weights.data[i] * ds));
  }
}

}  // namespace ampkit

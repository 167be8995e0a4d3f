/// @brief Gradient clipping by global L2 norm, with torch.nn.utils.clip_grad_norm_'s semantics,
/// applied to unscaled gradients (mmengine: unscale_, then clip, then step).
#pragma once

#include "ampkit/config.hpp"
#include "ampkit/core/error.hpp"

namespace ampkit::optim {

/// mmengine `clip_grad=dict(max_norm=...)` (norm_type 2). DEKR uses none.
struct ClipGradConfig {
  bool enabled = false;
  double max_norm = 0.0;

  static ClipGradConfig none() { return {}; }
  static ClipGradConfig norm(double max_norm) {
    AMPKIT_CHECK(max_norm > 0.0, "clip_grad: max_norm must be positive, got ", max_norm);
    return {true, max_norm};
  }
};

/// torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to at most 1, all in fp32.
/// (torch evaluates `max_norm / tensor` as reciprocal(tensor) * max_norm.) A NaN norm gives a NaN
/// coefficient, as in torch; that step is skipped by the scaler anyway.
AMPKIT_HOST_DEVICE inline float clip_coefficient(float total_norm, double max_norm) {
  const float c = (1.f / (total_norm + 1e-6f)) * static_cast<float>(max_norm);
  return c > 1.f ? 1.f : c;
}

}  // namespace ampkit::optim

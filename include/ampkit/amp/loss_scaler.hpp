/// @brief Loss scalers: torch GradScaler's dynamic scaling and mmengine's static scale for the fp16
/// policy, and a no-op scaler that the bf16 / fp32 policies get at compile time.
///
/// A scaler here is a small settings object with an `update(StepState&, found_inf)` rule; the
/// scale itself lives in StepState (device memory). The rule runs in the one-thread finalize of
/// the step, on the device, after the gradients were checked.
#pragma once

#include <string>
#include <type_traits>

#include "ampkit/amp/step_state.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::amp {

/// mmengine's `loss_scale`: 'dynamic' (default under --amp) or a number (a static scale).
enum class ScaleMode {
  kDynamic,  ///< GradScaler(): x growth after growth_interval finite steps, x backoff on inf/NaN
  kStatic,   ///< GradScaler(init_scale=s) + update(s): the scale stays s; inf/NaN still skips
};

/// Settings of the fp16 loss scaler (torch GradScaler's defaults).
struct LossScalerConfig {
  ScaleMode mode = ScaleMode::kDynamic;
  float init_scale = 65536.f;  ///< 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  std::int32_t growth_interval = 2000;
  /// A run whose scale falls below this stops with a clear message (checked when the host reads
  /// the state back, never in the step). Below 1 the fp16 gradients overflow even unscaled.
  float min_scale = 1.f;

  void validate() const {
    AMPKIT_CHECK(init_scale > 0.f && std::isfinite(init_scale),
                 "loss scaler: init_scale must be positive and finite, got ", init_scale);
    if (mode == ScaleMode::kDynamic) {
      AMPKIT_CHECK(growth_factor > 1.0,
                   "loss scaler: growth_factor must be > 1 (torch asserts the same), got ", growth_factor);
      AMPKIT_CHECK(backoff_factor < 1.0 && backoff_factor > 0.0,
                   "loss scaler: backoff_factor must be in (0, 1), got ", backoff_factor);
      AMPKIT_CHECK(growth_interval >= 1, "loss scaler: growth_interval must be >= 1, got ", growth_interval);
    }
  }
};

/// The fp16 policy's scaler: skips the step on inf/NaN; dynamic or static scale.
struct LossScaler {
  static constexpr bool kScales = true;  ///< multiplies the loss; gradients must be unscaled
  static constexpr bool kSkipsNonFinite = true;
  LossScalerConfig config{};

  float initial_scale() const { return config.init_scale; }

  /// torch `_amp_update_scale_` (dynamic) or `update(new_scale)` (static), on StepState.
  /// The products are formed in fp64 and stored as fp32, as torch's kernel does.
  AMPKIT_HOST_DEVICE void update(StepState& s, bool found_inf) const {
    if (config.mode == ScaleMode::kStatic) {
      s.scale = config.init_scale;  // torch's update(new_scale) leaves the growth tracker alone
      return;
    }
    if (found_inf) {
      s.scale = static_cast<float>(static_cast<double>(s.scale) * config.backoff_factor);
      s.growth_tracker = 0;
    } else {
      const std::int32_t successful = s.growth_tracker + 1;
      if (successful == config.growth_interval) {
        const float grown = static_cast<float>(static_cast<double>(s.scale) * config.growth_factor);
        if (is_finite(grown)) s.scale = grown;  // never grow past fp32's range to inf
        s.growth_tracker = 0;
      } else {
        s.growth_tracker = successful;
      }
    }
  }
};

/// bf16 and fp32 need no loss scaling (their exponent range is fp32's): scale 1, never skips.
/// Chosen at compile time, so those policies pay nothing for the scaler.
struct NoLossScaler {
  static constexpr bool kScales = false;
  static constexpr bool kSkipsNonFinite = false;
  float initial_scale() const { return 1.f; }
  AMPKIT_HOST_DEVICE void update(StepState&, bool) const {}
};

/// The scaler a policy uses: LossScaler where PrecisionTraits<P>::needs_loss_scaling.
template <PrecisionPolicy P>
using loss_scaler_t = std::conditional_t<PrecisionTraits<P>::needs_loss_scaling, LossScaler, NoLossScaler>;

template <class S>
concept LossScalerType = std::is_same_v<S, LossScaler> || std::is_same_v<S, NoLossScaler>;

}  // namespace ampkit::amp

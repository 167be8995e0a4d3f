/// @brief StepState: the loss scale, the skip decision, the counters and the optimizer's scalars of
/// one training run, as ONE small struct that lives in device memory (host memory on ampkit::Host).
///
/// Why on the device: the scale update, the skip decision and the optimizer's step count depend on
/// whether this step's gradients were finite, which is only known on the device. Keeping every
/// such scalar there means the step never waits for the host (no cudaMemcpy, no sync), so it can
/// be captured once as a CUDA graph and replayed. The host reads it back asynchronously
/// (StepReadout) a few times a second for logging.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "ampkit/config.hpp"

namespace ampkit::amp {

/// Device-resident state of the AMP step. Plain data: copied bytewise to pinned memory for logs.
struct StepState {
  // ---- loss scaler (torch GradScaler's _scale and _growth_tracker) ----
  float scale = 1.f;                ///< the loss scale the next backward multiplies by
  std::int32_t growth_tracker = 0;  ///< consecutive finite steps since the last growth/backoff
  // ---- the latest step's decision (written by finalize, read by the update pass) ----
  std::int32_t found_inf = 0;  ///< 1: this step's gradients had an inf/NaN; the update is skipped
  float inv_scale = 1.f;       ///< 1/scale used to unscale this step's gradients
  float clip_coef = 1.f;       ///< min(max_norm / (norm + 1e-6), 1) when clipping, else 1
  float grad_norm = 0.f;       ///< global L2 norm of the unscaled gradients (inf/NaN if found_inf)
  // Explicit padding up to the 8-byte counters: the struct is written to checkpoints byte for
  // byte (amp.step_state), so it must have no implicit padding, whose bytes are whatever the
  // memory held before. With only pad0, bytes 28..31 were such padding; under
  // tools/sanitize_host.sh (a different allocation pattern) test_train once found a resumed run's
  // amp.step_state differing from the uninterrupted run's while every other tensor and logged
  // value agreed, which only those bytes explain (not reproduced in 10 further runs).
  std::int32_t pad0 = 0, pad1 = 0;
  // ---- counters ----
  std::int64_t n_steps = 0;           ///< optimizer steps attempted (update iterations)
  std::int64_t n_skipped = 0;         ///< of which skipped for inf/NaN
  std::int64_t n_skipped_in_row = 0;  ///< consecutive skipped steps up to now
  // ---- optimizer ----
  double lr = 0.0;                    ///< written by the host's schedule before each step
  std::int64_t opt_step = 0;          ///< applied updates: torch's state['step'] (skips don't count)
  double beta1_pow = 1.0;             ///< beta1^opt_step (Adam), by repeated fp64 multiplication
  double beta2_pow = 1.0;             ///< beta2^opt_step
  float k[4] = {0.f, 0.f, 0.f, 0.f};  ///< per-step fp32 constants prepared by the optimizer rule
};

// No implicit padding anywhere (see pad0/pad1): the members' sizes add up to the struct's.
static_assert(sizeof(StepState) == 8 * 4 + 7 * 8 + 4 * 4 && offsetof(StepState, n_steps) == 32,
              "StepState must have no implicit padding: it is saved to checkpoints byte for byte");

/// One block's share of the gradient check: sum of squared unscaled gradients, and whether any
/// scaled gradient was inf/NaN.
struct GradPartial {
  double sumsq = 0.0;
  std::int32_t nonfinite = 0;
  std::int32_t pad = 0;
};

/// 1/scale as torch computes it: the reciprocal in fp64, rounded to fp32 ("FP32 division can be
/// imprecise for certain compile options"). Exact for the powers of two dynamic scaling produces.
AMPKIT_HOST_DEVICE inline float inv_scale_of(float scale) {
  return static_cast<float>(1.0 / static_cast<double>(scale));
}

/// isfinite that nvcc and g++ both accept in host/device code.
AMPKIT_HOST_DEVICE inline bool is_finite(float x) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}
AMPKIT_HOST_DEVICE inline bool is_finite(double x) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}

}  // namespace ampkit::amp

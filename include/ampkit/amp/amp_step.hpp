/// @brief The backend-independent parts of the AMP optimizer step: the one-thread finalize that
/// turns the gradient check into a decision (skip, clip, scale update, optimizer scalars), the
/// statistics the host reads back, and the scale-collapse check.
///
/// The step, on either backend (backend/host/amp_step.hpp, backend/cuda/amp_step.cuh):
///   1. check     one pass over the flat gradients: any scaled gradient inf/NaN? sum of squares
///                of the unscaled gradients (for the norm and clipping). Per-block partials.
///   2. finalize  one thread: reduce the partials in a fixed order, decide, update StepState.
///   3. update    one pass: unscale (x inv_scale), clip (x clip_coef), optimizer rule on the fp32
///                master, write the storage-type copy, zero the gradients. Everything but the
///                zeroing is skipped when found_inf is set.
/// Two passes over the gradients is the minimum: the skip decision needs every gradient before
/// the first update. Unscaling is fused into pass 3 (the unscaled gradients are never stored).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "ampkit/amp/loss_scaler.hpp"
#include "ampkit/amp/step_state.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/optim/grad_clip.hpp"
#include "ampkit/optim/optimizer.hpp"

namespace ampkit::amp {

/// What the step does besides the optimizer rule (settings, passed by value to kernels).
struct StepOptions {
  optim::ClipGradConfig clip{};
  /// Compute the global gradient norm every step (for logs) even without a scaler or clipping.
  /// Costs one read pass over the gradients under bf16/fp32; free under fp16 (the check pass
  /// runs anyway).
  bool track_grad_norm = true;
};

/// Decide the step from the reduced check (sum of squares of unscaled gradients, any inf/NaN):
/// torch GradScaler.unscale_ + clip_grad_norm_ + step's skip + update, in that order.
template <optim::OptimizerRule Rule, LossScalerType Scaler>
AMPKIT_HOST_DEVICE void finalize_step(StepState& s, double sumsq, bool nonfinite, const Rule& rule,
                                      const Scaler& scaler, const StepOptions& opt) {
  s.inv_scale = Scaler::kScales ? inv_scale_of(s.scale) : 1.f;
#if defined(__CUDA_ARCH__)
  s.grad_norm = static_cast<float>(::sqrt(sumsq));
#else
  s.grad_norm = static_cast<float>(std::sqrt(sumsq));
#endif
  s.clip_coef = opt.clip.enabled ? optim::clip_coefficient(s.grad_norm, opt.clip.max_norm) : 1.f;
  const bool skip = Scaler::kSkipsNonFinite && nonfinite;
  s.n_steps += 1;
  if (skip) {
    s.found_inf = 1;
    s.n_skipped += 1;
    s.n_skipped_in_row += 1;
  } else {
    s.found_inf = 0;
    s.n_skipped_in_row = 0;
    s.opt_step += 1;
    rule.prepare(s);
  }
  scaler.update(s, nonfinite);  // after the step, with this step's verdict (torch: update())
}

/// A snapshot of StepState for logs (read asynchronously by StepReadout).
struct StepStats {
  StepState state{};
  float scale() const { return state.scale; }
  std::int64_t n_steps() const { return state.n_steps; }
  std::int64_t n_skipped() const { return state.n_skipped; }
  float grad_norm() const { return state.grad_norm; }
  double lr() const { return state.lr; }
  bool last_skipped() const { return state.found_inf != 0; }
  /// One log line: "scale 65536 skipped 3/1200 (last step skipped) grad_norm 0.82 lr 0.001".
  std::string summary() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "scale %g skipped %lld/%lld%s grad_norm %.4g lr %.6g",
                  static_cast<double>(state.scale), static_cast<long long>(state.n_skipped),
                  static_cast<long long>(state.n_steps),
                  state.found_inf ? " (last step skipped: inf/NaN gradients)" : "",
                  static_cast<double>(state.grad_norm), state.lr);
    return buf;
  }
};

/// Asynchronous reader of StepState for logging, specialised per backend (pinned memory + event
/// on CUDA): request() after a step enqueues the copy, poll() returns the snapshot once it landed.
template <class Ctx>
class StepReadout;

/// Stop a run whose loss scale collapsed: below `min_scale` the fp16 gradients overflow even at
/// (almost) no scaling, so every step is skipped or trains on garbage. Called where the host
/// reads the state back, never inside the step.
inline void check_scale_floor(const StepStats& st, float min_scale) {
  AMPKIT_CHECK(!(st.state.scale < min_scale), "loss scale collapsed to ", st.state.scale,
               " (below the floor ", min_scale, ") after ", st.state.n_skipped, " of ", st.state.n_steps,
               " optimizer steps were skipped for inf/NaN gradients (", st.state.n_skipped_in_row,
               " in a row). The fp16 gradients overflow even without scaling: lower "
               "the learning rate, check the data for NaN/inf inputs, or train with bf16 (--precision bf16) "
               "or fp32. (Set amp.min_loss_scale lower to continue anyway.)");
}

}  // namespace ampkit::amp

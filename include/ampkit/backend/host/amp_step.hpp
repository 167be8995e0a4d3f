/// @brief Host backend of the AMP step (check, finalize, update, accumulate, lr, readout): the
/// reference the CUDA kernels are tested against, with the same signatures.
///
/// Storage types are emulated faithfully: gradients are read from ampkit::half / bfloat16
/// buffers and copies are rounded to nearest even, so overflow -> skip -> backoff behaves as on
/// the GPU. Everything else is fp32 (fp64 for the sum of squares), as on the device.
#pragma once

#include <cstdint>
#include <optional>

#include "ampkit/amp/amp_step.hpp"
#include "ampkit/amp/loss_scaler.hpp"
#include "ampkit/amp/step_state.hpp"
#include "ampkit/backend/host/context.hpp"
#include "ampkit/backend/host/fill.hpp"
#include "ampkit/optim/optimizer.hpp"

namespace ampkit {

/// Number of GradPartial slots the check pass writes for `n` gradients (the host uses one).
inline int amp_check_partials(const Host&, std::int64_t) {
  return 1;
}

/// Pass 1: partials[0] = {sum of (g * inv_scale)^2, any scaled g not finite} over every gradient.
template <StorageScalar T>
void amp_grad_check(Host&, optim::FlatParams<T> f, const amp::StepState* state, amp::GradPartial* partials,
                    int n_partials) {
  AMPKIT_CHECK(n_partials >= 1, "amp_grad_check: needs at least one partial slot");
  const float inv = amp::inv_scale_of(state->scale);
  double sumsq = 0.0;
  int bad = 0;
  for (std::int64_t i = 0; i < f.n_total(); ++i) {
    const float g = f.load_grad(i);
    bad |= !amp::is_finite(g);  // torch checks the scaled value, before unscaling
    const double u = static_cast<double>(optim::detail::mul(g, inv));
    sumsq += u * u;
  }
  partials[0] = {sumsq, bad, 0};
  for (int b = 1; b < n_partials; ++b) partials[b] = {};
}

/// Pass 2: reduce the partials and decide (one thread on the device).
template <optim::OptimizerRule Rule, amp::LossScalerType Scaler>
void amp_finalize(Host&, amp::StepState* state, const amp::GradPartial* partials, int n_partials,
                  const Rule& rule, const Scaler& scaler, const amp::StepOptions& opt) {
  double sumsq = 0.0;
  bool bad = false;
  for (int b = 0; b < n_partials; ++b) {
    sumsq += partials[b].sumsq;
    bad = bad || partials[b].nonfinite != 0;
  }
  amp::finalize_step(*state, sumsq, bad, rule, scaler, opt);
}

/// Zero the gradients (and the micro-batch accumulator).
template <StorageScalar T>
void amp_zero_grads(Host&, optim::FlatParams<T> f) {
  std::fill(f.grad, f.grad + f.n_compute, T(0.f));
  if (f.grad_accum) std::fill(f.grad_accum, f.grad_accum + f.n_compute, 0.f);
  std::fill(f.grad_fp32, f.grad_fp32 + f.n_fp32, 0.f);
}

/// Pass 3: unless the step was skipped, g = load_grad * inv_scale * clip_coef, update master and
/// state, write the storage-type copy; then zero every gradient (mmengine zero_grad after step).
/// `slots`: n_slots * n_total fp32 optimizer state (slot k of element i at slots[k * n_total + i]).
template <StorageScalar T, optim::OptimizerRule Rule>
void amp_apply_update(Host& ctx, optim::FlatParams<T> f, float* slots, const Rule& rule,
                      const amp::StepState* state) {
  const amp::StepState s = *state;
  const std::int64_t n = f.n_total();
  if (!s.found_inf) {
    for (std::int64_t i = 0; i < n; ++i) {
      const float u = optim::detail::mul(optim::detail::mul(f.load_grad(i), s.inv_scale), s.clip_coef);
      float p = f.master[i];
      rule.update(p, u, slots + i, n, s);
      f.master[i] = p;
      if (f.weights && i < f.n_compute) f.weights[i] = convert<T>(p);
    }
  }
  amp_zero_grads(ctx, f);
}

/// After a micro-batch that is not the last of its window: grad_accum += grad; grad = 0 (fp32
/// accumulation of storage-type micro-batch gradients). No-op without an accumulator.
template <StorageScalar T>
void amp_accumulate_grads(Host&, optim::FlatParams<T> f) {
  if (!f.grad_accum) return;
  for (std::int64_t i = 0; i < f.n_compute; ++i) {
    f.grad_accum[i] = f.grad_accum[i] + static_cast<float>(f.grad[i]);
    f.grad[i] = T(0.f);
  }
}

/// Write the lr the next step uses (from the host's schedule).
inline void amp_set_lr(Host&, amp::StepState* state, double lr) {
  state->lr = lr;
}

}  // namespace ampkit

namespace ampkit::amp {

/// Asynchronous readout of StepState for logs. On the host it is immediate.
template <>
class StepReadout<Host> {
 public:
  explicit StepReadout(const Host&) {}
  /// Start reading the state (after a step). Returns false if a read is still in flight.
  bool request(Host&, const StepState* state) {
    snapshot_.state = *state;
    ready_ = true;
    return true;
  }
  /// The snapshot if the read has completed (then clears it).
  std::optional<StepStats> poll() {
    if (!ready_) return std::nullopt;
    ready_ = false;
    return snapshot_;
  }

 private:
  StepStats snapshot_{};
  bool ready_ = false;
};

}  // namespace ampkit::amp

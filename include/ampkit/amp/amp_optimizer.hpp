/// @brief AmpOptimizer: the AMP training step over a flat parameter store, written once for both
/// backends: loss scale on the device, fp32 micro-batch accumulation, check + finalize + fused
/// update, no host synchronisation, asynchronous stats. What mmengine's AmpOptimWrapper does
/// (with `accumulative_counts`), as a compile-time policy.
///
/// Usage, one iteration (the trainer spells it out; see also GradAccumulation):
///   opt.set_lr(schedule.lr());                  // host value -> device scalar, no sync
///   forward; loss; seed dL/dloss = *opt.scale_ptr() / accum.loss_factor()   (on the device)
///   backward (dL_dw += into store.weight_grad / fp32_grad)
///   accum.count_backward();
///   if (accum.should_update()) opt.step(); else opt.end_micro_batch();
///   schedule.after_iteration(...); occasionally: opt.request_stats(); if (auto s = opt.poll_stats())
///   log(*s);
///
/// Include the backend's ops before instantiating: ampkit/backend/host/amp_step.hpp (Host) or
/// ampkit/backend/cuda/amp_step.cuh (Cuda); the calls below find them by argument-dependent lookup.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <utility>

#include "ampkit/amp/amp_step.hpp"
#include "ampkit/amp/loss_scaler.hpp"
#include "ampkit/amp/step_state.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/nn/parameter_store.hpp"
#include "ampkit/optim/optimizer.hpp"
#include "ampkit/precision.hpp"

namespace ampkit::amp {

/// @tparam P     precision policy (storage type of copies and gradients; which scaler)
/// @tparam Rule  optimizer rule: optim::Adam (also AdamW) or optim::Sgd
/// @tparam Ctx   ampkit::Host or ampkit::Cuda
template <PrecisionPolicy P, optim::OptimizerRule Rule, class Ctx>
class AmpOptimizer {
 public:
  using T = storage_t<P>;
  using Scaler = loss_scaler_t<P>;
  template <class U>
  using Tensor = decltype(std::declval<const Ctx&>().template tensor<U>(Shape{}));

  /// @param accumulative_counts  > 1 allocates the fp32 micro-batch accumulator (storage-type
  ///                             policies; fp32 gradients accumulate in place).
  AmpOptimizer(Ctx& ctx, nn::ParameterStore<P, Ctx>& store, Rule rule, Scaler scaler = {},
               StepOptions options = {}, std::int64_t accumulative_counts = 1)
      : ctx_(&ctx), store_(&store), rule_(rule), scaler_(scaler), options_(options), readout_(ctx) {
    AMPKIT_CHECK(store.allocated(), "AmpOptimizer: the parameter store must be allocated first");
    AMPKIT_CHECK(accumulative_counts >= 1, "AmpOptimizer: accumulative_counts must be >= 1, got ",
                 accumulative_counts);
    if constexpr (Scaler::kScales) scaler_.config.validate();
    rule_.config.validate();
    const std::int64_t n = store.n_compute_slots() + store.n_fp32_slots();
    slots_ = ctx.template tensor<float>(Shape{1, 1, 1, std::max<std::int64_t>(1, rule_.n_slots() * n)});
    zero_fill(ctx, slots_.view());
    if (accumulative_counts > 1 && !std::is_same_v<T, float>) {
      accum_ = ctx.template tensor<float>(Shape{1, 1, 1, store.n_compute_slots()});
      zero_fill(ctx, accum_.view());
    }
    n_partials_ = amp_check_partials(ctx, n);
    partials_ = ctx.template tensor<GradPartial>(Shape{1, 1, 1, n_partials_});
    state_ = ctx.template tensor<StepState>(Shape{1, 1, 1, 1});
    StepState init{};
    init.scale = scaler_.initial_scale();
    ctx.copy_to_device(state_.view(), std::span<const StepState>(&init, 1));
  }

  // ---- the step ------------------------------------------------------------------------------
  /// Device pointer to the current loss scale: the loss backward multiplies its seed by it.
  const float* scale_ptr() const { return &state_.data()->scale; }
  /// The lr for the next step (from the host schedule). Stream-ordered, no sync.
  void set_lr(double lr) { amp_set_lr(*ctx_, state_.data(), lr); }
  /// After the backward of a micro-batch that does not end its window: fold its storage-type
  /// gradients into the fp32 accumulator. No-op for the fp32 policy.
  void end_micro_batch() { amp_accumulate_grads(*ctx_, flat()); }
  /// The same fold for elements [begin, end) of the compute segment only: the data-parallel
  /// overlap folds each gradient bucket as soon as backward has finished it (train::GradPrepare).
  /// Element-wise the same operation on the same operands, so folding all ranges equals one
  /// end_micro_batch() bit for bit.
  void end_micro_batch(std::int64_t begin, std::int64_t end) {
    AMPKIT_CHECK(0 <= begin && begin <= end && end <= store_->n_compute_slots(), "AmpOptimizer::end_micro_batch: [",
                 begin, ", ", end, ") outside the ", store_->n_compute_slots(), " compute slots");
    optim::FlatParams<T> f = flat();
    if (!f.grad_accum || begin == end) return;
    f.master += begin;
    if (f.weights) f.weights += begin;
    f.grad += begin;
    f.grad_accum += begin;
    f.n_compute = end - begin;
    f.n_fp32 = 0;  // the fold touches the compute segment only
    amp_accumulate_grads(*ctx_, f);
  }
  /// The optimizer step of a window: check, finalize, update + zero gradients. No host sync.
  void step() {
    step([](GradPartial*, int) {});
  }
  /// step() with `between(partials, n_partials)` called after the check pass and before
  /// finalize reads the partials: where a data-parallel run reduces the non-finite flag across
  /// ranks (stream-ordered device work, no host sync). n_partials is 0 when no check ran.
  template <class Between>
  void step(Between&& between) {
    const auto f = flat();
    int np = 0;
    if (Scaler::kSkipsNonFinite || options_.clip.enabled || options_.track_grad_norm) {
      np = n_partials_;
      amp_grad_check(*ctx_, f, state_.data(), partials_.data(), np);
    }
    between(partials_.data(), np);
    amp_finalize(*ctx_, state_.data(), partials_.data(), np, rule_, scaler_, options_);
    amp_apply_update(*ctx_, f, slots_.data(), rule_, state_.data());
  }

  // ---- logging -------------------------------------------------------------------------------
  /// Start an asynchronous read of the state (false: the previous one is still in flight).
  bool request_stats() { return readout_.request(*ctx_, state_.data()); }
  /// The latest completed read, if any. Throws ampkit::Error if the loss scale collapsed below
  /// the configured floor: the place where a run that trains on garbage is stopped.
  std::optional<StepStats> poll_stats() {
    auto st = readout_.poll();
    if constexpr (Scaler::kScales)
      if (st) check_scale_floor(*st, scaler_.config.min_scale);
    return st;
  }

  // ---- access --------------------------------------------------------------------------------
  optim::FlatParams<T> flat() const {
    return optim::flat_params(*store_, accum_.numel() ? accum_.data() : nullptr);
  }
  StepState* state() const { return state_.data(); }
  float* optimizer_state() const { return slots_.data(); }
  const Rule& rule() const { return rule_; }
  const Scaler& scaler() const { return scaler_; }
  const StepOptions& options() const { return options_; }

 private:
  Ctx* ctx_;
  nn::ParameterStore<P, Ctx>* store_;
  Rule rule_;
  Scaler scaler_;
  StepOptions options_;
  StepReadout<Ctx> readout_;
  int n_partials_ = 1;
  // mutable: the const accessors hand out pointers into them (constness guards the layout).
  mutable Tensor<float> slots_{};
  mutable Tensor<float> accum_{};
  mutable Tensor<GradPartial> partials_{};
  mutable Tensor<StepState> state_{};
};

}  // namespace ampkit::amp

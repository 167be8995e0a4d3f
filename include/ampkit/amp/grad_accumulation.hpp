/// @brief Gradient accumulation with mmengine OptimWrapper's counter semantics: the loss factor,
/// when to synchronise (all-reduce) and when to step, counted from the global iteration.
///
/// Per iteration (mmengine `update_params` inside `optim_context`):
///   should_sync()    before forward: is this the last micro-batch of its window? (DDP all-reduces
///                    only then.) (inner + 1) % acc == 0 or inner + 1 == max.
///   loss_factor()    divide the loss by it: 1 if acc == 1; acc while inner < max - max % acc;
///                    for the final max % acc iterations of the run, that remainder.
///   count_backward() after backward: inner += 1.
///   should_update()  step + zero_grad now? inner % acc == 0 or inner == max.
/// inner starts at the global iteration (resume) and max is the run's total iterations, so
/// windows run across epoch boundaries and only the very last window can be short. The loss
/// scale is only updated by a step, so it is constant inside a window.
#pragma once

#include <cstdint>
#include <functional>
#include <iostream>
#include <string>
#include <string_view>

#include "ampkit/core/error.hpp"

namespace ampkit::amp {

/// Where warnings go (the trainer passes its logger); default: stderr with a "WARNING" tag.
using WarningSink = std::function<void(std::string_view)>;
inline void warn_to_stderr(std::string_view msg) {
  std::cerr << "WARNING: " << msg << '\n';
}

/// The text of mmengine's two accumulation warnings, in our words with the same meaning.
inline constexpr std::string_view kBatchNormAccumulationWarning =
    "Gradient accumulation may slightly decrease performance because the model has BatchNorm layers: "
    "BN statistics are computed per micro-batch, so N accumulated micro-batches are not the same as "
    "one N-times larger batch.";
inline constexpr std::string_view kResumeNotDivisibleWarning =
    "The resumed iteration number is not divisible by accumulative_counts, so the gradients of the "
    "iterations already done in the interrupted accumulation window are lost; the result may be "
    "influenced slightly.";

class GradAccumulation {
 public:
  explicit GradAccumulation(std::int64_t accumulative_counts = 1) : acc_(accumulative_counts) {
    AMPKIT_CHECK(acc_ >= 1, "accumulative_counts must be >= 1, got ", acc_);
  }

  /// mmengine initialize_count_status(model, init_counts=train_loop.iter, max_counts=max_iters).
  /// Warns (once per call, as mmengine) when resuming inside a window and when the model has BN.
  void initialize(std::int64_t init_counts, std::int64_t max_counts, bool model_has_batch_norm,
                  const WarningSink& warn = warn_to_stderr) {
    AMPKIT_CHECK(max_counts > 0 && init_counts >= 0 && init_counts <= max_counts,
                 "gradient accumulation: iteration ", init_counts, " outside the run's ", max_counts,
                 " iterations");
    inner_ = init_counts;
    max_ = max_counts;
    remainder_ = max_counts % acc_;
    if (inner_ % acc_ != 0) warn(kResumeNotDivisibleWarning);
    if (model_has_batch_norm && acc_ > 1) warn(kBatchNormAccumulationWarning);
  }

  std::int64_t accumulative_counts() const { return acc_; }
  std::int64_t inner_count() const { return inner_; }
  std::int64_t max_counts() const { return max_; }

  /// Before forward: the last micro-batch of its window (all-reduce now).
  bool should_sync() const { return (inner_ + 1) % acc_ == 0 || (inner_ + 1) == max_; }
  /// Before backward: the loss (or its gradient seed) is divided by this.
  std::int64_t loss_factor() const {
    if (acc_ == 1) return 1;
    if (max_ < 0) return acc_;  // not initialised: mmengine uses acc
    const std::int64_t f = inner_ < max_ - remainder_ ? acc_ : remainder_;
    AMPKIT_CHECK(f > 0, "gradient accumulation: loss factor 0 at iteration ", inner_, " of ", max_);
    return f;
  }
  /// After backward.
  void count_backward() { ++inner_; }
  /// After backward: step the optimizer (and zero the gradients) now.
  bool should_update() const { return inner_ % acc_ == 0 || inner_ == max_; }

 private:
  std::int64_t acc_ = 1;
  std::int64_t inner_ = 0;
  std::int64_t max_ = -1;
  std::int64_t remainder_ = -1;
};

}  // namespace ampkit::amp

/// @brief Learning-rate schedules with mmengine's semantics: LinearLR warmup stepped per
/// iteration + MultiStepLR stepped per epoch (DEKR), chained multiplicatively on one lr.
///
/// mmengine's schedulers are "chainable": each step multiplies the current lr by a factor that
/// depends on the scheduler's own step count, and ParamSchedulerHook steps the iteration-based
/// ones after EVERY iteration (not every optimizer update) and the epoch-based ones after every
/// epoch. With accumulative_counts = 4, DEKR's 500-iteration warmup therefore spans only 125
/// optimizer updates; `IterStepping::kEveryUpdate` counts the warmup in updates instead.
///
/// Computed on the host in fp64 with the reference's formulas (bit-identical to torch's LinearLR
/// and MultiStepLR, which mmengine's share), then written to StepState::lr on the device before
/// the step (`set_learning_rate`): the step reads it there, so the step stays graph-capturable.
#pragma once

#include <cmath>
#include <cstdint>
#include <variant>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::optim {

inline constexpr std::int64_t kScheduleEnd = 1000000000;  ///< mmengine's INF = int(1e9)

/// mmengine LinearLR / LinearParamScheduler: factor start_factor at step 0, rising linearly to
/// end_factor at step end - begin - 1, constant afterwards.
struct LinearLR {
  double start_factor = 1.0 / 3;
  double end_factor = 1.0;
  std::int64_t begin = 0, end = kScheduleEnd;
  bool by_epoch = true;
};

/// mmengine MultiStepLR: lr *= gamma^(multiplicity) at each milestone step.
struct MultiStepLR {
  std::vector<std::int64_t> milestones;
  double gamma = 0.1;
  std::int64_t begin = 0, end = kScheduleEnd;
  bool by_epoch = true;
};

using SchedulerSpec = std::variant<LinearLR, MultiStepLR>;

/// When iteration-based schedulers step.
enum class IterStepping {
  kEveryIteration,  ///< mmengine: after every iteration (micro-batch)
  kEveryUpdate,     ///< after every optimizer update (warmup counted in updates)
};

class LrSchedule {
 public:
  LrSchedule(double base_lr, std::vector<SchedulerSpec> specs,
             IterStepping stepping = IterStepping::kEveryIteration)
      : lr_(base_lr), stepping_(stepping) {
    AMPKIT_CHECK(base_lr >= 0.0, "lr schedule: base lr must be >= 0, got ", base_lr);
    for (auto& s : specs) {
      Entry e{std::move(s)};
      std::visit(
          [&](const auto& x) {
            AMPKIT_CHECK(x.end > x.begin, "lr schedule: end (", x.end, ") must be larger than begin (",
                         x.begin, ")");
            e.by_epoch = x.by_epoch;
            e.begin = x.begin;
            e.end = x.end;
          },
          e.spec);
      if (const auto* l = std::get_if<LinearLR>(&e.spec))
        AMPKIT_CHECK(l->start_factor >= 0 && l->start_factor <= 1 && l->end_factor >= 0 && l->end_factor <= 1,
                     "LinearLR: factors must be in [0, 1], got ", l->start_factor, " and ", l->end_factor);
      entries_.push_back(std::move(e));
    }
    // mmengine: every scheduler steps once when it is built, in config order.
    for (auto& e : entries_) step_one(e);
  }

  /// DEKR's schedule (mmpose config): LinearLR(start 0.001, iterations [0, 500)) +
  /// MultiStepLR(milestones [90, 120] epochs, gamma 0.1, epochs [0, 140)).
  static LrSchedule dekr(double base_lr = 1e-3, std::int64_t max_epochs = 140,
                         IterStepping stepping = IterStepping::kEveryIteration) {
    return LrSchedule(base_lr,
                      {LinearLR{0.001, 1.0, 0, 500, false}, MultiStepLR{{90, 120}, 0.1, 0, max_epochs, true}},
                      stepping);
  }

  /// The lr for the current iteration.
  double lr() const { return lr_; }

  /// After an iteration (ParamSchedulerHook.after_train_iter). `updated`: the optimizer stepped
  /// in this iteration (only matters with IterStepping::kEveryUpdate).
  void after_iteration(bool updated = true) {
    if (stepping_ == IterStepping::kEveryUpdate && !updated) return;
    for (auto& e : entries_)
      if (!e.by_epoch) step_one(e);
  }
  /// After an epoch (ParamSchedulerHook.after_train_epoch).
  void after_epoch() {
    for (auto& e : entries_)
      if (e.by_epoch) step_one(e);
  }

  /// Replay a run from the start to `iterations` done (resume), `iters_per_epoch` per epoch;
  /// `updated(i)` says whether iteration i stepped the optimizer.
  template <class UpdatedFn>
  void fast_forward(std::int64_t iterations, std::int64_t iters_per_epoch, UpdatedFn&& updated) {
    AMPKIT_CHECK(iters_per_epoch > 0, "lr schedule: iters_per_epoch must be positive");
    for (std::int64_t i = 0; i < iterations; ++i) {
      after_iteration(updated(i));
      if ((i + 1) % iters_per_epoch == 0) after_epoch();
    }
  }

 private:
  struct Entry {
    SchedulerSpec spec;
    bool by_epoch = true;
    std::int64_t begin = 0, end = kScheduleEnd;
    std::int64_t global_step = -1, last_step = -1;
  };

  void step_one(Entry& e) {
    ++e.global_step;
    if (e.global_step < e.begin || e.global_step >= e.end) return;
    ++e.last_step;
    const std::int64_t t = e.last_step;
    if (const auto* l = std::get_if<LinearLR>(&e.spec)) {
      const double total = static_cast<double>(e.end - e.begin - 1);
      if (t == 0) {
        lr_ = lr_ * l->start_factor;
      } else {
        const double d = l->end_factor - l->start_factor;
        lr_ = lr_ * (1.0 + d / (total * l->start_factor + static_cast<double>(t - 1) * d));
      }
    } else {
      const auto& m = std::get<MultiStepLR>(e.spec);
      int hits = 0;
      for (auto ms : m.milestones) hits += ms == t;
      if (hits) lr_ = lr_ * std::pow(m.gamma, hits);
    }
  }

  double lr_;
  IterStepping stepping_;
  std::vector<Entry> entries_;
};

}  // namespace ampkit::optim

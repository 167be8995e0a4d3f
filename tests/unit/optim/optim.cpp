// Optimizers (Adam, AdamW, SGD) against torch.optim trajectories, the lr schedule against torch's
// LinearLR + MultiStepLR, and clip_grad_norm_, all on the host backend through AmpOptimizer.
// Golden values: tests/golden/gen_amp.py (torch 1.13).
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/backend/host/amp_step.hpp"
#include "ampkit/optim/adam.hpp"
#include "ampkit/optim/lr_schedule.hpp"
#include "ampkit/optim/sgd.hpp"
#include "support/testing.hpp"
#include "unit/amp/flat_fixture.hpp"

namespace ak = ampkit;
using ak::testing::amp_golden;
using ak::testing::golden_row;

namespace {

const std::vector<std::string> kCases = {
    "adam", "adam_l2", "adamw", "sgd_momentum", "sgd_dampening_wd", "sgd_nesterov", "sgd_plain"};

nlohmann::json case_meta(const std::string& key) {
  return nlohmann::json::parse(amp_golden().metadata().at(key));
}

// Run one golden trajectory through AmpOptimizer<P, Rule, Host>; returns the max abs error per
// step relative to the allowed error, after checking every step.
template <ak::PrecisionPolicy P, class Rule>
void run_trajectory(const std::string& name, Rule rule, double rtol, double atol_per_lr) {
  const auto& g = amp_golden();
  const std::string pre = "opt/" + name + "/";
  const auto p0 = g.read<float>(pre + "p0");
  const auto grads = g.read<float>(pre + "grads");
  const auto lrs = g.read<double>(pre + "lrs");
  const auto want = g.read<float>(pre + "params");
  const std::int64_t n = static_cast<std::int64_t>(p0.size()), steps = static_cast<std::int64_t>(lrs.size());
  ak::Host ctx(1);
  // 30 elements in the compute segment, the rest in the fp32 (BatchNorm) segment: both paths.
  ak::testing::FlatFixture<P, ak::Host> fx(ctx, 30, n - 30);
  fx.set_master(ctx, p0);
  ak::amp::StepOptions opt;
  opt.track_grad_norm = false;
  // fp16: a static scale of 1024 keeps the golden gradients (1e-4 .. 1) inside fp16's normal range
  // without overflow (torch's trajectories never skip); dynamic scaling is tested in tests/unit/amp.
  ak::amp::loss_scaler_t<P> scaler{};
  if constexpr (ak::amp::loss_scaler_t<P>::kScales) scaler.config = {ak::amp::ScaleMode::kStatic, 1024.f};
  ak::amp::AmpOptimizer<P, Rule, ak::Host> optimizer(ctx, fx.store, rule, scaler, opt);
  const float scale = optimizer.scaler().initial_scale();
  double sum_lr = 0;
  int n_bad_steps = 0;
  for (std::int64_t s = 0; s < steps; ++s) {
    fx.set_grads(ctx, golden_row(grads, n, s), scale);
    optimizer.set_lr(lrs[s]);
    optimizer.step();
    sum_lr += lrs[s];
    const auto got = fx.master(ctx);
    const auto w = golden_row(want, n, s);
    // atol grows with the distance travelled (sum of lr): each step adds at most a few roundings
    // of a size-lr update.
    const double atol = atol_per_lr * sum_lr;
    bool ok = true;
    for (std::int64_t i = 0; i < n; ++i) ok = ok && std::abs(got[i] - w[i]) <= atol + rtol * std::abs(w[i]);
    if (!ok && n_bad_steps++ == 0) {
      MESSAGE(name, " (", ak::policy_name_v<P>, ") first mismatch at step ", s);
      ak::testing::compare(name.c_str(), std::span<const float>(got), std::span<const float>(w), rtol, atol);
    }
  }
  const auto got = fx.master(ctx);
  const auto w = golden_row(want, n, steps - 1);
  const auto r = ak::testing::compare((name + " final").c_str(), std::span<const float>(got),
                                      std::span<const float>(w), rtol, atol_per_lr * sum_lr);
  CHECK_MESSAGE(n_bad_steps == 0, name, ": ", n_bad_steps, " of ", steps, " steps outside tolerance");
  CHECK(r.ok);
  CHECK(optimizer.state()->opt_step == steps);
}

template <ak::PrecisionPolicy P>
void run_case(const std::string& name, double rtol, double atol_per_lr) {
  const auto m = case_meta("opt/" + name);
  const std::string type = m.at("type");
  if (type == "SGD") {
    ak::optim::Sgd rule{{m.at("momentum"), m.at("dampening"), m.at("nesterov"), m.at("weight_decay")}};
    run_trajectory<P>(name, rule, rtol, atol_per_lr);
  } else {
    ak::optim::AdamConfig c{m.at("betas")[0], m.at("betas")[1], m.at("eps"), m.at("weight_decay"),
                            type == "AdamW"};
    run_trajectory<P>(name, ak::optim::Adam{c}, rtol, atol_per_lr);
  }
}

}  // namespace

TEST_CASE("fp32 policy: Adam / AdamW / SGD follow torch.optim's trajectories over 100 steps") {
  // Same formulas, same fp32 roundings per op; torch's vectorised CPU kernels may fuse a
  // multiply-add (one rounding less) where we round twice, so each step can differ by a few ulps
  // of the update (size ~lr) and of the parameter: atol = 8 * eps_fp32 per unit of lr travelled
  // (sum of lrs), rtol = 8 * eps_fp32. (Measured max errors are printed.)
  constexpr double eps = ak::epsilon_v<float>;
  for (const auto& name : kCases) {
    CAPTURE(name);
    run_case<ak::Fp32>(name, 8 * eps, 8 * eps);
  }
}

TEST_CASE("fp16 and bf16 policies: trajectories within the storage type's gradient rounding") {
  // The compute segment's gradients are stored in fp16/bf16 (rounded once, relative error
  // <= eps_T / 2); everything after that is fp32. Adam's update m/sqrt(v) and SGD's lr*g then
  // differ by O(eps_T) of a size-lr step, so the parameters drift by at most ~eps_T per unit of
  // lr travelled. atol = 2 * eps_T * sum(lr), rtol = 8 * eps_fp32.
  for (const auto& name : kCases) {
    CAPTURE(name);
    run_case<ak::AmpFp16>(name, 8 * ak::epsilon_v<float>, 2 * ak::epsilon_v<ak::half>);
    run_case<ak::AmpBf16>(name, 8 * ak::epsilon_v<float>, 2 * ak::epsilon_v<ak::bfloat16>);
  }
}

TEST_CASE("lr schedule: DEKR warmup + multi-step decay equals torch LinearLR + MultiStepLR bit for bit") {
  for (const std::string name : {"dekr_10ipe", "dekr_7ipe"}) {
    const auto m = case_meta("lr/" + name);
    const auto want = amp_golden().read<double>("lr/" + name + "/lrs");
    const std::int64_t ipe = m.at("iters_per_epoch"), epochs = m.at("epochs");
    auto sched = ak::optim::LrSchedule::dekr(m.at("base_lr"), epochs);
    std::int64_t it = 0, bad = 0;
    for (std::int64_t e = 0; e < epochs; ++e) {
      for (std::int64_t i = 0; i < ipe; ++i, ++it) {
        if (sched.lr() != want[static_cast<std::size_t>(it)] && bad++ < 5)
          MESSAGE(name, " iteration ", it, ": lr ", sched.lr(), " torch ",
                  want[static_cast<std::size_t>(it)]);
        sched.after_iteration();
      }
      sched.after_epoch();
    }
    CHECK_MESSAGE(bad == 0, name, ": ", bad, " of ", it, " iterations differ");
  }
  // Spot values of the closed form: lr(i) = 1e-3 * (0.001 + 0.999 * i / 499) during warmup.
  auto s = ak::optim::LrSchedule::dekr();
  CHECK(s.lr() == doctest::Approx(1e-6).epsilon(1e-12));
  for (int i = 0; i < 250; ++i) s.after_iteration();
  CHECK(s.lr() == doctest::Approx(1e-3 * (0.001 + 0.999 * 250 / 499)).epsilon(1e-12));
}

TEST_CASE("lr schedule: mmengine steps the warmup per iteration; kEveryUpdate counts optimizer updates") {
  // accumulative_counts = 4: per-iteration stepping finishes the 500-iteration warmup after 125
  // updates; per-update stepping after 500 updates (2000 iterations).
  auto per_iter = ak::optim::LrSchedule::dekr();
  auto per_update = ak::optim::LrSchedule::dekr(1e-3, 140, ak::optim::IterStepping::kEveryUpdate);
  auto reference = ak::optim::LrSchedule::dekr();
  for (int it = 0; it < 2000; ++it) {
    const bool updated = (it + 1) % 4 == 0;
    if (it % 4 == 0) {  // at the start of window k the per-update lr is the per-iteration lr of k
      CHECK(per_update.lr() == reference.lr());
      reference.after_iteration();
    }
    per_iter.after_iteration(updated);
    per_update.after_iteration(updated);
  }
  CHECK(per_iter.lr() == doctest::Approx(1e-3).epsilon(1e-12));
  CHECK(per_update.lr() == doctest::Approx(1e-3).epsilon(1e-12));
  // Resume: replaying 1234 iterations of 10 per epoch equals stepping through them.
  auto replay = ak::optim::LrSchedule::dekr();
  replay.fast_forward(1234, 10, [](std::int64_t) { return true; });
  auto live = ak::optim::LrSchedule::dekr();
  for (int i = 0; i < 1234; ++i) {
    live.after_iteration();
    if ((i + 1) % 10 == 0) live.after_epoch();
  }
  CHECK(replay.lr() == live.lr());
  CHECK_THROWS_WITH_AS(ak::optim::LrSchedule(1e-3, {ak::optim::LinearLR{0.001, 1.0, 5, 5, false}}),
                       doctest::Contains("end (5) must be larger than begin (5)"), ak::Error);
}

TEST_CASE("gradient clipping by global norm matches torch.nn.utils.clip_grad_norm_") {
  // The norm is accumulated in fp64 here and per tensor in fp32 by torch: agreement to a few
  // fp32 ulps (rtol 8 eps). The clipped gradient is g * coef, one fp32 rounding of the same coef.
  const auto& g = amp_golden();
  for (const std::string name : {"clipped", "unclipped", "tiny_max"}) {
    CAPTURE(name);
    const auto m = case_meta("clip/" + name);
    const auto grads = g.read<float>("clip/" + name + "/grads");
    const auto want = g.read<float>("clip/" + name + "/clipped");
    const float want_norm = g.read<float>("clip/" + name + "/norm")[0];
    const std::int64_t n = static_cast<std::int64_t>(grads.size());
    ak::Host ctx(1);
    ak::testing::FlatFixture<ak::Fp32, ak::Host> fx(ctx, 20, n - 20);
    fx.set_grads(ctx, grads);
    ak::amp::StepOptions opt;
    opt.clip = ak::optim::ClipGradConfig::norm(m.at("max_norm"));
    // plain SGD with lr 1 from master 0: the master becomes -(clipped gradient)
    std::vector<float> zeros(static_cast<std::size_t>(n), 0.f);
    fx.set_master(ctx, zeros);
    ak::amp::AmpOptimizer<ak::Fp32, ak::optim::Sgd, ak::Host> o(ctx, fx.store, ak::optim::Sgd{}, {}, opt);
    o.set_lr(1.0);
    o.step();
    CHECK(o.state()->grad_norm == doctest::Approx(want_norm).epsilon(8 * ak::epsilon_v<float>));
    auto got = fx.master(ctx);
    for (auto& x : got) x = -x;
    const auto r = ak::testing::compare(name.c_str(), std::span<const float>(got),
                                        std::span<const float>(want), 8 * ak::epsilon_v<float>, 0.0);
    CHECK(r.ok);
  }
  CHECK_THROWS_AS(ak::optim::ClipGradConfig::norm(0.0), ak::Error);
}

TEST_CASE("optimizer settings are validated with the numbers in the message") {
  ak::Host ctx(1);
  ak::testing::FlatFixture<ak::Fp32, ak::Host> fx(ctx, 8, 0);
  using Opt = ak::amp::AmpOptimizer<ak::Fp32, ak::optim::Sgd, ak::Host>;
  CHECK_THROWS_WITH_AS(Opt(ctx, fx.store, ak::optim::Sgd{{0.0, 0.0, true, 0.0}}),
                       doctest::Contains("Nesterov"), ak::Error);
  using AdamOpt = ak::amp::AmpOptimizer<ak::Fp32, ak::optim::Adam, ak::Host>;
  CHECK_THROWS_WITH_AS(AdamOpt(ctx, fx.store, ak::optim::Adam{{1.0, 0.999, 1e-8, 0.0, false}}),
                       doctest::Contains("beta1 must be in [0, 1), got 1"), ak::Error);
}

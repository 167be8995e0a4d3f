// Loss scaling (against torch GradScaler, with fp16 gradients emulated bit-exactly), overflow ->
// skip -> backoff -> recovery, the scale-collapse stop, mmengine's accumulation counters, and
// "k micro-batches == one batch" through the fp32 accumulator. Host backend.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/amp/grad_accumulation.hpp"
#include "ampkit/backend/host/amp_step.hpp"
#include "ampkit/optim/adam.hpp"
#include "ampkit/optim/sgd.hpp"
#include "support/testing.hpp"
#include "unit/amp/flat_fixture.hpp"

namespace ak = ampkit;
using ak::testing::amp_golden;
using ak::testing::golden_row;

static_assert(std::is_same_v<ak::amp::loss_scaler_t<ak::AmpFp16>, ak::amp::LossScaler>);
static_assert(std::is_same_v<ak::amp::loss_scaler_t<ak::AmpBf16>, ak::amp::NoLossScaler>);
static_assert(std::is_same_v<ak::amp::loss_scaler_t<ak::Fp32>, ak::amp::NoLossScaler>);

TEST_CASE(
    "GradScaler: scale / skip / growth-tracker sequence and Adam trajectory equal torch's (fp16 grads)") {
  // torch side (gen_amp.py): GradScaler(growth_interval=3) or static 512, Adam lr 1e-3, optional
  // clip_grad_norm_ after unscale_ (mmengine AmpOptimWrapper), with grads = fp16(true * scale).
  // Ours: the same fp16 gradients written into the half gradient buffer at OUR current scale, so
  // any divergence of the scale sequence shows up at once.
  const auto& g = amp_golden();
  for (const std::string name : {"dynamic", "dynamic_clip", "static"}) {
    CAPTURE(name);
    const auto m = nlohmann::json::parse(g.metadata().at("scaler/" + name));
    const std::string pre = "scaler/" + name + "/";
    const auto p0 = g.read<float>(pre + "p0");
    const auto true_grads = g.read<float>(pre + "true_grads");
    const auto scale_before = g.read<float>(pre + "scale_before");
    const auto found_inf = g.read<float>(pre + "found_inf");
    const auto scale_after = g.read<float>(pre + "scale_after");
    const auto tracker = g.read<std::int32_t>(pre + "tracker_after");
    const auto grad_norm = g.read<float>(pre + "grad_norm");
    const auto params = g.read<float>(pre + "params");
    const std::int64_t n = static_cast<std::int64_t>(p0.size()),
                       steps = static_cast<std::int64_t>(scale_before.size());

    ak::Host ctx(1);
    ak::testing::FlatFixture<ak::AmpFp16, ak::Host> fx(ctx, n, 0);  // all fp16 grads, as torch's
    fx.set_master(ctx, p0);
    ak::amp::LossScaler scaler;
    const auto& gs = m.at("gradscaler");
    scaler.config.init_scale = gs.at("init_scale");
    if (m.at("static_scale").is_null()) {
      scaler.config.growth_factor = gs.at("growth_factor");
      scaler.config.backoff_factor = gs.at("backoff_factor");
      scaler.config.growth_interval = gs.at("growth_interval");
    } else {
      scaler.config.mode = ak::amp::ScaleMode::kStatic;
    }
    ak::amp::StepOptions opt;
    if (!m.at("clip_max_norm").is_null()) opt.clip = ak::optim::ClipGradConfig::norm(m.at("clip_max_norm"));
    ak::amp::AmpOptimizer<ak::AmpFp16, ak::optim::Adam, ak::Host> o(ctx, fx.store, ak::optim::Adam{}, scaler,
                                                                    opt);
    int n_skipped = 0;
    for (std::int64_t s = 0; s < steps; ++s) {
      CAPTURE(s);
      const float scale = o.state()->scale;
      REQUIRE(scale == scale_before[s]);
      fx.set_grads(ctx, golden_row(true_grads, n, s), scale);
      o.set_lr(1e-3);
      o.step();
      const auto& st = *o.state();
      CHECK(st.found_inf == static_cast<int>(found_inf[s]));
      CHECK(st.scale == scale_after[s]);
      if (m.at("static_scale").is_null()) CHECK(st.growth_tracker == tracker[s]);
      if (std::isfinite(grad_norm[s]))
        CHECK(st.grad_norm == doctest::Approx(grad_norm[s]).epsilon(8 * ak::epsilon_v<float>));
      else
        CHECK_FALSE(std::isfinite(st.grad_norm));
      n_skipped += st.found_inf;
      // Adam on identical unscaled gradients: a few fp32 ulps per step (see tests/unit/optim).
      const auto got = fx.master(ctx);
      const auto want = golden_row(params, n, s);
      const auto r =
          ak::testing::compare("params", std::span<const float>(got), std::span<const float>(want),
                               8 * ak::epsilon_v<float>, 8 * ak::epsilon_v<float> * 1e-3 * double(s + 1), 4);
      CHECK(r.ok);
      // the fp16 copies the kernels read are the rounded masters
      const auto w = fx.weights(ctx);
      for (std::int64_t i = 0; i < n; ++i) REQUIRE(w[i] == ak::convert<ak::half>(got[i]));
    }
    CHECK(o.state()->n_skipped == n_skipped);
    CHECK(o.state()->n_steps == steps);
    CHECK(o.state()->opt_step == steps - n_skipped);
    CHECK(n_skipped >= 3);  // the golden sequence really exercises skips
  }
}

TEST_CASE("fp16 overflow at scale 65536 skips the step and backs off, then training recovers") {
  // A true gradient of 2.0 times 65536 is 131072: inf in fp16. At 32768 it is 65536, which also
  // rounds to inf (above 65504 + half an ulp). At 16384 it is 32768: finite, the step applies.
  ak::Host ctx(1);
  ak::testing::FlatFixture<ak::AmpFp16, ak::Host> fx(ctx, 40, 24);
  auto p0 = ak::testing::random_tensor<float>({1, 1, 1, 64}, 11);
  fx.set_master(ctx, p0.span());
  ak::amp::AmpOptimizer<ak::AmpFp16, ak::optim::Adam, ak::Host> o(ctx, fx.store, ak::optim::Adam{});
  CHECK(o.state()->scale == 65536.f);
  auto grads = ak::testing::random_tensor<float>({1, 1, 1, 64}, 12, 1e-4f, 1e-2f);
  grads[7] = 2.0f;
  const auto before = fx.master(ctx);
  const float expected_scale[] = {65536.f, 32768.f, 16384.f};
  const int expected_skip[] = {1, 1, 0};
  for (int s = 0; s < 3; ++s) {
    CHECK(o.state()->scale == expected_scale[s]);
    fx.set_grads(ctx, grads.span(), o.state()->scale);
    o.set_lr(1e-3);
    o.step();
    CHECK(o.state()->found_inf == expected_skip[s]);
    if (expected_skip[s]) {
      CHECK(fx.master(ctx) == before);  // skipped: not one bit changed
    }
  }
  CHECK(o.state()->n_skipped == 2);
  CHECK(o.state()->opt_step == 1);
  CHECK(o.state()->scale == 16384.f);  // tracker 1: no growth yet
  const auto after = fx.master(ctx);
  // Adam's first step moves every element by ~lr (m/sqrt(v) = sign(g)): the update really applied
  for (int i = 0; i < 64; ++i) CHECK(std::abs(after[i] - before[i]) == doctest::Approx(1e-3).epsilon(1e-2));
  // gradients were zeroed after each step, skipped or not
  auto gw = ctx.to_host(ak::TensorView<const ak::half>(fx.store.weight_grad(fx.w)));
  for (std::int64_t i = 0; i < gw.numel(); ++i) REQUIRE(static_cast<float>(gw[i]) == 0.f);
  // the readout reports it
  REQUIRE(o.request_stats());
  auto st = o.poll_stats();
  REQUIRE(st.has_value());
  CHECK(st->n_skipped() == 2);
  CHECK(st->summary().find("skipped 2/3") != std::string::npos);
}

TEST_CASE("a run whose loss scale collapses below the floor stops at the readout with a clear message") {
  ak::Host ctx(1);
  ak::testing::FlatFixture<ak::AmpFp16, ak::Host> fx(ctx, 16, 0);
  ak::amp::AmpOptimizer<ak::AmpFp16, ak::optim::Adam, ak::Host> o(ctx, fx.store, ak::optim::Adam{});
  std::vector<float> nan_grads(16, 0.5f);
  nan_grads[3] = std::numeric_limits<float>::quiet_NaN();
  // 65536 * 0.5^16 = 1 is still allowed; the 17th backoff reaches 0.5 < 1.
  for (int s = 0; s < 17; ++s) {
    fx.set_grads(ctx, nan_grads, o.state()->scale);
    o.step();
    REQUIRE(o.request_stats());
    if (s < 16) CHECK_NOTHROW(o.poll_stats());
  }
  CHECK_THROWS_WITH_AS(o.poll_stats(),
                       doctest::Contains("loss scale collapsed to 0.5 (below the floor 1) after 17 of 17"),
                       ak::Error);
}

TEST_CASE("bf16 / fp32 policies: no loss scaling, no skips, gradient norm still tracked") {
  ak::Host ctx(1);
  ak::testing::FlatFixture<ak::AmpBf16, ak::Host> fx(ctx, 20, 12);
  ak::amp::AmpOptimizer<ak::AmpBf16, ak::optim::Sgd, ak::Host> o(ctx, fx.store, ak::optim::Sgd{});
  CHECK(o.state()->scale == 1.f);
  auto g = ak::testing::random_tensor<float>({1, 1, 1, 32}, 3, 0.5f, 1.5f);
  fx.set_grads(ctx, g.span());
  o.set_lr(0.1);
  o.step();
  double ss = 0;
  for (int i = 0; i < 32; ++i) {
    const float gi = i < 20 ? static_cast<float>(ak::convert<ak::bfloat16>(g[i])) : g[i];
    ss += double(gi) * gi;
  }
  CHECK(o.state()->grad_norm == doctest::Approx(std::sqrt(ss)).epsilon(1e-6));
  CHECK(o.state()->n_skipped == 0);
  CHECK(o.state()->scale == 1.f);
}

TEST_CASE("mmengine accumulation counters: hand-derived table and the generated tables") {
  // Hand-derived from mmengine OptimWrapper (acc = 4, 10 iterations from 0): remainder 10 % 4 = 2,
  // so iterations 8 and 9 divide by 2; sync/update at 3, 7 and the last iteration 9.
  struct Row {
    bool sync;
    std::int64_t factor;
    bool update;
  };
  const Row table[10] = {{false, 4, false}, {false, 4, false}, {false, 4, false}, {true, 4, true},
                         {false, 4, false}, {false, 4, false}, {false, 4, false}, {true, 4, true},
                         {false, 2, false}, {true, 2, true}};
  ak::amp::GradAccumulation acc(4);
  std::vector<std::string> warnings;
  auto sink = [&](std::string_view w) { warnings.emplace_back(w); };
  acc.initialize(0, 10, false, sink);
  CHECK(warnings.empty());
  for (int it = 0; it < 10; ++it) {
    CAPTURE(it);
    CHECK(acc.should_sync() == table[it].sync);
    CHECK(acc.loss_factor() == table[it].factor);
    acc.count_backward();
    CHECK(acc.should_update() == table[it].update);
  }
  // Tables generated from a model of mmengine's code (gen_amp.py), incl. resumes mid-window.
  const auto& g = amp_golden();
  int n_cases = 0;
  for (const auto& name : g.names()) {
    if (name.rfind("accum/", 0) != 0) continue;
    ++n_cases;
    const std::string key = name.substr(0, name.rfind('/'));
    const auto m = nlohmann::json::parse(g.metadata().at(key));
    const auto t = g.read<std::int64_t>(name);
    ak::amp::GradAccumulation a(m.at("accumulative_counts"));
    warnings.clear();
    a.initialize(m.at("init_counts"), m.at("max_counts"), true, sink);
    const bool resumed_mid_window =
        std::int64_t(m.at("init_counts")) % std::int64_t(m.at("accumulative_counts")) != 0;
    CHECK(warnings.size() == std::size_t(resumed_mid_window) + std::size_t(a.accumulative_counts() > 1));
    for (std::size_t r = 0; r < t.size() / 4; ++r) {
      CAPTURE(key);
      CAPTURE(t[4 * r]);
      CHECK(a.inner_count() == t[4 * r]);
      CHECK(a.should_sync() == (t[4 * r + 1] != 0));
      CHECK(a.loss_factor() == t[4 * r + 2]);
      a.count_backward();
      CHECK(a.should_update() == (t[4 * r + 3] != 0));
    }
  }
  CHECK(n_cases >= 6);
  // the warnings say what mmengine's say
  warnings.clear();
  ak::amp::GradAccumulation r(3);
  r.initialize(2, 11, true, sink);
  REQUIRE(warnings.size() == 2);
  CHECK(warnings[0].find("not divisible by accumulative_counts") != std::string::npos);
  CHECK(warnings[1].find("BatchNorm") != std::string::npos);
}

namespace {
// Linear least squares y = w . x + b over a batch: dL/dw = (1/B) sum r x, dL/db = (1/B) sum r,
// r = w.x + b - y. w lives in the compute segment, b in the fp32 segment.
struct Regression {
  static constexpr int kDim = 24, kBatch = 8;
  ak::HostTensor<float> x = ak::testing::random_tensor<float>({1, 1, kBatch, kDim}, 21);
  ak::HostTensor<float> y = ak::testing::random_tensor<float>({1, 1, 1, kBatch}, 22);
  std::vector<float> grad(const std::vector<float>& p, int first, int count) const {
    std::vector<float> g(kDim + 1, 0.f);
    for (int s = first; s < first + count; ++s) {
      double r = p[kDim] - y[s];
      for (int d = 0; d < kDim; ++d) r += double(p[d]) * x[s * kDim + d];
      for (int d = 0; d < kDim; ++d) g[d] += static_cast<float>(r * x[s * kDim + d] / count);
      g[kDim] += static_cast<float>(r / count);
    }
    return g;
  }
};

template <ak::PrecisionPolicy P>
std::vector<float> train_step(const Regression& reg, const std::vector<float>& p0, int micro_batches) {
  ak::Host ctx(1);
  ak::testing::FlatFixture<P, ak::Host> fx(ctx, Regression::kDim, 1);
  fx.set_master(ctx, p0);
  ak::amp::AmpOptimizer<P, ak::optim::Sgd, ak::Host> o(ctx, fx.store, ak::optim::Sgd{}, {}, {},
                                                       micro_batches);
  ak::amp::GradAccumulation acc(micro_batches);
  acc.initialize(0, micro_batches, false, [](std::string_view) {});
  o.set_lr(0.5);
  const int mb = Regression::kBatch / micro_batches;
  const float scale0 = o.state()->scale;
  for (int k = 0; k < micro_batches; ++k) {
    const auto g = reg.grad(p0, k * mb, mb);  // forward/backward at the window's weights
    CHECK(o.state()->scale == scale0);        // constant inside the window
    fx.set_grads(ctx, g, o.state()->scale / static_cast<float>(acc.loss_factor()));
    acc.count_backward();
    if (acc.should_update())
      o.step();
    else
      o.end_micro_batch();
  }
  CHECK(o.state()->opt_step == 1);
  return fx.master(ctx);
}
}  // namespace

TEST_CASE("4 micro-batches of 2 give the update of one batch of 8 (fp32 tight, fp16/bf16 in tolerance)") {
  Regression reg;
  auto p0t = ak::testing::random_tensor<float>({1, 1, 1, Regression::kDim + 1}, 23);
  const std::vector<float> p0(p0t.data(), p0t.data() + p0t.numel());
  const auto one = train_step<ak::Fp32>(reg, p0, 1);
  const auto four = train_step<ak::Fp32>(reg, p0, 4);
  const auto g8 = reg.grad(p0, 0, Regression::kBatch);
  double gmax = 0;
  for (float v : g8) gmax = std::max(gmax, double(std::abs(v)));
  // fp32: the mean of 8 vs the sum of four means of 2 (each / 4): a few fp32 roundings of g,
  // times lr 0.5.
  CHECK(ak::testing::compare("fp32 4x2 vs 1x8", std::span<const float>(four), std::span<const float>(one), 0,
                             0.5 * gmax * 8 * ak::epsilon_v<float>)
            .ok);
  // fp16 / bf16: every micro-batch gradient is rounded once to the storage type (relative
  // eps_T / 2), and the fp32 sum is not rounded again: error <= lr * gmax * eps_T.
  const auto four16 = train_step<ak::AmpFp16>(reg, p0, 4);
  CHECK(ak::testing::compare("fp16 4x2 vs fp32 1x8", std::span<const float>(four16),
                             std::span<const float>(one), 0, 0.5 * gmax * ak::epsilon_v<ak::half>)
            .ok);
  const auto four_bf = train_step<ak::AmpBf16>(reg, p0, 4);
  CHECK(ak::testing::compare("bf16 4x2 vs fp32 1x8", std::span<const float>(four_bf),
                             std::span<const float>(one), 0, 0.5 * gmax * ak::epsilon_v<ak::bfloat16>)
            .ok);
  // and the update is not trivially small: it moved the parameters
  double moved = 0;
  for (std::size_t i = 0; i < p0.size(); ++i) moved = std::max(moved, double(std::abs(one[i] - p0[i])));
  CHECK(moved > 0.01);
}

TEST_CASE("the fp32 accumulator is what fp16 accumulation would lose: 4 scaled micro-batches near 65504") {
  // Each micro-batch gradient 0.3 at scale 65536 / 4 = 19660.8 (finite in fp16); their sum
  // 78643 would overflow an fp16 accumulator, the fp32 one keeps it.
  ak::Host ctx(1);
  ak::testing::FlatFixture<ak::AmpFp16, ak::Host> fx(ctx, 8, 0);
  std::vector<float> p0(8, 0.f);
  fx.set_master(ctx, p0);
  ak::amp::AmpOptimizer<ak::AmpFp16, ak::optim::Sgd, ak::Host> o(ctx, fx.store, ak::optim::Sgd{}, {}, {}, 4);
  o.set_lr(1.0);
  std::vector<float> g(8, 0.3f);
  for (int k = 0; k < 4; ++k) {
    fx.set_grads(ctx, g, o.state()->scale / 4.f);
    if (k < 3) o.end_micro_batch();
  }
  o.step();
  CHECK(o.state()->found_inf == 0);
  const auto p = fx.master(ctx);
  // SGD lr 1: p = -(sum of four fp16(0.3 * 16384) / 65536)
  const float one = static_cast<float>(ak::convert<ak::half>(0.3f * 16384.f));
  for (float v : p) CHECK(v == doctest::Approx(-4.f * one / 65536.f).epsilon(1e-7));
}

// The AMP step on the GPU against the host backend: check / finalize / fused update / micro-batch
// accumulation / lr write / readout for the fp32, fp16 and bf16 policies and Adam, AdamW, SGD,
// on random inputs with injected inf/NaN; and the whole step captured once in a CUDA graph and
// replayed with a skip that changes from replay to replay (no host synchronisation inside).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/backend/cuda/amp_step.cuh"
#include "ampkit/backend/host/amp_step.hpp"
#include "ampkit/optim/adam.hpp"
#include "ampkit/optim/sgd.hpp"
#include "support/step_state_checks.hpp"
#include "support/testing.hpp"
#include "unit/amp/flat_fixture.hpp"

namespace ak = ampkit;

namespace {

ak::amp::StepState read_state(ak::Cuda& ctx, const ak::amp::StepState* d) {
  ak::amp::StepState s;
  ctx.synchronize();
  AMPKIT_CUDA_CHECK(cudaMemcpy(&s, d, sizeof s, cudaMemcpyDeviceToHost));
  return s;
}

template <class Ctx>
std::vector<float> read_floats(Ctx& ctx, const float* p, std::int64_t n) {
  auto h = ctx.to_host(ak::TensorView<const float>(p, {1, 1, 1, n}));
  return std::vector<float>(h.data(), h.data() + n);
}

// Random gradients in +-[1e-4, 1e-1], log-uniform (never zero). The upper end keeps the fp16
// gradients finite up to a scale of 2^19 (0.1 * 2^19 = 52429 < 65504), so the fp16 runs really
// update; skips come from the injected inf/NaN (and, in the graph test, one 1.5).
std::vector<float> random_grads(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> mag(-4.f, -1.f), u(0.f, 1.f);
  std::vector<float> g(static_cast<std::size_t>(n));
  for (auto& x : g) x = std::pow(10.f, mag(rng)) * (u(rng) < 0.5f ? -1.f : 1.f);
  return g;
}

template <ak::PrecisionPolicy P, class Rule, class Ctx>
struct Run {
  ak::testing::FlatFixture<P, Ctx> fx;
  ak::amp::AmpOptimizer<P, Rule, Ctx> opt;
  Run(Ctx& ctx, std::int64_t n_c, std::int64_t n_f, Rule rule, ak::amp::loss_scaler_t<P> scaler,
      ak::amp::StepOptions o, std::int64_t acc)
      : fx(ctx, n_c, n_f), opt(ctx, fx.store, rule, scaler, o, acc) {}
};

// Compare state, masters, copies and optimizer state of a host and a device run.
template <ak::PrecisionPolicy P, class Rule>
void compare_runs(ak::Host& h, Run<P, Rule, ak::Host>& hr, ak::Cuda& d, Run<P, Rule, ak::Cuda>& dr,
                  double sum_lr, const char* what) {
  using T = ak::storage_t<P>;
  const auto sh = *hr.opt.state();
  const auto sd = read_state(d, dr.opt.state());
  ak::testing::check_same_step_state(sh, sd);
  // The sum of squares is reduced in a different order (blocks vs. one loop): fp64, so the
  // norms agree to ~1e-12; rounded to fp32 they may differ by one ulp.
  if (std::isfinite(sh.grad_norm))
    CHECK(sd.grad_norm == doctest::Approx(sh.grad_norm).epsilon(2 * ak::epsilon_v<float>));
  else
    CHECK_FALSE(std::isfinite(sd.grad_norm));
  // The elementwise math is the same code with single roundings on both sides (no FMA
  // contraction), so without clipping the masters are bit-identical; with clipping the clip
  // coefficient may differ by an ulp (from the norm): a few fp32 ulps of each size-lr update.
  const double atol = 4 * ak::epsilon_v<float> * sum_lr, rtol = 2 * ak::epsilon_v<float>;
  const auto mh = hr.fx.master(h), md = dr.fx.master(d);
  CHECK(ak::testing::compare((std::string(what) + " master").c_str(), std::span<const float>(md),
                             std::span<const float>(mh), rtol, atol)
            .ok);
  const auto wh = hr.fx.weights(h), wd = dr.fx.weights(d);
  // copies: the rounding of (nearly) identical masters: at most one ulp of T apart
  CHECK(ak::testing::compare((std::string(what) + " copies").c_str(), std::span<const T>(wd),
                             std::span<const T>(wh), ak::epsilon_v<T>, 0.0)
            .ok);
  const std::int64_t n_state =
      hr.opt.rule().n_slots() * (hr.fx.store.n_compute_slots() + hr.fx.store.n_fp32_slots());
  if (n_state) {
    const auto oh = read_floats(h, hr.opt.optimizer_state(), n_state);
    const auto od = read_floats(d, dr.opt.optimizer_state(), n_state);
    CHECK(ak::testing::compare((std::string(what) + " optimizer state").c_str(), std::span<const float>(od),
                               std::span<const float>(oh), 4 * ak::epsilon_v<float>, 1e-30)
              .ok);
  }
}

// K steps of `acc` micro-batches each on both backends with the same inputs; non-finite
// gradients injected at step 2 (policies with a loss scaler only: the others do not skip).
template <ak::PrecisionPolicy P, class Rule>
void host_vs_cuda(Rule rule, bool clip, std::int64_t acc, const char* what) {
  CAPTURE(what);
  CAPTURE(ak::policy_name_v<P>);
  constexpr std::int64_t n_c = 200003, n_f = 4099;  // odd sizes, ~100 check blocks, ~800 update blocks
  using Scaler = ak::amp::loss_scaler_t<P>;
  Scaler scaler{};
  if constexpr (Scaler::kScales) scaler.config.growth_interval = 2;  // exercise growth too
  ak::amp::StepOptions o;
  if (clip) o.clip = ak::optim::ClipGradConfig::norm(5.0);
  ak::Host h(1);
  ak::Cuda d;
  Run<P, Rule, ak::Host> hr(h, n_c, n_f, rule, scaler, o, acc);
  Run<P, Rule, ak::Cuda> dr(d, n_c, n_f, rule, scaler, o, acc);
  auto p0 = ak::testing::random_tensor<float>({1, 1, 1, n_c + n_f}, 5);
  hr.fx.set_master(h, p0.span());
  dr.fx.set_master(d, p0.span());
  double sum_lr = 0;
  for (int s = 0; s < 6; ++s) {
    const float scale = hr.opt.state()->scale;
    for (std::int64_t k = 0; k < acc; ++k) {
      auto g = random_grads(n_c + n_f, 100 * s + k);
      if (Scaler::kSkipsNonFinite && s == 2 && k == acc - 1) {
        g[n_c - 1] = std::numeric_limits<float>::infinity();    // last compute element
        g[n_c + 17] = std::numeric_limits<float>::quiet_NaN();  // an fp32-segment element
      }
      hr.fx.set_grads(h, g, scale / static_cast<float>(acc));
      dr.fx.set_grads(d, g, scale / static_cast<float>(acc));
      if (k + 1 < acc) {
        hr.opt.end_micro_batch();
        dr.opt.end_micro_batch();
      }
    }
    const double lr = 1e-3 * (1 + s);
    hr.opt.set_lr(lr);
    dr.opt.set_lr(lr);
    hr.opt.step();
    dr.opt.step();
    sum_lr += lr;
    CAPTURE(s);
    compare_runs(h, hr, d, dr, sum_lr, what);
  }
  if (Scaler::kSkipsNonFinite) CHECK(hr.opt.state()->n_skipped == 1);
  // Gradients are zero after the step on the device too.
  auto gz = d.to_host(ak::TensorView<const float>(dr.fx.store.grad_fp32_all()));
  for (std::int64_t i = 0; i < gz.numel(); ++i) REQUIRE(gz[i] == 0.f);
}

}  // namespace

TEST_CASE_TEMPLATE("AMP step: CUDA equals the host backend (Adam, AdamW, SGD; clip; accumulation)", P,
                   ak::Fp32, ak::AmpFp16, ak::AmpBf16) {
  host_vs_cuda<P>(ak::optim::Adam{}, false, 1, "adam");
  host_vs_cuda<P>(ak::optim::make_adamw({0.9, 0.999, 1e-8, 1e-2, true}), true, 1, "adamw+clip");
  host_vs_cuda<P>(ak::optim::Sgd{{0.9, 0.0, true, 1e-4}}, false, 3, "sgd-nesterov, 3 micro-batches");
  host_vs_cuda<P>(ak::optim::Adam{{0.8, 0.99, 1e-6, 1e-2, false}}, true, 4, "adam-l2+clip, 4 micro-batches");
}

TEST_CASE_TEMPLATE("gradient check: norm and inf/NaN detection over many blocks (grid-stride tail)", P,
                   ak::Fp32, ak::AmpFp16, ak::AmpBf16) {
  using T = ak::storage_t<P>;
  constexpr std::int64_t n_c = 3000001, n_f = 333;  // > 1024 * 2048: the check grid is clamped
  ak::Host h(1);
  ak::Cuda d;
  ak::testing::FlatFixture<P, ak::Host> fh(h, n_c, n_f);
  ak::testing::FlatFixture<P, ak::Cuda> fd(d, n_c, n_f);
  auto st = d.tensor<ak::amp::StepState>({1, 1, 1, 1});
  ak::amp::StepState init{};
  init.scale = 1024.f;
  d.copy_to_device(st.view(), std::span<const ak::amp::StepState>(&init, 1));
  const int np = ak::amp_check_partials(d, n_c + n_f);
  CHECK(np == 1024);
  auto partials = d.tensor<ak::amp::GradPartial>({1, 1, 1, np});
  for (int where : {-1, 0, int(n_c - 1), int(n_c + n_f - 1)}) {
    CAPTURE(where);
    auto g = random_grads(n_c + n_f, 77);
    if (where >= 0)
      g[where] =
          where % 2 ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
    fh.set_grads(h, g, 1024.f);
    fd.set_grads(d, g, 1024.f);
    ak::amp::GradPartial ph{};
    ak::amp_grad_check(h, ak::optim::flat_params(fh.store), &init, &ph, 1);
    ak::amp_grad_check(d, ak::optim::flat_params(fd.store), st.data(), partials.data(), np);
    auto pd = d.to_host(ak::TensorView<const ak::amp::GradPartial>(partials.data(), {1, 1, 1, np}));
    double sum = 0;
    int bad = 0;
    for (int b = 0; b < np; ++b) {
      sum += pd[b].sumsq;
      bad |= pd[b].nonfinite;
    }
    CHECK(bad == (where >= 0));
    CHECK(ph.nonfinite == (where >= 0));
    if (where < 0) CHECK(sum == doctest::Approx(ph.sumsq).epsilon(1e-10));  // fp64 sums of 3M terms
    // reset the fixture's gradients for the next round (set_grads accumulates)
    ak::optim::FlatParams<T> fzh = ak::optim::flat_params(fh.store), fzd = ak::optim::flat_params(fd.store);
    ak::amp_zero_grads(h, fzh);
    ak::amp_zero_grads(d, fzd);
  }
}

TEST_CASE("CUDA graph: check + unscale + Adam step captured once, replayed with a dynamic skip") {
  using P = ak::AmpFp16;
  using Rule = ak::optim::Adam;
  constexpr std::int64_t n_c = 65537, n_f = 1000;
  ak::amp::LossScaler scaler;
  scaler.config.growth_interval = 2;
  ak::amp::StepOptions o;
  o.clip = ak::optim::ClipGradConfig::norm(2.0);  // the norm is ~7: clipping is active
  ak::Host h(1);
  ak::Cuda d;
  Run<P, Rule, ak::Host> hr(h, n_c, n_f, Rule{}, scaler, o, 1);
  Run<P, Rule, ak::Cuda> eager(d, n_c, n_f, Rule{}, scaler, o, 1);
  Run<P, Rule, ak::Cuda> graphed(d, n_c, n_f, Rule{}, scaler, o, 1);
  auto p0 = ak::testing::random_tensor<float>({1, 1, 1, n_c + n_f}, 9);
  hr.fx.set_master(h, p0.span());
  eager.fx.set_master(d, p0.span());
  graphed.fx.set_master(d, p0.span());

  // Capture in global mode: any synchronising call (cudaStreamSynchronize, a blocking memcpy,
  // a host read of the state) inside the step would make the capture fail.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  d.synchronize();
  AMPKIT_CUDA_CHECK(cudaStreamBeginCapture(d.stream(), cudaStreamCaptureModeGlobal));
  graphed.opt.step();
  AMPKIT_CUDA_CHECK(cudaStreamEndCapture(d.stream(), &graph));
  std::size_t n_nodes = 0;
  AMPKIT_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &n_nodes));
  CHECK(n_nodes == 3);  // check, finalize, update: kernels only, no copies, no host nodes
  AMPKIT_CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec, graph, 0));

  const int kSkipAt[] = {2, 5};
  double sum_lr = 0;
  for (int s = 0; s < 9; ++s) {
    CAPTURE(s);
    const float scale = hr.opt.state()->scale;
    auto g = random_grads(n_c + n_f, 500 + s);
    for (int k : kSkipAt)
      if (s == k) g[123] = std::numeric_limits<float>::infinity();
    if (s == 7) g[n_c - 1] = 1.5f;  // at scale 2^16 * 2^k this overflows fp16: a natural skip
    hr.fx.set_grads(h, g, scale);
    eager.fx.set_grads(d, g, scale);
    graphed.fx.set_grads(d, g, scale);
    const double lr = 1e-3 / (1 + s);
    hr.opt.set_lr(lr);
    eager.opt.set_lr(lr);
    graphed.opt.set_lr(lr);  // outside the graph: a kernel whose argument is the new value
    hr.opt.step();
    eager.opt.step();
    AMPKIT_CUDA_CHECK(cudaGraphLaunch(exec, d.stream()));
    sum_lr += lr;
    compare_runs(h, hr, d, graphed, sum_lr, "graph vs host");
    // replay == eager, bit for bit (same kernels, same deterministic reduction order)
    const auto me = eager.fx.master(d), mg = graphed.fx.master(d);
    CHECK(me == mg);
    const auto se = read_state(d, eager.opt.state()), sg = read_state(d, graphed.opt.state());
    CHECK(se.scale == sg.scale);
    CHECK(se.grad_norm == sg.grad_norm);
    CHECK(se.found_inf == sg.found_inf);
  }
  const auto sg = read_state(d, graphed.opt.state());
  CHECK(sg.n_skipped >= 3);  // two injected + at least one natural overflow
  CHECK(sg.opt_step == 9 - sg.n_skipped);

  // Asynchronous readout: pinned memory + event; poll never blocks.
  REQUIRE(graphed.opt.request_stats());
  d.synchronize();
  auto stats = graphed.opt.poll_stats();
  REQUIRE(stats.has_value());
  CHECK(stats->n_skipped() == sg.n_skipped);
  CHECK(stats->scale() == sg.scale);
  MESSAGE("graph run: ", stats->summary());

  AMPKIT_CUDA_CHECK(cudaGraphExecDestroy(exec));
  AMPKIT_CUDA_CHECK(cudaGraphDestroy(graph));
}

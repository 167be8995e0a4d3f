// DEKR on the CUDA backend: the tiny model (golden weights) against the host model, same policy
// (outputs, loss, every parameter gradient, BN running statistics), for Precision<fp32> and
// Precision<fp16, fp32_master>; then DEKR-W32 at 512x512, batch 2: one training step, reporting
// parameters, activation memory and time (not asserted).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/dekr.cuh"
#include "ampkit/backend/host/dekr.hpp"
#include "support/testing.hpp"

namespace ak = ampkit;  // cuda_fp16.h declares a global `half`

namespace {

const std::string kGolden = "tests/golden/data/models_dekr_tiny.safetensors";

template <class T>
std::vector<float> floats(const ak::HostTensor<T>& h) {
  std::vector<float> r(static_cast<std::size_t>(h.numel()));
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = static_cast<float>(h[static_cast<std::int64_t>(i)]);
  return r;
}

/// Relative L2 error ||got - want|| / ||want|| (see tests/unit/models/dekr.cpp for why gradients
/// are judged per tensor: ReLU inputs within rounding distance of 0 may flip between backends).
double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = static_cast<double>(got[i]) - want[i];
    num += e * e;
    den += static_cast<double>(want[i]) * want[i];
  }
  const double r = std::sqrt(num / std::max(den, 1e-300));
  return std::isnan(r) ? INFINITY : r;
}

/// One training step of a model on backend B; returns host copies of everything compared.
struct StepResult {
  std::vector<float> heatmaps, displacements, eval_heatmaps, loss;
  std::vector<std::vector<float>> grads, running;
  std::vector<std::string> names;
};

template <class P, class B>
StepResult step(B& ctx, const ak::safetensors::File& f, float scale) {
  using T = ak::storage_t<P>;
  ak::models::Dekr<P, B> m(ctx, ak::models::DekrConfig::tiny(), 11);
  ak::nn::read_state(m.store(), ctx, f);
  const auto x = ctx.to_device(f.tensor<T>("input"));
  StepResult r;
  auto ev = m.forward(ctx, x.cview(), false);
  r.eval_heatmaps = floats(ctx.to_host(ev.heatmaps));
  auto out = m.forward(ctx, x.cview(), true);
  r.heatmaps = floats(ctx.to_host(out.heatmaps));
  r.displacements = floats(ctx.to_host(out.displacements));
  const auto gt_hm = ctx.to_device(f.tensor<float>("target/heatmaps"));
  const auto hm_w = ctx.to_device(f.tensor<float>("target/heatmap_weights"));
  const auto mask = ctx.to_device(f.tensor<float>("target/heatmap_mask"));
  const auto gt_d = ctx.to_device(f.tensor<float>("target/displacements"));
  const auto d_w = ctx.to_device(f.tensor<float>("target/displacement_weights"));
  const ak::DekrLossInputs<T> in{out.heatmaps, out.displacements, gt_hm.cview(), hm_w.cview(),
                                 mask.cview(),  gt_d.cview(),     d_w.cview()};
  ak::DekrLoss<P, B> loss(ctx);
  loss.forward(ctx, in);
  r.loss = floats(ctx.to_host(loss.result()));
  auto dhm = ctx.template tensor<T>(out.heatmaps.shape);
  auto dd = ctx.template tensor<T>(out.displacements.shape);
  // The scale goes through the device-resident path, as the dynamic loss scaler uses it.
  ak::HostTensor<float> s_host({1, 1, 1, 1}, scale);
  const auto s = ctx.to_device(s_host);
  loss.backward(ctx, in, dhm.view(), dd.view(), 1.f, s.cview());
  m.store().zero_grad(ctx);
  m.backward(ctx, dhm.cview(), dd.cview());
  const auto& st = m.store();
  for (const auto& p : st.params()) {
    const auto id = *st.find(p.name);
    auto g = p.kind == ak::nn::ParamKind::kCompute ? floats(ctx.to_host(ak::TensorView<const T>(st.weight_grad(id))))
                                                   : floats(ctx.to_host(ak::TensorView<const float>(st.fp32_grad(id))));
    for (auto& e : g) e /= scale;
    r.grads.push_back(std::move(g));
    r.names.push_back(p.name);
  }
  for (const auto& b : st.buffers())
    r.running.push_back(floats(ctx.to_host(ak::TensorView<const float>(st.buffer(*st.find_buffer(b.name))))));
  return r;
}

template <class P>
void cuda_vs_host() {
  using T = ak::storage_t<P>;
  constexpr bool fp32 = std::is_same_v<T, float>;
  const double eps = ak::epsilon_v<T>;
  const auto f = ak::safetensors::File::load(ak::testing::source_path(kGolden));
  const float scale = fp32 ? 1.f : 1024.f;
  ak::Host host;
  ak::Cuda cuda;
  const auto h = step<P>(host, f, scale);
  const auto c = step<P>(cuda, f, scale);
  // Outputs: cuDNN and the host GEMM sum in different orders; fp32 1e-4-relative (≈800 eps over
  // ~30 layers), fp16 100 eps (one rounding per layer on each side).
  const double out_tol = fp32 ? 2e-4 : 100 * eps;
  const double o1 = rel_l2(c.heatmaps, h.heatmaps), o2 = rel_l2(c.displacements, h.displacements);
  const double o3 = rel_l2(c.eval_heatmaps, h.eval_heatmaps);
  std::printf("%s outputs: rel L2 heatmaps %.3g, displacements %.3g, eval heatmaps %.3g (limit %.3g)\n",
              fp32 ? "fp32" : "fp16", o1, o2, o3, out_tol);
  CHECK(o1 <= out_tol);
  CHECK(o2 <= out_tol);
  CHECK(o3 <= out_tol);
  std::printf("loss: cuda %.7g (hm %.7g disp %.7g n_pos %.0f), host %.7g (hm %.7g disp %.7g n_pos %.0f)\n", c.loss[0],
              c.loss[1], c.loss[2], c.loss[3], h.loss[0], h.loss[1], h.loss[2], h.loss[3]);
  CHECK(c.loss[3] == h.loss[3]);
  for (int i = 0; i < 3; ++i) CHECK(c.loss[i] == doctest::Approx(h.loss[i]).epsilon(fp32 ? 1e-4 : 1e-2));
  // Gradients: per-tensor relative L2; limits as the host-vs-PyTorch test (tiny backbone BN on
  // 2x2 maps amplifies rounding ~100x; ReLU ties in the head).
  double worst_b = 0, worst_h = 0;
  std::string wb, wh;
  int bad = 0;
  for (std::size_t i = 0; i < c.grads.size(); ++i) {
    const double r = rel_l2(c.grads[i], h.grads[i]);
    const bool head = c.names[i].starts_with("head.");
    const double lim = fp32 ? 1e-2 : (head ? 0.2 : 0.5);
    if (r > lim) {
      ++bad;
      std::printf("  grad %s: rel L2 %.3g > %.3g\n", c.names[i].c_str(), r, lim);
    }
    if (head && r > worst_h) worst_h = r, wh = c.names[i];
    if (!head && r > worst_b) worst_b = r, wb = c.names[i];
  }
  std::printf("grads: worst backbone %.3g (%s), worst head %.3g (%s), %d over\n", worst_b, wb.c_str(), worst_h,
              wh.c_str(), bad);
  CHECK(bad == 0);
  double worst_r = 0;
  for (std::size_t i = 0; i < c.running.size(); ++i) worst_r = std::max(worst_r, rel_l2(c.running[i], h.running[i]));
  std::printf("running statistics: worst rel L2 %.3g\n", worst_r);
  CHECK(worst_r <= (fp32 ? 1e-4 : 50 * eps));
}

template <class P>
void w32_step(int batch, int size) {
  using T = ak::storage_t<P>;
  ak::Cuda ctx;
  ak::models::Dekr<P, ak::Cuda> m(ctx, ak::models::DekrConfig::w32(), 1);
  const auto& st = m.store();
  const std::size_t param_bytes = ctx.memory_stats().allocated;
  const auto x = ctx.to_device(ak::testing::random_tensor<T>({batch, size, size, 3}, 5));
  const int hs = size / 4;
  const auto gt_hm = ctx.to_device(ak::testing::random_tensor<float>({batch, hs, hs, 18}, 6, 0.f, 1.f));
  const auto hm_w = ctx.to_device(ak::testing::random_tensor<float>({batch, hs, hs, 18}, 7, 0.1f, 1.f));
  const auto gt_d = ctx.to_device(ak::testing::random_tensor<float>({batch, hs, hs, 34}, 8, -3.f, 3.f));
  const auto d_w = ctx.to_device(ak::testing::random_tensor<float>({batch, hs, hs, 34}, 9, 0.f, 0.1f));
  ak::DekrLoss<P, ak::Cuda> loss(ctx);
  ak::HostTensor<float> s_host({1, 1, 1, 1}, std::is_same_v<T, float> ? 1.f : 65536.f);
  const auto s = ctx.to_device(s_host);
  std::vector<double> ms;
  for (int it = 0; it < 4; ++it) {
    ctx.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    m.store().zero_grad(ctx);
    auto out = m.forward(ctx, x.cview(), true);
    const ak::DekrLossInputs<T> in{out.heatmaps, out.displacements, gt_hm.cview(), hm_w.cview(), {}, gt_d.cview(),
                                   d_w.cview()};
    loss.forward(ctx, in);
    auto dhm = ctx.template tensor<T>(out.heatmaps.shape);
    auto dd = ctx.template tensor<T>(out.displacements.shape);
    loss.backward(ctx, in, dhm.view(), dd.view(), 1.f, s.cview());
    m.backward(ctx, dhm.cview(), dd.cview());
    ctx.synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const auto v = loss.values(ctx);
  const auto mem = ctx.memory_stats();
  std::sort(ms.begin() + 1, ms.end());
  std::printf("DEKR-W32 %s, %dx%d, batch %d: %lld parameters, parameter state %.1f MiB, peak allocated %.1f MiB "
              "(activations + workspaces %.1f MiB), step %.1f ms (first %.1f ms), loss %.6g\n",
              std::string(ak::policy_name_v<P>).c_str(), size, size, batch, static_cast<long long>(st.n_params()),
              param_bytes / 1048576.0, mem.peak_allocated / 1048576.0, (mem.peak_allocated - param_bytes) / 1048576.0,
              ms[ms.size() / 2 + 1 < ms.size() ? ms.size() / 2 + 1 : ms.size() - 1], ms[0], v.total);
  CHECK(st.n_params() == 29561182);
  CHECK(std::isfinite(v.total));
}

}  // namespace

TEST_CASE_TEMPLATE("DEKR tiny: CUDA vs host (outputs, loss, gradients)", P, ak::Fp32, ak::AmpFp16) { cuda_vs_host<P>(); }

TEST_CASE_TEMPLATE("DEKR-W32 512x512 batch 2: one training step (report only)", P, ak::Fp32, ak::AmpFp16) {
  w32_step<P>(2, 512);
}

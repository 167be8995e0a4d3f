// CUDA nn ops (conv2d via cuDNN and the direct grouped kernels, batch norm plain/fused in the
// per-channel and flat-pack layouts, relu, add, sum) against the host backend on the same seeded
// random inputs, for float, half and bfloat16. Paths behind a switch (cuda::conv_force_cudnn,
// cuda::bn_flat_packs) are tested both ways.
//
// Tolerances: both backends read identical T-rounded inputs and accumulate in fp32 (the host in
// fp32 for conv, double for BN statistics), then round once to T. Differences come from the
// summation order (and, for fp32 convs, cuDNN's FFT/Winograd algorithms, which carry ~1e-5..1e-4
// relative error against the largest output), so a result may land one ulp of T away:
//   rtol = 2 eps_T, atol = 2 eps_T * max|ref| (+ 1e-4 * max|ref| for fp32 convs).
// A wrong index, a missed tap or a wrong reduction gives O(max|ref|) errors and fails.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ampkit/backend/cuda/batch_norm.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/conv2d.cuh"
#include "ampkit/backend/cuda/elementwise.cuh"
#include "ampkit/backend/host/batch_norm.hpp"
#include "ampkit/backend/host/conv2d.hpp"
#include "ampkit/backend/host/elementwise.hpp"
#include "support/testing.hpp"

using namespace ampkit;

namespace {

Cuda& gpu() {
  static Cuda c(0);
  return c;
}
Host& cpu() {
  static Host h;
  return h;
}

template <class T>
double max_abs(const HostTensor<T>& t) {
  double m = 0;
  for (auto v : t.span()) m = std::max(m, std::abs(static_cast<double>(static_cast<float>(v))));
  return m;
}

/// Compare device result `got` against host result `want`; the test fails on any mismatch.
template <class T>
void expect_match(const std::string& what, const HostTensor<T>& got, const HostTensor<T>& want, double rtol,
                  double atol_rel, double extra_abs = 0) {
  const double atol = atol_rel * std::max(max_abs(want), 1e-6) + extra_abs;
  const auto r = testing::compare(what.c_str(), got.span(), want.span(), rtol, atol);
  CHECK_MESSAGE(r.ok, what, ": ", r.n_bad, " mismatches, max rel err ", r.max_rel_err);
}

template <class T>
constexpr double tol_v = 2.0 * epsilon_v<T>;

/// Sets a path switch for a scope and restores it.
class SwitchGuard {
 public:
  SwitchGuard(std::atomic<bool>& s, bool v) : s_(s), old_(s.load()) { s_ = v; }
  ~SwitchGuard() { s_ = old_; }
  SwitchGuard(const SwitchGuard&) = delete;
  SwitchGuard& operator=(const SwitchGuard&) = delete;

 private:
  std::atomic<bool>& s_;
  bool old_;
};

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE_TEMPLATE("conv2d cuda == host: forward, backward data/filter/bias, many shapes", T, float,
                     ampkit::half, ampkit::bfloat16) {
    struct Case {
      const char* name;
      Shape x;
      std::int64_t k, r, s;
      Conv2dParams p;
      bool bias;
    };
    const Case cases[] = {
        {"3x3 s1 p1", {2, 9, 7, 32}, 32, 3, 3, Conv2dParams::square(1, 1), false},
        {"3x3 s2 p1 odd", {3, 11, 9, 16}, 24, 3, 3, Conv2dParams::square(2, 1), false},
        {"1x1 g17 bias", {2, 8, 6, 255}, 34, 1, 1, Conv2dParams::square(1, 0, 1, 17), true},
        {"3x3 g17 bias", {2, 8, 7, 255}, 102, 3, 3, Conv2dParams::square(1, 1, 1, 17), true},
        {"3x3 g17 255->255", {1, 6, 6, 255}, 255, 3, 3, Conv2dParams::square(1, 1, 1, 17), false},
        {"dilation 2", {2, 10, 9, 8}, 12, 3, 3, Conv2dParams::square(1, 2, 2), true},
        {"asym", {2, 9, 11, 6}, 4, 2, 3, {2, 1, 1, 0, 1, 2, 2}, false},
        {"1x1 480->32", {2, 16, 16, 480}, 32, 1, 1, Conv2dParams{}, false},
        {"stem 3->64 s2", {2, 32, 32, 3}, 64, 3, 3, Conv2dParams::square(2, 1), false},
    };
    std::uint64_t seed = 100;
    for (const auto& c : cases) {
      CAPTURE(c.name);
      const auto x = testing::random_tensor<T>(c.x, ++seed);
      const Shape ws{c.k, c.r, c.s, c.x.c / c.p.groups};
      const float wscale = 1.f / std::sqrt(static_cast<float>(ws.h * ws.w * ws.c));
      const auto w = testing::random_tensor<T>(ws, ++seed, -wscale, wscale);
      HostTensor<T> b;
      if (c.bias) b = testing::random_tensor<T>({1, 1, 1, c.k}, ++seed);
      const Shape ys = conv2d_output_shape(c.x, ws, c.p);
      const auto dy = testing::random_tensor<T>(ys, ++seed);
      const auto dw0 = testing::random_tensor<T>(ws, ++seed, -0.1f, 0.1f);
      const auto db0 = testing::random_tensor<T>({1, 1, 1, c.k}, ++seed);
      const double extra = std::is_same_v<T, float> ? 1e-4 : 0.0;

      // host reference
      HostTensor<T> y_h(ys), dx_h(c.x);
      auto dw_h = dw0.clone(), db_h = db0.clone();
      conv2d_forward<T>(cpu(), x.cview(), w.cview(), b.cview(), y_h.view(), c.p);
      conv2d_backward_data<T>(cpu(), dy.cview(), w.cview(), dx_h.view(), c.p);
      conv2d_backward_filter<T>(cpu(), x.cview(), dy.cview(), dw_h.view(), c.p);
      if (c.bias) conv2d_backward_bias<T>(cpu(), dy.cview(), db_h.view());

      // Every algorithm choice (runtime.cudnn_benchmark x randomness.deterministic) against the
      // host. Under each, the device runs twice: the second call comes from the plan cache and its
      // forward must agree bit for bit; under deterministic, the backward passes too.
      auto& g = gpu();
      const CudnnOptions saved = g.cudnn_options();
      for (const CudnnOptions opt : {CudnnOptions{true, false}, CudnnOptions{false, false},
                                     CudnnOptions{false, true}, CudnnOptions{true, true}}) {
        g.set_cudnn_options(opt);
        const std::string n = std::string(c.name) + " " + type_name_v<T> + (opt.benchmark ? " [find" : " [heuristic") +
                              (opt.deterministic ? ", deterministic]" : "]");
        CAPTURE(n);
        auto xd = g.to_device(x), wd = g.to_device(w), dyd = g.to_device(dy);
        auto bd = c.bias ? g.to_device(b) : cuda::DeviceTensor<T>{};
        auto yd = g.tensor<T>(ys), dxd = g.tensor<T>(c.x);
        HostTensor<T> y_first;
        for (int rep = 0; rep < 2; ++rep) {
          conv2d_forward<T>(g, xd.cview(), wd.cview(), c.bias ? bd.cview() : TensorView<const T>{}, yd.view(),
                            c.p);
          if (rep == 0) y_first = g.to_host(yd.cview());
        }
        const auto y_d = g.to_host(yd.cview());
        CHECK(std::memcmp(y_first.data(), y_d.data(), y_d.numel() * sizeof(T)) == 0);
        HostTensor<T> dx_first, dw_first;
        for (int rep = 0; rep < 2; ++rep) {
          auto dwd = g.to_device(dw0), dbd = g.to_device(db0);
          conv2d_backward_data<T>(g, dyd.cview(), wd.cview(), dxd.view(), c.p);
          conv2d_backward_filter<T>(g, xd.cview(), dyd.cview(), dwd.view(), c.p);
          if (c.bias) conv2d_backward_bias<T>(g, dyd.cview(), dbd.view());
          auto dx_d = g.to_host(dxd.cview()), dw_d = g.to_host(dwd.cview());
          if (rep == 1) {
            if (opt.deterministic) {
              CHECK_MESSAGE(std::memcmp(dx_first.data(), dx_d.data(), dx_d.numel() * sizeof(T)) == 0,
                            n, ": dL_dx differs between two deterministic runs");
              CHECK_MESSAGE(std::memcmp(dw_first.data(), dw_d.data(), dw_d.numel() * sizeof(T)) == 0,
                            n, ": dL_dw differs between two deterministic runs");
            }
            break;
          }
          expect_match(n + " y", y_d, y_h, tol_v<T>, tol_v<T>, extra * max_abs(y_h));
          expect_match(n + " dL_dx", dx_d, dx_h, tol_v<T>, tol_v<T>, extra * max_abs(dx_h));
          expect_match(n + " dL_dw (accumulated)", dw_d, dw_h, tol_v<T>, tol_v<T>, extra * max_abs(dw_h));
          if (c.bias) expect_match(n + " dL_db (accumulated)", g.to_host(dbd.cview()), db_h, tol_v<T>, tol_v<T>);
          dx_first = std::move(dx_d);
          dw_first = std::move(dw_d);
        }
      }
      g.set_cudnn_options(saved);
    }
  }

  TEST_CASE_TEMPLATE("conv2d cuDNN graph-API engines (CudnnOptions::graph_api) == host, every direction", T, float,
                     ampkit::half, ampkit::bfloat16) {
    // The opt-in backend-API path (conv_cudnn_graph.cuh) on the shapes of the conv test above,
    // with conv_force_cudnn so the grouped shapes (g17) reach cuDNN too and the 1x1 ones are not
    // taken by the cuBLASLt GEMM. Heuristic mode runs the graph heuristic's first plan; benchmark
    // mode the fastest of its top plans and the legacy pick. dL_dw accumulates onto a random
    // start (beta = 1 in the operation). Tolerances as in the conv test (file comment).
    struct Case {
      const char* name;
      Shape x;
      std::int64_t k, r, s;
      Conv2dParams p;
    };
    const Case cases[] = {
        {"3x3 s1 p1", {2, 9, 7, 32}, 32, 3, 3, Conv2dParams::square(1, 1)},
        {"3x3 s2 p1 odd", {3, 11, 9, 16}, 24, 3, 3, Conv2dParams::square(2, 1)},
        {"3x3 256->256 16x16", {2, 16, 16, 256}, 256, 3, 3, Conv2dParams::square(1, 1)},
        {"3x3 s2 32->64", {2, 17, 15, 32}, 64, 3, 3, Conv2dParams::square(2, 1)},
        {"1x1 g17", {2, 8, 6, 255}, 34, 1, 1, Conv2dParams::square(1, 0, 1, 17)},
        {"3x3 g17", {2, 8, 7, 255}, 102, 3, 3, Conv2dParams::square(1, 1, 1, 17)},
        {"dilation 2", {2, 10, 9, 8}, 12, 3, 3, Conv2dParams::square(1, 2, 2)},
        {"asym", {2, 9, 11, 6}, 4, 2, 3, {2, 1, 1, 0, 1, 2, 2}},
        {"1x1 480->32", {2, 16, 16, 480}, 32, 1, 1, Conv2dParams{}},
        {"stem 3->64 s2", {2, 32, 32, 3}, 64, 3, 3, Conv2dParams::square(2, 1)},
    };
    using cuda::ConvDirection;
    using cuda::ConvEngine;
    SwitchGuard sw(cuda::conv_force_cudnn(), true);
    auto& g = gpu();
    const CudnnOptions saved = g.cudnn_options();
    int graph_heuristic = 0, graph_benchmark = 0;  // directions planned on the graph API
    int graph_by_dir[3] = {0, 0, 0};               // ... per direction (fwd, dgrad, wgrad)
    std::uint64_t seed = 1300;
    for (const auto& c : cases) {
      CAPTURE(c.name);
      const auto x = testing::random_tensor<T>(c.x, ++seed);
      const Shape ws{c.k, c.r, c.s, c.x.c / c.p.groups};
      const float wscale = 1.f / std::sqrt(static_cast<float>(ws.h * ws.w * ws.c));
      const auto w = testing::random_tensor<T>(ws, ++seed, -wscale, wscale);
      const Shape ys = conv2d_output_shape(c.x, ws, c.p);
      const auto dy = testing::random_tensor<T>(ys, ++seed);
      const auto dw0 = testing::random_tensor<T>(ws, ++seed, -0.1f, 0.1f);
      const double extra = std::is_same_v<T, float> ? 1e-4 : 0.0;
      HostTensor<T> y_h(ys), dx_h(c.x);
      auto dw_h = dw0.clone();
      conv2d_forward<T>(cpu(), x.cview(), w.cview(), TensorView<const T>{}, y_h.view(), c.p);
      conv2d_backward_data<T>(cpu(), dy.cview(), w.cview(), dx_h.view(), c.p);
      conv2d_backward_filter<T>(cpu(), x.cview(), dy.cview(), dw_h.view(), c.p);

      constexpr auto kGraph = CudnnGraphApi::kAlways;
      for (const CudnnOptions opt : {CudnnOptions{false, false, kGraph}, CudnnOptions{false, true, kGraph},
                                     CudnnOptions{true, false, kGraph}, CudnnOptions{true, true, kGraph}}) {
        g.set_cudnn_options(opt);
        const std::string n = std::string(c.name) + " " + type_name_v<T> +
                              (opt.benchmark ? " [graph, timed" : " [graph, heuristic") +
                              (opt.deterministic ? ", deterministic]" : "]");
        CAPTURE(n);
        auto xd = g.to_device(x), wd = g.to_device(w), dyd = g.to_device(dy);
        auto yd = g.tensor<T>(ys), dxd = g.tensor<T>(c.x);
        HostTensor<T> y_first, dx_first, dw_first;
        for (int rep = 0; rep < 2; ++rep) {
          auto dwd = g.to_device(dw0);
          conv2d_forward<T>(g, xd.cview(), wd.cview(), TensorView<const T>{}, yd.view(), c.p);
          conv2d_backward_data<T>(g, dyd.cview(), wd.cview(), dxd.view(), c.p);
          conv2d_backward_filter<T>(g, xd.cview(), dyd.cview(), dwd.view(), c.p);
          auto y_d = g.to_host(yd.cview()), dx_d = g.to_host(dxd.cview()), dw_d = g.to_host(dwd.cview());
          if (rep == 1) {  // the second call runs the cached plan
            // Bit for bit only under deterministic: without it a graph engine with the
            // NONDETERMINISTIC note may run even the forward direction.
            if (opt.deterministic) {
              CHECK_MESSAGE(std::memcmp(y_first.data(), y_d.data(), y_d.numel() * sizeof(T)) == 0,
                            n, ": y differs between two deterministic runs");
              CHECK_MESSAGE(std::memcmp(dx_first.data(), dx_d.data(), dx_d.numel() * sizeof(T)) == 0,
                            n, ": dL_dx differs between two deterministic runs");
              CHECK_MESSAGE(std::memcmp(dw_first.data(), dw_d.data(), dw_d.numel() * sizeof(T)) == 0,
                            n, ": dL_dw differs between two deterministic runs");
            }
            break;
          }
          expect_match(n + " y", y_d, y_h, tol_v<T>, tol_v<T>, extra * max_abs(y_h));
          expect_match(n + " dL_dx", dx_d, dx_h, tol_v<T>, tol_v<T>, extra * max_abs(dx_h));
          expect_match(n + " dL_dw (accumulated)", dw_d, dw_h, tol_v<T>, tol_v<T>, extra * max_abs(dw_h));
          y_first = std::move(y_d);
          dx_first = std::move(dx_d);
          dw_first = std::move(dw_d);
        }
        std::string engines;
        for (const auto d : {ConvDirection::kForward, ConvDirection::kBackwardData, ConvDirection::kBackwardFilter}) {
          const ConvEngine e = conv2d_engine<T>(g, c.x, ws, c.p, d);
          engines += std::string(" ") + cuda::conv_engine_name(e);
          CHECK((e == ConvEngine::kCudnn || e == ConvEngine::kCudnnGraph));  // no GEMM, no direct kernel
          if (e == ConvEngine::kCudnnGraph) {
            ++(opt.benchmark ? graph_benchmark : graph_heuristic);
            ++graph_by_dir[static_cast<int>(d)];
          }
        }
        MESSAGE(n, ": engines", engines);
      }
    }
    g.set_cudnn_options(saved);
    // The graph path must actually have run, or everything above tested the legacy path. fp16 /
    // bf16: the tensor-core engines; fp32 excludes them (TF32), so cuDNN may have no other
    // engine that finalizes for these shapes: warned, not failed.
    const std::string errors = cuda::cudnn_graph_errors();
    if (std::is_same_v<T, float>) {
      WARN_MESSAGE(graph_heuristic > 0, "no fp32 conv direction ran a graph-API plan; backend errors: ", errors);
    } else {
      CHECK_MESSAGE(graph_heuristic > 0,
                    "no conv direction ran a graph-API plan in heuristic mode; backend errors: ", errors);
    }
    // Per direction too: wgrad's operation has beta = 1 (dL_dw accumulates), which some engines
    // may not support; a 0 there means weight gradients all stayed on the legacy algorithms.
    MESSAGE(type_name_v<T>, ": directions on graph-API plans: heuristic ", graph_heuristic, ", benchmark ",
            graph_benchmark, " (fwd ", graph_by_dir[0], ", dgrad ", graph_by_dir[1], ", wgrad ", graph_by_dir[2],
            "); backend errors seen: ", errors.empty() ? "none" : errors);
  }

  TEST_CASE_TEMPLATE("conv2d grouped direct kernels == host (and the cuDNN path behind the switch)", T, float,
                     ampkit::half, ampkit::bfloat16) {
    // DEKR's adaptive-block convs at odd sizes (edge tiles in both directions), then odd small
    // shapes that exercise each padded channel width (CIP 8/16/32, COP 2/8/16/32), dilation,
    // asymmetric kernels and padding, 1x1 with padding, depthwise.
    struct Case {
      const char* name;
      Shape x;
      std::int64_t k, r, s;
      Conv2dParams p;
      bool bias;
    };
    const Case cases[] = {
        {"DEKR 3x3 g17 255->102 bias", {2, 20, 37, 255}, 102, 3, 3, Conv2dParams::square(1, 1, 1, 17), true},
        {"DEKR 1x1 g17 255->34 bias", {2, 40, 33, 255}, 34, 1, 1, Conv2dParams::square(1, 0, 1, 17), true},
        {"3x3 g3 9->6 dil2 pad1", {1, 7, 5, 9}, 6, 3, 3, Conv2dParams::square(1, 1, 2, 3), true},
        {"5x3 g2 4->34 pad(2,1)", {2, 9, 35, 4}, 34, 5, 3, {1, 1, 2, 1, 1, 1, 2}, false},
        {"3x3 g4 128->8 pad0", {1, 6, 40, 128}, 8, 3, 3, Conv2dParams::square(1, 0, 1, 4), true},
        {"1x1 g5 10->80 pad1", {2, 5, 6, 10}, 80, 1, 1, Conv2dParams::square(1, 1, 1, 5), false},
        {"depthwise 3x3 g8", {2, 33, 9, 8}, 8, 3, 3, Conv2dParams::square(1, 1, 1, 8), true},
        {"3x3 g17 255->255", {1, 6, 6, 255}, 255, 3, 3, Conv2dParams::square(1, 1, 1, 17), false},
    };
    std::uint64_t seed = 700;
    auto& g = gpu();
    for (const auto& c : cases) {
      CAPTURE(c.name);
      const auto x = testing::random_tensor<T>(c.x, ++seed);
      const Shape ws{c.k, c.r, c.s, c.x.c / c.p.groups};
      const float wscale = 1.f / std::sqrt(static_cast<float>(ws.h * ws.w * ws.c));
      const auto w = testing::random_tensor<T>(ws, ++seed, -wscale, wscale);
      HostTensor<T> b;
      if (c.bias) b = testing::random_tensor<T>({1, 1, 1, c.k}, ++seed);
      const Shape ys = conv2d_output_shape(c.x, ws, c.p);
      const auto dy = testing::random_tensor<T>(ys, ++seed);
      const auto dw0 = testing::random_tensor<T>(ws, ++seed, -0.1f, 0.1f);

      HostTensor<T> y_h(ys), dx_h(c.x);
      auto dw_h = dw0.clone();
      conv2d_forward<T>(cpu(), x.cview(), w.cview(), b.cview(), y_h.view(), c.p);
      conv2d_backward_data<T>(cpu(), dy.cview(), w.cview(), dx_h.view(), c.p);
      conv2d_backward_filter<T>(cpu(), x.cview(), dy.cview(), dw_h.view(), c.p);

      auto xd = g.to_device(x), wd = g.to_device(w), dyd = g.to_device(dy);
      auto bd = c.bias ? g.to_device(b) : cuda::DeviceTensor<T>{};
      const TensorView<const T> bv = c.bias ? bd.cview() : TensorView<const T>{};
      for (const bool force_cudnn : {false, true}) {
        SwitchGuard sw(cuda::conv_force_cudnn(), force_cudnn);
        const std::string path = conv2d_path_name<T>(g, c.x, ws, c.p);
        CAPTURE(path);
        CHECK(path == (force_cudnn ? "cudnn" : "direct-grouped"));
        auto yd = g.tensor<T>(ys), dxd = g.tensor<T>(c.x);
        HostTensor<T> y_first, dx_first, dw_first;
        for (int rep = 0; rep < 2; ++rep) {  // the second run must agree bit for bit
          auto dwd = g.to_device(dw0);
          conv2d_forward<T>(g, xd.cview(), wd.cview(), bv, yd.view(), c.p);
          conv2d_backward_data<T>(g, dyd.cview(), wd.cview(), dxd.view(), c.p);
          conv2d_backward_filter<T>(g, xd.cview(), dyd.cview(), dwd.view(), c.p);
          auto y_d = g.to_host(yd.cview()), dx_d = g.to_host(dxd.cview()), dw_d = g.to_host(dwd.cview());
          if (rep == 0) {
            y_first = std::move(y_d);
            dx_first = std::move(dx_d);
            dw_first = std::move(dw_d);
            continue;
          }
          CHECK(std::memcmp(y_first.data(), y_d.data(), y_d.numel() * sizeof(T)) == 0);
          // The direct kernels' backward is deterministic by construction. cuDNN's is not under
          // the default options: benchmark mode may time a nondeterministic algorithm fastest (it
          // did for the fp32 cases under compute-sanitizer on the H200, 2026-12-01), and
          // randomness.deterministic cannot be forced here (cuDNN has no deterministic fp16
          // depthwise dgrad). The conv2d cuda == host test covers cuDNN under deterministic.
          if (!force_cudnn) {
            CHECK(std::memcmp(dx_first.data(), dx_d.data(), dx_d.numel() * sizeof(T)) == 0);
            CHECK(std::memcmp(dw_first.data(), dw_d.data(), dw_d.numel() * sizeof(T)) == 0);
          }
        }
        // Same tolerances as the cuDNN test above (fp32 sums in another order, one rounding to T;
        // the fp32 extra covers cuDNN's FFT/Winograd when the switch forces it).
        const double extra = std::is_same_v<T, float> ? 1e-4 : 0.0;
        const std::string n = std::string(c.name) + " " + type_name_v<T> + " " + path;
        expect_match(n + " y", y_first, y_h, tol_v<T>, tol_v<T>, extra * max_abs(y_h));
        expect_match(n + " dL_dx", dx_first, dx_h, tol_v<T>, tol_v<T>, extra * max_abs(dx_h));
        expect_match(n + " dL_dw (accumulated)", dw_first, dw_h, tol_v<T>, tol_v<T>, extra * max_abs(dw_h));
      }
    }
  }

  TEST_CASE("conv2d path choice: direct only for stride-1 grouped convs with <= 32 channels per group") {
    auto& g = gpu();
    using H = ampkit::half;
    SwitchGuard sw(cuda::conv_force_cudnn(), false);
    CHECK(std::string(conv2d_path_name<H>(g, {1, 8, 8, 255}, {102, 3, 3, 15}, Conv2dParams::square(1, 1, 1, 17))) ==
          "direct-grouped");
    CHECK(std::string(conv2d_path_name<H>(g, {1, 8, 8, 255}, {102, 3, 3, 15}, Conv2dParams::square(2, 1, 1, 17))) ==
          "cudnn");  // stride 2
    CHECK(std::string(conv2d_path_name<H>(g, {1, 8, 8, 64}, {64, 3, 3, 64}, Conv2dParams::square(1, 1))) ==
          "cudnn");  // ungrouped
    CHECK(std::string(conv2d_path_name<H>(g, {1, 8, 8, 128}, {128, 3, 3, 64}, Conv2dParams::square(1, 1, 1, 2))) ==
          "cudnn");  // 64 channels per group
  }

  TEST_CASE_TEMPLATE(
      "conv2d 1x1 as cuBLASLt GEMM == host: forward, dgrad, wgrad (accumulated), engine choice", T, float,
      ampkit::half, ampkit::bfloat16) {
    // DEKR's 1x1 convs at small, odd M = N*H*W (105, 286, 234, 308 ...): rows 16-byte aligned
    // (C, K multiples of 8: GEMM in heuristic mode and under kAlways) and not (K = 255 / 18 / 34,
    // C = 17 / 20: cuDNN in heuristic mode under kAuto; under kAlways the padded GEMM in
    // heuristic mode, which stages the unaligned matrices with rows rounded up to 8 elements, and
    // the faster of padded and direct in benchmark mode); a dilation, which a 1x1 kernel ignores;
    // M = 8192 so that wgrad's reduction is long enough for split-K; 20->255 at M = 1054 so that
    // every staging copy spans several tiles with a ragged last one (C and K both padded: X, W,
    // dX, dW and Y, dY staged, dW copied in and out around the accumulating GEMM). Under each
    // policy (kAuto, kAlways) x each CudnnOptions the plan's engine per direction is checked
    // where it is determined, so the test cannot pass on cuDNN alone. fp32 must stay on cuDNN
    // (its numerics are the reference).
    // Tolerances as the cuDNN test above: both sides sum in fp32 (cuBLASLt's split-K partials
    // too: CUBLAS_COMPUTE_32F, COMPUTE_TYPE reduction only), one rounding to T.
    struct Case {
      const char* name;
      Shape x;
      std::int64_t k;
      Conv2dParams p;
      bool bias;
    };
    const Case cases[] = {
        {"1x1 480->255 odd M", {3, 7, 5, 480}, 255, Conv2dParams{}, false},
        {"1x1 480->32", {2, 13, 11, 480}, 32, Conv2dParams{}, false},
        {"1x1 64->32", {2, 9, 13, 64}, 32, Conv2dParams{}, false},
        {"1x1 256->64", {4, 11, 7, 256}, 64, Conv2dParams{}, false},
        {"1x1 64->256 bias", {2, 8, 9, 64}, 256, Conv2dParams{}, true},
        {"1x1 32->18 bias", {3, 9, 7, 32}, 18, Conv2dParams{}, true},
        {"1x1 17->34", {2, 5, 7, 17}, 34, Conv2dParams{}, false},
        {"1x1 20->255 M=1054", {2, 31, 17, 20}, 255, Conv2dParams{}, true},
        {"1x1 64->32 dilation 2", {2, 6, 5, 64}, 32, Conv2dParams::square(1, 0, 2), false},
        {"1x1 256->64 M=8192", {8, 32, 32, 256}, 64, Conv2dParams{}, false},
    };
    using cuda::Conv1x1Gemm;
    using cuda::ConvDirection;
    using cuda::ConvEngine;
    std::uint64_t seed = 900;
    auto& g = gpu();
    const CudnnOptions saved = g.cudnn_options();
    SwitchGuard sw(cuda::conv_force_cudnn(), false);
    for (const auto& c : cases) {
      CAPTURE(c.name);
      const auto x = testing::random_tensor<T>(c.x, ++seed);
      const Shape ws{c.k, 1, 1, c.x.c};
      const float wscale = 1.f / std::sqrt(static_cast<float>(ws.c));
      const auto w = testing::random_tensor<T>(ws, ++seed, -wscale, wscale);
      HostTensor<T> b;
      if (c.bias) b = testing::random_tensor<T>({1, 1, 1, c.k}, ++seed);
      const Shape ys = conv2d_output_shape(c.x, ws, c.p);
      const auto dy = testing::random_tensor<T>(ys, ++seed);
      const auto dw0 = testing::random_tensor<T>(ws, ++seed, -0.1f, 0.1f);  // wgrad accumulates onto it
      const double extra = std::is_same_v<T, float> ? 1e-4 : 0.0;

      HostTensor<T> y_h(ys), dx_h(c.x);
      auto dw_h = dw0.clone();
      conv2d_forward<T>(cpu(), x.cview(), w.cview(), b.cview(), y_h.view(), c.p);
      conv2d_backward_data<T>(cpu(), dy.cview(), w.cview(), dx_h.view(), c.p);
      conv2d_backward_filter<T>(cpu(), x.cview(), dy.cview(), dw_h.view(), c.p);

      const bool rows_aligned = c.x.c % 8 == 0 && c.k % 8 == 0;
      auto xd = g.to_device(x), wd = g.to_device(w), dyd = g.to_device(dy);
      auto bd = c.bias ? g.to_device(b) : cuda::DeviceTensor<T>{};
      const TensorView<const T> bv = c.bias ? bd.cview() : TensorView<const T>{};
      for (const Conv1x1Gemm mode : {Conv1x1Gemm::kAuto, Conv1x1Gemm::kAlways})
        for (const CudnnOptions opt : {CudnnOptions{true, false}, CudnnOptions{false, false},
                                       CudnnOptions{false, true}, CudnnOptions{true, true}}) {
          const Conv1x1Gemm old_mode = cuda::conv1x1_gemm().exchange(mode);
          g.set_cudnn_options(opt);
          const std::string n = std::string(c.name) + " " + type_name_v<T> +
                                (mode == Conv1x1Gemm::kAlways ? " [gemm always, " : " [gemm auto, ") +
                                (opt.benchmark ? "find" : "heuristic") +
                                (opt.deterministic ? ", deterministic]" : "]");
          CAPTURE(n);
          auto yd = g.tensor<T>(ys), dxd = g.tensor<T>(c.x);
          HostTensor<T> y_first, dx_first, dw_first;
          for (int rep = 0; rep < 2; ++rep) {  // rep 1 runs from the plan cache
            auto dwd = g.to_device(dw0);
            conv2d_forward<T>(g, xd.cview(), wd.cview(), bv, yd.view(), c.p);
            conv2d_backward_data<T>(g, dyd.cview(), wd.cview(), dxd.view(), c.p);
            conv2d_backward_filter<T>(g, xd.cview(), dyd.cview(), dwd.view(), c.p);
            auto y_d = g.to_host(yd.cview()), dx_d = g.to_host(dxd.cview()), dw_d = g.to_host(dwd.cview());
            if (rep == 0) {
              y_first = std::move(y_d);
              dx_first = std::move(dx_d);
              dw_first = std::move(dw_d);
              continue;
            }
            const ConvEngine e[3] = {conv2d_engine<T>(g, c.x, ws, c.p, ConvDirection::kForward),
                                     conv2d_engine<T>(g, c.x, ws, c.p, ConvDirection::kBackwardData),
                                     conv2d_engine<T>(g, c.x, ws, c.p, ConvDirection::kBackwardFilter)};
            const std::string engines = std::string("fwd=") + cuda::conv_engine_name(e[0]) +
                                        " bwd_data=" + cuda::conv_engine_name(e[1]) +
                                        " bwd_filter=" + cuda::conv_engine_name(e[2]);
            CAPTURE(engines);
            bool all_gemm = true;
            for (const ConvEngine ei : e) {
              all_gemm = all_gemm && cuda::is_gemm_engine(ei);
              if (std::is_same_v<T, float>)  // no GEMM; benchmark mode may time a graph-API plan in
                CHECK((ei == ConvEngine::kCudnn || (opt.benchmark && ei == ConvEngine::kCudnnGraph)));
              else if (rows_aligned && (mode == Conv1x1Gemm::kAlways || !opt.benchmark))
                CHECK(ei == ConvEngine::kCublasLt);
              else if (!rows_aligned && mode == Conv1x1Gemm::kAuto && !opt.benchmark)
                CHECK(ei == ConvEngine::kCudnn);
              else if (!rows_aligned && mode == Conv1x1Gemm::kAlways && !opt.benchmark)
                CHECK(ei == ConvEngine::kCublasLtPadded);  // padded first; its kernels are the aligned ones
              else if (!rows_aligned && mode == Conv1x1Gemm::kAlways)
                CHECK(cuda::is_gemm_engine(ei));  // timed: padded or direct
              else if (rows_aligned)  // timed: either may win (cuDNN: legacy or graph-API plan)
                CHECK((ei == ConvEngine::kCublasLt || ei == ConvEngine::kCudnn || ei == ConvEngine::kCudnnGraph));
              else
                CHECK(ei != ConvEngine::kUnplanned);  // timed: cuDNN, direct or padded
            }
            // The timed choices, for the log (what the H200 picked per direction).
            if (opt.benchmark && !std::is_same_v<T, float>) MESSAGE(n, ": ", engines);
            CHECK(std::memcmp(y_first.data(), y_d.data(), y_d.numel() * sizeof(T)) == 0);
            // The GEMM path is run-to-run deterministic under both settings (conv1x1_gemm.cuh).
            if (opt.deterministic || all_gemm) {
              CHECK_MESSAGE(std::memcmp(dx_first.data(), dx_d.data(), dx_d.numel() * sizeof(T)) == 0, n,
                            ": dL_dx differs between two runs");
              CHECK_MESSAGE(std::memcmp(dw_first.data(), dw_d.data(), dw_d.numel() * sizeof(T)) == 0, n,
                            ": dL_dw differs between two runs");
            }
          }
          expect_match(n + " y", y_first, y_h, tol_v<T>, tol_v<T>, extra * max_abs(y_h));
          expect_match(n + " dL_dx", dx_first, dx_h, tol_v<T>, tol_v<T>, extra * max_abs(dx_h));
          expect_match(n + " dL_dw (accumulated)", dw_first, dw_h, tol_v<T>, tol_v<T>, extra * max_abs(dw_h));
          cuda::conv1x1_gemm() = old_mode;
        }
    }
    g.set_cudnn_options(saved);
  }

  TEST_CASE("conv2d 1x1 GEMM: a call with views off the 16-byte boundary runs cuDNN, same results") {
    // The plan is made on aligned tensors (GEMM chosen), then the same shape runs on views shifted
    // by 4 elements (8 bytes): cublasLt's algorithms were chosen for 16-byte aligned pointers, so
    // conv2d_* must take cuDNN for that call.
    using H = ampkit::half;
    using cuda::Conv1x1Gemm;
    auto& g = gpu();
    const CudnnOptions saved = g.cudnn_options();
    SwitchGuard sw(cuda::conv_force_cudnn(), false);
    const Conv1x1Gemm old_mode = cuda::conv1x1_gemm().exchange(Conv1x1Gemm::kAlways);
    g.set_cudnn_options({false, false});
    const Shape xs{2, 9, 7, 64}, ws{32, 1, 1, 64}, ys{2, 9, 7, 32};
    const auto x = testing::random_tensor<H>(xs, 951);
    const auto w = testing::random_tensor<H>(ws, 952, -0.125f, 0.125f);
    HostTensor<H> y_h(ys);
    conv2d_forward<H>(cpu(), x.cview(), w.cview(), TensorView<const H>{}, y_h.view(), Conv2dParams{});
    auto xd = g.to_device(x), wd = g.to_device(w);
    auto yd = g.tensor<H>(ys);
    conv2d_forward<H>(g, xd.cview(), wd.cview(), TensorView<const H>{}, yd.view(), Conv2dParams{});
    CHECK(conv2d_engine<H>(g, xs, ws, Conv2dParams{}, cuda::ConvDirection::kForward) ==
          cuda::ConvEngine::kCublasLt);
    auto xbuf = g.alloc<H>(static_cast<std::size_t>(xs.numel()) + 8),
         ybuf = g.alloc<H>(static_cast<std::size_t>(ys.numel()) + 8);
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(xbuf.data() + 4, xd.data(), x.numel() * sizeof(H),
                                      cudaMemcpyDeviceToDevice, g.stream()));
    const TensorView<const H> xv{xbuf.data() + 4, xs};
    const TensorView<H> yv{ybuf.data() + 4, ys};
    bool ran = true;
    try {
      conv2d_forward<H>(g, xv, wd.cview(), TensorView<const H>{}, yv, Conv2dParams{});
      g.synchronize();
    } catch (const Error& e) {
      ran = false;  // cuDNN's own alignment needs (unchanged by the GEMM path)
      WARN_MESSAGE(false, "cuDNN rejects 8-byte aligned fp16 views as well: ", e.what());
    }
    if (ran)
      expect_match("misaligned views (cuDNN fallback) y", g.to_host(TensorView<const H>{yv.data, ys}), y_h,
                   tol_v<H>, tol_v<H>);
    cuda::conv1x1_gemm() = old_mode;
    g.set_cudnn_options(saved);
  }

  TEST_CASE("conv2d 1x1 padded GEMM staging copy (repack_rows): exact, pad lanes zero, both kernels") {
    // The copies that stage the padded GEMM's matrices are bit copies: each (src_ld -> dst_ld,
    // rows) pair is checked element for element against a host loop, the pad lanes for zero.
    // Shapes: pad and compact of DEKR's head (255 <-> 256) over several 32-row tiles with a
    // ragged last one; 17 -> 24 and 20 -> 24 (one ragged tile, then several); an ld above 3072
    // (the one-element-per-thread kernel). Sources are random 16-bit patterns (NaN and Inf bit
    // patterns included: nothing may convert them).
    struct Case {
      std::int64_t src_ld, dst_ld, rows;
    };
    const Case cases[] = {{255, 256, 1054}, {256, 255, 1054}, {17, 24, 7},     {20, 24, 1054},
                          {24, 17, 2000},   {3075, 3080, 19}, {3080, 3075, 19}, {255, 256, 1}};
    auto& g = gpu();
    std::mt19937_64 rng(4242);
    for (const auto& c : cases) {
      const std::int64_t cols = std::min(c.src_ld, c.dst_ld);
      CAPTURE(c.src_ld);
      CAPTURE(c.dst_ld);
      CAPTURE(c.rows);
      std::vector<std::uint16_t> src(static_cast<std::size_t>(c.src_ld * c.rows));
      for (auto& v : src) v = static_cast<std::uint16_t>(rng());
      // Poison the destination: every element must be written (data or a zero pad lane).
      std::vector<std::uint16_t> out(static_cast<std::size_t>(c.dst_ld * c.rows), 0xBEEF);
      auto src_d = g.alloc<std::uint16_t>(src.size()), dst_d = g.alloc<std::uint16_t>(out.size());
      AMPKIT_CUDA_CHECK(cudaMemcpy(src_d.data(), src.data(), src.size() * 2, cudaMemcpyHostToDevice));
      AMPKIT_CUDA_CHECK(cudaMemcpy(dst_d.data(), out.data(), out.size() * 2, cudaMemcpyHostToDevice));
      cuda::detail::repack_rows(g, src_d.data(), c.src_ld, dst_d.data(), c.dst_ld, c.rows, cols);
      g.synchronize();
      AMPKIT_CUDA_CHECK(cudaMemcpy(out.data(), dst_d.data(), out.size() * 2, cudaMemcpyDeviceToHost));
      std::int64_t bad = 0;
      for (std::int64_t r = 0; r < c.rows; ++r)
        for (std::int64_t k = 0; k < c.dst_ld; ++k) {
          const std::uint16_t want = k < cols ? src[static_cast<std::size_t>(r * c.src_ld + k)] : 0;
          const std::uint16_t got = out[static_cast<std::size_t>(r * c.dst_ld + k)];
          if (got != want && bad++ < 5) MESSAGE("row ", r, " col ", k, ": got ", got, " want ", want);
        }
      CHECK(bad == 0);
    }
  }

  TEST_CASE("conv2d 1x1 GEMM engine query: DEKR's head 480->255 takes the padded GEMM under kAlways") {
    // The engine query and its name (ampkit_ops_bench's path column) for the head's offset conv:
    // heuristic mode under kAlways plans the padded variant for all three directions, and none
    // before the first call. Values are checked by the "conv2d 1x1 as cuBLASLt GEMM == host" case.
    using H = ampkit::half;
    using cuda::Conv1x1Gemm;
    using cuda::ConvDirection;
    auto& g = gpu();
    const CudnnOptions saved = g.cudnn_options();
    SwitchGuard sw(cuda::conv_force_cudnn(), false);
    const Conv1x1Gemm old_mode = cuda::conv1x1_gemm().exchange(Conv1x1Gemm::kAlways);
    g.set_cudnn_options({false, false});
    const Shape xs{2, 5, 3, 480}, ws{255, 1, 1, 480}, ys{2, 5, 3, 255};
    auto x = g.to_device(testing::random_tensor<H>(xs, 961));
    auto w = g.to_device(testing::random_tensor<H>(ws, 962, -0.05f, 0.05f));
    auto dy = g.to_device(testing::random_tensor<H>(ys, 963));
    auto y = g.tensor<H>(ys), dx = g.tensor<H>(xs);
    auto dw = g.to_device(testing::random_tensor<H>(ws, 964, -0.1f, 0.1f));
    for (const ConvDirection d : {ConvDirection::kForward, ConvDirection::kBackwardData,
                                  ConvDirection::kBackwardFilter})
      CHECK(conv2d_engine<H>(g, xs, ws, Conv2dParams{}, d) == cuda::ConvEngine::kUnplanned);
    conv2d_forward<H>(g, x.cview(), w.cview(), TensorView<const H>{}, y.view(), Conv2dParams{});
    conv2d_backward_data<H>(g, dy.cview(), w.cview(), dx.view(), Conv2dParams{});
    conv2d_backward_filter<H>(g, x.cview(), dy.cview(), dw.view(), Conv2dParams{});
    g.synchronize();
    for (const ConvDirection d : {ConvDirection::kForward, ConvDirection::kBackwardData,
                                  ConvDirection::kBackwardFilter}) {
      const cuda::ConvEngine e = conv2d_engine<H>(g, xs, ws, Conv2dParams{}, d);
      CHECK(e == cuda::ConvEngine::kCublasLtPadded);
      CHECK(std::string(cuda::conv_engine_name(e)) == "cublaslt-padded");
      CHECK(cuda::is_gemm_engine(e));
    }
    cuda::conv1x1_gemm() = old_mode;
    g.set_cudnn_options(saved);
  }

  TEST_CASE_TEMPLATE("conv2d benchmark mode: the first call (Find) leaves an accumulating dL_dw its start value", T,
                     float, ampkit::half, ampkit::bfloat16) {
    // cudnnFind*Ex writes every algorithm it times into its output argument. dL_dw accumulates
    // (beta = 1), so Find must time into a scratch: here dL_dw starts from random values of the
    // gradient's own size (sums of 240 products of U(-1,1) values: std ~5, max ~15), so a Find
    // that wrote into it would leave an error of order |dL_dw start| ~ 8, far above the
    // tolerance (2 eps_T * max|ref|, + 1e-4 * max|ref| for fp32: 0.04 for fp16). Shapes used by
    // no other test in this binary, so the calls here are the ones that plan (checked).
    struct Case {
      const char* name;
      Shape x;
      std::int64_t k, r;
      Conv2dParams p;
    };
    const Case cases[] = {
        {"3x3 40->24", {2, 12, 10, 40}, 24, 3, Conv2dParams::square(1, 1)},
        {"1x1 64->48", {2, 10, 12, 64}, 48, 1, Conv2dParams{}},  // fp16/bf16: the GEMM engine choice too
    };
    auto& g = gpu();
    const CudnnOptions saved = g.cudnn_options();
    g.set_cudnn_options({true, false});
    std::uint64_t seed = 7100;
    for (const auto& c : cases) {
      const std::string n = std::string(c.name) + " " + type_name_v<T> + " [find]";
      CAPTURE(n);
      const Shape ws{c.k, c.r, c.r, c.x.c};
      const Shape ys = conv2d_output_shape(c.x, ws, c.p);
      const float wscale = 1.f / std::sqrt(static_cast<float>(ws.h * ws.w * ws.c));
      const auto x = testing::random_tensor<T>(c.x, ++seed);
      const auto w = testing::random_tensor<T>(ws, ++seed, -wscale, wscale);
      const auto dy = testing::random_tensor<T>(ys, ++seed);
      const auto dw0 = testing::random_tensor<T>(ws, ++seed, -8.f, 8.f);
      HostTensor<T> y_h(ys), dx_h(c.x);
      auto dw_h = dw0.clone();
      conv2d_forward<T>(cpu(), x.cview(), w.cview(), TensorView<const T>{}, y_h.view(), c.p);
      conv2d_backward_data<T>(cpu(), dy.cview(), w.cview(), dx_h.view(), c.p);
      conv2d_backward_filter<T>(cpu(), x.cview(), dy.cview(), dw_h.view(), c.p);

      for (const auto dir : {cuda::ConvDirection::kForward, cuda::ConvDirection::kBackwardData,
                             cuda::ConvDirection::kBackwardFilter})
        REQUIRE_MESSAGE(conv2d_engine<T>(g, c.x, ws, c.p, dir) == cuda::ConvEngine::kUnplanned, n,
                        ": planned before this test; pick a shape no other test uses");
      auto xd = g.to_device(x), wd = g.to_device(w), dyd = g.to_device(dy), dwd = g.to_device(dw0);
      auto yd = g.tensor<T>(ys), dxd = g.tensor<T>(c.x);
      conv2d_forward<T>(g, xd.cview(), wd.cview(), TensorView<const T>{}, yd.view(), c.p);
      conv2d_backward_data<T>(g, dyd.cview(), wd.cview(), dxd.view(), c.p);
      conv2d_backward_filter<T>(g, xd.cview(), dyd.cview(), dwd.view(), c.p);
      CHECK(conv2d_engine<T>(g, c.x, ws, c.p, cuda::ConvDirection::kBackwardFilter) != cuda::ConvEngine::kUnplanned);
      const double extra = std::is_same_v<T, float> ? 1e-4 : 0.0;
      expect_match(n + " y", g.to_host(yd.cview()), y_h, tol_v<T>, tol_v<T>, extra * max_abs(y_h));
      expect_match(n + " dL_dx", g.to_host(dxd.cview()), dx_h, tol_v<T>, tol_v<T>, extra * max_abs(dx_h));
      expect_match(n + " dL_dw (start + gradient)", g.to_host(dwd.cview()), dw_h, tol_v<T>, tol_v<T>,
                   extra * max_abs(dw_h));
    }
    g.set_cudnn_options(saved);
  }

  TEST_CASE("conv2d benchmark mode: Find allocates nothing outside the allocator (fp32 1x1 conv on 128 MiB tensors)") {
    // The plain cudnnFind* cudaMallocs its own x, w, y and workspace for the shape it is given
    // (and frees them before it returns). cudnnFind*Ex runs on our buffers and a workspace from the
    // caching allocator. A host thread samples cudaMemGetInfo while the first (planning) calls of
    // the three directions run; the drop of free memory below its start, less what the allocator
    // reserved meanwhile, is what cuDNN took outside the allocator. For this shape the plain
    // Find's own x and y alone are 2 x 128 MiB (fp32, 32x256x256x16), so the bound of 64 MiB
    // separates the two by 4x and leaves room for what the driver may take on its own (kernel
    // modules cuDNN loads lazily, a few MiB each: a warm-up on the same geometry at batch 16
    // loads them first). Another process allocating on the same GPU in that window could add to
    // the drop: up to three fresh shapes (batch 32, 31, 30) are tried and the smallest drop
    // counts; the old Find exceeds the bound at every one. compute-sanitizer's own device memory
    // falls in the same window, so tools/sanitize_gpu.sh leaves this case out.
    // The same calls check the results: a second call per direction (cached plan, no Find), from
    // the same random dL_dw start, must agree with the first (Find clobbering dL_dw would double
    // the gradient). fp32 sums of 2M products: rtol 2 eps, atol 1e-4 * max|ref| as above.
    using F = float;
    auto& g = gpu();
    const CudnnOptions saved = g.cudnn_options();
    // The legacy Find alone (the subject here); the graph-API plans that benchmark mode also times
    // by default finalize engines whose kernels the driver may load on first use, which this
    // bound does not separate from an allocation.
    g.set_cudnn_options({true, false, CudnnGraphApi::kNever});
    const Shape ws{16, 1, 1, 16};
    const auto w = testing::random_tensor<F>(ws, 7201, -0.25f, 0.25f);
    auto wd = g.to_device(w);
    const auto run_all = [&](const cuda::DeviceTensor<F>& xd, const cuda::DeviceTensor<F>& dyd,
                             cuda::DeviceTensor<F>& yd, cuda::DeviceTensor<F>& dxd, cuda::DeviceTensor<F>& dwd) {
      conv2d_forward<F>(g, xd.cview(), wd.cview(), TensorView<const F>{}, yd.view(), Conv2dParams{});
      conv2d_backward_data<F>(g, dyd.cview(), wd.cview(), dxd.view(), Conv2dParams{});
      conv2d_backward_filter<F>(g, xd.cview(), dyd.cview(), dwd.view(), Conv2dParams{});
      g.synchronize();
    };
    {  // warm-up: same geometry at batch 16 (its own plan), loads the kernels Find will time
      const Shape xs{16, 256, 256, 16};
      auto xd = g.to_device(testing::random_tensor<F>(xs, 7202)), dyd = g.to_device(testing::random_tensor<F>(xs, 7203));
      auto yd = g.tensor<F>(xs), dxd = g.tensor<F>(xs), dwd = g.to_device(testing::random_tensor<F>(ws, 7204));
      run_all(xd, dyd, yd, dxd, dwd);
    }
    constexpr std::int64_t kBound = std::int64_t{64} << 20;
    std::int64_t best = std::numeric_limits<std::int64_t>::max();
    for (const std::int64_t batch : {32, 31, 30}) {
      CAPTURE(batch);
      const Shape xs{batch, 256, 256, 16};  // (N,H,W,C): 128 MiB at batch 32
      REQUIRE(conv2d_engine<F>(g, xs, ws, Conv2dParams{}, cuda::ConvDirection::kForward) ==
              cuda::ConvEngine::kUnplanned);
      const auto x = testing::random_tensor<F>(xs, 7210 + static_cast<std::uint64_t>(batch));
      const auto dy = testing::random_tensor<F>(xs, 7250 + static_cast<std::uint64_t>(batch));
      const auto dw0 = testing::random_tensor<F>(ws, 7290 + static_cast<std::uint64_t>(batch), -500.f, 500.f);
      auto xd = g.to_device(x), dyd = g.to_device(dy), dwd = g.to_device(dw0);
      auto yd = g.tensor<F>(xs), dxd = g.tensor<F>(xs);
      g.synchronize();

      std::size_t free0 = 0, total = 0;
      AMPKIT_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
      const std::size_t reserved0 = g.memory_stats().reserved;
      std::atomic<bool> stop{false};
      std::atomic<std::size_t> min_free{free0};
      std::atomic<long> samples{0};
      std::thread poll([&] {
        if (cudaSetDevice(g.device().index) != cudaSuccess) return;
        do {
          std::size_t f = 0, t = 0;
          if (cudaMemGetInfo(&f, &t) == cudaSuccess && f < min_free.load()) min_free = f;
          ++samples;
        } while (!stop.load());
      });
      run_all(xd, dyd, yd, dxd, dwd);  // plans: Find for each direction
      stop = true;
      poll.join();
      const std::size_t reserved1 = g.memory_stats().reserved;
      const std::int64_t drop = static_cast<std::int64_t>(free0) - static_cast<std::int64_t>(min_free.load());
      const std::int64_t grown = static_cast<std::int64_t>(reserved1) - static_cast<std::int64_t>(reserved0);
      const std::int64_t outside = drop - grown;
      MESSAGE("batch ", batch, ": free memory dropped by ", drop >> 20, " MiB during the planning calls (",
              samples.load(), " samples), the allocator reserved ", grown >> 20, " MiB more: ", outside >> 20,
              " MiB outside the allocator (bound ", kBound >> 20, " MiB)");
      CHECK(samples.load() > 1);

      // results of the planning calls against a second, planned call from the same start
      const auto y1 = g.to_host(yd.cview()), dx1 = g.to_host(dxd.cview()), dw1 = g.to_host(dwd.cview());
      auto dwd2 = g.to_device(dw0);
      run_all(xd, dyd, yd, dxd, dwd2);
      const auto y2 = g.to_host(yd.cview()), dx2 = g.to_host(dxd.cview()), dw2 = g.to_host(dwd2.cview());
      expect_match("y (planning call vs planned call)", y1, y2, tol_v<F>, tol_v<F>, 1e-4 * max_abs(y2));
      expect_match("dL_dx (planning call vs planned call)", dx1, dx2, tol_v<F>, tol_v<F>, 1e-4 * max_abs(dx2));
      expect_match("dL_dw (planning call vs planned call, from the same start)", dw1, dw2, tol_v<F>, tol_v<F>,
                   1e-4 * max_abs(dw2));
      // and the update is in there: the planned call's dL_dw differs from its start by the
      // gradient (a sum of 2M products of two U(-1,1) values: std ~480 per entry)
      double moved = 0;
      for (std::int64_t i = 0; i < dw2.numel(); ++i)
        moved = std::max(moved, std::abs(static_cast<double>(dw2.data()[i]) - dw0.data()[i]));
      CHECK(moved > 10.0);
      best = std::min(best, outside);
      if (outside < kBound) break;
    }
    CHECK_MESSAGE(best < kBound, "cuDNN took ", best >> 20, " MiB outside the caching allocator while planning");
    g.set_cudnn_options(saved);
  }

  TEST_CASE_TEMPLATE("batch_norm cuda == host: training/inference, all epilogues, packed and scalar paths", T,
                     float, ampkit::half, ampkit::bfloat16) {
    // C = 32/64/480 take 16-byte packs per channel. With the flat layout on, C = 255/34/17/3 take
    // packs over the flat array where N*H*W*C allows (255 at M=512 and 4096: V=8, L=2040; 34 at
    // M=512 and 17 at M=120: L=136; 3: L=24 with channels repeating inside a pack; 255 at M=126:
    // pairs, L=510), the rest the per-channel layout (34 at M=105: pairs); with it off, the
    // per-channel layout (scalar for odd C). The switch also picks the elementwise kernels. M = 16384 spreads the statistics over many blocks.
    const Shape shapes[] = {{4, 64, 64, 32}, {2, 9, 7, 255},  {3, 5, 7, 34},  {2, 16, 16, 480},
                            {8, 3, 5, 17},   {2, 32, 32, 64}, {2, 16, 16, 255}, {8, 8, 8, 34},
                            {1, 4, 2, 3},    {4, 32, 32, 255}};
    std::uint64_t seed = 500;
    for (const bool flat : {true, false})
    for (const Shape s : shapes) {
      SwitchGuard sw(cuda::bn_flat_packs(), flat);
      // (off: the older per-channel layout and grid-stride elementwise passes, for every C)
      const Shape v{1, 1, 1, s.c};
      const std::int64_t M = s.n * s.h * s.w;
      // Per-channel offset and spread so the normalisation does real work (offset 3 > spread tests
      // Welford against cancellation).
      auto x = testing::random_tensor<T>(s, ++seed);
      const auto off = testing::random_tensor<float>(v, ++seed, -3.f, 3.f),
                 spread = testing::random_tensor<float>(v, ++seed, 0.2f, 2.f);
      for (std::int64_t i = 0; i < x.numel(); ++i)
        x[i] = convert<T>(static_cast<float>(x[i]) * spread[i % s.c] + off[i % s.c]);
      const auto res = testing::random_tensor<T>(s, ++seed), dy = testing::random_tensor<T>(s, ++seed);
      const auto gamma = testing::random_tensor<float>(v, ++seed, 0.5f, 1.5f),
                 beta = testing::random_tensor<float>(v, ++seed);
      const auto rm0 = testing::random_tensor<float>(v, ++seed),
                 rv0 = testing::random_tensor<float>(v, ++seed, 0.5f, 1.5f);
      const auto dg0 = testing::random_tensor<float>(v, ++seed),
                 db0 = testing::random_tensor<float>(v, ++seed);
      auto& g = gpu();
      auto xd = g.to_device(x), resd = g.to_device(res), dyd = g.to_device(dy);
      auto gd = g.to_device(gamma), bd = g.to_device(beta);
      for (const auto e : {BatchNormEpilogue::kNone, BatchNormEpilogue::kRelu, BatchNormEpilogue::kAddRelu}) {
        const std::string n = std::string(detail::bn_forward_name(e, true)) + " " + type_name_v<T> +
                              " C=" + std::to_string(s.c) + " M=" + std::to_string(M) + " " +
                              cuda::detail::bn_path_name<T>(s, xd.data());
        CAPTURE(n);
        // host
        auto rm_h = rm0.clone(), rv_h = rv0.clone(), dg_h = dg0.clone(), db_h = db0.clone();
        HostTensor<float> sm_h(v), si_h(v);
        HostTensor<T> y_h(s), dx_h(s), dr_h(s), ye_h(s);
        // device
        auto rmd = g.to_device(rm0), rvd = g.to_device(rv0), dgd = g.to_device(dg0), dbd = g.to_device(db0);
        auto smd = g.tensor<float>(v), sid = g.tensor<float>(v);
        auto yd = g.tensor<T>(s), dxd = g.tensor<T>(s), drd = g.tensor<T>(s), yed = g.tensor<T>(s);
        // Device forward first: the host backward takes the DEVICE y as its ReLU mask, so an
        // element whose y rounds to 0 on one backend and to +1 ulp on the other cannot flip a mask.
        if (e == BatchNormEpilogue::kNone)
          batch_norm_forward_training<T>(g, xd.cview(), gd.cview(), bd.cview(), rmd.view(), rvd.view(),
                                         smd.view(), sid.view(), yd.view());
        else if (e == BatchNormEpilogue::kRelu)
          batch_norm_relu_forward_training<T>(g, xd.cview(), gd.cview(), bd.cview(), rmd.view(), rvd.view(),
                                              smd.view(), sid.view(), yd.view());
        else
          batch_norm_add_relu_forward_training<T>(g, xd.cview(), resd.cview(), gd.cview(), bd.cview(),
                                                  rmd.view(), rvd.view(), smd.view(), sid.view(), yd.view());
        const auto y_dev = g.to_host(yd.cview());
        if (e == BatchNormEpilogue::kNone) {
          batch_norm_forward_training<T>(cpu(), x.cview(), gamma.cview(), beta.cview(), rm_h.view(),
                                         rv_h.view(), sm_h.view(), si_h.view(), y_h.view());
          batch_norm_backward<T>(cpu(), x.cview(), dy.cview(), gamma.cview(), sm_h.cview(), si_h.cview(),
                                 dx_h.view(), dg_h.view(), db_h.view());
          batch_norm_forward_inference<T>(cpu(), x.cview(), gamma.cview(), beta.cview(), rm_h.cview(),
                                          rv_h.cview(), ye_h.view());
          batch_norm_backward<T>(g, xd.cview(), dyd.cview(), gd.cview(), smd.cview(), sid.cview(), dxd.view(),
                                 dgd.view(), dbd.view());
          batch_norm_forward_inference<T>(g, xd.cview(), gd.cview(), bd.cview(), rmd.cview(), rvd.cview(),
                                          yed.view());
        } else if (e == BatchNormEpilogue::kRelu) {
          batch_norm_relu_forward_training<T>(cpu(), x.cview(), gamma.cview(), beta.cview(), rm_h.view(),
                                              rv_h.view(), sm_h.view(), si_h.view(), y_h.view());
          batch_norm_relu_backward<T>(cpu(), x.cview(), y_dev.cview(), dy.cview(), gamma.cview(),
                                      sm_h.cview(), si_h.cview(), dx_h.view(), dg_h.view(), db_h.view());
          batch_norm_relu_forward_inference<T>(cpu(), x.cview(), gamma.cview(), beta.cview(), rm_h.cview(),
                                               rv_h.cview(), ye_h.view());
          batch_norm_relu_backward<T>(g, xd.cview(), yd.cview(), dyd.cview(), gd.cview(), smd.cview(),
                                      sid.cview(), dxd.view(), dgd.view(), dbd.view());
          batch_norm_relu_forward_inference<T>(g, xd.cview(), gd.cview(), bd.cview(), rmd.cview(),
                                               rvd.cview(), yed.view());
        } else {
          batch_norm_add_relu_forward_training<T>(cpu(), x.cview(), res.cview(), gamma.cview(), beta.cview(),
                                                  rm_h.view(), rv_h.view(), sm_h.view(), si_h.view(),
                                                  y_h.view());
          batch_norm_add_relu_backward<T>(cpu(), x.cview(), y_dev.cview(), dy.cview(), gamma.cview(),
                                          sm_h.cview(), si_h.cview(), dx_h.view(), dr_h.view(), dg_h.view(),
                                          db_h.view());
          batch_norm_add_relu_forward_inference<T>(cpu(), x.cview(), res.cview(), gamma.cview(), beta.cview(),
                                                   rm_h.cview(), rv_h.cview(), ye_h.view());
          batch_norm_add_relu_backward<T>(g, xd.cview(), yd.cview(), dyd.cview(), gd.cview(), smd.cview(),
                                          sid.cview(), dxd.view(), drd.view(), dgd.view(), dbd.view());
          batch_norm_add_relu_forward_inference<T>(g, xd.cview(), resd.cview(), gd.cview(), bd.cview(),
                                                   rmd.cview(), rvd.cview(), yed.view());
        }
        // Statistics: fp32 Welford vs double, relative 1e-5 (M <= 16384 values of O(3)).
        expect_match(n + " save_mean", g.to_host(smd.cview()), sm_h, 1e-5, 1e-5);
        expect_match(n + " save_invstd", g.to_host(sid.cview()), si_h, 1e-5, 1e-5);
        expect_match(n + " running_mean", g.to_host(rmd.cview()), rm_h, 1e-5, 1e-5);
        expect_match(n + " running_var", g.to_host(rvd.cview()), rv_h, 1e-5, 1e-5);
        // y: same inputs and statistics to fp32 rounding; one rounding to T each.
        expect_match(n + " y", y_dev, y_h, tol_v<T>, tol_v<T>, 1e-5 * max_abs(y_h));
        expect_match(n + " y (inference)", g.to_host(yed.cview()), ye_h, tol_v<T>, tol_v<T>,
                     1e-5 * max_abs(ye_h));
        // dx: coefficients from fp32 sums of M terms vs double.
        expect_match(n + " dL_dx", g.to_host(dxd.cview()), dx_h, tol_v<T>, tol_v<T>, 1e-4 * max_abs(dx_h));
        if (e == BatchNormEpilogue::kAddRelu)
          expect_match(n + " dL_dresidual", g.to_host(drd.cview()), dr_h, 0, 0);
        // dgamma/dbeta: fp32 sums of M terms of size <= ~4 vs double: 4e-6 * M absolute.
        expect_match(n + " dL_dgamma (accumulated)", g.to_host(dgd.cview()), dg_h, 1e-5, 0, 4e-6 * M);
        expect_match(n + " dL_dbeta (accumulated)", g.to_host(dbd.cview()), db_h, 1e-5, 0, 4e-6 * M);
      }
    }
  }

  TEST_CASE_TEMPLATE("batch_norm cuda is deterministic run to run", T, ampkit::half, float) {
   for (const Shape s : {Shape{8, 32, 32, 64}, Shape{4, 16, 16, 255}}) {
    CAPTURE(s);
    const Shape v{1, 1, 1, s.c};
    auto& g = gpu();
    auto x = g.to_device(testing::random_tensor<T>(s, 1)), dy = g.to_device(testing::random_tensor<T>(s, 2));
    auto gm = g.to_device(testing::random_tensor<float>(v, 3, 0.5f, 1.5f)),
         bt = g.to_device(testing::random_tensor<float>(v, 4));
    HostTensor<float> first_mean, first_dg;
    HostTensor<T> first_dx;
    for (int rep = 0; rep < 3; ++rep) {
      auto rm = g.to_device(HostTensor<float>(v, 0.f)), rv = g.to_device(HostTensor<float>(v, 1.f));
      auto sm = g.tensor<float>(v), si = g.tensor<float>(v);
      auto y = g.tensor<T>(s), dx = g.tensor<T>(s);
      auto dg = g.to_device(HostTensor<float>(v, 0.f)), db = g.to_device(HostTensor<float>(v, 0.f));
      batch_norm_relu_forward_training<T>(g, x.cview(), gm.cview(), bt.cview(), rm.view(), rv.view(),
                                          sm.view(), si.view(), y.view());
      batch_norm_relu_backward<T>(g, x.cview(), y.cview(), dy.cview(), gm.cview(), sm.cview(), si.cview(),
                                  dx.view(), dg.view(), db.view());
      auto mean = g.to_host(sm.cview()), dgh = g.to_host(dg.cview());
      auto dxh = g.to_host(dx.cview());
      if (rep == 0) {
        first_mean = mean.clone();
        first_dg = dgh.clone();
        first_dx = dxh.clone();
      } else {
        CHECK(std::memcmp(mean.data(), first_mean.data(), s.c * sizeof(float)) == 0);
        CHECK(std::memcmp(dgh.data(), first_dg.data(), s.c * sizeof(float)) == 0);
        CHECK(std::memcmp(dxh.data(), first_dx.data(), dxh.numel() * sizeof(T)) == 0);
      }
    }
   }
  }

  TEST_CASE_TEMPLATE("relu / add / sum / sum_relu cuda == host exactly, packed, scalar and in-place", T,
                     float, ampkit::half, ampkit::bfloat16) {
    auto& g = gpu();
    // Odd numel and an offset-by-one view force the scalar path; the big one takes packs.
    for (const Shape s : {Shape{4, 33, 31, 32}, Shape{1, 7, 5, 3}}) {
      for (int offset : {0, 1}) {
        CAPTURE(s);
        CAPTURE(offset);
        const std::int64_t n = s.numel();
        std::vector<HostTensor<T>> in;
        for (int i = 0; i < 4; ++i) in.push_back(testing::random_tensor<T>({1, 1, 1, n + offset}, 900 + i));
        std::vector<cuda::DeviceTensor<T>> ind;
        for (auto& t : in) ind.push_back(g.to_device(t));
        auto hv = [&](int i) { return TensorView<const T>(in[i].data() + offset, s); };
        auto dv = [&](int i) { return TensorView<const T>(ind[i].data() + offset, s); };
        HostTensor<T> yh(s);
        auto yd = g.tensor<T>(s);
        auto check_eq = [&](const char* what) {
          const auto got = g.to_host(yd.cview());
          const auto r = testing::compare(what, got.span(), std::as_const(yh).span(), 0, 0);
          CHECK_MESSAGE(r.ok, what);
        };
        relu_forward<T>(cpu(), hv(0), yh.view());
        relu_forward<T>(g, dv(0), yd.view());
        check_eq("relu_forward");
        relu_backward<T>(cpu(), hv(0), hv(1), yh.view());
        relu_backward<T>(g, dv(0), dv(1), yd.view());
        check_eq("relu_backward");
        add_forward<T>(cpu(), hv(0), hv(1), yh.view());
        add_forward<T>(g, dv(0), dv(1), yd.view());
        check_eq("add_forward");
        const TensorView<const T> hs[] = {hv(0), hv(1), hv(2)}, ds[] = {dv(0), dv(1), dv(2)};
        sum_forward<T>(cpu(), std::span<const TensorView<const T>>(hs), yh.view());
        sum_forward<T>(g, std::span<const TensorView<const T>>(ds), yd.view());
        check_eq("sum_forward (3)");
        const TensorView<const T> hs4[] = {hv(0), hv(1), hv(2), hv(3)}, ds4[] = {dv(0), dv(1), dv(2), dv(3)};
        sum_relu_forward<T>(cpu(), std::span<const TensorView<const T>>(hs4), yh.view());
        sum_relu_forward<T>(g, std::span<const TensorView<const T>>(ds4), yd.view());
        check_eq("sum_relu_forward (4)");
        // in place: y aliases the first input
        HostTensor<T> acc_h(s);
        std::memcpy(acc_h.data(), in[0].data() + offset, n * sizeof(T));
        auto acc_d = g.to_device(acc_h);
        add_forward<T>(cpu(), acc_h.cview(), hv(1), acc_h.view());
        add_forward<T>(g, acc_d.cview(), dv(1), acc_d.view());
        const auto got = g.to_host(acc_d.cview());
        CHECK(testing::compare("add in place", got.span(), std::as_const(acc_h).span(), 0, 0).ok);
      }
    }
  }

  TEST_CASE("cuda nn ops reject bad input before launching anything") {
    auto& g = gpu();
    auto x = g.tensor<ampkit::half>({1, 5, 5, 34}), w = g.tensor<ampkit::half>({34, 1, 1, 2}),
         y = g.tensor<ampkit::half>({1, 5, 5, 34});
    CHECK_THROWS_WITH_AS(conv2d_forward<ampkit::half>(g, x.cview(), w.cview(), {}, y.view(), Conv2dParams{}),
                         doctest::Contains("conv2d_forward: input has 34 channels"), Error);
    CHECK_THROWS_WITH_AS(
        conv2d_forward<ampkit::half>(g, x.cview(), w.cview(), {}, y.view(), Conv2dParams::square(1, 0, 1, 4)),
        doctest::Contains("not divisible by groups=4"), Error);
    auto g7 = g.tensor<float>({1, 1, 1, 7}), v = g.tensor<float>({1, 1, 1, 34});
    CHECK_THROWS_WITH_AS(
        batch_norm_forward_training<ampkit::half>(g, x.cview(), g7.cview(), v.cview(), v.view(), v.view(),
                                                  v.view(), v.view(), y.view()),
        doctest::Contains("gamma has shape (1,1,1,7), expected (1,1,1,34)"), Error);
    auto other = g.tensor<ampkit::half>({1, 5, 5, 33});
    CHECK_THROWS_WITH_AS(relu_forward<ampkit::half>(g, x.cview(), other.view()),
                         doctest::Contains("relu_forward"), Error);
  }

  // recompute_bn_outputs (nn/conv_bn.hpp): a BN+ReLU output freed after forward is rebuilt from
  // the BN input and the saved statistics by batch_norm_relu_forward_saved; the claim is the same
  // bits as the training forward wrote, in every layout (flat packs on/off, channel counts of
  // DEKR, views off the 16-byte boundary that force another pack width than the forward's).
  TEST_CASE_TEMPLATE("batch_norm_relu_forward_saved cuda: the training forward's output bit for bit", T, float,
                     ampkit::half, ampkit::bfloat16) {
    auto& g = gpu();
    for (const bool flat : {true, false}) {
      SwitchGuard guard(cuda::bn_flat_packs(), flat);
      for (const Shape s : {Shape{2, 8, 8, 64}, Shape{2, 5, 7, 255}, Shape{1, 9, 4, 17}, Shape{3, 3, 3, 34}}) {
        for (const std::int64_t off : {std::int64_t{0}, std::int64_t{1}}) {
          CAPTURE(flat);
          CAPTURE(s);
          CAPTURE(off);
          const Shape v{1, 1, 1, s.c};
          // Shifted data (mean ~2): the affine map's shift carries the rounding that matters.
          const auto xh = testing::random_tensor<T>(s, 71, -2.f, 6.f);
          const auto x = g.to_device(xh);
          const auto gm = g.to_device(testing::random_tensor<float>(v, 72, 0.25f, 2.5f)),
                     bt = g.to_device(testing::random_tensor<float>(v, 73));
          auto rm = g.to_device(HostTensor<float>(v, 0.f)), rv = g.to_device(HostTensor<float>(v, 1.f));
          auto sm = g.tensor<float>(v), si = g.tensor<float>(v);
          auto y = g.tensor<T>(s);
          batch_norm_relu_forward_training<T>(g, x.cview(), gm.cview(), bt.cview(), rm.view(), rv.view(), sm.view(),
                                              si.view(), y.view());
          // The rebuild reads a copy of x at `off` elements into a fresh buffer and writes there too.
          auto xb = g.tensor<T>({1, 1, 1, s.numel() + 1}), yb = g.tensor<T>({1, 1, 1, s.numel() + 1});
          AMPKIT_CUDA_CHECK(cudaMemcpyAsync(xb.data() + off, x.data(), s.numel() * sizeof(T), cudaMemcpyDeviceToDevice,
                                            g.stream()));
          const TensorView<const T> xv{xb.data() + off, s};
          const TensorView<T> yv{yb.data() + off, s};
          const auto rm0 = g.to_host(rm.cview()), rv0 = g.to_host(rv.cview());
          batch_norm_relu_forward_saved<T>(g, xv, gm.cview(), bt.cview(), sm.cview(), si.cview(), yv);
          const auto want = g.to_host(y.cview()), got = g.to_host(TensorView<const T>(yv));
          std::int64_t n_diff = 0, n_pos = 0;
          for (std::int64_t i = 0; i < want.numel(); ++i) {
            n_diff += std::memcmp(&want[i], &got[i], sizeof(T)) != 0;
            n_pos += static_cast<float>(want[i]) > 0.f;
          }
          CHECK(n_diff == 0);
          CHECK(n_pos > want.numel() / 4);  // not all clipped: the comparison means something
          // Nothing updated.
          const auto rm1 = g.to_host(rm.cview()), rv1 = g.to_host(rv.cview());
          CHECK(std::memcmp(rm0.data(), rm1.data(), s.c * sizeof(float)) == 0);
          CHECK(std::memcmp(rv0.data(), rv1.data(), s.c * sizeof(float)) == 0);
          // And the host op on the same saved statistics: the same map up to the rounding of
          // shift (host: double, CUDA: one fma) and of x*scale+shift (CUDA: fma) -> 2 eps of T.
          HostTensor<T> yh(s);
          const auto smh = g.to_host(sm.cview()), sih = g.to_host(si.cview());
          const auto gmh = g.to_host(gm.cview()), bth = g.to_host(bt.cview());
          batch_norm_relu_forward_saved<T>(cpu(), xh.cview(), gmh.cview(), bth.cview(), smh.cview(), sih.cview(),
                                           yh.view());
          expect_match("bn saved cuda vs host", got, yh, tol_v<T>, 1e-6);
        }
      }
    }
  }

}  // TEST_SUITE

// DEKR decode map work on the device (backend/cuda/dekr_decode.cuh) against the host decode
// (eval/dekr_decode.hpp) on the same maps: for float, half and bfloat16 network outputs (the host
// gets the storage values converted to float, exactly), with and without flip test, on
// (1) seeded random maps whose root map is quantised so that equal scores, plateaus and negative
// peaks occur (tie order matters), (2) maps drawn from known poses, which must also decode back to
// those poses. Plus the end-to-end timing of a 128x160 flip-test decode (printed, not asserted).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/dekr_decode.cuh"
#include "ampkit/eval/dekr_decode.hpp"
#include "ampkit/eval/dekr_evaluate.hpp"
#include "support/testing.hpp"

namespace {

using namespace ampkit;
using eval::DekrCandidates;
using eval::DekrDecodeConfig;

constexpr int K = 17;

Cuda& gpu() {
  static Cuda ctx;
  return ctx;
}

template <class T>
HostTensor<T> to_storage(const HostTensor<float>& f) {
  HostTensor<T> t(f.shape());
  for (std::size_t i = 0; i < t.span().size(); ++i) t.span()[i] = convert<T>(f.span()[i]);
  return t;
}
template <class T>
HostTensor<float> to_float(const HostTensor<T>& t) {
  HostTensor<float> f(t.shape());
  for (std::size_t i = 0; i < f.span().size(); ++i) f.span()[i] = convert<float>(t.span()[i]);
  return f;
}
/// Image b of a batch as a (1,H,W,C) view.
TensorView<const float> image(const HostTensor<float>& t, std::int64_t b) {
  const Shape s = t.shape();
  return {t.data() + b * s.h * s.w * s.c, {1, s.h, s.w, s.c}};
}

/// The host reference: flip-combine (if flip) then the host map work, per image of the batch.
std::vector<DekrCandidates> host_candidates(const HostTensor<float>& hm, const HostTensor<float>& disp,
                                            const HostTensor<float>* hm_f, const HostTensor<float>* disp_f,
                                            double input_w, double input_h, const DekrDecodeConfig& cfg) {
  std::vector<DekrCandidates> out;
  for (std::int64_t b = 0; b < hm.shape().n; ++b) {
    if (hm_f == nullptr) {
      out.push_back(eval::dekr_candidates(image(hm, b), image(disp, b), input_w, input_h, cfg));
      continue;
    }
    HostTensor<float> h({1, hm.shape().h, hm.shape().w, hm.shape().c});
    HostTensor<float> d({1, disp.shape().h, disp.shape().w, disp.shape().c});
    eval::dekr_flip_combine(image(hm, b), image(disp, b), image(*hm_f, b), image(*disp_f, b), h.view(),
                            d.view(), cfg, input_w);
    out.push_back(eval::dekr_candidates(h.cview(), d.cview(), input_w, input_h, cfg));
  }
  return out;
}

/// Identical roots in identical order with identical scores; keypoints within 1e-4 px; heat
/// scores within eps * (8 + 4 * max(H, W)) * max|heatmap|. The device repeats the host's float
/// operations in the same order with explicitly rounded intrinsics, so on an x86-64 host (no FMA
/// contraction without -mfma) they agree bit for bit. The slack covers a host compiler that
/// contracts multiply-adds into FMAs: in the bilinear sum (4 products, ~8 ulps of the largest
/// term) and in the source coordinate (n + 1) * size/2 - 0.5, where one ulp of a coordinate up to
/// max(H, W) moves the weights by eps * max(H, W) (x2 for both axes, x2 for the two taps). A wrong
/// tap, weight or channel is off by O(max|heatmap|) on these maps and fails.
void check_same(const std::vector<DekrCandidates>& got, const std::vector<DekrCandidates>& want,
                double max_heat, std::int64_t extent) {
  REQUIRE(got.size() == want.size());
  for (std::size_t b = 0; b < got.size(); ++b) {
    CAPTURE(b);
    REQUIRE(got[b].roots.size() == want[b].roots.size());
    for (std::size_t r = 0; r < got[b].roots.size(); ++r) {
      CAPTURE(r);
      CHECK(got[b].roots[r].index == want[b].roots[r].index);
      CHECK(got[b].roots[r].score == want[b].roots[r].score);
    }
    const auto kp = testing::compare("keypoints", std::span<const float>(got[b].keypoints),
                                     std::span<const float>(want[b].keypoints), 0.0, 1e-4);
    CHECK(kp.ok);
    const auto hs =
        testing::compare("heat", std::span<const float>(got[b].heat), std::span<const float>(want[b].heat),
                         0.0, epsilon_v<float> * (8.0 + 4.0 * static_cast<double>(extent)) * max_heat);
    CHECK(hs.ok);
  }
}

/// Random network-like outputs: keypoint maps in [-0.1, 1), root map quantised to multiples of
/// 1/16 in [-0.25, 1) (so windows have equal maxima and equal peaks compete in the top-k),
/// displacements in [-24, 24) heatmap px (keypoints land outside the map too: border clamping).
void random_maps(Shape hs, std::uint64_t seed, HostTensor<float>& hm, HostTensor<float>& disp) {
  hm = testing::random_tensor<float>(hs, seed, -0.1f, 1.0f);
  disp = testing::random_tensor<float>({hs.n, hs.h, hs.w, 2 * (hs.c - 1)}, seed + 1, -24.0f, 24.0f);
  std::mt19937_64 rng(seed + 2);
  std::uniform_int_distribution<int> q(-4, 15);
  for (std::int64_t b = 0; b < hs.n; ++b)
    for (std::int64_t y = 0; y < hs.h; ++y)
      for (std::int64_t x = 0; x < hs.w; ++x) hm(b, y, x, hs.c - 1) = static_cast<float>(q(rng)) / 16.0f;
}

struct Person {
  std::int64_t rx, ry;
  std::vector<std::array<double, 2>> kp;
};

/// Ideal maps of known poses (as the host test draws them): Gaussian root and keypoint maps,
/// exact displacements within 4 px of the nearest root.
void pose_maps(const std::vector<Person>& people, std::int64_t H, std::int64_t W, HostTensor<float>& hm,
               HostTensor<float>& disp) {
  hm = HostTensor<float>({1, H, W, K + 1}, 0.0f);
  disp = HostTensor<float>({1, H, W, 2 * K}, 0.0f);
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      std::int64_t best = -1;
      const Person* owner = nullptr;
      for (const auto& p : people) {
        const std::int64_t d = (x - p.rx) * (x - p.rx) + (y - p.ry) * (y - p.ry);
        hm(0, y, x, K) =
            std::max(hm(0, y, x, K), static_cast<float>(std::exp(-static_cast<double>(d) / 8.0)));
        for (int k = 0; k < K; ++k) {
          const auto& kp = p.kp[static_cast<std::size_t>(k)];
          const double dk = (x - kp[0]) * (x - kp[0]) + (y - kp[1]) * (y - kp[1]);
          hm(0, y, x, k) = std::max(hm(0, y, x, k), static_cast<float>(std::exp(-dk / 8.0)));
        }
        if (best < 0 || d < best) best = d, owner = &p;
      }
      if (owner && best <= 16)
        for (int k = 0; k < K; ++k) {
          disp(0, y, x, 2 * k) =
              static_cast<float>(owner->kp[static_cast<std::size_t>(k)][0] - static_cast<double>(x));
          disp(0, y, x, 2 * k + 1) =
              static_cast<float>(owner->kp[static_cast<std::size_t>(k)][1] - static_cast<double>(y));
        }
    }
}

/// The people as the flipped input shows them (heatmap x of a flipped input is W - 1/4 - x).
std::vector<Person> mirror(const std::vector<Person>& people, std::int64_t W) {
  std::vector<Person> out;
  for (const auto& p : people) {
    Person q{W - 1 - p.rx, p.ry, {}};
    for (int k = 0; k < K; ++k) {
      const auto& s = p.kp[static_cast<std::size_t>(eval::kCocoFlipIndices[static_cast<std::size_t>(k)])];
      q.kp.push_back({(static_cast<double>(W) - 0.25) - s[0], s[1]});
    }
    out.push_back(std::move(q));
  }
  return out;
}

template <class T>
std::vector<DekrCandidates> device_candidates(const HostTensor<T>& hm, const HostTensor<T>& disp,
                                              const HostTensor<T>* hm_f, const HostTensor<T>* disp_f,
                                              double input_w, double input_h, const DekrDecodeConfig& cfg) {
  auto d_hm = gpu().to_device(hm), d_disp = gpu().to_device(disp);
  cuda::DeviceTensor<T> d_hmf, d_dispf;
  if (hm_f) d_hmf = gpu().to_device(*hm_f), d_dispf = gpu().to_device(*disp_f);
  return dekr_candidates<T>(gpu(), d_hm.cview(), d_disp.cview(), hm_f ? d_hmf.cview() : TensorView<const T>{},
                            hm_f ? d_dispf.cview() : TensorView<const T>{}, input_w, input_h, cfg);
}

}  // namespace

TEST_CASE_TEMPLATE("dekr decode (cuda): random maps give the host's roots, poses and scores", T, float,
                   ampkit::half, ampkit::bfloat16) {
  std::uint64_t seed = 100;
  for (Shape hs : {Shape{1, 37, 53, K + 1}, Shape{2, 48, 64, K + 1}, Shape{1, 128, 160, K + 1}})
    for (bool flip : {false, true})
      for (bool shift : {true, false}) {
        if (!flip && !shift) continue;
        CAPTURE(hs);
        CAPTURE(flip);
        CAPTURE(shift);
        HostTensor<float> hm0, disp0, hmf0, dispf0;
        random_maps(hs, seed, hm0, disp0);
        random_maps(hs, seed + 10, hmf0, dispf0);
        seed += 20;
        // The storage-type maps, and the host reference on exactly their values.
        const auto hm = to_storage<T>(hm0), disp = to_storage<T>(disp0), hmf = to_storage<T>(hmf0),
                   dispf = to_storage<T>(dispf0);
        const auto hm_h = to_float(hm), disp_h = to_float(disp), hmf_h = to_float(hmf),
                   dispf_h = to_float(dispf);
        DekrDecodeConfig cfg;
        cfg.shift_heatmap = shift;
        const double in_w = 4.0 * static_cast<double>(hs.w), in_h = 4.0 * static_cast<double>(hs.h);
        const auto want = host_candidates(hm_h, disp_h, flip ? &hmf_h : nullptr, flip ? &dispf_h : nullptr,
                                          in_w, in_h, cfg);
        const auto got =
            device_candidates<T>(hm, disp, flip ? &hmf : nullptr, flip ? &dispf : nullptr, in_w, in_h, cfg);
        for (const auto& c : want) CHECK(c.roots.size() == 30u);  // plenty of peaks above 0.01
        check_same(got, want, 1.0, std::max(hs.h, hs.w));

        // Other settings: a 3x3 NMS window, a higher threshold, fewer and more instances.
        cfg.nms_kernel = 3;
        cfg.root_threshold = 0.5f;
        cfg.max_instances = 100;
        check_same(
            device_candidates<T>(hm, disp, flip ? &hmf : nullptr, flip ? &dispf : nullptr, in_w, in_h, cfg),
            host_candidates(hm_h, disp_h, flip ? &hmf_h : nullptr, flip ? &dispf_h : nullptr, in_w, in_h,
                            cfg),
            1.0, std::max(hs.h, hs.w));
        cfg.max_instances = 7;
        cfg.root_threshold = -1.0f;  // negative peaks (and zeros) compete too
        check_same(
            device_candidates<T>(hm, disp, flip ? &hmf : nullptr, flip ? &dispf : nullptr, in_w, in_h, cfg),
            host_candidates(hm_h, disp_h, flip ? &hmf_h : nullptr, flip ? &dispf_h : nullptr, in_w, in_h,
                            cfg),
            1.0, std::max(hs.h, hs.w));
      }
}

TEST_CASE_TEMPLATE("dekr decode (cuda): maps from known poses decode like the host and back to the poses", T,
                   float, ampkit::half, ampkit::bfloat16) {
  const std::int64_t H = 64, W = 80;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-6, 6);
  std::vector<Person> people;
  const std::int64_t roots[6][2] = {{8, 10}, {30, 12}, {20, 30}, {40, 32}, {70, 50}, {55, 20}};
  for (const auto& r : roots) {
    Person p{r[0], r[1], {}};
    for (int k = 0; k < K; ++k)
      p.kp.push_back({static_cast<double>(r[0]) + u(rng), static_cast<double>(r[1]) + u(rng)});
    people.push_back(std::move(p));
  }
  HostTensor<float> hm0, disp0, hmf0, dispf0;
  pose_maps(people, H, W, hm0, disp0);
  pose_maps(mirror(people, W), H, W, hmf0, dispf0);
  const auto hm = to_storage<T>(hm0), disp = to_storage<T>(disp0), hmf = to_storage<T>(hmf0),
             dispf = to_storage<T>(dispf0);
  const auto hm_h = to_float(hm), disp_h = to_float(disp), hmf_h = to_float(hmf), dispf_h = to_float(dispf);
  const auto tf = eval::InputTransform::identity(4.0 * W, 4.0 * H);
  const DekrDecodeConfig cfg;
  for (bool flip : {false, true}) {
    CAPTURE(flip);
    const auto want = host_candidates(hm_h, disp_h, flip ? &hmf_h : nullptr, flip ? &dispf_h : nullptr,
                                      tf.input_w, tf.input_h, cfg);
    const auto got = device_candidates<T>(hm, disp, flip ? &hmf : nullptr, flip ? &dispf : nullptr,
                                          tf.input_w, tf.input_h, cfg);
    check_same(got, want, 1.0, std::max(H, W));

    // The whole decode through the device path: every person found, at its keypoints. The
    // storage type rounds the displacements (|d| <= 10 px): half ulp at 8..16 is 2^-8 px, bf16's
    // 2^-5 px; the average of two passes keeps that bound; x4 to input pixels.
    auto d_hm = gpu().to_device(hm), d_disp = gpu().to_device(disp), d_hmf = gpu().to_device(hmf),
         d_dispf = gpu().to_device(dispf);
    const auto poses = dekr_decode<T>(
        gpu(), d_hm.cview(), d_disp.cview(), flip ? d_hmf.cview() : TensorView<const T>{},
        flip ? d_dispf.cview() : TensorView<const T>{}, std::span<const eval::InputTransform>(&tf, 1), cfg);
    REQUIRE(poses.size() == 1);
    CHECK(poses[0].size() == people.size());
    const double tol = 4 * (std::is_same_v<T, float> ? 1e-5 : 16 * epsilon_v<T>)+1e-4;
    for (const auto& p : people) {
      double best = 1e30;
      for (const auto& q : poses[0]) {
        double err = 0;
        for (int k = 0; k < K; ++k)
          err = std::max({err, std::abs(q.keypoints[2 * k] - 4 * p.kp[k][0]),
                          std::abs(q.keypoints[2 * k + 1] - 4 * p.kp[k][1])});
        best = std::min(best, err);
      }
      CHECK(best < tol);
    }
    // And the host decode of the same maps gives the same poses.
    const auto host_poses =
        flip ? eval::dekr_decode_flip(hm_h.cview(), disp_h.cview(), hmf_h.cview(), dispf_h.cview(), tf, cfg)
             : eval::dekr_decode(hm_h.cview(), disp_h.cview(), tf, cfg);
    REQUIRE(host_poses.size() == poses[0].size());
    for (std::size_t n = 0; n < host_poses.size(); ++n) {
      CHECK(host_poses[n].root_score == poses[0][n].root_score);
      for (int i = 0; i < 2 * K; ++i)
        CHECK(std::abs(host_poses[n].keypoints[i] - poses[0][n].keypoints[i]) <= 1e-4);
    }
  }
}

TEST_CASE(
    "dekr evaluate (cuda): a batch of 2 through DekrEvaluator on the device, with rescoring, equals the "
    "host") {
  // Two images of one batch, different people and transforms; a random (non-degenerate)
  // rescore net so the rescoring path runs on the device candidates.
  const std::int64_t H = 48, W = 64;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(-6, 6);
  HostTensor<float> hm({2, H, W, K + 1}), disp({2, H, W, 2 * K}), hmf({2, H, W, K + 1}),
      dispf({2, H, W, 2 * K});
  for (int b = 0; b < 2; ++b) {
    std::vector<Person> people;
    for (int p = 0; p < 3 + b; ++p) {
      Person q{10 + 15 * p, 12 + 10 * ((p + b) % 3), {}};
      for (int k = 0; k < K; ++k)
        q.kp.push_back({static_cast<double>(q.rx) + u(rng), static_cast<double>(q.ry) + u(rng)});
      people.push_back(std::move(q));
    }
    HostTensor<float> a, d, af, df;
    pose_maps(people, H, W, a, d);
    pose_maps(mirror(people, W), H, W, af, df);
    std::copy(a.span().begin(), a.span().end(), hm.span().begin() + b * a.numel());
    std::copy(d.span().begin(), d.span().end(), disp.span().begin() + b * d.numel());
    std::copy(af.span().begin(), af.span().end(), hmf.span().begin() + b * af.numel());
    std::copy(df.span().begin(), df.span().end(), dispf.span().begin() + b * df.numel());
  }
  std::map<std::string, std::vector<float>> t;
  std::uniform_real_distribution<float> w(-0.06f, 0.06f);
  for (auto [name, n] : {std::pair<const char*, int>{"l1.weight", 256 * 74},
                         {"l1.bias", 256},
                         {"l2.weight", 256 * 256},
                         {"l2.bias", 256},
                         {"l3.weight", 256},
                         {"l3.bias", 1}})
    for (int i = 0; i < n; ++i) t[name].push_back(w(rng));
  t["l3.bias"][0] = 0.5f;  // keep the rescored roots mostly positive
  const auto net = eval::RescoreNet::from_tensors(t);
  const eval::DekrImageMeta metas[2] = {{101, {4.0 * W, 4.0 * H, 300, 200, 6.0 * W, 6.0 * H}},
                                        {202, {4.0 * W, 4.0 * H, 128, 96, 4.0 * W, 4.0 * H}}};
  const DekrDecodeConfig cfg;

  eval::DekrEvaluator dev(cfg, net);
  auto d_hm = gpu().to_device(hm), d_disp = gpu().to_device(disp), d_hmf = gpu().to_device(hmf),
       d_dispf = gpu().to_device(dispf);
  dev.add(gpu(), std::span<const eval::DekrImageMeta>(metas), d_hm.cview(), d_disp.cview(), d_hmf.cview(),
          d_dispf.cview());
  eval::DekrEvaluator ref(cfg, net);
  for (std::int64_t b = 0; b < 2; ++b)
    ref.add_poses(metas[b].image_id, eval::dekr_decode_flip(image(hm, b), image(disp, b), image(hmf, b),
                                                            image(dispf, b), metas[b].transform, cfg, &net));
  REQUIRE(dev.results().size() == ref.results().size());
  CHECK(dev.results().size() == 7u);
  CHECK(dev.n_images() == 2u);
  std::vector<double> got, want;
  for (std::size_t i = 0; i < ref.results().size(); ++i) {
    CHECK(dev.results()[i].image_id == ref.results()[i].image_id);
    got.insert(got.end(), dev.results()[i].keypoints.begin(), dev.results()[i].keypoints.end());
    want.insert(want.end(), ref.results()[i].keypoints.begin(), ref.results()[i].keypoints.end());
    got.push_back(dev.results()[i].score);
    want.push_back(ref.results()[i].score);
  }
  // Keypoints x1.5 of the heatmap->input mapping: 1e-4 px; scores go through the same host
  // rescore/NMS code on equal candidates: the heat-score slack (8 ulps) times the net's gain.
  CHECK(testing::compare("results", std::span<const double>(got), std::span<const double>(want), 1e-5, 1e-4)
            .ok);
}

TEST_CASE("dekr decode (cuda): shape and configuration errors") {
  HostTensor<float> hm({1, 8, 8, K + 1}, 0.5f), disp({1, 8, 8, 2 * K}, 0.5f), bad({1, 8, 9, K + 1}, 0.5f);
  auto d_hm = gpu().to_device(hm), d_disp = gpu().to_device(disp), d_bad = gpu().to_device(bad);
  CHECK_THROWS_WITH_AS(
      dekr_candidates<float>(gpu(), d_hm.cview(), d_disp.cview(), d_bad.cview(), d_disp.cview(), 32, 32),
      doctest::Contains("heatmaps_flip has shape (1,8,9,18), expected (1,8,8,18)"), Error);
  CHECK_THROWS_WITH_AS(dekr_candidates<float>(gpu(), d_hm.cview(), d_disp.cview(), d_hm.cview(), {}, 32, 32),
                       doctest::Contains("both flipped-pass maps or neither"), Error);
  DekrDecodeConfig cfg;
  cfg.nms_kernel = 4;
  CHECK_THROWS_WITH_AS(dekr_candidates<float>(gpu(), d_hm.cview(), d_disp.cview(), 32, 32, cfg),
                       doctest::Contains("kernel must be odd, got 4"), Error);
}

TEST_CASE("dekr decode (cuda): timing, 128x160 maps (512x640 input), batch 1, flip test, half") {
  const Shape hs{1, 128, 160, K + 1};
  HostTensor<float> hm0, disp0, hmf0, dispf0;
  random_maps(hs, 5, hm0, disp0);
  random_maps(hs, 6, hmf0, dispf0);
  auto d_hm = gpu().to_device(to_storage<ampkit::half>(hm0)),
       d_disp = gpu().to_device(to_storage<ampkit::half>(disp0));
  auto d_hmf = gpu().to_device(to_storage<ampkit::half>(hmf0)),
       d_dispf = gpu().to_device(to_storage<ampkit::half>(dispf0));
  const auto tf = eval::InputTransform::identity(640, 512);
  const DekrDecodeConfig cfg;
  auto run = [&] {
    return dekr_decode<ampkit::half>(gpu(), d_hm.cview(), d_disp.cview(), d_hmf.cview(), d_dispf.cview(),
                                     std::span<const eval::InputTransform>(&tf, 1), cfg);
  };
  for (int i = 0; i < 20; ++i) (void)run();
  const int iters = 500;
  std::size_t n_poses = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) n_poses += run()[0].size();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "dekr decode (cuda, half, flip, 128x160, batch 1, device map work + host NMS/mapping): "
      "%.1f us/image, %.0f images/s (%zu poses per image)\n",
      1e6 * s / iters, iters / s, n_poses / iters);
  CHECK(n_poses > 0);
}

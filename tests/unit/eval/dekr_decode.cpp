// DEKR decoding: (1) against golden results computed with PyTorch by
// tests/python/gen_dekr_decode_golden.py on seeded random maps (rebuilt here bit for bit from the
// same splitmix64 stream), (2) maps built from known poses decode back to those poses, with and
// without flip test, (3) maps built from the sample's ground truth decode to AP >= 0.99 with the
// pycocotools-exact evaluator, (4) hand cases for flip combination and pose NMS.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/safetensors.hpp"
#include "ampkit/eval/coco_eval.hpp"
#include "ampkit/eval/dekr_evaluate.hpp"
#include "ampkit/eval/dekr_decode.hpp"
#include "ampkit/eval/rescore_net.hpp"
#include "support/testing.hpp"

using namespace ampkit;
using namespace ampkit::eval;

namespace {

constexpr int K = 17;

// ---- the golden generator's map construction (mirrors gen_dekr_decode_golden.py) -------------
struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double u12() { return static_cast<double>(next() >> 52) / 4096.0; }
};

struct Person {
  std::int64_t rx = 0, ry = 0;                // root pixel
  std::vector<std::array<double, 2>> kp;      // (K) heatmap coordinates
};

std::vector<Person> make_people(Rng& rng, std::int64_t H, std::int64_t W, int P) {
  std::vector<Person> people;
  for (int p = 0; p < P; ++p) {
    Person q;
    q.rx = 2 + static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(W - 4));
    q.ry = 2 + static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(H - 4));
    for (int k = 0; k < K; ++k) {
      const double x = static_cast<double>(q.rx) + (rng.u12() - 0.5) * 16;
      const double y = static_cast<double>(q.ry) + (rng.u12() - 0.5) * 16;
      q.kp.push_back({x, y});
    }
    people.push_back(std::move(q));
  }
  return people;
}

std::vector<Person> mirror(const std::vector<Person>& people, std::int64_t W) {
  std::vector<Person> out;
  for (const auto& p : people) {
    Person q;
    q.rx = W - 1 - p.rx;
    q.ry = p.ry;
    for (int k = 0; k < K; ++k) {
      const auto& s = p.kp[static_cast<std::size_t>(kCocoFlipIndices[static_cast<std::size_t>(k)])];
      q.kp.push_back({(static_cast<double>(W) - 0.25) - s[0], s[1]});
    }
    out.push_back(std::move(q));
  }
  return out;
}

void make_maps(Rng& rng, const std::vector<Person>& people, std::int64_t H, std::int64_t W, HostTensor<float>& hm,
               HostTensor<float>& disp) {
  hm = HostTensor<float>({1, H, W, K + 1});
  disp = HostTensor<float>({1, H, W, 2 * K});
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) hm(0, y, x, K) = static_cast<float>(rng.u12() * 0.0078125);
  for (std::size_t i = 0; i < people.size(); ++i) {
    const auto& p = people[i];
    hm(0, p.ry, p.rx, K) = static_cast<float>(0.25 + rng.u12() * 0.5);
    if (i == 0 && p.rx + 3 < W) hm(0, p.ry, p.rx + 3, K) = static_cast<float>(0.2 + rng.u12() * 0.5);
  }
  for (int i = 0; i < 3; ++i) {
    const auto x = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(W));
    const auto y = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(H));
    hm(0, y, x, K) = static_cast<float>(std::max<double>(hm(0, y, x, K), 0.01 + rng.u12() * 0.02));
  }
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x)
      for (int k = 0; k < K; ++k) hm(0, y, x, k) = static_cast<float>(rng.u12() * 0.5);
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      std::size_t owner = 0;
      std::int64_t best = -1;
      for (std::size_t i = 0; i < people.size(); ++i) {
        const std::int64_t d = (x - people[i].rx) * (x - people[i].rx) + (y - people[i].ry) * (y - people[i].ry);
        if (best < 0 || d < best) best = d, owner = i;
      }
      for (int k = 0; k < K; ++k) {
        const auto& kp = people[owner].kp[static_cast<std::size_t>(k)];
        disp(0, y, x, 2 * k) = static_cast<float>(kp[0] - static_cast<double>(x) + (rng.u12() - 0.5) * 0.25);
        disp(0, y, x, 2 * k + 1) = static_cast<float>(kp[1] - static_cast<double>(y) + (rng.u12() - 0.5) * 0.25);
      }
    }
}

RescoreNet make_rescore(Rng& rng) {
  auto mat = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>((rng.u12() - 0.5) * 0.125);
    return v;
  };
  std::map<std::string, std::vector<float>> t;
  t["l1.weight"] = mat(256 * 74);
  t["l1.bias"] = mat(256);
  t["l2.weight"] = mat(256 * 256);
  t["l2.bias"] = mat(256);
  t["l3.weight"] = mat(256);
  t["l3.bias"] = mat(1);
  return RescoreNet::from_tensors(t);
}

// ---- ideal maps from known poses ---------------------------------------------------------------
// Root map: Gaussian (sigma 2) at each root pixel; keypoint maps: Gaussians at the keypoints;
// displacements exact (keypoint - pixel) within 4 px of the nearest root.
void ideal_maps(const std::vector<Person>& people, std::int64_t H, std::int64_t W, HostTensor<float>& hm,
                HostTensor<float>& disp) {
  hm = HostTensor<float>({1, H, W, K + 1}, 0.0f);
  disp = HostTensor<float>({1, H, W, 2 * K}, 0.0f);
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      std::int64_t best = -1;
      const Person* owner = nullptr;
      for (const auto& p : people) {
        const std::int64_t d = (x - p.rx) * (x - p.rx) + (y - p.ry) * (y - p.ry);
        hm(0, y, x, K) = std::max(hm(0, y, x, K), static_cast<float>(std::exp(-static_cast<double>(d) / 8.0)));
        for (int k = 0; k < K; ++k) {
          const auto& kp = p.kp[static_cast<std::size_t>(k)];
          const double dk = (x - kp[0]) * (x - kp[0]) + (y - kp[1]) * (y - kp[1]);
          hm(0, y, x, k) = std::max(hm(0, y, x, k), static_cast<float>(std::exp(-dk / 8.0)));
        }
        if (best < 0 || d < best) best = d, owner = &p;
      }
      if (owner && best <= 16)
        for (int k = 0; k < K; ++k) {
          disp(0, y, x, 2 * k) = static_cast<float>(owner->kp[static_cast<std::size_t>(k)][0] - static_cast<double>(x));
          disp(0, y, x, 2 * k + 1) = static_cast<float>(owner->kp[static_cast<std::size_t>(k)][1] - static_cast<double>(y));
        }
    }
}

nlohmann::json read(const std::string& rel) {
  std::ifstream f(testing::source_path(rel));
  REQUIRE_MESSAGE(f.good(), "cannot open ", rel);
  return nlohmann::json::parse(f);
}

}  // namespace

TEST_CASE("dekr decode: equals the PyTorch peer on seeded random maps") {
  const auto golden = read("data/eval/dekr_decode_golden.json");
  for (const auto& c : golden["cases"]) {
    const auto seed = c["seed"].get<std::uint64_t>();
    const auto H = c["H"].get<std::int64_t>(), W = c["W"].get<std::int64_t>();
    CAPTURE(seed);
    Rng rng{seed};
    const auto people = make_people(rng, H, W, c["people"].get<int>());
    HostTensor<float> hm, disp, hm_f, disp_f;
    make_maps(rng, people, H, W, hm, disp);
    const bool flip = c["flip"].get<bool>();
    if (flip) make_maps(rng, mirror(people, W), H, W, hm_f, disp_f);
    RescoreNet net;
    if (c["rescore"].get<bool>()) net = make_rescore(rng);
    const auto& t = c["transform"];
    const InputTransform tf{t["input_w"].get<double>(), t["input_h"].get<double>(), t["center_x"].get<double>(),
                            t["center_y"].get<double>(), t["scale_w"].get<double>(), t["scale_h"].get<double>()};
    const DekrDecodeConfig cfg;

    // Center NMS on the (combined) maps: same roots, same order, same scores.
    HostTensor<float> hm_c = hm.clone(), disp_c = disp.clone();
    if (flip) dekr_flip_combine(hm.cview(), disp.cview(), hm_f.cview(), disp_f.cview(), hm_c.view(), disp_c.view(), cfg, tf.input_w);
    const auto peaks = dekr_center_nms(hm_c.cview(), cfg);
    REQUIRE(peaks.size() == c["peaks"].size());
    for (std::size_t i = 0; i < peaks.size(); ++i) {
      CHECK(peaks[i].index == c["peaks"][i][0].get<std::int64_t>());
      CHECK(peaks[i].score == c["peaks"][i][1].get<float>());  // averages of exact values: exact
    }

    const auto poses = flip ? dekr_decode_flip(hm.cview(), disp.cview(), hm_f.cview(), disp_f.cview(), tf, cfg, &net)
                            : dekr_decode(hm.cview(), disp.cview(), tf, cfg, &net);
    REQUIRE(poses.size() == c["poses"].size());
    std::vector<double> got_kp, want_kp, got_s, want_s;
    for (std::size_t n = 0; n < poses.size(); ++n) {
      const auto& w = c["poses"][n];
      for (std::size_t i = 0; i < poses[n].keypoints.size(); ++i) {
        got_kp.push_back(poses[n].keypoints[i]);
        want_kp.push_back(w["keypoints"][i].get<double>());
      }
      for (std::size_t k = 0; k < K; ++k) {
        got_s.push_back(poses[n].keypoint_scores[k]);
        want_s.push_back(w["keypoint_scores"][k].get<double>());
      }
      got_s.push_back(poses[n].root_score);
      want_s.push_back(w["root_score"].get<double>());
      got_s.push_back(poses[n].score);
      want_s.push_back(w["score"].get<double>());
    }
    // Keypoints: float adds/multiplies in the same order as torch, then the double mapping:
    // a few float ulps. Scores: grid_sample's weights and the rescore net's 256-term dot products
    // are summed in another order than torch's kernels / sgemm: allow ~100 float ulps.
    const double feps = epsilon_v<float>;
    CHECK(testing::compare("keypoints", std::span<const double>(got_kp), std::span<const double>(want_kp), 8 * feps, 1e-4).ok);
    CHECK(testing::compare("scores", std::span<const double>(got_s), std::span<const double>(want_s), 100 * feps, 1e-6).ok);
  }
}

TEST_CASE("dekr decode: maps drawn from known poses decode back to them (with and without flip)") {
  const std::int64_t H = 40, W = 48;
  Rng rng{99};
  std::vector<Person> people;
  const std::int64_t roots[4][2] = {{8, 10}, {30, 12}, {20, 30}, {40, 32}};
  for (const auto& r : roots) {
    Person p;
    p.rx = r[0];
    p.ry = r[1];
    for (int k = 0; k < K; ++k)
      p.kp.push_back({static_cast<double>(r[0]) + (rng.u12() - 0.5) * 8, static_cast<double>(r[1]) + (rng.u12() - 0.5) * 8});
    people.push_back(std::move(p));
  }
  HostTensor<float> hm, disp, hm_f, disp_f;
  ideal_maps(people, H, W, hm, disp);
  ideal_maps(mirror(people, W), H, W, hm_f, disp_f);
  const auto tf = InputTransform::identity(4.0 * W, 4.0 * H);
  for (bool flip : {false, true}) {
    CAPTURE(flip);
    const auto poses = flip ? dekr_decode_flip(hm.cview(), disp.cview(), hm_f.cview(), disp_f.cview(), tf)
                            : dekr_decode(hm.cview(), disp.cview(), tf);
    // With flip the shifted, averaged root map has two equal maxima per person (x and x+1), both
    // decode to the same pose and the pose NMS keeps one.
    REQUIRE(poses.size() == people.size());
    for (const auto& p : people) {
      double best = 1e30;
      for (const auto& q : poses) {
        double err = 0;
        for (int k = 0; k < K; ++k)
          err = std::max({err, std::abs(q.keypoints[2 * k] - 4 * p.kp[k][0]), std::abs(q.keypoints[2 * k + 1] - 4 * p.kp[k][1])});
        best = std::min(best, err);
      }
      // float(x + (kp - x)) * 4 vs 4 kp: a float ulp at 200 px is 1.5e-5.
      CHECK(best < 1e-4);
    }
    for (const auto& q : poses) CHECK(q.root_score > 0.5f);
  }
}

TEST_CASE("dekr decode: ground-truth-derived maps of the sample reach AP >= 0.99") {
  const auto gt = CocoKeypointDataset::load(testing::source_path("data/coco_sample/annotations/person_keypoints_sample.json"));
  const auto images = read("data/coco_sample/annotations/person_keypoints_sample.json")["images"];
  std::vector<KeypointResult> results;
  for (const auto& im : images) {
    const auto id = im["id"].get<std::int64_t>();
    const std::int64_t W = (im["width"].get<std::int64_t>() + 3) / 4, H = (im["height"].get<std::int64_t>() + 3) / 4;
    std::vector<Person> people;
    for (const auto& a : gt.annotations) {
      if (a.image_id != id || a.num_keypoints == 0) continue;
      double sx = 0, sy = 0;
      int n = 0;
      for (int k = 0; k < K; ++k)
        if (a.keypoints[3 * k + 2] > 0) sx += a.keypoints[3 * k] / 4, sy += a.keypoints[3 * k + 1] / 4, ++n;
      Person p;
      p.rx = std::clamp<std::int64_t>(std::lround(sx / n), 0, W - 1);
      p.ry = std::clamp<std::int64_t>(std::lround(sy / n), 0, H - 1);
      for (int k = 0; k < K; ++k)
        p.kp.push_back(a.keypoints[3 * k + 2] > 0 ? std::array<double, 2>{a.keypoints[3 * k] / 4, a.keypoints[3 * k + 1] / 4}
                                                   : std::array<double, 2>{double(p.rx), double(p.ry)});
      people.push_back(std::move(p));
    }
    if (people.empty()) continue;
    HostTensor<float> hm, disp, hm_f, disp_f;
    ideal_maps(people, H, W, hm, disp);
    ideal_maps(mirror(people, W), H, W, hm_f, disp_f);
    const auto poses = dekr_decode_flip(hm.cview(), disp.cview(), hm_f.cview(), disp_f.cview(),
                                        InputTransform::identity(4.0 * W, 4.0 * H));
    const auto r = dekr_poses_to_coco(id, poses);
    results.insert(results.end(), r.begin(), r.end());
  }
  CocoKeypointEval ev(gt, load_results(results_to_json(results), gt));
  const auto stats = ev.run();
  std::printf("%s", ev.summary_text().c_str());
  CHECK(stats[0] >= 0.99);
}

TEST_CASE("dekr decode: flip combination, by hand") {
  // 1x3 maps, K = 1 (flip index 0 -> 0): heatmap out[x] = (h[x] + hf[W-1-(x-1)]) / 2 for x >= 1.
  DekrDecodeConfig cfg;
  cfg.flip_indices = {0};
  HostTensor<float> h({1, 1, 3, 2}), hf({1, 1, 3, 2}), d({1, 1, 3, 2}), df({1, 1, 3, 2});
  for (int x = 0; x < 3; ++x)
    for (int c = 0; c < 2; ++c) {
      h(0, 0, x, c) = float(1 + x + 10 * c);
      hf(0, 0, x, c) = float(100 + x + 10 * c);
      d(0, 0, x, c) = float(x + 3 * c);
      df(0, 0, x, c) = float(2 * x + 5 * c);
    }
  HostTensor<float> ho({1, 1, 3, 2}), dout({1, 1, 3, 2});
  dekr_flip_combine(h.cview(), d.cview(), hf.cview(), df.cview(), ho.view(), dout.view(), cfg, 12.0);
  CHECK(ho(0, 0, 0, 0) == (1 + 102) / 2.0f);   // x = 0 keeps its own flipped column (2)
  CHECK(ho(0, 0, 1, 0) == (2 + 102) / 2.0f);   // shifted: flipped column of x-1 = 0 -> 2
  CHECK(ho(0, 0, 2, 1) == (13 + 111) / 2.0f);  // root channel, flipped column of x-1 = 1 -> 1
  // displacement x: -(df at W-1-x) + (s-1)/s with s = 12 / 3 = 4 -> 0.75; y: unchanged.
  CHECK(dout(0, 0, 0, 0) == (0 + (-4.0f + 0.75f)) / 2.0f);
  CHECK(dout(0, 0, 2, 1) == (5 + 5.0f) / 2.0f);
  HostTensor<float> bad({1, 1, 4, 2});
  CHECK_THROWS_WITH_AS(dekr_flip_combine(h.cview(), d.cview(), bad.cview(), df.cview(), ho.view(), dout.view(), cfg, 12.0),
                       doctest::Contains("heatmaps_flip has shape (1,1,4,2), expected (1,1,3,2)"), Error);
}

TEST_CASE("dekr decode: nearby-joints pose NMS, by hand") {
  // Three poses of 3 joints: 0 and 1 share all joints to within 0.01 px, pose 2 is elsewhere.
  // joints_thr 1: "close" needs 2+ close joints. Pose 1 scores best: it keeps, pose 0 goes.
  const std::vector<float> kp = {0, 0, 10, 0, 10, 10,  0.01f, 0, 10, 0.01f, 10, 10,  50, 50, 60, 50, 60, 60};
  const std::vector<float> sc = {0.5f, 0.9f, 0.7f};
  auto keep = nearby_joints_nms(kp, sc, 3, 0.05, 1, 30);
  REQUIRE(keep.size() == 2);
  CHECK(keep[0] == 1);
  CHECK(keep[1] == 2);
  // max_dets 1: the best remaining by score.
  keep = nearby_joints_nms(kp, sc, 3, 0.05, 1, 1);
  REQUIRE(keep.size() == 1);
  CHECK(keep[0] == 1);
  CHECK_THROWS_AS(nearby_joints_nms(kp, sc, 3, 0.05, 3, 30), Error);  // threshold must be < K
}

TEST_CASE("rescore net: loads mmpose's names from safetensors (our writer), equals the in-memory net") {
  Rng rng{2024};
  std::map<std::string, std::vector<float>> t;
  const std::pair<const char*, std::vector<std::int64_t>> shapes[] = {
      {"l1.weight", {256, 74}}, {"l1.bias", {256}}, {"l2.weight", {256, 256}},
      {"l2.bias", {256}},       {"l3.weight", {1, 256}}, {"l3.bias", {1}}};
  for (const auto& [name, shape] : shapes) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    auto& v = t[name];
    for (std::int64_t i = 0; i < n; ++i) v.push_back(static_cast<float>((rng.u12() - 0.5) * 0.125));
  }
  const auto ref = RescoreNet::from_tensors(t);
  // A pose and its scores to run both nets on.
  std::vector<float> kp, sc;
  for (int k = 0; k < K; ++k) {
    kp.push_back(static_cast<float>(100 + rng.u12() * 80));
    kp.push_back(static_cast<float>(50 + rng.u12() * 160));
    sc.push_back(static_cast<float>(rng.u12()));
  }
  const float want = ref(kp, sc);
  CHECK(want != 0.0f);  // the random net is not degenerate (else the comparison proves little)
  for (const std::string prefix : {"head.rescore_net.", "rescore_net.", ""}) {
    CAPTURE(prefix);
    safetensors::Writer w;
    w.add<std::int64_t>("head.other.num_batches_tracked", std::vector<std::int64_t>{3}, {1});  // unrelated tensors are ignored
    for (const auto& [name, shape] : shapes) w.add<float>(prefix + name, t[name], shape);
    const auto net = RescoreNet::from_safetensors(safetensors::File::from_bytes(w.serialize(), "synthetic"));
    REQUIRE(net.loaded());
    CHECK(net(kp, sc) == want);  // same floats, same arithmetic: exact
  }
  // Wrong shapes and missing tensors are named.
  safetensors::Writer bad;
  for (const auto& [name, shape] : shapes) {
    if (std::string(name) == "l2.weight") {
      bad.add<float>(std::string("head.rescore_net.") + name, std::span<const float>(t[name]).first(256 * 255), {256, 255});
      continue;
    }
    bad.add<float>(std::string("head.rescore_net.") + name, t[name], shape);
  }
  CHECK_THROWS_WITH_AS(RescoreNet::from_safetensors(safetensors::File::from_bytes(bad.serialize(), "bad.safetensors")),
                       doctest::Contains("'head.rescore_net.l2.weight' in 'bad.safetensors' has shape [256,255], expected [256,256]"),
                       Error);
  safetensors::Writer none;
  none.add<float>("head.heatmap.weight", std::vector<float>{1.0f}, {1});
  CHECK_THROWS_WITH_AS(RescoreNet::from_safetensors(safetensors::File::from_bytes(none.serialize(), "none.safetensors")),
                       doctest::Contains("tools/convert_rescore.py"), Error);
}

TEST_CASE_TEMPLATE("dekr evaluate: outputs of the sample (from ground truth, with flip) -> results file -> AP >= 0.99",
                   T, float, ampkit::half) {
  const auto gt = CocoKeypointDataset::load(testing::source_path("data/coco_sample/annotations/person_keypoints_sample.json"));
  const auto images = read("data/coco_sample/annotations/person_keypoints_sample.json")["images"];
  Host host(1);
  // Network-like outputs in the storage type for a BottomupResize-like geometry that is not the
  // identity: the image is shrunk 1.5x into a padded input (input = 4 x map) and centred, so
  // image = input / input_size * input_scale + input_center - input_scale / 2 with
  // input_scale = 1.5 x input_size, input_center = image centre.
  constexpr double kShrink = 1.5;
  struct Stored {
    HostTensor<T> hm, disp, hmf, dispf;
  };
  std::vector<Stored> store;
  std::vector<DekrImageOutputs<T>> outs;
  store.reserve(images.size());
  for (const auto& im : images) {
    const auto id = im["id"].get<std::int64_t>();
    const double iw = im["width"].get<double>(), ih = im["height"].get<double>();
    const auto W = static_cast<std::int64_t>(std::ceil(iw / (4 * kShrink))) + 2;
    const auto H = static_cast<std::int64_t>(std::ceil(ih / (4 * kShrink))) + 2;
    struct Geometry {  // the fields of data::ResizeGeometry that matter
      double input_w, input_h, center_x, center_y, scale_w, scale_h;
    } g{4.0 * W, 4.0 * H, iw / 2, ih / 2, kShrink * 4.0 * W, kShrink * 4.0 * H};
    auto to_map = [&](double x, double y) {  // image -> heatmap coordinates
      return std::array<double, 2>{((x - g.center_x) / kShrink + g.input_w / 2) / 4,
                                   ((y - g.center_y) / kShrink + g.input_h / 2) / 4};
    };
    std::vector<Person> people;
    for (const auto& a : gt.annotations) {
      if (a.image_id != id || a.num_keypoints == 0) continue;
      double sx = 0, sy = 0;
      int n = 0;
      for (int k = 0; k < K; ++k)
        if (a.keypoints[3 * k + 2] > 0) {
          const auto m = to_map(a.keypoints[3 * k], a.keypoints[3 * k + 1]);
          sx += m[0], sy += m[1], ++n;
        }
      Person p;
      p.rx = std::clamp<std::int64_t>(std::lround(sx / n), 0, W - 1);
      p.ry = std::clamp<std::int64_t>(std::lround(sy / n), 0, H - 1);
      for (int k = 0; k < K; ++k)
        p.kp.push_back(a.keypoints[3 * k + 2] > 0 ? to_map(a.keypoints[3 * k], a.keypoints[3 * k + 1])
                                                   : std::array<double, 2>{double(p.rx), double(p.ry)});
      people.push_back(std::move(p));
    }
    HostTensor<float> hm, disp, hmf, dispf;
    ideal_maps(people, H, W, hm, disp);
    ideal_maps(mirror(people, W), H, W, hmf, dispf);
    auto cast = [](const HostTensor<float>& f) {
      HostTensor<T> t(f.shape());
      for (std::size_t i = 0; i < t.span().size(); ++i) t.span()[i] = convert<T>(f.span()[i]);
      return t;
    };
    store.push_back({cast(hm), cast(disp), cast(hmf), cast(dispf)});
    const auto& s = store.back();
    outs.push_back({{id, input_transform_of(g)}, s.hm.cview(), s.disp.cview(), s.hmf.cview(), s.dispf.cview()});
  }
  const std::string path = "dekr_evaluate_results_test.json";
  const auto report = evaluate_dekr_outputs<Host, T>(host, gt, std::span<const DekrImageOutputs<T>>(outs), {}, {}, path);
  std::printf("%s", report.summary.c_str());
  CHECK(report.n_images == outs.size());
  CHECK(report.n_results > 0);
  CHECK(report.stats[0] >= 0.99);
  // The written file evaluates to the same numbers (what `dekr_amp cocoeval` would print).
  const auto from_file = evaluate_coco_keypoints(gt, load_results(path, gt));
  for (std::size_t i = 0; i < 10; ++i) CHECK(from_file[i] == report.stats[i]);
  CHECK(report.to_json()["coco/AP"].template get<double>() == report.stats[0]);
  std::remove(path.c_str());

  // The same outputs with a wrong transform (no shrink) must not score: the mapping is used.
  auto wrong = outs;
  for (auto& o : wrong) o.meta.transform.scale_w = o.meta.transform.input_w, o.meta.transform.scale_h = o.meta.transform.input_h;
  const auto bad = evaluate_dekr_outputs<Host, T>(host, gt, std::span<const DekrImageOutputs<T>>(wrong));
  CHECK(bad.stats[0] < 0.5);
}

// COCO keypoint evaluator: the bundled sample against the stored pycocotools result (stats, full
// precision/recall arrays, per-image OKS matrices), plus hand-built cases for the rules the sample
// does not reach (crowd GTs, GTs without keypoints, result-file semantics, the command).
// The random-case comparison with live pycocotools is tests/python/test_cocoeval_peer.py.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "ampkit/eval/coco_eval.hpp"
#include "ampkit/eval/coco_keypoints.hpp"
#include "ampkit/eval/cocoeval_command.hpp"
#include "ampkit/eval/numpy_sum.hpp"
#include "support/testing.hpp"

using namespace ampkit;
using namespace ampkit::eval;

namespace {

constexpr double kDblEps = std::numeric_limits<double>::epsilon();  // np.spacing(1)

const std::string kGt = "data/coco_sample/annotations/person_keypoints_sample.json";
const std::string kRes = "data/coco_sample/results/keypoint_results_sample.json";
const std::string kRef = "data/coco_sample/results/reference_cocoeval_keypoints.json";

nlohmann::json read(const std::string& rel) {
  std::ifstream f(testing::source_path(rel));
  REQUIRE_MESSAGE(f.good(), "cannot open ", rel);
  return nlohmann::json::parse(f);
}

// A GT person with all 17 keypoints labelled around (cx, cy), spread s.
CocoGroundTruth person(std::int64_t id, std::int64_t img, double cx, double cy, double s, double area) {
  CocoGroundTruth g;
  g.id = id;
  g.image_id = img;
  g.category_id = 1;
  g.area = area;
  g.num_keypoints = 17;
  for (int k = 0; k < 17; ++k) g.keypoints.insert(g.keypoints.end(), {cx + s * (k % 5), cy + s * (k / 5), 2});
  g.bbox = std::array<double, 4>{cx, cy, 4 * s, 3 * s};
  return g;
}

KeypointResult det_from(const CocoGroundTruth& g, double score, double shift) {
  KeypointResult r;
  r.image_id = g.image_id;
  r.keypoints = g.keypoints;
  for (std::size_t k = 0; k < r.keypoints.size(); k += 3) r.keypoints[k] += shift;
  r.score = score;
  return r;
}

std::vector<KeypointResult> loaded(const std::vector<KeypointResult>& rs, const CocoKeypointDataset& ds) {
  return load_results(results_to_json(rs), ds);
}

}  // namespace

TEST_CASE("cocoeval: parameters are numpy's exact doubles") {
  const auto p = CocoEvalParams::coco_keypoints();
  REQUIRE(p.iou_thresholds.size() == 10);
  REQUIRE(p.recall_thresholds.size() == 101);
  // np.linspace multiplies by the step; these are the values pycocotools compares against.
  CHECK(p.iou_thresholds[8] == 0.8999999999999999);
  CHECK(p.iou_thresholds[5] == 0.75);
  CHECK(p.recall_thresholds[35] == 0.35000000000000003);
  CHECK(p.recall_thresholds[100] == 1.0);
  const auto ref = read(kRef);
  for (std::size_t i = 0; i < 10; ++i) CHECK(p.iou_thresholds[i] == ref["params"]["iouThrs"][i].get<double>());
  for (std::size_t i = 0; i < 17; ++i) CHECK(p.sigmas[i] == ref["params"]["kpt_oks_sigmas"][i].get<double>());
}

TEST_CASE("cocoeval: numpy pairwise summation order") {
  // 17 values where left-to-right and numpy's 8-lane tree round differently.
  std::vector<double> v(17, 1.0);
  v[0] = 1e16;
  v[8] = -1e16;
  // numpy: lanes r[j] = v[j] + v[8+j] -> r[0] = 1e16 - 1e16 = 0, others 2; tree = 14; + v[16] = 15.
  CHECK(numpy_sum<double>(v) == 15.0);
  double seq = 0;
  for (double x : v) seq += x;
  CHECK(seq != 15.0);  // so the test above can tell the two orders apart
  // > 128 values: split at a multiple of 8 below n/2.
  std::vector<double> w(200, 0.1);
  const double want = numpy_pairwise_sum<double>(std::span<const double>(w).subspan(0, 96)) +
                      numpy_pairwise_sum<double>(std::span<const double>(w).subspan(96));
  CHECK(numpy_pairwise_sum<double>(w) == want);
}

TEST_CASE("cocoeval: bundled sample equals stored pycocotools result") {
  const auto ref = read(kRef);
  const auto gt = CocoKeypointDataset::load(testing::source_path(kGt));
  CocoKeypointEval ev(gt, load_results(testing::source_path(kRes), gt));
  const auto stats = ev.run();
  std::printf("%s", ev.summary_text().c_str());

  // Matching is discrete and sums follow numpy's order, so the numbers agree to the last bit on
  // this platform; 1e-12 leaves room only for an exp() that differs from numpy's in the last ulp.
  constexpr double kTol = 1e-12;
  std::vector<double> want_stats = ref["stats"].get<std::vector<double>>();
  CHECK(testing::compare("stats", std::span<const double>(stats), std::span<const double>(want_stats), 0, kTol).ok);

  REQUIRE(ev.K() == 1);
  REQUIRE(ev.A() == 3);
  std::vector<double> got_p, want_p, got_r, want_r;
  for (std::size_t t = 0; t < 10; ++t) {
    for (std::size_t r = 0; r < 101; ++r)
      for (std::size_t a = 0; a < 3; ++a) {
        got_p.push_back(ev.precision(t, r, 0, a));
        want_p.push_back(ref["precision"][t][r][a].get<double>());
      }
    for (std::size_t a = 0; a < 3; ++a) {
      got_r.push_back(ev.recall(t, 0, a));
      want_r.push_back(ref["recall"][t][a].get<double>());
    }
  }
  CHECK(testing::compare("precision", std::span<const double>(got_p), std::span<const double>(want_p), 0, kTol).ok);
  CHECK(testing::compare("recall", std::span<const double>(got_r), std::span<const double>(want_r), 0, kTol).ok);

  // Per image: detection order (stable by score, cut to 20), their loadRes areas, GT order and
  // ignore flags, and every OKS value.
  std::vector<double> got_oks, want_oks, got_area, want_area;
  for (const auto& im : ref["per_image_oks"]) {
    const auto img = im["image_id"].get<std::int64_t>();
    const OksMatrix* m = ev.oks(img, 1);
    REQUIRE(m != nullptr);
    const auto dt_index = im["dt_result_index"].get<std::vector<std::size_t>>();
    REQUIRE(m->det_index == dt_index);
    const auto gt_ids = im["gt_ann_id"].get<std::vector<std::int64_t>>();
    REQUIRE(m->gt_index.size() == gt_ids.size());
    for (std::size_t j = 0; j < gt_ids.size(); ++j) {
      const auto& g = gt.annotations[m->gt_index[j]];
      CHECK(g.id == gt_ids[j]);
      CHECK(int(g.iscrowd || g.num_keypoints == 0) == im["gt_ignore"][j].get<int>());
    }
    for (std::size_t i = 0; i < dt_index.size(); ++i) {
      got_area.push_back(ev.results()[m->det_index[i]].area);
      want_area.push_back(im["dt_area"][i].get<double>());
      for (std::size_t j = 0; j < gt_ids.size(); ++j) {
        got_oks.push_back((*m)(i, j));
        want_oks.push_back(im["oks"][i][j].get<double>());
      }
    }
  }
  CHECK(testing::compare("dt_area", std::span<const double>(got_area), std::span<const double>(want_area), 0, 0).ok);
  // OKS: exp() may differ from numpy's SIMD exp by an ulp; values are <= 1.
  CHECK(testing::compare("oks", std::span<const double>(got_oks), std::span<const double>(want_oks), 4 * kDblEps, 1e-15).ok);
}

TEST_CASE("cocoeval: crowd GTs take several detections, ignored matches are not false positives") {
  CocoKeypointDataset ds;
  ds.image_ids = {7};
  ds.category_ids = {1};
  ds.annotations.push_back(person(1, 7, 100, 100, 10, 5000));
  auto crowd = person(2, 7, 300, 100, 10, 5000);
  crowd.iscrowd = true;
  ds.annotations.push_back(crowd);
  // Two detections on the crowd ranked first (both become ignored, not FPs), then one exact on
  // the person.
  std::vector<KeypointResult> rs = {det_from(crowd, 0.98, 0), det_from(crowd, 0.99, 0.5),
                                    det_from(ds.annotations[0], 0.4, 0)};
  CocoKeypointEval ev(ds, loaded(rs, ds));
  const auto stats = ev.run();
  // The only counted detection is a TP; pycocotools' precision is tp / (tp + fp + eps).
  CHECK(stats[0] == doctest::Approx(1.0 / (1.0 + kDblEps)).epsilon(1e-15));
  CHECK(stats[5] == 1.0);
  // As a regular GT it takes ONE detection; the other is an FP at rank 2:
  // tp = [1,1,2], fp = [0,1,1], npig = 2 -> envelope [1, 2/3, 2/3]; recall points <= 0.5 read 1,
  // the 50 above read 2/3.
  ds.annotations[1].iscrowd = false;
  CocoKeypointEval ev2(ds, loaded(rs, ds));
  const auto s2 = ev2.run();
  const double p23 = 2.0 / (1.0 + 2.0 + kDblEps);
  const double p1 = 1.0 / (1.0 + kDblEps);
  CHECK(s2[0] == doctest::Approx((51.0 * p1 + 50.0 * p23) / 101.0).epsilon(1e-14));
  CHECK(s2[5] == 1.0);
}

TEST_CASE("cocoeval: GT without labelled keypoints uses the box-distance OKS") {
  CocoKeypointDataset ds;
  ds.image_ids = {1};
  ds.category_ids = {1};
  CocoGroundTruth g;
  g.id = 5;
  g.image_id = 1;
  g.category_id = 1;
  g.area = 900;
  g.num_keypoints = 0;
  g.keypoints.assign(51, 0.0);
  g.bbox = std::array<double, 4>{100, 100, 30, 30};  // box for OKS: [70, 160] x [70, 160]
  ds.annotations.push_back(g);
  KeypointResult inside, outside;
  inside.image_id = outside.image_id = 1;
  inside.score = 0.5;
  outside.score = 0.4;
  for (int k = 0; k < 17; ++k) {
    inside.keypoints.insert(inside.keypoints.end(), {80.0 + k, 150.0, 1});
    outside.keypoints.insert(outside.keypoints.end(), {170.0, 60.0, 1});  // 10 px beyond x1 and y0
  }
  CocoKeypointEval ev(ds, loaded({inside, outside}, ds));
  ev.evaluate();
  const OksMatrix* m = ev.oks(1, 1);
  REQUIRE(m != nullptr);
  CHECK((*m)(0, 0) == 1.0);
  // e_k = (10² + 10²) / (2σ_k)² / (900 + eps) / 2, averaged over all 17 keypoints.
  const auto p = CocoEvalParams::coco_keypoints();
  double want = 0;
  for (double s : p.sigmas) want += std::exp(-200.0 / ((2 * s) * (2 * s)) / (900 + kDblEps) / 2);
  want /= 17;
  CHECK((*m)(1, 0) == doctest::Approx(want).epsilon(1e-14));
  ev.accumulate();
  // The only GT is ignored: no setting has a GT, every stat is -1.
  for (double s : ev.summarize()) CHECK(s == -1.0);
}

TEST_CASE("cocoeval: results file round trip and loadRes semantics") {
  const auto gt = CocoKeypointDataset::load(testing::source_path(kGt));
  auto rs = load_results(testing::source_path(kRes), gt);
  REQUIRE(rs.size() == 73);
  CHECK(rs.front().id == 1);
  CHECK(rs.back().id == 73);
  const auto path = (std::filesystem::temp_directory_path() / "ampkit_test_results.json").string();
  for (auto& r : rs) r.bbox.reset();  // keypoint branch: area from the extent
  write_results(path, rs);
  const auto back = load_results(path, gt);
  REQUIRE(back.size() == rs.size());
  for (std::size_t i = 0; i < rs.size(); ++i) {
    CHECK(back[i].keypoints == rs[i].keypoints);  // round-trip doubles
    CHECK(back[i].score == rs[i].score);
    CHECK(back[i].area == rs[i].area);
  }
  // bbox branch, chosen by the first result: area = w*h of each result's own bbox.
  rs[0].bbox = std::array<double, 4>{0, 0, 10, 20};
  rs[1].bbox = std::array<double, 4>{0, 0, 3, 3};
  for (std::size_t i = 2; i < rs.size(); ++i) rs[i].bbox = std::array<double, 4>{1, 1, 2, 2};
  const auto boxed = load_results(results_to_json(rs), gt);
  CHECK(boxed[0].area == 200);
  CHECK(boxed[1].area == 9);
  rs[5].bbox.reset();
  CHECK_THROWS_WITH_AS(load_results(results_to_json(rs), gt), doctest::Contains("has no bbox"), Error);
  // Unknown image ids are rejected like pycocotools' assert.
  rs[5].bbox = std::array<double, 4>{1, 1, 2, 2};
  rs[3].image_id = 424242;
  CHECK_THROWS_WITH_AS(load_results(results_to_json(rs), gt), doctest::Contains("424242"), Error);
  std::filesystem::remove(path);
}

TEST_CASE("cocoeval: command prints pycocotools' lines, --json and clear errors") {
  const std::vector<std::string> ok = {testing::source_path(kGt), testing::source_path(kRes)};
  std::ostringstream out, err;
  CHECK(cocoeval_command(ok, out, err) == 0);
  CHECK(out.str().find(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ] = 0.861") !=
        std::string::npos);
  CHECK(out.str().find(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets= 20 ] = 0.943") !=
        std::string::npos);
  std::vector<std::string> js = ok;
  js.push_back("--json");
  std::ostringstream jout;
  CHECK(cocoeval_command(js, jout, err) == 0);
  const auto j = nlohmann::json::parse(jout.str());
  CHECK(j["stats"][0].get<double>() == read(kRef)["stats"][0].get<double>());
  std::ostringstream e1, e2, o;
  CHECK(cocoeval_command(std::vector<std::string>{"only_one.json"}, o, e1) == 2);
  CHECK(e1.str().find("expected 2 files") != std::string::npos);
  CHECK(cocoeval_command(std::vector<std::string>{"/nonexistent/gt.json", "r.json"}, o, e2) == 1);
  CHECK(e2.str().find("cannot open ground-truth file '/nonexistent/gt.json'") != std::string::npos);
}

/// @brief COCO keypoint evaluation (OKS, greedy matching, 101-point interpolated AP/AR) that
/// reproduces pycocotools' `COCOeval(iouType='keypoints')` number for number.
///
/// Every rule follows pycocotools 2.0.x `cocoeval.py` (see docs/reference coco_eval_and_peers.md
/// §3): GTs are ignored when crowd, when `num_keypoints == 0`, or outside the area range; per image
/// the detections are stably sorted by score and cut to maxDets (20); matching is greedy per OKS
/// threshold, crowd GTs can take several detections, a detection matched to an ignored GT is
/// ignored, and an unmatched detection outside the area range is ignored; precision is made
/// monotone and read at 101 recall points with searchsorted(left). Sums and means use numpy's
/// pairwise order (numpy_sum.hpp), so the 10 stats are bit-identical on the same inputs (OKS
/// values can differ from numpy's vectorised exp in the last bit).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/eval/coco_keypoints.hpp"
#include "ampkit/eval/numpy_sum.hpp"

namespace ampkit::eval {

/// An area range of the evaluation; bounds are inclusive, as in pycocotools.
struct AreaRange {
  std::string label;
  double lo = 0, hi = 0;
};

/// Parameters of `Params.setKpParams()`.
struct CocoEvalParams {
  std::vector<double> sigmas;             ///< per-keypoint OKS sigmas
  std::vector<double> iou_thresholds;     ///< T = 10: linspace(.5, .95, 10)
  std::vector<double> recall_thresholds;  ///< R = 101: linspace(0, 1, 101)
  int max_dets = 20;
  std::vector<AreaRange> area_ranges;     ///< all, medium, large

  /// np.linspace(start, stop, num) bit for bit: i * ((stop - start) / (num - 1)) + start, with the
  /// last value set to stop. (Dividing i by num-1 instead gives other doubles, e.g. r[35].)
  static std::vector<double> linspace(double start, double stop, int num) {
    std::vector<double> v(static_cast<std::size_t>(num));
    const double step = (stop - start) / static_cast<double>(num - 1);
    for (int i = 0; i < num; ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(i) * step + start;
    v.back() = stop;
    return v;
  }

  /// COCO person keypoints (17 sigmas, /10.0 as pycocotools computes them).
  static CocoEvalParams coco_keypoints() {
    CocoEvalParams p;
    for (double s : {.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89})
      p.sigmas.push_back(s / 10.0);
    p.iou_thresholds = linspace(.5, 0.95, 10);
    p.recall_thresholds = linspace(.0, 1.00, 101);
    p.max_dets = 20;
    p.area_ranges = {{"all", 0, 1e10}, {"medium", 32.0 * 32.0, 96.0 * 96.0}, {"large", 96.0 * 96.0, 1e10}};
    return p;
  }
};

/// Names of the 10 keypoint stats in pycocotools' order (`_summarizeKps`).
inline constexpr std::array<const char*, 10> kCocoKeypointStatNames = {
    "AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"};

/// The OKS matrix of one (image, category): rows are the detections in evaluation order (stable
/// by descending score, at most max_dets), columns the GTs in file order.
struct OksMatrix {
  std::vector<std::size_t> det_index;  ///< index into the results list (file order)
  std::vector<std::size_t> gt_index;   ///< index into the dataset's annotations
  std::vector<double> oks;             ///< (D, G) row-major; empty when D or G is 0
  double operator()(std::size_t d, std::size_t g) const { return oks[d * gt_index.size() + g]; }
};

class CocoKeypointEval {
 public:
  CocoKeypointEval(const CocoKeypointDataset& gt, std::vector<KeypointResult> results,
                   CocoEvalParams params = CocoEvalParams::coco_keypoints())
      : gt_(gt), dt_(std::move(results)), p_(std::move(params)) {}

  /// evaluate() + accumulate() + summarize(); returns the 10 stats.
  std::array<double, 10> run() {
    evaluate();
    accumulate();
    return summarize();
  }

  /// Group GTs and detections per (image, category), compute OKS and match per area range.
  void evaluate();
  /// Precision (T,R,K,A) and recall (T,K,A); -1 where a setting has no GT.
  void accumulate();
  /// The 10 stats in pycocotools' order; -1 where nothing qualifies.
  std::array<double, 10> summarize() const;
  /// pycocotools' ten summary lines (" Average Precision  (AP) @[ IoU=0.50:0.95 | ...").
  std::string summary_text() const;

  const CocoEvalParams& params() const { return p_; }
  const std::vector<std::int64_t>& image_ids() const { return img_ids_; }
  const std::vector<std::int64_t>& category_ids() const { return cat_ids_; }
  const std::vector<KeypointResult>& results() const { return dt_; }
  const OksMatrix* oks(std::int64_t image_id, std::int64_t category_id) const {
    auto it = cell_.find(key(image_id, category_id));
    return it == cell_.end() ? nullptr : &oks_[it->second];
  }
  /// precision[t][r][k][a] (the M = 1 maxDets axis dropped).
  double precision(std::size_t t, std::size_t r, std::size_t k, std::size_t a) const {
    return precision_[((t * R() + r) * K() + k) * A() + a];
  }
  double recall(std::size_t t, std::size_t k, std::size_t a) const {
    return recall_[(t * K() + k) * A() + a];
  }
  std::size_t T() const { return p_.iou_thresholds.size(); }
  std::size_t R() const { return p_.recall_thresholds.size(); }
  std::size_t K() const { return cat_ids_.size(); }
  std::size_t A() const { return p_.area_ranges.size(); }

 private:
  // Result of evaluateImg for one (category, area range, image).
  struct ImageEval {
    bool present = false;               // false where pycocotools stores None
    std::vector<double> dt_scores;      // (D) in evaluation order
    std::vector<std::int64_t> dt_match; // (T, D): matched GT id, 0 = unmatched (pycocotools' dtm)
    std::vector<char> dt_ignore;        // (T, D)
    std::vector<char> gt_ignore;        // (G) in ignore-sorted order
  };

  static std::uint64_t hash_pair(std::int64_t a, std::int64_t b) {
    return static_cast<std::uint64_t>(a) * 0x9E3779B97F4A7C15ull ^ static_cast<std::uint64_t>(b);
  }
  struct PairHash {
    std::size_t operator()(const std::pair<std::int64_t, std::int64_t>& k) const {
      return static_cast<std::size_t>(hash_pair(k.first, k.second));
    }
  };
  using Key = std::pair<std::int64_t, std::int64_t>;
  static Key key(std::int64_t img, std::int64_t cat) { return {img, cat}; }

  /// numpy's argsort(-score, kind='mergesort'): stable, descending, NaN last.
  static void sort_by_score_desc(std::vector<std::size_t>& idx, const auto& score_of) {
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
      const double sa = score_of(a), sb = score_of(b);
      if (std::isnan(sb)) return !std::isnan(sa);
      if (std::isnan(sa)) return false;
      return -sa < -sb;
    });
  }

  void compute_oks(OksMatrix& m) const;
  ImageEval evaluate_image(std::size_t cell, const AreaRange& range) const;

  const CocoKeypointDataset& gt_;
  std::vector<KeypointResult> dt_;
  CocoEvalParams p_;
  std::vector<std::int64_t> img_ids_, cat_ids_;
  // Per (image, category) cell: GT indices (pycocotools' _gts order), det indices (file order).
  std::unordered_map<Key, std::size_t, PairHash> cell_;
  std::vector<std::vector<std::size_t>> cell_gts_, cell_dts_;
  std::vector<OksMatrix> oks_;
  std::vector<ImageEval> evals_;  // [k][a][i]
  std::vector<double> precision_, recall_;
  bool evaluated_ = false, accumulated_ = false;
};

// ---------------------------------------------------------------------------------------------

inline void CocoKeypointEval::compute_oks(OksMatrix& m) const {
  // pycocotools computeOks. Sorting happened in evaluate(); det rows are already the top max_dets.
  const std::size_t D = m.det_index.size(), G = m.gt_index.size();
  m.oks.clear();
  if (D == 0 || G == 0) return;
  const std::size_t nk = p_.sigmas.size();
  std::vector<double> vars(nk);
  for (std::size_t k = 0; k < nk; ++k) vars[k] = (p_.sigmas[k] * 2) * (p_.sigmas[k] * 2);
  m.oks.assign(D * G, 0.0);
  std::vector<double> e;
  e.reserve(nk);
  for (std::size_t j = 0; j < G; ++j) {
    const CocoGroundTruth& g = gt_.annotations[m.gt_index[j]];
    AMPKIT_CHECK(g.keypoints.size() == 3 * nk, "cocoeval: ground truth id ", g.id, " has ",
                 g.keypoints.size() / 3, " keypoints, the sigmas describe ", nk);
    std::size_t k1 = 0;
    for (std::size_t k = 0; k < nk; ++k) k1 += g.keypoints[3 * k + 2] > 0;
    double x0 = 0, x1 = 0, y0 = 0, y1 = 0;
    if (k1 == 0) {
      // No labelled keypoint: measure to the box [x - w, x + 2w] x [y - h, y + 2h].
      AMPKIT_CHECK(g.bbox.has_value(), "cocoeval: ground truth id ", g.id,
                   " has no labelled keypoints and no bbox (OKS then needs the bbox)");
      const auto& bb = *g.bbox;
      x0 = bb[0] - bb[2];
      x1 = bb[0] + bb[2] * 2;
      y0 = bb[1] - bb[3];
      y1 = bb[1] + bb[3] * 2;
    }
    const double denom_area = g.area + std::numeric_limits<double>::epsilon();  // np.spacing(1)
    for (std::size_t i = 0; i < D; ++i) {
      const KeypointResult& d = dt_[m.det_index[i]];
      AMPKIT_CHECK(d.keypoints.size() == 3 * nk, "cocoeval: result ", d.id, " (image ", d.image_id,
                   ") has ", d.keypoints.size() / 3, " keypoints, expected ", nk);
      e.clear();
      for (std::size_t k = 0; k < nk; ++k) {
        const double xd = d.keypoints[3 * k], yd = d.keypoints[3 * k + 1];
        double dx, dy;
        if (k1 > 0) {
          if (!(g.keypoints[3 * k + 2] > 0)) continue;
          dx = xd - g.keypoints[3 * k];
          dy = yd - g.keypoints[3 * k + 1];
        } else {
          dx = std::max(0.0, x0 - xd) + std::max(0.0, xd - x1);
          dy = std::max(0.0, y0 - yd) + std::max(0.0, yd - y1);
        }
        // Same operation order as numpy: ((dx² + dy²) / vars / (area + eps)) / 2, then exp(-e).
        e.push_back(std::exp(-((dx * dx + dy * dy) / vars[k] / denom_area / 2)));
      }
      m.oks[i * G + j] = numpy_sum<double>(e) / static_cast<double>(e.size());
    }
  }
}

inline void CocoKeypointEval::evaluate() {
  // imgIds = sorted unique GT image ids; catIds = sorted unique GT category ids.
  img_ids_ = gt_.image_ids;
  std::sort(img_ids_.begin(), img_ids_.end());
  img_ids_.erase(std::unique(img_ids_.begin(), img_ids_.end()), img_ids_.end());
  cat_ids_ = gt_.category_ids;
  std::sort(cat_ids_.begin(), cat_ids_.end());
  cat_ids_.erase(std::unique(cat_ids_.begin(), cat_ids_.end()), cat_ids_.end());
  auto is_cat = [&](std::int64_t c) { return std::binary_search(cat_ids_.begin(), cat_ids_.end(), c); };

  cell_.clear();
  cell_gts_.clear();
  cell_dts_.clear();
  auto cell_of = [&](std::int64_t img, std::int64_t cat) {
    auto [it, inserted] = cell_.try_emplace(key(img, cat), cell_gts_.size());
    if (inserted) {
      cell_gts_.emplace_back();
      cell_dts_.emplace_back();
    }
    return it->second;
  };

  // GTs as pycocotools' loadAnns(getAnnIds(imgIds, catIds)) lists them: images in sorted order,
  // each image's annotations in file order, filtered by category, then looked up BY ID (a
  // duplicated id resolves to the last annotation with it) and grouped by that annotation's own
  // (image, category).
  {
    std::unordered_map<std::int64_t, std::vector<std::size_t>> img_to_anns;
    std::unordered_map<std::int64_t, std::size_t> by_id;
    for (std::size_t i = 0; i < gt_.annotations.size(); ++i) {
      img_to_anns[gt_.annotations[i].image_id].push_back(i);
      by_id[gt_.annotations[i].id] = i;
    }
    for (std::int64_t img : img_ids_) {
      auto it = img_to_anns.find(img);
      if (it == img_to_anns.end()) continue;
      for (std::size_t i : it->second) {
        if (!is_cat(gt_.annotations[i].category_id)) continue;
        const std::size_t j = by_id[gt_.annotations[i].id];
        const auto& g = gt_.annotations[j];
        cell_gts_[cell_of(g.image_id, g.category_id)].push_back(j);
      }
    }
  }
  // Detections: ids are unique (1-based file positions), so file order per cell.
  {
    const std::vector<std::int64_t>& ids = img_ids_;
    for (std::size_t i = 0; i < dt_.size(); ++i) {
      const auto& d = dt_[i];
      if (!is_cat(d.category_id) || !std::binary_search(ids.begin(), ids.end(), d.image_id)) continue;
      cell_dts_[cell_of(d.image_id, d.category_id)].push_back(i);
    }
  }

  // OKS per cell (computeOks): detections stably sorted by score, cut to max_dets.
  oks_.assign(cell_gts_.size(), {});
  for (std::size_t c = 0; c < cell_gts_.size(); ++c) {
    auto& m = oks_[c];
    m.gt_index = cell_gts_[c];
    m.det_index = cell_dts_[c];
    sort_by_score_desc(m.det_index, [&](std::size_t i) { return dt_[i].score; });
    if (m.det_index.size() > static_cast<std::size_t>(p_.max_dets)) m.det_index.resize(static_cast<std::size_t>(p_.max_dets));
    compute_oks(m);
  }

  // evaluateImg for every (category, area range, image), in pycocotools' loop order.
  evals_.clear();
  evals_.reserve(K() * A() * img_ids_.size());
  for (std::int64_t cat : cat_ids_)
    for (const auto& range : p_.area_ranges)
      for (std::int64_t img : img_ids_) {
        auto it = cell_.find(key(img, cat));
        evals_.push_back(it == cell_.end() ? ImageEval{} : evaluate_image(it->second, range));
      }
  evaluated_ = true;
  accumulated_ = false;
}

inline CocoKeypointEval::ImageEval CocoKeypointEval::evaluate_image(std::size_t cell,
                                                                    const AreaRange& range) const {
  const auto& gts = cell_gts_[cell];
  const OksMatrix& m = oks_[cell];  // rows: top max_dets detections in score order
  ImageEval r;
  if (gts.empty() && cell_dts_[cell].empty()) return r;
  r.present = true;

  // _ignore flag per GT, then GTs stably sorted with non-ignored first.
  const std::size_t G = gts.size(), D = m.det_index.size(), T = this->T();
  std::vector<char> ig(G);
  for (std::size_t j = 0; j < G; ++j) {
    const auto& g = gt_.annotations[gts[j]];
    const bool ignore = g.iscrowd || g.num_keypoints == 0;
    ig[j] = ignore || g.area < range.lo || g.area > range.hi;
  }
  std::vector<std::size_t> gtind(G);
  std::iota(gtind.begin(), gtind.end(), 0);
  std::stable_sort(gtind.begin(), gtind.end(), [&](std::size_t a, std::size_t b) { return ig[a] < ig[b]; });

  r.gt_ignore.resize(G);
  for (std::size_t j = 0; j < G; ++j) r.gt_ignore[j] = ig[gtind[j]];
  r.dt_scores.resize(D);
  for (std::size_t i = 0; i < D; ++i) r.dt_scores[i] = dt_[m.det_index[i]].score;
  r.dt_match.assign(T * D, 0);
  r.dt_ignore.assign(T * D, 0);
  std::vector<std::int64_t> gt_match(T * G, 0);  // matched detection id (ids are >= 1)

  if (!m.oks.empty()) {
    for (std::size_t t = 0; t < T; ++t) {
      for (std::size_t i = 0; i < D; ++i) {
        double iou = std::min(p_.iou_thresholds[t], 1 - 1e-10);
        std::ptrdiff_t best = -1;
        for (std::size_t j = 0; j < G; ++j) {
          const auto& g = gt_.annotations[gts[gtind[j]]];
          // A GT already matched is skipped unless it is a crowd.
          if (gt_match[t * G + j] > 0 && !g.iscrowd) continue;
          // Holding a match to a regular GT, stop at the first ignored GT.
          if (best > -1 && r.gt_ignore[static_cast<std::size_t>(best)] == 0 && r.gt_ignore[j] == 1) break;
          const double o = m(i, gtind[j]);
          if (o < iou) continue;  // ties go to the later GT, as in pycocotools
          iou = o;
          best = static_cast<std::ptrdiff_t>(j);
        }
        if (best == -1) continue;
        const auto b = static_cast<std::size_t>(best);
        r.dt_ignore[t * D + i] = r.gt_ignore[b];
        r.dt_match[t * D + i] = gt_.annotations[gts[gtind[b]]].id;
        gt_match[t * G + b] = dt_[m.det_index[i]].id;
      }
    }
  }
  // Unmatched detections outside the area range are ignored. "Unmatched" is pycocotools'
  // dtm == 0, i.e. matched GT id 0 also reads as unmatched.
  for (std::size_t i = 0; i < D; ++i) {
    const double a = dt_[m.det_index[i]].area;
    const bool outside = a < range.lo || a > range.hi;
    for (std::size_t t = 0; t < T; ++t)
      if (r.dt_match[t * D + i] == 0 && outside) r.dt_ignore[t * D + i] = 1;
  }
  return r;
}

inline void CocoKeypointEval::accumulate() {
  AMPKIT_CHECK(evaluated_, "cocoeval: accumulate() needs evaluate() first");
  const std::size_t T = this->T(), R = this->R(), K = this->K(), A = this->A(), I = img_ids_.size();
  const auto max_det = static_cast<std::size_t>(p_.max_dets);
  precision_.assign(T * R * K * A, -1.0);
  recall_.assign(T * K * A, -1.0);
  const double eps = std::numeric_limits<double>::epsilon();
  std::vector<double> scores, rc, pr;
  std::vector<std::size_t> order;
  std::vector<const ImageEval*> E;
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t a = 0; a < A; ++a) {
      E.clear();
      for (std::size_t i = 0; i < I; ++i) {
        const ImageEval& e = evals_[(k * A + a) * I + i];
        if (e.present) E.push_back(&e);
      }
      if (E.empty()) continue;
      // Concatenate every image's first max_det detections (image order), then a stable sort by
      // descending score across images.
      struct Ref { const ImageEval* e; std::size_t i, D; };
      std::vector<Ref> refs;
      scores.clear();
      std::size_t npig = 0;
      for (const ImageEval* e : E) {
        const std::size_t D = e->dt_scores.size();
        for (std::size_t i = 0; i < std::min(D, max_det); ++i) {
          refs.push_back({e, i, D});
          scores.push_back(e->dt_scores[i]);
        }
        for (char g : e->gt_ignore) npig += g == 0;
      }
      if (npig == 0) continue;
      order.resize(scores.size());
      std::iota(order.begin(), order.end(), 0);
      sort_by_score_desc(order, [&](std::size_t i) { return scores[i]; });
      const std::size_t nd = order.size();
      for (std::size_t t = 0; t < T; ++t) {
        rc.resize(nd);
        pr.resize(nd);
        std::int64_t tp = 0, fp = 0;
        for (std::size_t n = 0; n < nd; ++n) {
          const Ref& ref = refs[order[n]];
          const bool matched = ref.e->dt_match[t * ref.D + ref.i] != 0;
          const bool ignored = ref.e->dt_ignore[t * ref.D + ref.i] != 0;
          tp += matched && !ignored;
          fp += !matched && !ignored;
          const double tpd = static_cast<double>(tp), fpd = static_cast<double>(fp);
          rc[n] = tpd / static_cast<double>(npig);
          pr[n] = tpd / (fpd + tpd + eps);
        }
        recall_[(t * K + k) * A + a] = nd ? rc[nd - 1] : 0.0;
        // Precision envelope: non-increasing from the right.
        for (std::size_t n = nd; n-- > 1;)
          if (pr[n] > pr[n - 1]) pr[n - 1] = pr[n];
        // q[r] = pr[first index with rc >= recThrs[r]]; thresholds past the end stay 0.
        for (std::size_t ri = 0; ri < R; ++ri) {
          const auto it = std::lower_bound(rc.begin(), rc.end(), p_.recall_thresholds[ri]);
          const auto pi = static_cast<std::size_t>(it - rc.begin());
          precision_[((t * R + ri) * K + k) * A + a] = pi < nd ? pr[pi] : 0.0;
        }
        // pycocotools stops filling at the first out-of-range index; searchsorted results are
        // non-decreasing, so every later one is out of range too and the two agree.
      }
    }
  }
  accumulated_ = true;
}

inline std::array<double, 10> CocoKeypointEval::summarize() const {
  AMPKIT_CHECK(accumulated_, "cocoeval: summarize() needs evaluate() and accumulate() first");
  auto area_index = [&](const char* label) -> std::ptrdiff_t {
    for (std::size_t a = 0; a < A(); ++a)
      if (p_.area_ranges[a].label == label) return static_cast<std::ptrdiff_t>(a);
    return -1;
  };
  // _summarize: mean over the entries > -1 of the selected slice, in C order; -1 if none.
  auto summarize_one = [&](bool ap, double iou_thr, bool all_thr, const char* area) {
    std::vector<double> s;
    const std::ptrdiff_t a = area_index(area);
    if (a >= 0 && p_.max_dets == 20) {  // _summarizeKps asks for maxDets=20
      for (std::size_t t = 0; t < T(); ++t) {
        if (!all_thr && !(p_.iou_thresholds[t] == iou_thr)) continue;  // np.where(iouThr == iouThrs)
        if (ap) {
          for (std::size_t r = 0; r < R(); ++r)
            for (std::size_t k = 0; k < K(); ++k) {
              const double v = precision(t, r, k, static_cast<std::size_t>(a));
              if (v > -1) s.push_back(v);
            }
        } else {
          for (std::size_t k = 0; k < K(); ++k) {
            const double v = recall(t, k, static_cast<std::size_t>(a));
            if (v > -1) s.push_back(v);
          }
        }
      }
    }
    return s.empty() ? -1.0 : numpy_mean<double>(s);
  };
  return {summarize_one(true, 0, true, "all"),      summarize_one(true, .5, false, "all"),
          summarize_one(true, .75, false, "all"),   summarize_one(true, 0, true, "medium"),
          summarize_one(true, 0, true, "large"),    summarize_one(false, 0, true, "all"),
          summarize_one(false, .5, false, "all"),   summarize_one(false, .75, false, "all"),
          summarize_one(false, 0, true, "medium"),  summarize_one(false, 0, true, "large")};
}

inline std::string CocoKeypointEval::summary_text() const {
  const auto stats = summarize();
  const char* areas[10] = {"all", "all", "all", "medium", "large", "all", "all", "all", "medium", "large"};
  const char* ious[10] = {nullptr, "0.50", "0.75", nullptr, nullptr, nullptr, "0.50", "0.75", nullptr, nullptr};
  char range[32];
  std::snprintf(range, sizeof range, "%0.2f:%0.2f", p_.iou_thresholds.front(), p_.iou_thresholds.back());
  std::string out;
  char line[160];
  for (int i = 0; i < 10; ++i) {
    const bool ap = i < 5;
    // ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}'
    std::snprintf(line, sizeof line, " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f\n",
                  ap ? "Average Precision" : "Average Recall", ap ? "(AP)" : "(AR)",
                  ious[i] ? ious[i] : range, areas[i], 20, stats[static_cast<std::size_t>(i)]);
    out += line;
  }
  return out;
}

/// Evaluate `results` against `gt` with pycocotools' keypoint settings; returns the 10 stats.
inline std::array<double, 10> evaluate_coco_keypoints(const CocoKeypointDataset& gt,
                                                      std::vector<KeypointResult> results) {
  CocoKeypointEval ev(gt, std::move(results));
  return ev.run();
}

}  // namespace ampkit::eval

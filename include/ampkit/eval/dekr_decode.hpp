/// @brief DEKR decoding on the host, as mmpose's DEKRHead.predict/decode + SPR.decode +
/// nearby_joints_nms + BottomupPoseEstimator do it: flip-test combination, center NMS, poses from
/// displacements, keypoint scores from heatmaps, optional rescoring, pose NMS, and the mapping
/// back to image coordinates; plus conversion to COCO results.
///
/// Maps are one image, NHWC float: heatmaps (1,H,W,K+1) with the root (center) map LAST (mmpose
/// 1.x), displacements (1,H,W,2K) with channels (2k, 2k+1) = (dx, dy) of keypoint k, in heatmap
/// pixels. Arithmetic is float, as PyTorch does it; the final mapping is double, as numpy does it.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/eval/coco_keypoints.hpp"
#include "ampkit/eval/numpy_sum.hpp"
#include "ampkit/eval/rescore_net.hpp"

namespace ampkit::eval {

/// COCO left/right swap (flip_indices of the COCO dataset meta).
inline constexpr std::array<int, 17> kCocoFlipIndices = {0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15};

/// mmpose's DEKR test settings (SPR codec decode_* and the head's test_cfg).
struct DekrDecodeConfig {
  int nms_kernel = 5;             ///< decode_nms_kernel: max-pool window of the center NMS
  int max_instances = 30;         ///< decode_max_instances: top-k roots
  float root_threshold = 0.01f;   ///< decode_thr: keep roots scoring strictly above
  bool shift_heatmap = true;      ///< flip test: shift the flipped-back heatmaps right by 1 px
  double nms_dist_thr = 0.05;     ///< pose NMS: joints closer than this x pose diagonal; <= 0 disables
  int nms_joints_thr = -1;        ///< pose NMS: more than this many close joints; -1 = K / 2
  int max_num_people = 30;        ///< pose NMS max_dets
  std::vector<int> flip_indices{kCocoFlipIndices.begin(), kCocoFlipIndices.end()};
};

/// How the network input relates to the image (BottomupResize's input_size, input_center,
/// input_scale): image = input / input_size * input_scale + input_center - input_scale / 2.
struct InputTransform {
  double input_w = 0, input_h = 0;
  double center_x = 0, center_y = 0;
  double scale_w = 0, scale_h = 0;
  /// Input coordinates ARE image coordinates.
  static InputTransform identity(double w, double h) { return {w, h, w / 2, h / 2, w, h}; }
};

/// One decoded person.
struct DekrPose {
  std::vector<double> keypoints;     ///< (K, 2) image coordinates
  std::vector<float> keypoint_scores;  ///< root score x heatmap score per keypoint (mmpose's `scores`)
  float root_score = 0;              ///< center-map peak (x rescore when the rescore net runs)
  double score = 0;                  ///< mean keypoint score: CocoMetric(score_mode='keypoint')
};

/// A peak of the root map kept by the center NMS.
struct RootPeak {
  std::int64_t index = 0;  ///< y * W + x
  float score = 0;
};

/// Average a forward pass with the flipped-input pass (DEKRHead.predict, flip_test=True):
/// heatmaps are flipped back, channels swapped by flip_indices (+ the root, last), shifted right
/// by 1 px (shift_heatmap), averaged; displacements are flipped back, swapped, x negated, then
/// the x displacement gets the "coordinate amendment" (s - 1) / s with s = input_w / W (0.75 for
/// stride 4, because flipping the input maps heatmap x to W - 1/s - x, not W - 1 - x), averaged.
inline void dekr_flip_combine(TensorView<const float> heatmaps, TensorView<const float> displacements,
                              TensorView<const float> heatmaps_flip, TensorView<const float> displacements_flip,
                              TensorView<float> heatmaps_out, TensorView<float> displacements_out,
                              const DekrDecodeConfig& cfg, double input_w) {
  const Shape hs = heatmaps.shape, ds = displacements.shape;
  const std::int64_t H = hs.h, W = hs.w, C = hs.c, K = C - 1;
  check_shape("dekr_flip_combine", "heatmaps_flip", heatmaps_flip, hs);
  check_shape("dekr_flip_combine", "displacements", displacements, {1, H, W, 2 * K});
  check_shape("dekr_flip_combine", "displacements_flip", displacements_flip, ds);
  check_shape("dekr_flip_combine", "heatmaps_out", heatmaps_out, hs);
  check_shape("dekr_flip_combine", "displacements_out", displacements_out, ds);
  AMPKIT_CHECK(hs.n == 1, "dekr_flip_combine: one image at a time, got a batch of ", hs.n);
  AMPKIT_CHECK(static_cast<std::int64_t>(cfg.flip_indices.size()) == K, "dekr_flip_combine: ",
               cfg.flip_indices.size(), " flip indices for ", K, " keypoints");
  const double s = input_w / static_cast<double>(W);
  const auto amend = static_cast<float>((s - 1) / s);
  auto src_channel = [&](std::int64_t c) { return c == K ? K : cfg.flip_indices[static_cast<std::size_t>(c)]; };
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      // flip back: output column x reads flipped column W-1-x; the shift reads column x-1 of that.
      const std::int64_t xs = cfg.shift_heatmap && x > 0 ? x - 1 : x;
      for (std::int64_t c = 0; c < C; ++c)
        heatmaps_out(0, y, x, c) = (heatmaps(0, y, x, c) + heatmaps_flip(0, y, W - 1 - xs, src_channel(c))) / 2.0f;
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t sk = src_channel(k);
        const float fx = -displacements_flip(0, y, W - 1 - x, 2 * sk) + amend;
        const float fy = displacements_flip(0, y, W - 1 - x, 2 * sk + 1);
        displacements_out(0, y, x, 2 * k) = (displacements(0, y, x, 2 * k) + fx) / 2.0f;
        displacements_out(0, y, x, 2 * k + 1) = (displacements(0, y, x, 2 * k + 1) + fy) / 2.0f;
      }
    }
}

/// Center NMS (batch_heatmap_nms + topk): a root-map pixel is a peak when it equals the max of
/// its kernel x kernel window (padding never wins); the `max_instances` largest peak values are
/// taken (ties: lower index first) and those strictly above the threshold kept.
inline std::vector<RootPeak> dekr_center_nms(TensorView<const float> heatmaps, const DekrDecodeConfig& cfg) {
  const std::int64_t H = heatmaps.shape.h, W = heatmaps.shape.w, root = heatmaps.shape.c - 1;
  AMPKIT_CHECK(cfg.nms_kernel > 0 && cfg.nms_kernel % 2 == 1, "dekr decode: the center NMS kernel must be odd, got ",
               cfg.nms_kernel);
  const std::int64_t r = cfg.nms_kernel / 2;
  std::vector<RootPeak> peaks;
  peaks.reserve(static_cast<std::size_t>(H * W));
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      const float v = heatmaps(0, y, x, root);
      float m = -std::numeric_limits<float>::infinity();
      for (std::int64_t yy = std::max<std::int64_t>(0, y - r); yy <= std::min(H - 1, y + r); ++yy)
        for (std::int64_t xx = std::max<std::int64_t>(0, x - r); xx <= std::min(W - 1, x + r); ++xx)
          m = std::max(m, heatmaps(0, yy, xx, root));
      // Non-peaks become v * 0 (mmpose multiplies by the indicator), so they still rank in top-k.
      peaks.push_back({y * W + x, v * (v == m ? 1.0f : 0.0f)});
    }
  const auto k = std::min<std::size_t>(peaks.size(), static_cast<std::size_t>(std::max(cfg.max_instances, 0)));
  std::partial_sort(peaks.begin(), peaks.begin() + static_cast<std::ptrdiff_t>(k), peaks.end(),
                    [](const RootPeak& a, const RootPeak& b) {
                      return a.score > b.score || (a.score == b.score && a.index < b.index);
                    });
  peaks.resize(k);
  std::erase_if(peaks, [&](const RootPeak& p) { return !(p.score > cfg.root_threshold); });
  return peaks;
}

/// Bilinear sample of channel c at heatmap position (x, y), as SPR.get_keypoint_scores calls
/// grid_sample: normalised by (size - 1) but sampled with align_corners=False, so the pixel read
/// is x * W / (W - 1) - 0.5 (mmpose's convention, kept), border padding (clamped to the map).
inline float dekr_sample_heatmap(TensorView<const float> hm, std::int64_t c, float x, float y) {
  const std::int64_t H = hm.shape.h, W = hm.shape.w;
  auto source = [](float p, std::int64_t size) {
    const float n = p / static_cast<float>(size - 1) * 2.0f - 1.0f;               // normalise
    const float u = (n + 1.0f) * (static_cast<float>(size) / 2.0f) - 0.5f;       // unnormalise
    return std::min(static_cast<float>(size - 1), std::max(u, 0.0f));           // border
  };
  const float ix = source(x, W), iy = source(y, H);
  const float x0 = std::floor(ix), y0 = std::floor(iy);
  const float w = ix - x0, e = 1.0f - w, n = iy - y0, s = 1.0f - n;
  const auto xi = static_cast<std::int64_t>(x0), yi = static_cast<std::int64_t>(y0);
  auto at = [&](std::int64_t yy, std::int64_t xx) {
    return (xx >= 0 && xx < W && yy >= 0 && yy < H) ? hm(0, yy, xx, c) : 0.0f;
  };
  return at(yi, xi) * (s * e) + at(yi, xi + 1) * (s * w) + at(yi + 1, xi) * (n * e) + at(yi + 1, xi + 1) * (n * w);
}

/// nearby_joints_nms (mmpose evaluation/functional/nms.py, from DEKR): pose j is "close" to pose
/// i when more than `joints_thr` joints lie within dist_thr x (pose i's keypoint-box diagonal).
/// Poses are visited by descending score; each unvisited pose keeps the best-scoring member of its
/// close set (if not already suppressed) and suppresses the whole set. Returns kept indices;
/// when more than max_dets survive, the max_dets best in descending score order.
/// `keypoints` is (N, K, 2); `scores` (N). numpy's argsort is not stable for ties; here ties are
/// visited higher index first (a stable ascending sort, reversed), and argmax takes the first.
inline std::vector<std::size_t> nearby_joints_nms(std::span<const float> keypoints, std::span<const float> scores,
                                                  std::size_t K, double dist_thr, int joints_thr, int max_dets) {
  const std::size_t N = scores.size();
  AMPKIT_CHECK(dist_thr > 0, "nearby_joints_nms: dist_thr must be > 0");
  AMPKIT_CHECK(keypoints.size() == N * K * 2, "nearby_joints_nms: ", keypoints.size(), " coordinates for ", N,
               " poses of ", K, " joints");
  if (N == 0) return {};
  const std::size_t thr_joints = joints_thr < 0 ? K / 2 : static_cast<std::size_t>(joints_thr);
  AMPKIT_CHECK(thr_joints < K, "nearby_joints_nms: joints threshold ", thr_joints, " must be below K = ", K);
  const auto kp = [&](std::size_t n, std::size_t k, int d) { return keypoints[(n * K + k) * 2 + static_cast<std::size_t>(d)]; };
  std::vector<float> close_thr(N);
  const auto dthr = static_cast<float>(dist_thr);
  for (std::size_t n = 0; n < N; ++n) {
    float x0 = kp(n, 0, 0), x1 = x0, y0 = kp(n, 0, 1), y1 = y0;
    for (std::size_t k = 1; k < K; ++k) {
      x0 = std::min(x0, kp(n, k, 0)); x1 = std::max(x1, kp(n, k, 0));
      y0 = std::min(y0, kp(n, k, 1)); y1 = std::max(y1, kp(n, k, 1));
    }
    const float w = x1 - x0, h = y1 - y0;
    close_thr[n] = std::sqrt(w * w + h * h) * dthr;
  }
  std::vector<char> close(N * N);
  for (std::size_t i = 0; i < N; ++i)
    for (std::size_t j = 0; j < N; ++j) {
      std::size_t count = 0;
      for (std::size_t k = 0; k < K; ++k) {
        const float dx = kp(i, k, 0) - kp(j, k, 0), dy = kp(i, k, 1) - kp(j, k, 1);
        count += std::sqrt(dx * dx + dy * dy) < close_thr[i];
      }
      close[i * N + j] = count > thr_joints;
    }
  std::vector<std::size_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  std::reverse(order.begin(), order.end());
  std::vector<char> ignored(N, 0);
  std::vector<std::size_t> keep;
  for (std::size_t i : order) {
    if (ignored[i]) continue;
    std::ptrdiff_t best = -1;
    for (std::size_t j = 0; j < N; ++j)
      if (close[i * N + j] && (best < 0 || scores[j] > scores[static_cast<std::size_t>(best)]))
        best = static_cast<std::ptrdiff_t>(j);
    // A pose whose joints all coincide has a zero threshold and no close set (numpy's argmax
    // would raise); it keeps itself.
    const std::size_t b = best < 0 ? i : static_cast<std::size_t>(best);
    if (ignored[b]) continue;
    keep.push_back(b);
    ignored[b] = 1;
    for (std::size_t j = 0; j < N; ++j)
      if (close[i * N + j]) ignored[j] = 1;
  }
  if (max_dets > 0 && keep.size() > static_cast<std::size_t>(max_dets)) {
    std::vector<std::size_t> pos(keep.size());
    std::iota(pos.begin(), pos.end(), 0);
    std::stable_sort(pos.begin(), pos.end(), [&](std::size_t a, std::size_t b) { return scores[keep[a]] < scores[keep[b]]; });
    std::vector<std::size_t> top;
    for (std::size_t n = 0; n < static_cast<std::size_t>(max_dets); ++n) top.push_back(keep[pos[pos.size() - 1 - n]]);
    keep = std::move(top);
  }
  return keep;
}

/// What the map work of one image yields: the roots kept by the center NMS (score order) and, per
/// root, its keypoints and their heatmap scores; rescoring, pose NMS and the image mapping follow
/// in dekr_finish. Computed on the host by dekr_candidates and on the device by
/// backend/cuda/dekr_decode.cuh (which copies back only this).
struct DekrCandidates {
  std::vector<RootPeak> roots;   ///< (N) center NMS survivors, best first
  std::vector<float> keypoints;  ///< (N, K, 2) input-image coordinates (heatmap px x input/heatmap)
  std::vector<float> heat;       ///< (N, K) bilinear heatmap score of each keypoint
};

/// Center NMS, poses from the displacements at the roots, heat scores (SPR.decode), on one
/// image's (already flip-combined, if flip test) maps.
inline DekrCandidates dekr_candidates(TensorView<const float> heatmaps, TensorView<const float> displacements,
                                      double input_w, double input_h, const DekrDecodeConfig& cfg = {}) {
  const std::int64_t H = heatmaps.shape.h, W = heatmaps.shape.w, K = heatmaps.shape.c - 1;
  AMPKIT_CHECK(heatmaps.shape.n == 1 && K > 0, "dekr_decode: heatmaps must be (1,H,W,K+1), got ", heatmaps.shape);
  check_shape("dekr_decode", "displacements", displacements, {1, H, W, 2 * K});
  AMPKIT_CHECK(input_w > 0 && input_h > 0, "dekr_decode: the input transform has no input size");
  const auto Ku = static_cast<std::size_t>(K);

  DekrCandidates c;
  c.roots = dekr_center_nms(heatmaps, cfg);
  const std::size_t N = c.roots.size();
  // SPR.scale_factor = (input_size / heatmap_size).astype(float32)
  const auto sx = static_cast<float>(input_w / static_cast<double>(W));
  const auto sy = static_cast<float>(input_h / static_cast<double>(H));
  c.keypoints.resize(N * Ku * 2);
  c.heat.resize(N * Ku);
  for (std::size_t n = 0; n < N; ++n) {
    const std::int64_t y = c.roots[n].index / W, x = c.roots[n].index % W;
    for (std::size_t k = 0; k < Ku; ++k) {
      const auto ch = static_cast<std::int64_t>(k);
      // pose map = pixel grid + displacement, read at the root pixel (heatmap coordinates)
      const float px = static_cast<float>(x) + displacements(0, y, x, 2 * ch);
      const float py = static_cast<float>(y) + displacements(0, y, x, 2 * ch + 1);
      c.heat[n * Ku + k] = dekr_sample_heatmap(heatmaps, ch, px, py);
      c.keypoints[(n * Ku + k) * 2] = px * sx;
      c.keypoints[(n * Ku + k) * 2 + 1] = py * sy;
    }
  }
  return c;
}

/// Rescoring (optional), nearby-joints pose NMS and the mapping to image coordinates
/// (DEKRHead.decode + BottomupPoseEstimator) of one image's candidates.
inline std::vector<DekrPose> dekr_finish(const DekrCandidates& c, std::size_t K, const InputTransform& tf,
                                         const DekrDecodeConfig& cfg = {}, const RescoreNet* rescore = nullptr) {
  const std::size_t N = c.roots.size(), Ku = K;
  AMPKIT_CHECK(c.keypoints.size() == N * K * 2 && c.heat.size() == N * K, "dekr_finish: ", N, " roots but ",
               c.keypoints.size(), " coordinates and ", c.heat.size(), " scores for K = ", K);
  AMPKIT_CHECK(tf.input_w > 0 && tf.input_h > 0, "dekr_decode: the input transform has no input size");
  const std::vector<float>& kpts = c.keypoints;
  const std::vector<float>& heat = c.heat;
  std::vector<float> root(N);
  for (std::size_t n = 0; n < N; ++n) root[n] = c.roots[n].score;
  if (rescore != nullptr && rescore->loaded())
    for (std::size_t n = 0; n < N; ++n)
      root[n] *= (*rescore)(std::span<const float>(kpts).subspan(n * Ku * 2, Ku * 2),
                            std::span<const float>(heat).subspan(n * Ku, Ku));

  std::vector<std::size_t> keep(N);
  std::iota(keep.begin(), keep.end(), 0);
  if (N > 0 && cfg.nms_dist_thr > 0) {
    std::vector<float> mean_heat(N);  // nms scores: mean of the heatmap scores (score_per_joint)
    for (std::size_t n = 0; n < N; ++n)
      mean_heat[n] = numpy_mean<float>(std::span<const float>(heat).subspan(n * Ku, Ku));
    keep = nearby_joints_nms(kpts, mean_heat, Ku, cfg.nms_dist_thr, cfg.nms_joints_thr, cfg.max_num_people);
  }

  std::vector<DekrPose> poses;
  poses.reserve(keep.size());
  for (std::size_t n : keep) {
    DekrPose p;
    p.root_score = root[n];
    p.keypoints.resize(Ku * 2);
    p.keypoint_scores.resize(Ku);
    for (std::size_t k = 0; k < Ku; ++k) {
      p.keypoint_scores[k] = root[n] * heat[n * Ku + k];
      const double x = kpts[(n * Ku + k) * 2], y = kpts[(n * Ku + k) * 2 + 1];
      p.keypoints[2 * k] = x / tf.input_w * tf.scale_w + tf.center_x - 0.5 * tf.scale_w;
      p.keypoints[2 * k + 1] = y / tf.input_h * tf.scale_h + tf.center_y - 0.5 * tf.scale_h;
    }
    p.score = numpy_mean<float>(p.keypoint_scores);
    poses.push_back(std::move(p));
  }
  return poses;
}

/// Decode one image's (already flip-combined, if flip test) maps into poses in image coordinates.
inline std::vector<DekrPose> dekr_decode(TensorView<const float> heatmaps, TensorView<const float> displacements,
                                         const InputTransform& tf, const DekrDecodeConfig& cfg = {},
                                         const RescoreNet* rescore = nullptr) {
  AMPKIT_CHECK(tf.input_w > 0 && tf.input_h > 0, "dekr_decode: the input transform has no input size");
  const auto c = dekr_candidates(heatmaps, displacements, tf.input_w, tf.input_h, cfg);
  return dekr_finish(c, static_cast<std::size_t>(heatmaps.shape.c - 1), tf, cfg, rescore);
}

/// Flip test: combine both passes (dekr_flip_combine), then decode.
inline std::vector<DekrPose> dekr_decode_flip(TensorView<const float> heatmaps, TensorView<const float> displacements,
                                              TensorView<const float> heatmaps_flip,
                                              TensorView<const float> displacements_flip, const InputTransform& tf,
                                              const DekrDecodeConfig& cfg = {}, const RescoreNet* rescore = nullptr) {
  HostTensor<float> hm(heatmaps.shape), disp(displacements.shape);
  dekr_flip_combine(heatmaps, displacements, heatmaps_flip, displacements_flip, hm.view(), disp.view(), cfg, tf.input_w);
  return dekr_decode(hm.cview(), disp.cview(), tf, cfg, rescore);
}

/// COCO results for one image (CocoMetric, score_mode='keypoint'): keypoints as (x, y, keypoint
/// score) triplets and the mean keypoint score.
inline std::vector<KeypointResult> dekr_poses_to_coco(std::int64_t image_id, const std::vector<DekrPose>& poses,
                                                      std::int64_t category_id = 1) {
  std::vector<KeypointResult> out;
  out.reserve(poses.size());
  for (const auto& p : poses) {
    KeypointResult r;
    r.image_id = image_id;
    r.category_id = category_id;
    r.score = p.score;
    for (std::size_t k = 0; k < p.keypoint_scores.size(); ++k)
      r.keypoints.insert(r.keypoints.end(), {p.keypoints[2 * k], p.keypoints[2 * k + 1],
                                             static_cast<double>(p.keypoint_scores[k])});
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace ampkit::eval

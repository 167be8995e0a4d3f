/// @brief DEKR training targets: mmpose's SPR codec encode (keypoint + root heatmaps with their
/// weights, root-relative displacement fields with 1/diagonal weights), written NHWC.
///
/// Reference semantics: mmpose/codecs/spr.py (SPR.encode) with sigma=(4, 2),
/// minimal_diagonal_length=√32, root_type='kpt_center', background_weight=0.1, and the helpers in
/// mmpose/codecs/utils (generate_gaussian_heatmaps, generate_displacement_heatmap,
/// get_instance_root, get_diagonal_lengths). All coordinates are in heatmap pixels
/// (input / 4). The arithmetic follows the reference's dtypes (float32 keypoints, float32
/// Gaussian, float64 differences rounded to float32) so targets agree to the last bit or, for the
/// Gaussian's exp, within one float32 ulp (numpy's float32 exp is faithfully, not correctly,
/// rounded). tests/python/spr_peer.py is the numpy peer the tests compare against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit::data {

struct SprConfig {
  int heatmap_w = 128, heatmap_h = 128;
  int n_keypoints = 17;
  /// Gaussian σ in heatmap pixels; integers as in the DEKR configs (the truncation radius 3σ and
  /// the displacement patch radius σ_root are then integers too).
  int sigma_root = 4, sigma_keypoint = 2;
  /// Instances whose visible-keypoint box diagonal is below this get no root and no
  /// displacements (float32(√32), compared in float32 as numpy does).
  float minimal_diagonal = 5.65685424949238f;
  float background_weight = 0.1f;

  int heatmap_channels() const { return n_keypoints + 1; }
  int displacement_channels() const { return 2 * n_keypoints; }
};

/// Views of one sample's targets, each (1, heatmap_h, heatmap_w, C):
/// heatmaps/heatmap_weights C = K+1 (keypoints 0..K-1, root last);
/// displacements/displacement_weights C = 2K, (dx, dy) of keypoint k at channels 2k, 2k+1.
struct SprTargetViews {
  TensorView<float> heatmaps, heatmap_weights, displacements, displacement_weights;
};

namespace detail {

/// Draw a truncated unnormalised Gaussian at int(pt + 0.5) into channel `ch` with max, exactly as
/// generate_gaussian_heatmaps does (a centre whose square misses the map is skipped).
inline void draw_gaussian(TensorView<float> hm, int ch, float px, float py, int sigma,
                          const std::vector<float>& kernel) {
  const int W = static_cast<int>(hm.shape.w), H = static_cast<int>(hm.shape.h);
  const int radius = 3 * sigma, size = 2 * radius + 1;
  // float32 add, then truncation toward zero (numpy astype(int64)).
  const double fx = static_cast<double>(px + 0.5f), fy = static_cast<double>(py + 0.5f);
  if (!(std::abs(fx) < 1e15 && std::abs(fy) < 1e15)) return;  // NaN/inf/absurd: nothing to draw
  const std::int64_t mux = static_cast<std::int64_t>(fx), muy = static_cast<std::int64_t>(fy);
  const std::int64_t left = mux - radius, top = muy - radius;
  const std::int64_t right = mux + radius + 1, bottom = muy + radius + 1;
  if (left >= W || top >= H || right < 0 || bottom < 0) return;
  const int hx1 = static_cast<int>(std::max<std::int64_t>(0, left));
  const int hx2 = static_cast<int>(std::min<std::int64_t>(W, right));
  const int hy1 = static_cast<int>(std::max<std::int64_t>(0, top));
  const int hy2 = static_cast<int>(std::min<std::int64_t>(H, bottom));
  for (int y = hy1; y < hy2; ++y) {
    const int gy = static_cast<int>(y - top);
    for (int x = hx1; x < hx2; ++x) {
      const int gx = static_cast<int>(x - left);
      float& v = hm(0, y, x, ch);
      v = std::max(v, kernel[static_cast<std::size_t>(gy) * size + gx]);
    }
  }
}

/// exp(-(dx² + dy²) / (2σ²)) on the (6σ+1)² grid, float32 arguments as in the reference.
inline std::vector<float> gaussian_kernel(int sigma) {
  const int radius = 3 * sigma, size = 2 * radius + 1;
  std::vector<float> k(static_cast<std::size_t>(size) * size);
  const float denom = static_cast<float>(2 * sigma * sigma);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const float d2 = static_cast<float>((x - radius) * (x - radius) + (y - radius) * (y - radius));
      // Correctly rounded float32 exp (computed in double); numpy's float32 exp is within 1 ulp.
      k[static_cast<std::size_t>(y) * size + x] =
          static_cast<float>(std::exp(static_cast<double>(-d2 / denom)));
    }
  return k;
}

}  // namespace detail

/// What encode_spr reuses from one call to the next (one per thread): the per-pixel instance-size
/// map (heatmap_h × heatmap_w floats, 64 KiB at 128×128), the per-instance roots and diagonals,
/// and the two Gaussian kernels, built once per σ. A data worker keeps one so that a sample
/// allocates nothing; no state carries over between calls (everything is overwritten, and the
/// kernels depend only on σ).
struct SprWorkspace {
  std::vector<float> size_map;              // (H, W)
  std::vector<float> root_x, root_y, diag;  // (N)
  std::vector<char> root_vis;               // (N)
  std::vector<float> kernel_keypoint, kernel_root;
  int sigma_keypoint = -1, sigma_root = -1;  // the σ the kernels were built for (-1: none yet)

  /// The Gaussian kernels for `cfg`, rebuilt only when σ changed.
  void prepare_kernels(const SprConfig& cfg) {
    if (sigma_keypoint != cfg.sigma_keypoint) {
      kernel_keypoint = detail::gaussian_kernel(cfg.sigma_keypoint);
      sigma_keypoint = cfg.sigma_keypoint;
    }
    if (sigma_root != cfg.sigma_root) {
      kernel_root = detail::gaussian_kernel(cfg.sigma_root);
      sigma_root = cfg.sigma_root;
    }
  }
};

/// Encode the SPR targets of one sample.
///
/// @param keypoints  (N, K, 2) keypoints in heatmap pixels, float32
/// @param visible    (N, K) visibility, > 0 means labelled (mmpose: min(1, v))
/// @param out        views sized (1, heatmap_h, heatmap_w, C); fully overwritten
/// @param ws         buffers reused between calls (the same targets with or without it)
inline void encode_spr(const SprConfig& cfg, std::span<const float> keypoints,
                       std::span<const float> visible, int n_instances, const SprTargetViews& out,
                       SprWorkspace& ws) {
  const int K = cfg.n_keypoints, W = cfg.heatmap_w, H = cfg.heatmap_h;
  AMPKIT_CHECK(keypoints.size() == static_cast<std::size_t>(n_instances) * K * 2,
               "encode_spr: keypoints hold ", keypoints.size(), " values, expected N*K*2 = ",
               n_instances * K * 2);
  AMPKIT_CHECK(visible.size() == static_cast<std::size_t>(n_instances) * K,
               "encode_spr: visible holds ", visible.size(), " values, expected N*K = ",
               n_instances * K);
  check_shape("encode_spr", "heatmaps", out.heatmaps, {1, H, W, K + 1});
  check_shape("encode_spr", "heatmap_weights", out.heatmap_weights, {1, H, W, K + 1});
  check_shape("encode_spr", "displacements", out.displacements, {1, H, W, 2 * K});
  check_shape("encode_spr", "displacement_weights", out.displacement_weights, {1, H, W, 2 * K});

  auto kx = [&](int n, int k) { return keypoints[(static_cast<std::size_t>(n) * K + k) * 2]; };
  auto ky = [&](int n, int k) { return keypoints[(static_cast<std::size_t>(n) * K + k) * 2 + 1]; };
  auto kv = [&](int n, int k) { return visible[static_cast<std::size_t>(n) * K + k]; };

  // Roots (mean of labelled keypoints) and visible-box diagonals, float32 as get_instance_root /
  // get_diagonal_lengths compute them.
  std::vector<float>& root_x = ws.root_x;
  std::vector<float>& root_y = ws.root_y;
  std::vector<float>& diag = ws.diag;
  std::vector<char>& root_vis = ws.root_vis;
  root_x.assign(static_cast<std::size_t>(n_instances), 0.f);
  root_y.assign(static_cast<std::size_t>(n_instances), 0.f);
  diag.assign(static_cast<std::size_t>(n_instances), 0.f);
  root_vis.assign(static_cast<std::size_t>(n_instances), 0);
  for (int n = 0; n < n_instances; ++n) {
    float sx = 0, sy = 0, minx = 0, maxx = 0, miny = 0, maxy = 0;
    int m = 0;
    for (int k = 0; k < K; ++k) {
      if (!(kv(n, k) > 0)) continue;
      const float x = kx(n, k), y = ky(n, k);
      if (m == 0) minx = maxx = x, miny = maxy = y;
      minx = std::min(minx, x), maxx = std::max(maxx, x);
      miny = std::min(miny, y), maxy = std::max(maxy, y);
      sx += x, sy += y;
      ++m;
    }
    if (m == 0) continue;
    root_x[n] = sx / static_cast<float>(m);
    root_y[n] = sy / static_cast<float>(m);
    const float dx = maxx - minx, dy = maxy - miny;
    diag[n] = std::sqrt(dx * dx + dy * dy);
    root_vis[n] = diag[n] < cfg.minimal_diagonal ? 0 : 1;
  }

  // Heatmaps: keypoints with σ_kpt, roots with σ_root in the last channel; combined by max.
  std::fill(out.heatmaps.data, out.heatmaps.data + out.heatmaps.numel(), 0.f);
  ws.prepare_kernels(cfg);
  const std::vector<float>& kern_kpt = ws.kernel_keypoint;
  const std::vector<float>& kern_root = ws.kernel_root;
  for (int n = 0; n < n_instances; ++n) {
    for (int k = 0; k < K; ++k)
      if (!(kv(n, k) < 0.5f)) detail::draw_gaussian(out.heatmaps, k, kx(n, k), ky(n, k),
                                                    cfg.sigma_keypoint, kern_kpt);
    if (root_vis[n])
      detail::draw_gaussian(out.heatmaps, K, root_x[n], root_y[n], cfg.sigma_root, kern_root);
  }
  // Weights: 1 on every pixel a Gaussian square covers (its values are all > 0), else background.
  for (std::int64_t i = 0; i < out.heatmaps.numel(); ++i)
    out.heatmap_weights[i] = out.heatmaps[i] > 0 ? 1.f : cfg.background_weight;

  // Displacements in the σ_root patch [int(r-σ), int(r+σ)) around each root; where patches
  // overlap the smaller instance (shorter diagonal) keeps the pixel, exactly as the reference
  // loop decides it (the size map is shared by all keypoints of a pixel).
  std::fill(out.displacements.data, out.displacements.data + out.displacements.numel(), 0.f);
  std::fill(out.displacement_weights.data,
            out.displacement_weights.data + out.displacement_weights.numel(), 0.f);
  std::vector<float>& size_map = ws.size_map;
  size_map.assign(static_cast<std::size_t>(W) * H, 0.f);
  const int radius = cfg.sigma_root;
  for (int n = 0; n < n_instances; ++n) {
    const float rx = root_x[n], ry = root_y[n];
    if (!root_vis[n] || rx < 0 || ry < 0 || rx >= W || ry >= H) continue;
    const float d = diag[n];
    const float wgt = 1.f / d;
    // int() truncates toward zero; r - σ may be negative.
    const int x0 = std::max(static_cast<int>(rx - static_cast<float>(radius)), 0);
    const int y0 = std::max(static_cast<int>(ry - static_cast<float>(radius)), 0);
    const int x1 = std::min(static_cast<int>(rx + static_cast<float>(radius)), W);
    const int y1 = std::min(static_cast<int>(ry + static_cast<float>(radius)), H);
    for (int k = 0; k < K; ++k) {
      const float px = kx(n, k), py = ky(n, k);
      if (kv(n, k) < 1 || px < 0 || py < 0 || px >= W || py >= H) continue;
      for (int x = x0; x < x1; ++x)
        for (int y = y0; y < y1; ++y) {
          float* dd = &out.displacements(0, y, x, 2 * k);
          float& sz = size_map[static_cast<std::size_t>(y) * W + x];
          if ((dd[0] != 0 || dd[1] != 0) && d > sz) continue;
          float* ww = &out.displacement_weights(0, y, x, 2 * k);
          ww[0] = ww[1] = wgt;
          // float32 keypoint minus integer pixel, computed in float64 and stored as float32.
          dd[0] = static_cast<float>(static_cast<double>(px) - x);
          dd[1] = static_cast<float>(static_cast<double>(py) - y);
          sz = d;
        }
    }
  }
}

/// The same with buffers of its own (allocates the size map and kernels on every call).
inline void encode_spr(const SprConfig& cfg, std::span<const float> keypoints,
                       std::span<const float> visible, int n_instances, const SprTargetViews& out) {
  SprWorkspace ws;
  encode_spr(cfg, keypoints, visible, n_instances, out, ws);
}

}  // namespace ampkit::data

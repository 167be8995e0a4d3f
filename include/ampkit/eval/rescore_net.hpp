/// @brief DEKR's pose rescoring MLP (74 -> 256 -> 256 -> 1, ReLU): predicts a pose's OKS from its
/// skeleton geometry and keypoint scores; mmpose multiplies the root score by it.
///
/// It needs COCO-trained weights (mmpose's `kpt_rescore_coco-33d58c5c.pth`) and is meaningless on
/// other skeletons, so decoding runs without it unless weights are loaded (off by default).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/safetensors.hpp"

namespace ampkit::eval {

/// COCO skeleton links (0-based joint pairs), in mmpose's `skeleton_links` order; the rescore
/// net's features depend on this order. Links 5 and 6 (shoulder-hip) are the torso.
inline constexpr std::array<std::array<int, 2>, 19> kCocoSkeletonLinks = {{
    {15, 13}, {13, 11}, {16, 14}, {14, 12}, {11, 12}, {5, 11}, {6, 12}, {5, 6}, {5, 7}, {6, 8},
    {7, 9}, {8, 10}, {1, 2}, {0, 1}, {0, 2}, {1, 3}, {2, 4}, {3, 5}, {4, 6}}};

class RescoreNet {
 public:
  static constexpr int kHidden = 256;

  RescoreNet() = default;
  /// Weights in PyTorch's nn.Linear layout: weight (out, in) row-major, bias (out).
  /// Names as in mmpose's state dict under the head: l1.weight, l1.bias, l2.*, l3.*.
  static RescoreNet from_tensors(const std::map<std::string, std::vector<float>>& t, int n_keypoints = 17) {
    RescoreNet n;
    n.n_keypoints_ = n_keypoints;
    const int in = n.in_features();
    auto get = [&](const char* name, std::size_t count) {
      auto it = t.find(name);
      AMPKIT_CHECK(it != t.end(), "rescore net: tensor '", name, "' missing");
      AMPKIT_CHECK(it->second.size() == count, "rescore net: '", name, "' has ", it->second.size(),
                   " values, expected ", count);
      return it->second;
    };
    n.w1_ = get("l1.weight", std::size_t(kHidden) * in);
    n.b1_ = get("l1.bias", kHidden);
    n.w2_ = get("l2.weight", std::size_t(kHidden) * kHidden);
    n.b2_ = get("l2.bias", kHidden);
    n.w3_ = get("l3.weight", kHidden);
    n.b3_ = get("l3.bias", 1);
    return n;
  }

  /// Tensor names of the net in a DEKR state dict (mmpose's DEKRHead.rescore_net); also accepted:
  /// `rescore_net.` and no prefix (the bare `kpt_rescore_coco` file's own keys).
  static constexpr const char* kStateDictPrefix = "head.rescore_net.";

  /// Load from a safetensors file (tools/convert_rescore.py writes one from mmpose's
  /// `kpt_rescore_coco-33d58c5c.pth`; a full DEKR checkpoint with the head's rescore net works
  /// too). Any floating dtype; shapes are checked: l1 (256, 3*19+K), l2 (256, 256), l3 (1, 256).
  static RescoreNet from_safetensors(const safetensors::File& f, int n_keypoints = 17) {
    std::string prefix;
    bool found = false;
    for (const char* p : {kStateDictPrefix, "rescore_net.", ""})
      if (f.contains(std::string(p) + "l1.weight")) {
        prefix = p;
        found = true;
        break;
      }
    AMPKIT_CHECK(found, "rescore net: '", f.origin(), "' has no '", kStateDictPrefix,
                 "l1.weight' (nor 'rescore_net.l1.weight' or 'l1.weight'); convert mmpose's "
                 "kpt_rescore_coco .pth with tools/convert_rescore.py");
    const int in = 3 * static_cast<int>(kCocoSkeletonLinks.size()) + n_keypoints;
    std::map<std::string, std::vector<float>> t;
    auto take = [&](const char* name, std::vector<std::int64_t> shape) {
      const std::string full = prefix + name;
      AMPKIT_CHECK(f.contains(full), "rescore net: '", f.origin(), "' has no tensor '", full, "'");
      const auto& info = f.info(full);
      AMPKIT_CHECK(info.shape == shape, "rescore net: '", full, "' in '", f.origin(), "' has shape ",
                   safetensors::detail::shape_str(info.shape), ", expected ", safetensors::detail::shape_str(shape));
      t[name] = f.read_as<float>(full);
    };
    take("l1.weight", {kHidden, in});
    take("l1.bias", {kHidden});
    take("l2.weight", {kHidden, kHidden});
    take("l2.bias", {kHidden});
    take("l3.weight", {1, kHidden});
    take("l3.bias", {1});
    return from_tensors(t, n_keypoints);
  }
  static RescoreNet from_safetensors(const std::string& path, int n_keypoints = 17) {
    return from_safetensors(safetensors::File::load(path), n_keypoints);
  }

  bool loaded() const { return !w1_.empty(); }
  int in_features() const { return 3 * static_cast<int>(kCocoSkeletonLinks.size()) + n_keypoints_; }

  /// Features as mmpose's RescoreNet.make_feature: per link the (dx, dy) between its joints and
  /// its length, both divided by the torso length (mean of links 5 and 6, at least 1), then the
  /// keypoint scores. `keypoints` is (K, 2), input-image coordinates.
  std::vector<float> features(std::span<const float> keypoints, std::span<const float> scores) const {
    const std::size_t L = kCocoSkeletonLinks.size();
    std::vector<float> rel(2 * L), len(L);
    for (std::size_t l = 0; l < L; ++l) {
      const auto [a, b] = kCocoSkeletonLinks[l];
      rel[2 * l] = keypoints[2 * a] - keypoints[2 * b];
      rel[2 * l + 1] = keypoints[2 * a + 1] - keypoints[2 * b + 1];
      len[l] = std::sqrt(rel[2 * l] * rel[2 * l] + rel[2 * l + 1] * rel[2 * l + 1]);
    }
    const float norm = std::max((len[5] + len[6]) / 2.0f, 1.0f);
    std::vector<float> f;
    f.reserve(static_cast<std::size_t>(in_features()));
    for (float v : rel) f.push_back(v / norm);
    for (float v : len) f.push_back(v / norm);
    f.insert(f.end(), scores.begin(), scores.end());
    return f;
  }

  /// Predicted OKS of one pose; NaN becomes 0, as mmpose does before multiplying.
  float operator()(std::span<const float> keypoints, std::span<const float> scores) const {
    AMPKIT_CHECK(loaded(), "rescore net: no weights loaded");
    AMPKIT_CHECK(keypoints.size() == 2 * std::size_t(n_keypoints_) && scores.size() == std::size_t(n_keypoints_),
                 "rescore net: expected ", n_keypoints_, " keypoints, got ", keypoints.size() / 2);
    const auto x = features(keypoints, scores);
    const auto in = static_cast<std::size_t>(in_features());
    std::vector<float> h1(kHidden), h2(kHidden);
    for (int o = 0; o < kHidden; ++o) {
      float s = b1_[o];
      for (std::size_t i = 0; i < in; ++i) s += w1_[o * in + i] * x[i];
      h1[o] = std::max(s, 0.0f);
    }
    for (int o = 0; o < kHidden; ++o) {
      float s = b2_[o];
      for (int i = 0; i < kHidden; ++i) s += w2_[std::size_t(o) * kHidden + i] * h1[i];
      h2[o] = std::max(s, 0.0f);
    }
    float y = b3_[0];
    for (int i = 0; i < kHidden; ++i) y += w3_[i] * h2[i];
    return std::isnan(y) ? 0.0f : y;
  }

 private:
  int n_keypoints_ = 17;
  std::vector<float> w1_, b1_, w2_, b2_, w3_, b3_;
};

}  // namespace ampkit::eval

/// @brief The DEKR training and test samples from COCO: image decode, BottomupRandomAffine +
/// RandomFlip, SPR targets and the heatmap mask (BottomupGetHeatmapMask), written straight into
/// caller-provided NHWC views (a batch slot in pinned memory, for instance).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/data/augment.hpp"
#include "ampkit/data/coco.hpp"
#include "ampkit/data/image.hpp"
#include "ampkit/data/mask.hpp"
#include "ampkit/data/spr.hpp"

namespace ampkit::data {

struct BottomupTrainConfig {
  RandomAffineConfig affine;  // input size, shift/scale/rotation/flip
  SprConfig spr;              // heatmap size = input / 4 (set by the dataset)
};

/// Views of one training sample, all (1, ·, ·, C).
struct TrainSampleViews {
  TensorView<float> image;         // (1, input_h, input_w, 3), ImageNet-normalised RGB
  SprTargetViews targets;          // (1, h, w, 18 | 34)
  TensorView<float> heatmap_mask;  // (1, h, w, 1): 0 on crowd/unlabelled persons and padding
};

/// What a sample was made from (for logs, visualisation and evaluation).
struct SampleInfo {
  std::int64_t image_id = 0;
  int n_instances = 0;
  AffineParams params;
  Affine warp;
};

/// What a test sample was made from: the image and the BottomupResize geometry (mmpose's
/// input_size, input_center, input_scale) that decoding maps keypoints back with
/// (eval::input_transform_of(geometry)).
struct TestSampleInfo {
  std::int64_t image_id = 0;
  int image_w = 0, image_h = 0;
  ResizeGeometry geometry;
};

class BottomupCocoDataset {
 public:
  BottomupCocoDataset(CocoKeypoints coco, BottomupTrainConfig cfg)
      : coco_(std::move(coco)), cfg_(cfg) {
    AMPKIT_CHECK(cfg_.affine.input_w % 4 == 0 && cfg_.affine.input_h % 4 == 0,
                 "BottomupCocoDataset: input size ", cfg_.affine.input_w, "x",
                 cfg_.affine.input_h, " must be a multiple of the heatmap stride 4");
    cfg_.spr.heatmap_w = cfg_.affine.input_w / 4;
    cfg_.spr.heatmap_h = cfg_.affine.input_h / 4;
  }

  std::size_t size() const { return coco_.size(); }
  const CocoKeypoints& coco() const { return coco_; }
  const BottomupTrainConfig& config() const { return cfg_; }

  Shape image_shape() const { return {1, cfg_.affine.input_h, cfg_.affine.input_w, 3}; }
  Shape heatmap_shape() const {
    return {1, cfg_.spr.heatmap_h, cfg_.spr.heatmap_w, cfg_.spr.heatmap_channels()};
  }
  Shape displacement_shape() const {
    return {1, cfg_.spr.heatmap_h, cfg_.spr.heatmap_w, cfg_.spr.displacement_channels()};
  }
  Shape mask_shape() const { return {1, cfg_.spr.heatmap_h, cfg_.spr.heatmap_w, 1}; }

  /// A random training sample: parameters drawn from `rng`.
  SampleInfo train_sample(std::size_t index, SampleRng& rng, const TrainSampleViews& out) const {
    return train_sample_with(index, sample_affine_params(cfg_.affine, rng), out);
  }

  /// A training sample with given augmentation parameters. Errors name the sample and its file.
  SampleInfo train_sample_with(std::size_t index, const AffineParams& p,
                               const TrainSampleViews& out) const {
    AMPKIT_CHECK(index < coco_.size(), "BottomupCocoDataset: sample ", index,
                 " out of range (", coco_.size(), " images)");
    const CocoImage& meta = coco_[index];
    const std::string path = coco_.image_path(index);
    try {
      return make_train_sample(meta, path, p, out);
    } catch (const Error& e) {
      throw Error("sample " + std::to_string(index) + " (image id " + std::to_string(meta.id) +
                      ", '" + path + "'): " + e.what());
    }
  }

  /// The test-time geometry of sample `index` (from the annotated image size; no decode), which
  /// gives the input shape (1, geometry.input_h, geometry.input_w, 3) before test_sample.
  ResizeGeometry test_geometry(std::size_t index) const {
    AMPKIT_CHECK(index < coco_.size(), "BottomupCocoDataset: sample ", index,
                 " out of range (", coco_.size(), " images)");
    return bottomup_resize_geometry(coco_[index].width, coco_[index].height, cfg_.affine.input_w,
                                    cfg_.affine.input_h);
  }

  /// A test sample (mmpose's val pipeline: LoadImage, BottomupResize 'expand' to a multiple of
  /// 32, normalisation) into `image`, which must be (1, input_h, input_w, 3) of test_geometry.
  TestSampleInfo test_sample(std::size_t index, TensorView<float> image) const {
    const ResizeGeometry g = test_geometry(index);
    const CocoImage& meta = coco_[index];
    const std::string path = coco_.image_path(index);
    try {
      check_shape("test_sample", "image", image, {1, g.input_h, g.input_w, 3});
      thread_local Scratch scratch;
      load_image_into(path, scratch.file, scratch.image);
      AMPKIT_CHECK(scratch.image.w == meta.width && scratch.image.h == meta.height, "the image is ",
                   scratch.image.w, "x", scratch.image.h, " but the annotation says ", meta.width,
                   "x", meta.height);
      bottomup_resize_normalize(scratch.image, g, image.data);
    } catch (const Error& e) {
      throw Error("test sample " + std::to_string(index) + " (image id " + std::to_string(meta.id) +
                  ", '" + path + "'): " + e.what());
    }
    return {meta.id, meta.width, meta.height, g};
  }

  /// The same, allocating the input tensor.
  TestSampleInfo test_sample(std::size_t index, HostTensor<float>& image) const {
    const ResizeGeometry g = test_geometry(index);
    image = HostTensor<float>({1, g.input_h, g.input_w, 3});
    return test_sample(index, image.view());
  }

  /// The valid-region mask at image resolution: 1 except inside ignored persons' segments.
  static Mask valid_mask(const CocoImage& meta) {
    Mask m = segmentations_to_mask(meta.ignore_segs, meta.height, meta.width,
                                   "image " + std::to_string(meta.id) + " ignore segments");
    for (auto& b : m.bits) b = b ? 0 : 1;
    return m;
  }

 private:
  SampleInfo make_train_sample(const CocoImage& meta, const std::string& path,
                               const AffineParams& p, const TrainSampleViews& out) const {
    const int in_w = cfg_.affine.input_w, in_h = cfg_.affine.input_h;
    const int hm_w = cfg_.spr.heatmap_w, hm_h = cfg_.spr.heatmap_h;
    check_shape("train_sample", "image", out.image, image_shape());
    check_shape("train_sample", "heatmap_mask", out.heatmap_mask, mask_shape());

    // Per-thread buffers: a sample would otherwise allocate (and, whenever malloc hands out fresh
    // pages, page-fault in) ~3 MB. With these and stb's per-thread block cache (image.hpp) a
    // steady-state sample makes no allocation of 64 KiB or more.
    thread_local Scratch scratch;
    Image& img = scratch.image;
    load_image_into(path, scratch.file, img);
    AMPKIT_CHECK(img.w == meta.width && img.h == meta.height, "the image is ", img.w, "x", img.h,
                 " but the annotation says ", meta.width, "x", meta.height);

    SampleInfo info;
    info.image_id = meta.id;
    info.params = p;
    info.warp = bottomup_affine_matrix(img.w, img.h, p, in_w, in_h);

    // Image: warp, flip, normalise straight into the output (one fused pass).
    warp_flip_normalize(img, info.warp, in_w, in_h, p.flip, out.image.data);

    // Keypoints (N, K, 2) and visibility min(1, v), warped and flipped like the image.
    const int K = cfg_.spr.n_keypoints, N = static_cast<int>(meta.persons.size());
    AMPKIT_CHECK(K == kCocoKeypoints, "train_sample: SprConfig has ", K, " keypoints, COCO 17");
    std::vector<float>& kpts = scratch.kpts;
    std::vector<float>& vis = scratch.vis;
    kpts.resize(static_cast<std::size_t>(N) * K * 2);
    vis.resize(static_cast<std::size_t>(N) * K);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) {
        const auto& a = meta.persons[n].keypoints;
        kpts[(n * K + k) * 2] = a[3 * k];
        kpts[(n * K + k) * 2 + 1] = a[3 * k + 1];
        vis[n * K + k] = std::min(1.f, a[3 * k + 2]);
      }
    transform_keypoints(info.warp, p.flip, in_w, kpts, vis, kCocoFlipIndices);
    // To heatmap pixels: divided by the float32 input/heatmap ratio (exactly 4).
    const float sx = static_cast<float>(in_w) / static_cast<float>(hm_w);
    const float sy = static_cast<float>(in_h) / static_cast<float>(hm_h);
    for (std::size_t i = 0; i < kpts.size(); i += 2) kpts[i] /= sx, kpts[i + 1] /= sy;
    encode_spr(cfg_.spr, kpts, vis, N, out.targets, scratch.spr);
    info.n_instances = N;

    // Heatmap mask: valid region, warped like the image (outside the image is 0, i.e. ignored),
    // flipped, resized bilinearly to the heatmap and thresholded at 0.5. Only the warped pixels
    // the resize reads are computed (warp_flip_resize); without ignored persons the valid region
    // is the whole image and is not rasterised at all.
    const std::uint8_t* valid = nullptr;
    if (!meta.ignore_segs.empty()) {
      Mask& m = scratch.valid;
      m.h = meta.height, m.w = meta.width;
      m.bits.assign(static_cast<std::size_t>(m.h) * m.w, 0);
      for (const auto& seg : meta.ignore_segs)
        add_segmentation(seg, m, "image " + std::to_string(meta.id) + " ignore segments");
      for (auto& bit : m.bits) bit = bit ? 0 : 1;
      valid = m.bits.data();
    }
    float* hm_mask = out.heatmap_mask.data;
    warp_flip_resize(valid, meta.height, meta.width, info.warp, in_w, in_h, p.flip, hm_w, hm_h,
                     hm_mask, scratch.mask_resize);
    for (std::size_t i = 0; i < static_cast<std::size_t>(hm_w) * hm_h; ++i)
      hm_mask[i] = hm_mask[i] > 0.5f ? 1.f : 0.f;
    return info;
  }

  /// What one worker thread reuses from sample to sample (thread_local in the sample functions:
  /// the Loader's workers call them concurrently and each keeps its own).
  struct Scratch {
    std::vector<std::uint8_t> file;   // the encoded image
    Image image;                      // decoded RGB
    Mask valid;                       // valid region at image resolution
    std::vector<float> kpts, vis;     // (N, K, 2), (N, K)
    SprWorkspace spr;                 // targets: size map, roots, Gaussian kernels
    WarpResizeWorkspace mask_resize;  // heatmap mask: warped grid and resize taps
  };

  CocoKeypoints coco_;
  BottomupTrainConfig cfg_;
};

}  // namespace ampkit::data

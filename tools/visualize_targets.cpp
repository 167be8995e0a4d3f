// visualize_targets: draw augmented DEKR training samples with their targets, so a person can see
// that the heatmaps, displacements and ignore mask sit where they should.
//
// Build and run from the repository root (host only, g++ alone):
//   g++ -std=c++20 -O2 -Iinclude -I/usr/include/stb tools/visualize_targets.cpp -o build/visualize_targets
//   ./build/visualize_targets [--ann FILE] [--images DIR] [--out DIR] [--n N] [--seed S] [--epoch E]
// Defaults: the bundled data/coco_sample, 4 samples, seed 0, epoch 0, PNGs into vis_targets/.
//
// Each PNG (1024x512 at the default 512 input) has two panels over the augmented image (after
// BottomupRandomAffine + flip, de-normalised):
//   left   keypoint heatmaps (max over the 17 channels) in red, the root heatmap in green, the
//          ignored area of the heatmap mask (mask 0: crowd / unlabelled persons, outside the
//          image) darkened with a blue tint;
//   right  displacement targets: from each root peak a line to every keypoint it points at (root
//          pixel + displacement, x4 to input pixels), keypoints colour-coded (left side blue,
//          right side orange, face yellow), and the 8x8 patch of pixels carrying displacement
//          weights outlined as dots.
// The line tips must land on the red keypoint blobs of the left panel, the left-side keypoints
// of a flipped sample must still be on the person's left, and the dark area must cover exactly
// the crowd/unlabelled persons and the padding.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "ampkit/data/bottomup_dataset.hpp"

#include "ampkit/data/png_write.hpp"  // stb_image_write

using namespace ampkit;
using namespace ampkit::data;

namespace {

struct Canvas {
  int w, h;
  std::vector<unsigned char> rgb;
  Canvas(int w_, int h_) : w(w_), h(h_), rgb(static_cast<std::size_t>(w_) * h_ * 3, 0) {}
  unsigned char* at(int x, int y) { return &rgb[(static_cast<std::size_t>(y) * w + x) * 3]; }
  void put(int x, int y, const unsigned char* c) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    std::copy(c, c + 3, at(x, y));
  }
  /// Bresenham line, clipped per pixel.
  void line(int x0, int y0, int x1, int y1, const unsigned char* c) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (int guard = 0; guard < 4096; ++guard) {
      put(x0, y0, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  void dot(int x, int y, int r, const unsigned char* c) {
    for (int j = -r; j <= r; ++j)
      for (int i = -r; i <= r; ++i) put(x + i, y + j, c);
  }
};

/// COCO keypoint colours: face (0-4) yellow, left side (odd) blue, right side (even) orange.
const unsigned char* keypoint_colour(int k) {
  static const unsigned char face[3] = {255, 230, 0}, left[3] = {40, 140, 255},
                             right[3] = {255, 120, 0};
  if (k < 5) return face;
  return k % 2 ? left : right;
}

}  // namespace

int main(int argc, char** argv) {
  std::string ann = "data/coco_sample/annotations/person_keypoints_sample.json";
  std::string images = "data/coco_sample/images";
  std::string out_dir = "vis_targets";
  int n = 4;
  std::uint64_t seed = 0, epoch = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--ann") ann = v;
    else if (a == "--images") images = v;
    else if (a == "--out") out_dir = v;
    else if (a == "--n") n = std::atoi(v.c_str());
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--epoch") epoch = std::strtoull(v.c_str(), nullptr, 10);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    BottomupCocoDataset ds(CocoKeypoints::load(ann, images), {});
    std::filesystem::create_directories(out_dir);
    HostTensor<float> img(ds.image_shape()), hm(ds.heatmap_shape()), hw(ds.heatmap_shape()),
        dp(ds.displacement_shape()), dw(ds.displacement_shape()), mask(ds.mask_shape());
    const int H = static_cast<int>(img.shape().h), W = static_cast<int>(img.shape().w);
    const int hh = static_cast<int>(hm.shape().h), hwid = static_cast<int>(hm.shape().w);
    const int K = 17;
    const float stride = static_cast<float>(W) / static_cast<float>(hwid);
    for (int s = 0; s < n; ++s) {
      const std::size_t index = static_cast<std::size_t>(s) % ds.size();
      // The loader's per-sample generator; past the dataset size, the next epoch's draws.
      SampleRng rng(seed, epoch + static_cast<std::uint64_t>(s) / ds.size(), index);
      const SampleInfo info =
          ds.train_sample(index, rng, {img.view(), {hm.view(), hw.view(), dp.view(), dw.view()}, mask.view()});
      Canvas cv(2 * W, H);
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          const int hy = std::min(static_cast<int>(static_cast<float>(y) / stride), hh - 1);
          const int hx = std::min(static_cast<int>(static_cast<float>(x) / stride), hwid - 1);
          float kp = 0;
          for (int k = 0; k < K; ++k) kp = std::max(kp, hm(0, hy, hx, k));
          const float root = hm(0, hy, hx, K);
          const bool ignored = mask(0, hy, hx, 0) < 0.5f;
          float rgb[3];
          for (int c = 0; c < 3; ++c)
            rgb[c] = img(0, y, x, c) * kImageNetStd[c] + kImageNetMean[c];
          // Left panel: image, heatmaps blended in, ignored area darkened and tinted blue.
          float l[3] = {rgb[0], rgb[1], rgb[2]};
          if (ignored) l[0] *= 0.35f, l[1] *= 0.35f, l[2] = l[2] * 0.35f + 70.f;
          l[0] = l[0] * (1 - kp) + 255.f * kp;
          l[1] = l[1] * (1 - root) + 255.f * root;
          l[2] = l[2] * (1 - std::max(kp, root));
          // Right panel: the image dimmed, for the displacement lines.
          unsigned char* pl = cv.at(x, y);
          unsigned char* pr = cv.at(W + x, y);
          for (int c = 0; c < 3; ++c) {
            pl[c] = static_cast<unsigned char>(std::clamp(l[c], 0.f, 255.f));
            pr[c] = static_cast<unsigned char>(std::clamp(rgb[c] * 0.45f, 0.f, 255.f));
          }
        }
      // Displacements: patch pixels as dots; from each root peak (root heatmap == 1) a line to
      // every keypoint its displacement field points at.
      const unsigned char white[3] = {255, 255, 255};
      int n_roots = 0;
      for (int y = 0; y < hh; ++y)
        for (int x = 0; x < hwid; ++x) {
          bool any = false;
          for (int c = 0; c < 2 * K; ++c) any = any || dw(0, y, x, c) > 0;
          const int px = W + static_cast<int>((static_cast<float>(x) + 0.5f) * stride);
          const int py = static_cast<int>((static_cast<float>(y) + 0.5f) * stride);
          if (any) cv.dot(px, py, 0, white);
          if (hm(0, y, x, K) != 1.f || !any) continue;
          ++n_roots;
          for (int k = 0; k < K; ++k) {
            if (dw(0, y, x, 2 * k) <= 0) continue;
            const float tx = (static_cast<float>(x) + dp(0, y, x, 2 * k)) * stride;
            const float ty = (static_cast<float>(y) + dp(0, y, x, 2 * k + 1)) * stride;
            cv.line(W + static_cast<int>(static_cast<float>(x) * stride),
                    static_cast<int>(static_cast<float>(y) * stride), W + static_cast<int>(tx),
                    static_cast<int>(ty), keypoint_colour(k));
            cv.dot(W + static_cast<int>(tx), static_cast<int>(ty), 2, keypoint_colour(k));
          }
          cv.dot(W + static_cast<int>(static_cast<float>(x) * stride),
                 static_cast<int>(static_cast<float>(y) * stride), 3, white);
        }
      const std::string path = out_dir + "/sample_" + std::to_string(s) + "_image_" +
                               std::to_string(info.image_id) + ".png";
      if (!stbi_write_png(path.c_str(), cv.w, cv.h, 3, cv.rgb.data(), cv.w * 3)) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        return 1;
      }
      std::printf("%s: image %lld, %d persons, %d roots with displacements, scale %.3f, rotation "
                  "%.1f deg, shift (%.3f, %.3f), flip %d\n",
                  path.c_str(), static_cast<long long>(info.image_id), info.n_instances, n_roots,
                  info.params.scale, info.params.rotate_deg, info.params.offset_x,
                  info.params.offset_y, info.params.flip ? 1 : 0);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "visualize_targets: %s\n", e.what());
    return 1;
  }
  return 0;
}

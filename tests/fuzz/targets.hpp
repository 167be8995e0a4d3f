/// @brief Fuzz entry points for every parser that reads outside data, shared by the libFuzzer
/// binaries (tests/fuzz/fuzz_*.cpp, built by tools/fuzz.sh with clang, ASan and UBSan) and the
/// plain g++ regression replay in tests/unit/hardening, which runs the committed seeds and every
/// input that once crashed through the same code.
///
/// Contract of every target: a hostile input may end in ampkit::Error (the clear message the user
/// sees) and nothing else. Any other exception escapes on purpose, so libFuzzer reports it as a
/// crash ("uncaught exception"), as it does memory errors, UB, leaks and timeouts.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ampkit/backend/host/context.hpp"
#include "ampkit/core/error.hpp"
#include "ampkit/core/safetensors.hpp"
#include "ampkit/data/coco.hpp"
#include "ampkit/data/image.hpp"
#include "ampkit/data/mask.hpp"
#include "ampkit/eval/coco_keypoints.hpp"
#include "ampkit/nn/checkpoint.hpp"
#include "ampkit/nn/parameter_store.hpp"
#include "ampkit/train/config.hpp"

namespace ampkit::fuzz {

/// Run `f`, accepting ampkit::Error as the only way to reject an input.
template <class F>
int expect_ok_or_error(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
  return 0;
}

/// A scratch file per process for parsers that only read from a path (the COCO SAX reader).
inline const std::string& scratch_path(std::string_view tag) {
  static const std::string p = [&] {
    auto dir = std::filesystem::temp_directory_path() / ("ampkit_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    return (dir / (std::string(tag) + ".json")).string();
  }();
  return p;
}

inline void write_file(const std::string& path, const std::uint8_t* data, std::size_t n) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) AMPKIT_FAIL("fuzz: cannot write scratch file '", path, "'");
  if (n) std::fwrite(data, 1, n, f);
  std::fclose(f);
}

/// Masks larger than this are skipped by the fuzz targets: the allocation is what the user asked
/// for (a huge image), not a parser defect, and it would only trip the fuzzer's memory limit.
inline constexpr std::int64_t kMaxFuzzMaskPixels = std::int64_t{1} << 22;

/// COCO person-keypoint annotations through the training loader (SAX, chunked), then the ignore
/// masks every kept image would get (polygons and RLE, at the size the JSON declares).
inline int coco_annotations(const std::uint8_t* data, std::size_t n) {
  const std::string& path = scratch_path("coco_annotations");
  write_file(path, data, n);
  return expect_ok_or_error([&] {
    data::CocoLoadOptions opt;
    opt.chunk_bytes = 61;  // odd and small: every token straddles chunk boundaries somewhere
    const auto ds = data::CocoKeypoints::load(path, "/nonexistent", opt);
    for (const auto& img : ds.images()) {
      if (std::int64_t{img.width} * img.height > kMaxFuzzMaskPixels) continue;
      (void)data::segmentations_to_mask(img.ignore_segs, img.height, img.width, "fuzz");
    }
  });
}

/// COCO ground truth (DOM reader of the evaluator) or, for a top-level array, detection results
/// against a fixed ground truth.
inline int coco_results(const std::uint8_t* data, std::size_t n) {
  return expect_ok_or_error([&] {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(data, data + n);
    } catch (const nlohmann::json::exception& e) {
      AMPKIT_FAIL("not JSON: ", e.what());  // what read_json_file does
    }
    if (j.is_array()) {
      static const eval::CocoKeypointDataset gt = [] {
        eval::CocoKeypointDataset g;
        g.image_ids = {1, 2, 785};
        g.category_ids = {1};
        return g;
      }();
      (void)eval::load_results(j, gt);
    } else {
      (void)eval::CocoKeypointDataset::from_json(j, "fuzz");
    }
  });
}

/// Image decoding through the one entry point the loader uses (JPEG, PNG, BMP via stb_image).
inline int image(const std::uint8_t* data, std::size_t n) {
  return expect_ok_or_error([&] {
    const auto img = data::decode_image(data, n, "fuzz");
    AMPKIT_CHECK(img.pixels.size() == static_cast<std::size_t>(img.h) * img.w * 3, "fuzz: size");
  });
}

/// COCO masks directly: byte 0..3 pick the mask size and the segmentation kind, the rest is a
/// compressed RLE string, a list of counts, or polygon coordinates.
inline int mask(const std::uint8_t* data, std::size_t n) {
  if (n < 4) return 0;
  const int h = data[0] % 64, w = data[1] % 64, kind = data[2] % 3, scale = data[3];
  data += 4;
  n -= 4;
  return expect_ok_or_error([&] {
    data::Segmentation seg;
    seg.rle_h = h;
    seg.rle_w = w;
    if (kind == 0) {
      seg.kind = data::Segmentation::Kind::kRleString;
      seg.rle_string.assign(reinterpret_cast<const char*>(data), n);
    } else if (kind == 1) {
      seg.kind = data::Segmentation::Kind::kRleCounts;
      for (std::size_t i = 0; i + 2 <= n; i += 2) seg.counts.push_back(data[i] | (data[i + 1] << 8));
    } else {
      // Polygons: int16 coordinates times a scale (scale 255 takes them far off the image), a
      // 0x7fff pair starts a new polygon.
      seg.kind = data::Segmentation::Kind::kPolygons;
      seg.polygons.emplace_back();
      for (std::size_t i = 0; i + 2 <= n; i += 2) {
        const std::int16_t v = static_cast<std::int16_t>(data[i] | (data[i + 1] << 8));
        if (v == 0x7fff) {
          seg.polygons.emplace_back();
          continue;
        }
        seg.polygons.back().push_back(scale == 255 ? v * 1e4 : v / 16.0 * (1 + scale % 4));
      }
    }
    (void)data::segmentations_to_mask({seg}, h, w, "fuzz");
  });
}

/// A small model (one conv weight, one BN pair, running stats) in the checkpoint layout.
struct TinyModel {
  Host ctx{1};
  nn::ParameterStore<AmpFp16, Host> store;
  TinyModel() {
    store.add("conv.weight", {4, 3, 3, 2}, {4, 3, 3, 2}, nn::ParamKind::kCompute, nn::ParamInit::uniform(1.f));
    store.add("bn.weight", {4}, {1, 1, 1, 4}, nn::ParamKind::kFp32, nn::ParamInit::constant(1.f));
    store.add("bn.bias", {4}, {1, 1, 1, 4}, nn::ParamKind::kFp32, nn::ParamInit::constant(0.f));
    store.add_buffer("bn.running_mean", {4}, {1, 1, 1, 4}, 0.f);
    store.add_buffer("bn.running_var", {4}, {1, 1, 1, 4}, 1.f);
    store.allocate(ctx, 3);
  }
};

/// safetensors: header, tensor table, then every read path (raw, typed, converted, NHWC) and a
/// load into a model (names, shapes, dtypes checked by nn::read_state).
inline int safetensors_file(const std::uint8_t* data, std::size_t n) {
  static TinyModel model;
  return expect_ok_or_error([&] {
    const auto f = safetensors::File::from_bytes(std::vector<std::uint8_t>(data, data + n), "fuzz");
    std::size_t touched = 0;
    for (const auto& name : f.names()) {
      const auto& info = f.info(name);
      const auto raw = f.raw(name);
      for (auto b : raw) touched += b;  // every byte of every tensor must be readable
      try {
        if (safetensors::detail::is_float(info.dtype)) {
          (void)f.read_as<float>(name);
          (void)f.read_as<half>(name);
          if (info.shape.size() <= 4) (void)f.tensor<float>(name);
        }
        if (info.dtype == safetensors::Dtype::kI64) (void)f.read<std::int64_t>(name);
        (void)f.read<float>(name);  // wrong dtype must be an Error, not a reinterpretation
      } catch (const Error&) {
      }
    }
    (void)touched;
    (void)nn::read_state(model.store, model.ctx, f, /*strict=*/false);
  });
}

/// TOML config text; lines after a "#--cfg-options" line are `key=value` overrides.
inline int config(const std::uint8_t* data, std::size_t n) {
  const std::string text(reinterpret_cast<const char*>(data), n);
  return expect_ok_or_error([&] {
    std::string toml = text;
    std::vector<std::string> overrides;
    if (const auto cut = text.find("#--cfg-options\n"); cut != std::string::npos) {
      toml = text.substr(0, cut);
      std::size_t p = cut + 15;
      while (p < text.size()) {
        const auto e = text.find('\n', p);
        overrides.push_back(text.substr(p, e == std::string::npos ? std::string::npos : e - p));
        p = e == std::string::npos ? text.size() : e + 1;
      }
    }
    // Origin in a folder that does not exist: a `_base_` can only name absolute paths.
    auto lc = train::parse_config(toml, "/nonexistent/ampkit-fuzz/config.toml");
    train::apply_overrides(lc, overrides);
    train::validate(lc.config, "fuzz");
    (void)train::to_toml(lc.config);
  });
}

}  // namespace ampkit::fuzz

// COCO annotations (SAX reader, bottom-up grouping, bad input), masks against pycocotools'
// decodes, and image decoding.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ampkit/data/coco.hpp"
#include "ampkit/data/image.hpp"
#include "ampkit/data/mask.hpp"
#include "support/testing.hpp"

#include "ampkit/data/png_write.hpp"  // stb_image_write

using namespace ampkit;
using namespace ampkit::data;
using nlohmann::json;

namespace {

const std::string kAnn = testing::source_path("data/coco_sample/annotations/person_keypoints_sample.json");
const std::string kImages = testing::source_path("data/coco_sample/images");

std::string temp_file(const std::string& name, const std::string& text) {
  const auto p = std::filesystem::temp_directory_path() / ("ampkit_data_" + name);
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

Segmentation segmentation_from_json(const json& j) {
  Segmentation s;
  if (j.is_array()) {
    s.kind = Segmentation::Kind::kPolygons;
    for (const auto& p : j) s.polygons.push_back(p.get<std::vector<double>>());
  } else if (j["counts"].is_string()) {
    s.kind = Segmentation::Kind::kRleString;
    s.rle_string = j["counts"].get<std::string>();
  } else {
    s.kind = Segmentation::Kind::kRleCounts;
    s.counts = j["counts"].get<std::vector<std::uint32_t>>();
  }
  if (j.is_object()) s.rle_h = j["size"][0], s.rle_w = j["size"][1];
  return s;
}

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("coco: the bundled sample loads bottom-up, as mmpose groups it") {
  const auto ds = CocoKeypoints::load(kAnn, kImages);
  const auto& r = ds.report();
  CHECK(r.n_images == 4);
  CHECK(r.n_annotations == 14);
  CHECK(r.n_valid_persons == 12);
  CHECK(r.n_no_keypoints == 2);  // ann 1202706 and 508900 (README)
  CHECK(r.n_crowd == 0);
  REQUIRE(ds.size() == 4);
  const int persons[] = {1, 2, 4, 5}, ignored[] = {0, 1, 1, 0};
  const std::int64_t ids[] = {785, 40083, 196141, 197388};
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(ds[i].id == ids[i]);
    CHECK(static_cast<int>(ds[i].persons.size()) == persons[i]);
    CHECK(static_cast<int>(ds[i].ignore_segs.size()) == ignored[i]);
  }
  CHECK(ds[0].width == 640);
  CHECK(ds[0].height == 425);
  CHECK(ds.image_path(0) == (std::filesystem::path(kImages) / "000000000785.jpg").string());

  // Every kept value equals the DOM's.
  json dom = json::parse(std::ifstream(kAnn));
  std::size_t n_checked = 0;
  for (const auto& a : dom["annotations"]) {
    if (a["num_keypoints"].get<int>() == 0) continue;
    for (const auto& im : ds.images())
      for (const auto& p : im.persons)
        if (p.id == a["id"].get<std::int64_t>()) {
          for (int k = 0; k < 51; ++k) CHECK(p.keypoints[k] == a["keypoints"][k].get<float>());
          for (int k = 0; k < 4; ++k) CHECK(p.bbox[k] == a["bbox"][k].get<float>());
          CHECK(p.num_keypoints == a["num_keypoints"].get<int>());
          ++n_checked;
        }
  }
  CHECK(n_checked == 12);
}

TEST_CASE("coco: crowd RLEs and zero-keypoint persons become ignore segments; order-independent") {
  // Annotations before images (the reader must hold them until the images are known), a crowd
  // RLE, an image with only a crowd (dropped: bottom-up keeps images with >= 1 valid person), an
  // empty clipped box, a non-person category and an all-zero-keypoint person.
  std::vector<int> kp(51, 0);
  kp[0] = 10, kp[1] = 12, kp[2] = 2, kp[15] = 20, kp[16] = 30, kp[17] = 1;
  json anns = json::array();
  anns.push_back({{"id", 1}, {"image_id", 7}, {"category_id", 1}, {"iscrowd", 0}, {"num_keypoints", 2},
                  {"keypoints", kp}, {"bbox", {5, 5, 30, 40}}, {"segmentation", {{5, 5, 30, 5, 30, 40}}}});
  anns.push_back({{"id", 2}, {"image_id", 7}, {"category_id", 1}, {"iscrowd", 1}, {"num_keypoints", 0},
                  {"keypoints", std::vector<int>(51, 0)}, {"bbox", {0, 0, 4, 4}},
                  {"segmentation", {{"counts", {0, 3, 7, 3, 2487}}, {"size", {50, 50}}}}});
  anns.push_back({{"id", 3}, {"image_id", 8}, {"category_id", 1}, {"iscrowd", 1}, {"num_keypoints", 0},
                  {"keypoints", std::vector<int>(51, 0)}, {"bbox", {0, 0, 4, 4}},
                  {"segmentation", {{"counts", "04"}, {"size", {2, 2}}}}});
  anns.push_back({{"id", 4}, {"image_id", 7}, {"category_id", 1}, {"iscrowd", 0}, {"num_keypoints", 2},
                  {"keypoints", kp}, {"bbox", {60, 5, 10, 10}},  // clipped to an empty box
                  {"segmentation", {{1, 1, 3, 1, 3, 3}}}});
  anns.push_back({{"id", 5}, {"image_id", 7}, {"category_id", 2}, {"iscrowd", 0}, {"num_keypoints", 2},
                  {"keypoints", kp}, {"bbox", {5, 5, 10, 10}}, {"segmentation", json::array()}});
  anns.push_back({{"id", 6}, {"image_id", 7}, {"category_id", 1}, {"iscrowd", 0}, {"num_keypoints", 0},
                  {"keypoints", std::vector<int>(51, 0)}, {"bbox", {1, 1, 9, 9}},
                  {"segmentation", {{1, 1, 9, 1, 9, 9, 1, 9}}}});
  json j = {{"annotations", anns},
            {"info", {{"nested", {{"images", json::array()}}}}},
            {"images", {{{"id", 7}, {"file_name", "a.jpg"}, {"width", 50}, {"height", 50}},
                        {{"id", 8}, {"file_name", "b.jpg"}, {"width", 2}, {"height", 2}}}}};
  const auto path = temp_file("order.json", j.dump());
  const auto ds = CocoKeypoints::load(path, "root");
  REQUIRE(ds.size() == 1);
  CHECK(ds[0].id == 7);
  REQUIRE(ds[0].persons.size() == 1);
  CHECK(ds[0].persons[0].id == 1);
  REQUIRE(ds[0].ignore_segs.size() == 3);  // crowd 2, empty box 4, no keypoints 6
  CHECK(ds[0].ignore_segs[0].kind == Segmentation::Kind::kRleCounts);
  CHECK(ds.report().n_crowd == 2);
  CHECK(ds.report().n_degenerate_box == 1);
  CHECK(ds.report().n_no_keypoints == 1);
  CHECK(ds.report().n_other_category == 1);
  const Mask m = segmentations_to_mask(ds[0].ignore_segs, 50, 50);
  // Crowd runs (column-major): column 0, rows 0..2 and 10..12.
  CHECK(m.at(0, 0) == 1);
  CHECK(m.at(2, 0) == 1);
  CHECK(m.at(5, 0) == 0);
  CHECK(m.at(11, 0) == 1);
  CHECK(m.at(13, 0) == 0);
  CHECK(m.at(5, 5) == 1);    // inside the zero-keypoint person's square
  CHECK(m.at(30, 30) == 0);  // the valid person's outline is not an ignore region
}

TEST_CASE("coco: bad input gives one clear message naming the file and what is wrong") {
  SUBCASE("missing file") {
    const auto msg = error_of([] { CocoKeypoints::load("/nonexistent/ann.json", "."); });
    CHECK(msg.find("/nonexistent/ann.json") != std::string::npos);
    CHECK(msg.find("cannot open") != std::string::npos);
  }
  SUBCASE("malformed JSON") {
    std::ifstream in(kAnn);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto path = temp_file("cut.json", text.substr(0, text.size() / 2));
    const auto msg = error_of([&] { CocoKeypoints::load(path, "."); });
    MESSAGE(msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("malformed JSON at byte") != std::string::npos);
  }
  SUBCASE("wrong type") {
    const auto path = temp_file("type.json", R"({"images":[{"id":1,"file_name":"a.jpg","width":"wide","height":5}]})");
    const auto msg = error_of([&] { CocoKeypoints::load(path, "."); });
    CHECK(msg.find("'width' must be a number") != std::string::npos);
    CHECK(msg.find("image #0 (id 1)") != std::string::npos);
  }
  SUBCASE("annotation for an unknown image: skipped and counted, or an error when strict") {
    json j = json::parse(std::ifstream(kAnn));
    j["annotations"][0]["image_id"] = 424242;
    const auto path = temp_file("unknown.json", j.dump());
    const auto ds = CocoKeypoints::load(path, ".");
    CHECK(ds.report().n_unknown_image == 1);
    REQUIRE(ds.report().problems.size() == 1);
    CHECK(ds.report().problems[0].find("424242") != std::string::npos);
    CHECK(ds.size() == 3);  // image 785 lost its only person
    CocoLoadOptions strict;
    strict.strict = true;
    const auto msg = error_of([&] { CocoKeypoints::load(path, ".", strict); });
    CHECK(msg.find("refers to image id 424242") != std::string::npos);
  }
  SUBCASE("empty dataset") {
    const auto path = temp_file("empty.json", R"({"images":[{"id":1,"file_name":"a.jpg","width":5,"height":5}],"annotations":[]})");
    const auto msg = error_of([&] { CocoKeypoints::load(path, "."); });
    CHECK(msg.find("the dataset is empty") != std::string::npos);
  }
  SUBCASE("RLE size differs from the image") {
    Segmentation s;
    s.kind = Segmentation::Kind::kRleCounts;
    s.counts = {4};
    s.rle_h = s.rle_w = 2;
    const auto msg = error_of([&] { segmentations_to_mask({s}, 3, 3, "ann 9"); });
    CHECK(msg.find("ann 9: RLE size [2,2] differs from the image size [3,3]") != std::string::npos);
  }
}

TEST_CASE("masks: polygons and RLEs equal pycocotools' decodes pixel for pixel") {
  // golden: tests/python/spr_peer.py (pycocotools frPyObjects + merge + decode on the sample's
  // 14 outlines, 40 random polygons partly outside the image, 12 crowd RLEs in both encodings).
  const json cases = json::parse(std::ifstream(testing::source_path("tests/unit/data/golden/masks.json")));
  REQUIRE(cases.size() == 66);
  int n_bad = 0;
  for (const auto& c : cases) {
    const int h = c["h"], w = c["w"];
    std::vector<Segmentation> segs;
    const json& sj = c["segmentation"];
    if (sj.is_array()) segs.push_back(segmentation_from_json(sj));
    else segs.push_back(segmentation_from_json(sj));
    const Mask m = segmentations_to_mask(segs, h, w, c["what"].get<std::string>());
    const auto got = mask_to_counts(m);
    const auto want = c["counts"].get<std::vector<std::uint32_t>>();
    if (got != want) {
      ++n_bad;
      MESSAGE(c["what"].get<std::string>(), ": run lengths differ from pycocotools");
    }
  }
  CHECK(n_bad == 0);
}

TEST_CASE("masks: compressed RLE strings") {
  // "04": first count 0, second 4; deltas apply from the third count on (c[i] += c[i-2]).
  CHECK(decode_rle_string("04", "t") == std::vector<std::uint32_t>{0, 4});
  // 'b' - 48 = 50 = 0x32: 5-bit group 0x12 with the "more" bit; '1' adds 1 << 5 -> 50.
  CHECK(decode_rle_string("b1", "t") == std::vector<std::uint32_t>{50});
  CHECK(error_of([] { decode_rle_string("0\x01", "ann 3"); }).find("ann 3") != std::string::npos);
}

TEST_CASE("image: decode to RGB, grayscale replicated, clear errors for missing/corrupt files") {
  const Image img = load_image(kImages + "/000000000785.jpg");
  CHECK(img.w == 640);
  CHECK(img.h == 425);
  CHECK(img.c == 3);

  // A grayscale PNG written here: decoded values are exact, replicated to R, G and B.
  const int w = 7, h = 5;
  std::vector<std::uint8_t> gray(w * h);
  for (int i = 0; i < w * h; ++i) gray[i] = static_cast<std::uint8_t>(i * 37 + 11);
  const auto png = (std::filesystem::temp_directory_path() / "ampkit_data_gray.png").string();
  REQUIRE(stbi_write_png(png.c_str(), w, h, 1, gray.data(), w) != 0);
  const Image g = load_image(png);
  REQUIRE(g.c == 3);
  for (int i = 0; i < w * h; ++i)
    for (int k = 0; k < 3; ++k) CHECK(g.pixels[3 * i + k] == gray[i]);

  CHECK(error_of([] { load_image("/nonexistent/x.jpg"); }).find("'/nonexistent/x.jpg': cannot open") !=
        std::string::npos);
  std::ifstream in(kImages + "/000000000785.jpg", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto cut = temp_file("cut.jpg", bytes.substr(0, bytes.size() / 3));
  CHECK(error_of([&] { load_image(cut); }).find("truncated JPEG") != std::string::npos);
  const auto junk = temp_file("junk.jpg", std::string(300, 'x'));
  const auto msg = error_of([&] { load_image(junk); });
  CHECK(msg.find(junk) != std::string::npos);
  CHECK(msg.find("cannot decode") != std::string::npos);
}

namespace {
/// stb_image's own 3-channel decode (the reference decode_image_into must reproduce).
std::vector<std::uint8_t> stb_rgb(const std::vector<std::uint8_t>& bytes) {
  int w = 0, h = 0, c = 0;
  stbi_uc* p = stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &c, 3);
  REQUIRE(p != nullptr);
  std::vector<std::uint8_t> v(p, p + static_cast<std::size_t>(w) * h * 3);
  stbi_image_free(p);
  return v;
}
}  // namespace

TEST_CASE("image: JPEGs decoded through RGBA (SIMD colour conversion) equal stb's RGB decode") {
#ifdef STBI_SSE2
  // The kernels themselves, exhaustively: every (Y, Cb, Cr) through stb's SSE2 conversion
  // (4-byte pixels, 8 at a time, scalar tail) and its scalar 3-byte one give the same R, G, B.
  std::array<stbi_uc, 256> ys{}, cb{}, cr{};
  std::array<stbi_uc, 4 * 256> simd{};
  std::array<stbi_uc, 3 * 256 + 1> scalar{};  // stb also writes an alpha byte after the last pixel
  for (int i = 0; i < 256; ++i) ys[i] = static_cast<stbi_uc>(i);
  std::size_t mismatches = 0;
  for (int b = 0; b < 256; ++b)
    for (int r = 0; r < 256; ++r) {
      std::fill(cb.begin(), cb.end(), static_cast<stbi_uc>(b));
      std::fill(cr.begin(), cr.end(), static_cast<stbi_uc>(r));
      stbi__YCbCr_to_RGB_simd(simd.data(), ys.data(), cb.data(), cr.data(), 256, 4);
      stbi__YCbCr_to_RGB_row(scalar.data(), ys.data(), cb.data(), cr.data(), 256, 3);
      for (int i = 0; i < 256; ++i)
        for (int k = 0; k < 3; ++k) mismatches += simd[4 * i + k] != scalar[3 * i + k];
    }
  CHECK(mismatches == 0);
#endif
  // Whole files: the bundled COCO images, the fuzz corpus' JPEGs (grey, progressive, 4:2:0, RGB)
  // and JPEGs written here from seeded random pixels (saturated colours, widths that are not a
  // multiple of 8 so the scalar tail runs, 4:2:0 at quality 50 and 4:4:4 at quality 95, grey).
  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> files;
  for (const char* f : {"data/coco_sample/images/000000000785.jpg", "data/coco_sample/images/000000040083.jpg",
                        "data/coco_sample/images/000000196141.jpg", "data/coco_sample/images/000000197388.jpg",
                        "tests/fuzz/corpus/image/subsampled.jpg", "tests/fuzz/corpus/image/rgb.jpg",
                        "tests/fuzz/corpus/image/grey.jpg", "tests/fuzz/corpus/image/progressive.jpg"}) {
    std::vector<std::uint8_t> bytes;
    read_file_into(testing::source_path(f), bytes);
    files.emplace_back(f, std::move(bytes));
  }
  int seed = 0;
  for (const auto& [w, h, comp, quality] : {std::tuple{37, 23, 3, 50}, std::tuple{64, 48, 3, 95},
                                              std::tuple{13, 9, 3, 90}, std::tuple{31, 17, 1, 75},
                                              std::tuple{250, 7, 3, 100}}) {
    std::vector<float> u(static_cast<std::size_t>(w) * h * comp);
    testing::fill_uniform<float>(u, 900 + seed++, 0.f, 1.f);
    std::vector<std::uint8_t> px(u.size());
    // Half the pixels pushed to the extremes, so the conversion saturates at 0 and 255.
    for (std::size_t i = 0; i < u.size(); ++i)
      px[i] = static_cast<std::uint8_t>(u[i] < 0.25f ? 0 : u[i] > 0.75f ? 255 : (u[i] - 0.25f) * 510.f);
    std::vector<std::uint8_t> jpg;
    REQUIRE(stbi_write_jpg_to_func(
                [](void* ctx, void* d, int n) {
                  auto* v = static_cast<std::vector<std::uint8_t>*>(ctx);
                  v->insert(v->end(), static_cast<std::uint8_t*>(d), static_cast<std::uint8_t*>(d) + n);
                },
                &jpg, w, h, comp, px.data(), quality) != 0);
    files.emplace_back("random " + std::to_string(w) + "x" + std::to_string(h), std::move(jpg));
  }
  for (const auto& [name, bytes] : files) {
    CAPTURE(name);
    Image img;
    decode_image_into(bytes.data(), bytes.size(), name, img);
    const std::vector<std::uint8_t> want = stb_rgb(bytes);
    REQUIRE(img.pixels.size() == want.size());
    CHECK(testing::compare("decode_image_into", std::span<const std::uint8_t>(img.pixels),
                           std::span<const std::uint8_t>(want), 0, 0)
              .ok);
  }
}

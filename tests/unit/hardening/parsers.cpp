// Hardened parsers: every committed fuzz seed and every input that once crashed a fuzz target
// (tests/fuzz/regressions/<target>/) replayed through the same entry points with g++ (no
// sanitizers: the sanitizer replay is tools/fuzz.sh), plus one case per defect fixed, checking the
// message the user now sees, and the hostile-checkpoint matrix (every way a safetensors table can
// lie ends in a clear ampkit::Error naming the problem).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "fuzz/targets.hpp"
#include "ampkit/train/toml_guard.hpp"
#include "support/testing.hpp"

namespace ak = ampkit;
namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}


/// Replay every file of tests/fuzz/{corpus,regressions}/<target>; returns how many ran.
template <class F>
int replay(const std::string& target, F&& fn) {
  int n = 0;
  for (const char* kind : {"corpus", "regressions"}) {
    const fs::path dir = ak::testing::source_path(std::string("tests/fuzz/") + kind + "/" + target);
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      const auto b = read_bytes(e.path());
      INFO("input ", e.path().string());
      CHECK_NOTHROW(fn(b.data(), b.size()));  // anything but ampkit::Error escapes the target
      ++n;
    }
  }
  return n;
}

/// The message of the ampkit::Error `f` throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ak::Error& e) {
    return e.what();
  }
  return "";
}

/// A safetensors image with a hand-written header (no padding, no validation).
std::vector<std::uint8_t> st_image(const std::string& header, std::size_t data_bytes) {
  std::vector<std::uint8_t> out(8 + header.size() + data_bytes, 0x3c);
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

}  // namespace

TEST_CASE("fuzz seeds and crash regressions replay cleanly through every target") {
  CHECK(replay("coco_annotations", ak::fuzz::coco_annotations) >= 4);
  CHECK(replay("coco_results", ak::fuzz::coco_results) >= 4);
  CHECK(replay("image", ak::fuzz::image) >= 10);
  CHECK(replay("mask", ak::fuzz::mask) >= 5);
  CHECK(replay("safetensors_file", ak::fuzz::safetensors_file) >= 7);
  CHECK(replay("config", ak::fuzz::config) >= 3);
}

TEST_CASE("COCO annotations: out-of-range numbers are a clear error, not a UB cast") {
  const std::string path = ak::fuzz::scratch_path("hardening_coco");
  auto load = [&](const std::string& text) {
    ak::fuzz::write_file(path, reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
    return error_of([&] { (void)ak::data::CocoKeypoints::load(path, "/x"); });
  };
  CHECK(load(R"({"images":[{"id":1,"width":1e300,"height":10,"file_name":"a"}]})")
            .find("field 'width' = 1e+300 is out of range") != std::string::npos);
  CHECK(load(R"({"images":[{"id":1,"width":-3e9,"height":10,"file_name":"a"}]})").find("out of range") !=
        std::string::npos);
  CHECK(load(R"({"annotations":[{"id":1,"image_id":1,"segmentation":{"size":[1e12,4],"counts":[1]}}]})")
            .find("field 'size'") != std::string::npos);
  CHECK(load(R"({"annotations":[{"id":1,"image_id":1,"segmentation":{"size":[2,2],"counts":[-1,5]}}]})")
            .find("field 'counts' = -1 is out of range") != std::string::npos);
  // A float id beyond int64 (the first fuzz crash) saturates instead of being UB; the load then
  // fails only because nothing valid is left.
  CHECK(load(R"({"images":[{"id":1.61e29,"width":4,"height":4,"file_name":"a"}]})").find("dataset is empty") !=
        std::string::npos);
}

TEST_CASE("COCO masks: zero-size RLE and far-away or NaN polygons") {
  ak::data::Mask empty(0, 7);
  CHECK_NOTHROW(ak::data::or_counts_into({0, 0, 0}, empty, "t"));  // used to divide by h = 0
  ak::data::Mask m(20, 30);
  CHECK(error_of([&] { ak::data::rasterize_polygon_into({1, 1, 1e9, 2, 3, 9}, m); })
            .find("polygon coordinate 1e+09 is not finite or lies far outside the 20x30 image") != std::string::npos);
  CHECK(error_of([&] {
          ak::data::rasterize_polygon_into({1, 1, std::numeric_limits<double>::quiet_NaN(), 2, 3, 9}, m);
        }).find("not finite") != std::string::npos);
  // Coordinates slightly off the image are still rasterised exactly as before (pycocotools'
  // semantics are covered by the data tests); here: a box from -2 to 32 covers every pixel.
  ak::data::Mask full(20, 30);
  ak::data::rasterize_polygon_into({-2, -2, 32, -2, 32, 22, -2, 22}, full);
  CHECK(std::count(full.bits.begin(), full.bits.end(), 1) == 20 * 30);
}

TEST_CASE("images: stb_image 2.27's DHT overflow, 0x0 and huge headers are clear errors") {
  auto err = [](const std::string& rel) {
    const auto b = read_bytes(ak::testing::source_path("tests/fuzz/regressions/image/" + rel));
    return error_of([&] { (void)ak::data::decode_image(b.data(), b.size(), rel); });
  };
  CHECK(err("dht_more_than_256_symbols.jpg").find("a Huffman table declares") != std::string::npos);
  // FF FF D8: stb skips fill bytes before SOI, so the checks must too (the file also lacks EOI;
  // with one appended the Huffman check is what stops it).
  CHECK(err("dht_overflow_after_ff_fill_before_soi.jpg").find("truncated JPEG") != std::string::npos);
  {
    auto b = read_bytes(ak::testing::source_path("tests/fuzz/regressions/image/dht_overflow_after_ff_fill_before_soi.jpg"));
    b.push_back(0xFF);
    b.push_back(0xD9);
    CHECK(error_of([&] { (void)ak::data::decode_image(b.data(), b.size(), "fill"); }).find("a Huffman table declares") !=
          std::string::npos);
  }
  // A scan selecting AC table 1 when only AC table 0 exists: stb decoded with an uninitialised
  // table and indexed its arrays with garbage (UBSan in CI's fuzz run).
  CHECK(err("sos_undefined_ac_table.jpg").find("a scan uses AC Huffman table 1, which no DHT segment defines") !=
        std::string::npos);
  // Every real JPEG we ship still decodes (baseline, progressive, subsampled, grey; COCO photos).
  for (const char* rel : {"tests/fuzz/corpus/image/rgb.jpg", "tests/fuzz/corpus/image/grey.jpg",
                          "tests/fuzz/corpus/image/progressive.jpg", "tests/fuzz/corpus/image/subsampled.jpg"}) {
    const auto b = read_bytes(ak::testing::source_path(rel));
    CHECK_NOTHROW((void)ak::data::decode_image(b.data(), b.size(), rel));
  }
  for (const auto& e : std::filesystem::directory_iterator(ak::testing::source_path("data/coco_sample/images"))) {
    const auto b = read_bytes(e.path().string());
    CHECK_NOTHROW((void)ak::data::decode_image(b.data(), b.size(), e.path().string()));
  }
  CHECK(err("bmp_0x0.bmp").find("0x0 pixels") != std::string::npos);
  CHECK(err("bmp_16M_rows_from_195_bytes.bmp").find("is more than the 67108864 ampkit decodes") != std::string::npos);
  // Files too small for the size their header declares: stb decoded zeros past the end (8 s under
  // ASan for the BMP, a CI fuzz timeout on a slower machine). Both bounds are lower bounds on a
  // valid file's size, so every real image above still decodes.
  // A PNG chunk longer than the file: stb grew its buffer to the declared 1.5 GB first.
  CHECK(err("png_idat_declares_1_5_gb.png")
            .find("truncated or corrupt PNG (chunk 'IDAT' at byte 428 declares 1577058687 bytes of data, but the file "
                  "ends 200 bytes after the chunk's header)") != std::string::npos);
  {
    // Every seed PNG still decodes; cut inside its IDAT it is refused before stb allocates.
    auto b = read_bytes(ak::testing::source_path("tests/fuzz/corpus/image/rgb.png"));
    CHECK_NOTHROW((void)ak::data::decode_image(b.data(), b.size(), "rgb.png"));
    b.resize(8 + 25 + 8 + 4);
    CHECK(error_of([&] { (void)ak::data::decode_image(b.data(), b.size(), "cut.png"); })
              .find("truncated or corrupt PNG") != std::string::npos);
  }
  // A top-down BMP (negative height in the header) is |height| rows: the cap applies to that.
  CHECK(err("bmp_top_down_3082x37381_from_130_bytes.bmp").find("3082x37381 pixels is more than the 67108864") !=
        std::string::npos);
  CHECK(err("bmp_8192x8192_from_54_bytes.bmp")
            .find("truncated BMP (the header says 8192x8192 pixels at 24 bits each, 201326592 bytes of pixels; "
                  "the file is 54 bytes)") != std::string::npos);
  CHECK(err("jpeg_8192x8192_from_156_bytes.jpg")
            .find("corrupt or truncated JPEG (the header says 8192x8192 pixels, which takes at least 131072 bytes "
                  "of coded data; the file is 156 bytes)") != std::string::npos);
  {
    // The seed BMP (10x12, 24 bits) decodes as shipped; cut to its header and one byte of
    // pixels it is truncated (stb alone filled the rest with zeros).
    auto b = read_bytes(ak::testing::source_path("tests/fuzz/corpus/image/rgb.bmp"));
    CHECK_NOTHROW((void)ak::data::decode_image(b.data(), b.size(), "rgb.bmp"));
    b.resize(54 + 1);
    CHECK(error_of([&] { (void)ak::data::decode_image(b.data(), b.size(), "cut.bmp"); }).find("truncated BMP") !=
          std::string::npos);
  }
  // The seeds still decode, pixel counts as encoded.
  const auto jpg = read_bytes(ak::testing::source_path("tests/fuzz/corpus/image/progressive.jpg"));
  const auto img = ak::data::decode_image(jpg.data(), jpg.size(), "progressive.jpg");
  CHECK(img.h == 12);
  CHECK(img.w == 10);
}

TEST_CASE("COCO ground truth: num_keypoints out of range is an error, not a UB cast") {
  const auto j = nlohmann::json::parse(
      R"({"images":[{"id":1}],"annotations":[{"id":1,"image_id":1,"category_id":1,"area":1,"num_keypoints":1e300,"keypoints":[]}]})");
  CHECK(error_of([&] { (void)ak::eval::CocoKeypointDataset::from_json(j, "gt"); }).find("has num_keypoints 1e+300") !=
        std::string::npos);
}

TEST_CASE("TOML: table headers toml++ 3.3 would assert on (UB under NDEBUG) are syntax errors") {
  CHECK(ak::train::toml_table_header_problem("[# x]\n") == "line 1: a table header must start with a key");
  CHECK(ak::train::toml_table_header_problem("a = 1\n\n [[ =x]]\n") == "line 3: a table header must start with a key");
  CHECK(ak::train::toml_table_header_problem("[\n") != "");
  CHECK(ak::train::toml_table_header_problem("[[[a]]]\n") == "line 1: a table header must start with a key");
  CHECK(ak::train::toml_table_header_problem("[ [a]]\n") == "");  // toml++ reports this one itself
  // valid TOML is untouched: quoted keys, nested arrays on their own lines, strings with '[#'
  CHECK(ak::train::toml_table_header_problem("[\"a b\"]\nx = [\n  [1, 2],\n  [+3, {a = 1}],\n]\n") == "");
  CHECK(ak::train::toml_table_header_problem("s = \"\"\"\n[# not a header\n\"\"\"\n[t]\n") == "");
  CHECK(ak::train::toml_table_header_problem("s = '''\n[=]\n'''\n[[arr]]\n# [=] comment\n") == "");
  const auto b = read_bytes(ak::testing::source_path("tests/fuzz/regressions/config/table_header_hash.toml"));
  const std::string text(b.begin(), b.end());
  CHECK(error_of([&] { (void)ak::train::parse_config(text, "hostile.toml"); })
            .find("hostile.toml: TOML syntax error: line 7: a table header must start with a key") != std::string::npos);
  // toml++ 3.3's non-ASCII whitespace table reaches TOML_UNREACHABLE for most of U+00A1..U+0499
  CHECK(ak::train::toml_table_header_problem("lr = 1\xc3\xa9\n") ==
        "line 1: a non-ASCII character outside a string or comment");
  CHECK(ak::train::toml_table_header_problem("s = \"\"\"a \\\n  \xc3\xa9\"\"\"\n") ==
        "line 1: a non-ASCII character after a line-ending backslash");
  CHECK(ak::train::toml_table_header_problem("name = \"caf\xc3\xa9\" # d\xc3\xa9j\xc3\xa0 vu\n") == "");
  // A quote inside a bare token opens no string for toml++ (it reads on to the non-ASCII byte and
  // reaches TOML_UNREACHABLE), so it opens none for the guard either (fuzz_config, an override).
  CHECK(ak::train::toml_table_header_problem("v = 84\x01'x\xc8\x9b\n") ==
        "line 1: a non-ASCII character outside a string or comment");
  CHECK(ak::train::toml_table_header_problem("v = 84 'x\xc8\x9b'\n") ==
        "line 1: a non-ASCII character outside a string or comment");
  // Quotes where keys and values start still open strings: values, arrays (also across lines),
  // inline tables, dotted and quoted keys, headers.
  CHECK(ak::train::toml_table_header_problem("a = '\xc3\xa9'\nb = [\"\xc3\xa9\", '\xc3\xbc']\nc = [\n  \"\xc3\xa9\",\n]\n") == "");
  CHECK(ak::train::toml_table_header_problem("t = {k = '\xc3\xa9', \"q\xc3\xa9\" = 1}\nx.\"\xc3\xa9\" = 2\n\"k\xc3\xa9\" = 3\n") == "");
  CHECK(ak::train::toml_table_header_problem("[a.\"\xc3\xa9\"]\n[[ \"b\xc3\xa9\" ]]\n") == "");
  // toml++ asserts when `}` stands where an array element starts (fuzz_config; each case below
  // aborted toml++ 3.3 with assertions on); `}` elsewhere is left to its own errors.
  for (const char* bad : {"a = [}]", "a = [1,}]", "a = [ }", "a = [\n}]", "a = [ # c\n}]", "a = [[}]]",
                          "a = {b = [}]}", "a = [1,\n}]"}) {
    INFO(bad);
    CHECK(ak::train::toml_table_header_problem(bad) == "line " + std::to_string(1 + std::count(bad, bad + std::strlen(bad), '\n')) +
                                                            ": '}' where an array element is expected");
  }
  CHECK(ak::train::toml_table_header_problem("a = [{}, {b = 1}]\nc = [1, 2,]\nd = {e = [1], f = {}}\n") == "");
  {
    const auto b = read_bytes(ak::testing::source_path("tests/fuzz/regressions/config/array_element_starts_with_brace.toml"));
    CHECK(error_of([&] { (void)ak::train::parse_config(std::string(b.begin(), b.end()), "hostile.toml"); })
              .find("hostile.toml: TOML syntax error: line 2: '}' where an array element is expected") != std::string::npos);
  }
  {
    const auto b = read_bytes(ak::testing::source_path("tests/fuzz/regressions/config/override_quote_inside_bare_value.toml"));
    const std::string text(b.begin(), b.end());
    const auto cut = text.find("#--cfg-options\n");
    REQUIRE(cut != std::string::npos);
    auto lc = ak::train::parse_config(text.substr(0, cut), "fuzz.toml");
    const std::string override_line = text.substr(cut + 15, text.find('\n', cut + 15) - cut - 15);
    // Not TOML, so taken as a bare string, which an integer field refuses.
    CHECK(error_of([&] { ak::train::apply_overrides(lc, {override_line}); })
              .find("--cfg-options: 'randomness.seed' expects") != std::string::npos);
  }
  // every shipped config passes the guard
  for (const auto& e : fs::recursive_directory_iterator(ak::testing::source_path("configs"))) {
    if (e.path().extension() != ".toml") continue;
    const auto c = read_bytes(e.path());
    INFO(e.path().string());
    CHECK(ak::train::toml_table_header_problem(std::string(c.begin(), c.end())) == "");
  }
}

TEST_CASE("hostile safetensors checkpoints: every lie in the table is a clear error") {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  struct Case {
    const char* what;
    std::vector<std::uint8_t> file;
    const char* message;
  };
  std::vector<std::uint8_t> huge_len(16, 0);
  const std::uint64_t big = std::uint64_t{1} << 62;
  std::memcpy(huge_len.data(), &big, 8);
  auto valid = st_image("{" + ok_entry + "}", 16);
  const std::vector<Case> cases = {
      {"empty file", {}, "too short for the 8-byte header length"},
      {"header length 2^62", huge_len, "exceeds the"},
      {"header past the end", std::vector<std::uint8_t>(valid.begin(), valid.begin() + 20), "runs past the end of the file"},
      {"not an object", st_image("[1,2]", 0), "does not start with a JSON object"},
      {"bad JSON", st_image("{\"a\":", 0), "not valid JSON"},
      {"offsets past the end", st_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       "past the end of the 8-byte data buffer"},
      {"offset 2^64-1", st_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}})", 16),
       "past the end"},
      {"begin > end", st_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8), "begin > end"},
      {"shape overflows", st_image(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       "overflows its byte size"},
      {"negative dim", st_image(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
       "not a non-negative integer"},
      {"size mismatch", st_image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16), "needs 12 bytes"},
      {"unknown dtype", st_image(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16),
       "unsupported dtype 'F128'"},
      {"overlap",
       st_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                16),
       "overlaps the previous tensor"},
      {"hole", st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16), "hole in the data buffer"},
      {"trailing bytes", st_image("{" + ok_entry + "}", 20), "trailing bytes or truncation"},
      {"duplicate name", st_image("{" + ok_entry + "," + ok_entry + "}", 16), "appears twice"},
      {"unknown field", st_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4),
       "unknown field 'x'"},
      {"metadata not strings", st_image(R"({"__metadata__":{"k":1}})", 0), "is not a string"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string msg = error_of([&] { (void)ak::safetensors::File::from_bytes(c.file, "hostile.safetensors"); });
    CHECK(msg.find(c.message) != std::string::npos);
    if (!c.file.empty()) CHECK(msg.find("hostile.safetensors") != std::string::npos);
  }
  CHECK(error_of([&] { (void)ak::safetensors::File::from_bytes(valid, "v"); }).empty());
}

TEST_CASE("hostile checkpoint for the model: wrong shape, wrong dtype, missing tensors") {
  ak::fuzz::TinyModel model;
  auto file = [](const char* rel) {
    return ak::safetensors::File::from_bytes(read_bytes(ak::testing::source_path(std::string("tests/fuzz/corpus/safetensors_file/") + rel)), rel);
  };
  // A valid tiny checkpoint with F32/F16/BF16/F64 tensors loads all five.
  CHECK(ak::nn::read_state(model.store, model.ctx, file("tiny_model.safetensors")) == 5);
  CHECK(error_of([&] { ak::nn::read_state(model.store, model.ctx, file("wrong_shape_for_model.safetensors")); })
            .find("'conv.weight' has shape [4,2,3,3], the model expects [4,3,3,2]") != std::string::npos);
  CHECK(error_of([&] { ak::nn::read_state(model.store, model.ctx, file("mixed.safetensors")); })
            .find("lacks 5 of the model's tensors") != std::string::npos);
  // An integer tensor under a parameter's name: rejected, not reinterpreted.
  ak::safetensors::Writer w;
  std::vector<std::int32_t> ints(4, 7);
  w.add<std::int32_t>("bn.weight", std::span<const std::int32_t>(ints), {4});
  const auto f = ak::safetensors::File::from_bytes(w.serialize(), "ints");
  CHECK(error_of([&] { ak::nn::read_state(model.store, model.ctx, f, false); }).find("is I32, not a floating-point type") !=
        std::string::npos);
}

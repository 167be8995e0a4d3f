// Tests for include/ampkit/core/safetensors.hpp: round trips, a file written by the reference
// Python package, atomic save, and hostile headers that must end in a clear ampkit::Error.
#include "ampkit/core/safetensors.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "support/testing.hpp"

using namespace ampkit;
namespace st = ampkit::safetensors;

namespace {

/// A file image with a hand-written header and `data_size` bytes of buffer.
std::vector<std::uint8_t> image(const std::string& header, std::size_t data_size,
                                std::int64_t len_override = -1) {
  std::vector<std::uint8_t> b(8 + header.size() + data_size, 0xAB);
  const std::uint64_t n = len_override >= 0 ? static_cast<std::uint64_t>(len_override) : header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}

/// Parsing must throw ampkit::Error whose message contains `needle`.
void expect_rejected(const std::vector<std::uint8_t>& bytes, const std::string& needle) {
  bool threw = false;
  try {
    (void)st::File::from_bytes(bytes, "hostile.safetensors");
  } catch (const Error& e) {
    threw = true;
    const std::string msg = e.what();
    INFO("message: ", msg);
    CHECK(msg.find(needle) != std::string::npos);
    CHECK(msg.find("hostile.safetensors") != std::string::npos);
  }
  CHECK_MESSAGE(threw, "expected an ampkit::Error containing '", needle, "'");
}

}  // namespace

TEST_CASE("safetensors: write/read round trip of every storage type, metadata and empty tensors") {
  auto f32 = testing::random_tensor<float>({2, 3, 5, 7}, 1);
  auto f16 = testing::random_tensor<half>({1, 4, 4, 17}, 2);
  auto b16 = testing::random_tensor<bfloat16>({3, 1, 1, 5}, 3);
  std::vector<std::int64_t> ints = {-1, 0, 1ll << 50, 42};
  std::vector<float> empty;

  st::Writer w;
  w.add<float>("a/f32", f32.cview()).add<half>("f16", f16.cview()).add<bfloat16>("bf16", b16.cview());
  w.add<std::int64_t>("ints", std::span<const std::int64_t>(ints), {2, 2});
  w.add<float>("empty", std::span<const float>(empty), {0, 4});
  w.metadata("format", "ampkit").metadata("step", "12");
  const auto bytes = w.serialize();
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK(header_len % 8 == 0);  // the data buffer starts 8-byte aligned

  const auto f = st::File::from_bytes(bytes);
  CHECK(f.size() == 5);
  CHECK(f.metadata().at("format") == "ampkit");
  CHECK(f.metadata().at("step") == "12");
  CHECK(f.info("a/f32").dtype == st::Dtype::kF32);
  CHECK(f.info("f16").shape == std::vector<std::int64_t>{1, 4, 4, 17});
  CHECK(f.read<std::int64_t>("ints") == ints);
  CHECK(f.read<float>("empty").empty());
  const auto got32 = f.tensor<float>("a/f32", f32.shape());
  CHECK(std::memcmp(got32.data(), f32.data(), f32.numel() * 4) == 0);
  const auto got16 = f.read<half>("f16");
  CHECK(std::memcmp(got16.data(), f16.data(), f16.numel() * 2) == 0);
  const auto gotb = f.tensor<bfloat16>("bf16");
  CHECK(gotb.shape() == b16.shape());
  CHECK(std::memcmp(gotb.data(), b16.data(), b16.numel() * 2) == 0);

  // read_as converts: F16 -> float is exact; float -> half rounds like convert<half>.
  const auto widened = f.read_as<float>("f16");
  for (std::size_t i = 0; i < widened.size(); ++i) CHECK(widened[i] == static_cast<float>(f16[i]));
  const auto narrowed = f.read_as<half>("a/f32");
  for (std::size_t i = 0; i < narrowed.size(); ++i) CHECK(narrowed[i] == convert<half>(f32[i]));

  // Clear errors on misuse.
  CHECK_THROWS_WITH_AS(f.read<half>("a/f32"), doctest::Contains("is F32, read as F16"), Error);
  CHECK_THROWS_WITH_AS(f.info("nope"), doctest::Contains("no tensor 'nope'"), Error);
  CHECK_THROWS_WITH_AS(f.read_as<float>("ints"), doctest::Contains("not a floating-point type"), Error);
  CHECK_THROWS_WITH_AS(f.tensor<float>("a/f32", Shape{2, 3, 5, 8}), doctest::Contains("expected (2,3,5,8)"),
                       Error);
}

TEST_CASE("safetensors: a zero-size tensor at the offset of a non-empty one reads back (SGD without momentum)") {
  // A checkpoint of plain SGD (momentum 0) has an empty "optimizer.state" at the offset where
  // "amp.step_state" starts; the header lists names alphabetically, so the non-empty tensor came
  // first at that offset and the reader took the empty one for an overlap (found on the H200 when
  // a 2-GPU SGD checkpoint was resumed). Written here in the order that triggered it.
  const std::vector<float> full = {1.f, 2.f, 3.f};
  const std::vector<float> before = {4.f};
  st::Writer w;
  w.add<float>("a_before", std::span<const float>(before), {1});
  w.add<float>("z_empty", std::span<const float>(), {0});
  w.add<float>("b_full", std::span<const float>(full), {3});
  const auto f = st::File::from_bytes(w.serialize(), "sgd.safetensors");
  CHECK(f.read<float>("z_empty").empty());
  CHECK(f.read<float>("b_full") == full);
  CHECK(f.read<float>("a_before") == before);
  CHECK(f.info("z_empty").begin == f.info("b_full").begin);  // the case that matters: same offset
}

TEST_CASE("safetensors: writer rejects bad input") {
  std::vector<float> v(6, 1.f);
  st::Writer w;
  CHECK_THROWS_WITH_AS(w.add<float>("x", std::span<const float>(v), {2, 4}),
                       doctest::Contains("needs 32 bytes, given 24"), Error);
  w.add<float>("x", std::span<const float>(v), {2, 3});
  CHECK_THROWS_WITH_AS(w.add<float>("x", std::span<const float>(v), {6}), doctest::Contains("added twice"),
                       Error);
  CHECK_THROWS_WITH_AS(w.add<float>("__metadata__", std::span<const float>(v), {6}),
                       doctest::Contains("invalid tensor name"), Error);
  CHECK_THROWS_WITH_AS(w.add<float>("y", std::span<const float>(v), {-1, -6}),
                       doctest::Contains("negative or overflows"), Error);
}

TEST_CASE("safetensors: atomic save and load from disk") {
  const auto dir = std::filesystem::temp_directory_path() / ("ampkit_st_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "ckpt.safetensors").string();
  auto x = testing::random_tensor<float>({1, 2, 3, 4}, 9);
  st::Writer().add<float>("x", x.cview()).save(path);
  auto y = testing::random_tensor<float>({1, 2, 3, 4}, 10);
  st::Writer().add<float>("x", y.cview()).metadata("v", "2").save(path);  // overwrite in place
  const auto f = st::File::load(path);
  CHECK(f.metadata().at("v") == "2");
  CHECK(f.read<float>("x") == std::vector<float>(y.data(), y.data() + y.numel()));
  int n_files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n_files;
  CHECK(n_files == 1);  // no temp file left behind
  CHECK_THROWS_WITH_AS(st::File::load((dir / "missing.safetensors").string()),
                       doctest::Contains("cannot open"), Error);
  CHECK_THROWS_WITH_AS(st::Writer().save((dir / "no_such_dir" / "a.safetensors").string()),
                       doctest::Contains("cannot create"), Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: reads a file written by the reference Python package") {
  // Written by tests/golden/make_interop_fixture.py with safetensors.numpy.save_file.
  const auto f = st::File::load(testing::source_path("tests/golden/data/interop_reference.safetensors"));
  CHECK(f.metadata().at("writer") == "safetensors-py");
  const auto a = f.read<float>("f32");
  REQUIRE(a.size() == 24);
  for (int i = 0; i < 24; ++i) CHECK(a[i] == i * 0.25f - 3.f);
  CHECK(f.info("f32").shape == std::vector<std::int64_t>{2, 3, 4});
  const auto h = f.read_as<float>("f16");
  for (int i = 0; i < 6; ++i) CHECK(h[i] == static_cast<float>(convert<half>(static_cast<float>(i) / 3.f)));
  CHECK(f.read<std::int64_t>("i64") == std::vector<std::int64_t>{-5, 7, 1ll << 40, 0});
  CHECK(f.read<std::uint8_t>("u8") == std::vector<std::uint8_t>{0, 1, 2, 3, 4});
  CHECK(f.info("empty").numel() == 0);
}

TEST_CASE("safetensors: hostile headers give a clear error") {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK_NOTHROW((void)st::File::from_bytes(image(ok, 8)));

  expect_rejected(std::vector<std::uint8_t>(5, 0), "too short");
  expect_rejected(image(ok, 8, 1000), "runs past the end of the file");
  expect_rejected(image(ok, 8, static_cast<std::int64_t>(st::kMaxHeaderBytes) + 1), "exceeds");
  expect_rejected(image(ok, 8, -2 + (1ll << 62)), "exceeds");
  expect_rejected(image(R"({"a":{"dtype":"F32")", 8), "not valid JSON");
  expect_rejected(image(R"([1,2,3])", 8), "does not start with a JSON object");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8),
                  "past the end of the 8-byte data buffer");
  expect_rejected(
      image(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          12),
      "overlaps");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "hole");
  expect_rejected(image(ok, 12), "trailing bytes");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12 bytes");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                  "overflows");
  expect_rejected(image(R"({"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", 8),
                  "overflows");
  expect_rejected(image(R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", 8),
                  "unsupported dtype 'F17'");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                  "not a non-negative integer");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
                  "not a non-negative integer");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "begin > end");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", 8), "data_offsets");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "data_offsets");
  expect_rejected(
      image(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          8),
      "appears twice");
  expect_rejected(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8),
                  "unknown field 'extra'");
  expect_rejected(image(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "no string 'dtype'");
  expect_rejected(image(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8), "no 'shape' array");
  expect_rejected(image(R"({"a":7})", 8), "is not an object");
  expect_rejected(
      image(R"({"__metadata__":{"k":3},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
      "not a string");
}

TEST_CASE("safetensors: a truncated copy of a valid file is rejected, never read past its end") {
  auto x = testing::random_tensor<half>({1, 3, 3, 4}, 4);
  const auto full = st::Writer().add<half>("x", x.cview()).add<half>("y", x.cview()).serialize();
  for (std::size_t cut : {std::size_t{0}, std::size_t{7}, std::size_t{8}, std::size_t{30}, full.size() - 1}) {
    std::vector<std::uint8_t> part(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(cut));
    CHECK_THROWS_AS((void)st::File::from_bytes(part), Error);
  }
}

TEST_CASE("safetensors: load_header reads names, shapes and metadata only, and still catches truncation") {
  const auto dir = std::filesystem::temp_directory_path() / ("ampkit_sth_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "h.safetensors").string();
  auto x = testing::random_tensor<half>({2, 3, 5, 7}, 21);
  auto y = testing::random_tensor<float>({1, 1, 4, 9}, 22);
  st::Writer().add<half>("x", x.cview()).add<float>("y", y.cview()).metadata("ampkit.iter", "17").save(path);
  const auto full = st::File::load(path);
  const auto head = st::File::load_header(path);
  CHECK(head.names() == full.names());
  CHECK(head.metadata() == full.metadata());
  CHECK(head.info("x").shape == full.info("x").shape);
  CHECK(head.info("y").dtype == st::Dtype::kF32);
  CHECK(head.info("y").bytes() == 36 * sizeof(float));
  // Data access needs the whole file: a clear message, not a read of memory that is not there.
  CHECK_THROWS_WITH_AS((void)head.read<float>("y"), doctest::Contains("load_header"), Error);
  CHECK_THROWS_WITH_AS((void)head.tensor<float>("y"), doctest::Contains("load_header"), Error);

  // Every truncation load() rejects, load_header() rejects too (it checks offsets against the
  // file's size), and so do a bad length and a header cut short.
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string cut_path = (dir / "cut.safetensors").string();
  for (std::size_t cut : {std::size_t{0}, std::size_t{5}, std::size_t{8}, std::size_t{40}, bytes.size() - 1}) {
    std::ofstream(cut_path, std::ios::binary | std::ios::trunc) << bytes.substr(0, cut);
    INFO("cut at ", cut);
    CHECK_THROWS_AS((void)st::File::load(cut_path), Error);
    CHECK_THROWS_AS((void)st::File::load_header(cut_path), Error);
  }
  std::ofstream(cut_path, std::ios::binary | std::ios::trunc) << bytes << "xx";  // trailing bytes
  CHECK_THROWS_WITH_AS((void)st::File::load_header(cut_path), doctest::Contains("trailing bytes"), Error);
  CHECK_THROWS_WITH_AS((void)st::File::load_header((dir / "none.safetensors").string()),
                       doctest::Contains("cannot open"), Error);
  std::filesystem::remove_all(dir);
}

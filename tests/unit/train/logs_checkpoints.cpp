// TensorBoard event files (CRC32C, record framing, Event protobuf), the progress line, the work-dir
// logs, and the checkpoint manager (names, atomic `latest`, torn files never resumed, keep-last-N).
//
// tests/python/test_tfevents_reader.py runs the "tfevents: file for the python reader" case with
// AMPKIT_TFEVENTS_OUT=DIR and reads the file with TensorBoard's own reader.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "ampkit/core/safetensors.hpp"
#include "ampkit/train/checkpoint_manager.hpp"
#include "ampkit/train/progress.hpp"
#include "ampkit/train/run_logger.hpp"
#include "ampkit/train/tfevents.hpp"
#include "support/testing.hpp"

using namespace ampkit;
using namespace ampkit::train;
namespace fs = std::filesystem;

namespace {
/// A fresh folder under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("ampkit_train_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Seeded scalar series (never zeros, several magnitudes, as training logs have).
std::vector<std::vector<tfevents::ScalarValue>> scalar_series(int n_steps, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-6.f, 2.f);
  std::vector<std::vector<tfevents::ScalarValue>> out;
  for (int s = 0; s < n_steps; ++s)
    out.push_back({{"train/loss", std::pow(10.f, u(rng))},
                   {"train/lr", std::pow(10.f, u(rng))},
                   {"train/loss_scale", 65536.f / static_cast<float>(1 << (s % 5))}});
  return out;
}
}  // namespace

TEST_CASE("crc32c matches the standard check values") {
  // RFC 3720 / iSCSI check value for "123456789", and 32 zero bytes (RFC 3720 B.4).
  CHECK(tfevents::crc32c("123456789", 9) == 0xE3069283u);
  const std::vector<std::uint8_t> zeros(32, 0), ones(32, 0xFF);
  CHECK(tfevents::crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);
  CHECK(tfevents::crc32c(ones.data(), ones.size()) == 0x62A8AB43u);
  CHECK(tfevents::mask_crc(0) == 0xa282ead8u);
}

TEST_CASE("tfevents: encode/decode round trip and record framing") {
  tfevents::Event e{1732921234.125, 123456789012345, "", {{"train/loss", 1.25e-4f}, {"val/AP", 0.6861f}}};
  const auto back = tfevents::decode_event(tfevents::encode_event(e));
  CHECK(back.wall_time == e.wall_time);
  CHECK(back.step == e.step);
  REQUIRE(back.scalars.size() == 2);
  CHECK(back.scalars[1].tag == "val/AP");
  CHECK(back.scalars[1].value == 0.6861f);

  // Hand-checked bytes of a minimal event: wall_time 1.0, step 3, one value {tag "a", 2.0f}.
  const std::string bytes = tfevents::encode_event({1.0, 3, "", {{"a", 2.f}}});
  const std::string expect("\x09\x00\x00\x00\x00\x00\x00\xf0\x3f"  // 1: double 1.0
                           "\x10\x03"                              // 2: varint 3
                           "\x2a\x0a"                              // 5: summary, 10 bytes
                           "\x0a\x08"                              //   1: value, 8 bytes
                           "\x0a\x01\x61"                          //     1: tag "a"
                           "\x15\x00\x00\x00\x40",                 //     2: float 2.0
                           23);
  CHECK(bytes == expect);
  const std::string rec = tfevents::frame_record(bytes);
  CHECK(rec.size() == 8 + 4 + bytes.size() + 4);
}

TEST_CASE("tfevents: writer file reads back; torn tail tolerated, corruption reported") {
  TempDir dir("tb");
  const auto series = scalar_series(50, 7);
  std::string path;
  {
    tfevents::EventWriter w(dir.str());
    path = w.path();
    CHECK(fs::path(path).filename().string().rfind("events.out.tfevents.", 0) == 0);
    for (std::size_t s = 0; s < series.size(); ++s) w.add_scalars(static_cast<std::int64_t>(s * 10), series[s], 1000.0 + s);
  }
  bool torn = true;
  const auto ev = tfevents::read_events(path, &torn);
  CHECK_FALSE(torn);
  REQUIRE(ev.size() == series.size() + 1);
  CHECK(ev[0].file_version == "brain.Event:2");
  for (std::size_t s = 0; s < series.size(); ++s) {
    CHECK(ev[s + 1].step == static_cast<std::int64_t>(s * 10));
    CHECK(ev[s + 1].wall_time == 1000.0 + s);
    REQUIRE(ev[s + 1].scalars.size() == series[s].size());
    for (std::size_t k = 0; k < series[s].size(); ++k) {
      CHECK(ev[s + 1].scalars[k].tag == series[s][k].tag);
      CHECK(ev[s + 1].scalars[k].value == series[s][k].value);  // bit-exact float
    }
  }

  // A run killed mid-write: the last record is cut short.
  const std::string full = read_file(path);
  const std::string cut = dir.str() + "/events.out.tfevents.cut";
  std::ofstream(cut, std::ios::binary) << full.substr(0, full.size() - 7);
  const auto part = tfevents::read_events(cut, &torn);
  CHECK(torn);
  CHECK(part.size() == ev.size() - 1);

  // A flipped bit in the middle is an error, never silently wrong numbers.
  std::string bad = full;
  bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x10);
  const std::string badp = dir.str() + "/events.out.tfevents.bad";
  std::ofstream(badp, std::ios::binary) << bad;
  CHECK_THROWS_WITH_AS(tfevents::read_events(badp), doctest::Contains("CRC"), Error);
}

TEST_CASE("tfevents: file for the python reader") {
  // With AMPKIT_TFEVENTS_OUT set (tests/python/test_tfevents_reader.py), write the event file
  // there plus the expected values as JSON; otherwise this case only checks itself.
  const char* out = std::getenv("AMPKIT_TFEVENTS_OUT");
  TempDir tmp("tbpy");
  const std::string dir = out ? std::string(out) : tmp.str();
  fs::create_directories(dir);
  const auto series = scalar_series(20, 11);
  nlohmann::json expect = nlohmann::json::array();
  {
    tfevents::EventWriter w(dir);
    for (std::size_t s = 0; s < series.size(); ++s) {
      const std::int64_t step = static_cast<std::int64_t>(s) * 1603 + 5;  // large steps: multi-byte varints
      w.add_scalars(step, series[s]);
      for (const auto& v : series[s]) expect.push_back({{"step", step}, {"tag", v.tag}, {"value", v.value}});
    }
  }
  std::ofstream(dir + "/expected.json") << expect.dump();
  CHECK(fs::exists(dir + "/expected.json"));
}

TEST_CASE("progress line and ETA") {
  CHECK(format_duration(0) == "0:00:00");
  CHECK(format_duration(3725) == "1:02:05");
  CHECK(format_duration(86400 * 5 + 7863) == "5 days, 2:11:03");
  CHECK(format_duration(86400 + 1) == "1 day, 0:00:01");
  CHECK(format_duration(-1) == "?");
  CHECK(format_bar(1, 4, 8) == "|##------|  25%");

  ProgressInfo p;
  p.epoch = 3;
  p.max_epochs = 140;
  p.iter_in_epoch = 50;
  p.iters_per_epoch = 802;
  p.global_iter = 1654;
  p.max_iters = 112280;
  p.lr = 1e-3;
  p.losses = {{"loss", 1.3125e-3}, {"heatmap", 8.8e-4}, {"displacement", 4.325e-4}};
  p.loss_scale = 32768.0;
  p.skipped = {{3, 1654}};
  p.grad_norm = 0.8213;
  p.step_time = 0.355;
  p.data_time = 0.0101;
  p.images_per_second = 28.17;
  p.memory_mib = 7741.4;
  p.eta_seconds = 86400 * 2 + 3661;
  const std::string line = format_progress(p);
  CHECK(line ==
        "Epoch(train) [3/140][ 50/802]  lr 1.000e-03  eta 2 days, 1:01:01  time 0.355 s (data 0.010)  28.2 img/s"
        "  mem 7741 MiB  loss 1.3125e-03 (heatmap 8.8000e-04, displacement 4.3250e-04)  scale 32768  skipped 3/1654"
        "  grad_norm 0.8213");
  CHECK(format_progress(p, true).rfind("|", 0) == 0);
  ProgressInfo fp32 = p;  // the fp32 policy has no scaler: no scale / skipped fields
  fp32.loss_scale.reset();
  fp32.skipped.reset();
  fp32.memory_mib.reset();
  const auto l2 = format_progress(fp32);
  CHECK(l2.find("scale") == std::string::npos);
  CHECK(l2.find("mem") == std::string::npos);

  EtaEstimator eta(3);
  CHECK(eta.eta(10) == -1.0);
  for (double t : {10.0, 1.0, 2.0, 3.0}) eta.add(t);  // the window drops the slow first one
  CHECK(eta.mean() == doctest::Approx(2.0));
  CHECK(eta.eta(100) == doctest::Approx(200.0));
}

TEST_CASE("run logger writes the text log, scalars.jsonl and TensorBoard events") {
  TempDir dir("log");
  const std::string wd = dir.str() + "/work";
  std::string tb;
  {
    RunLogger log(wd, {.tensorboard = true, .echo = false});
    log.info("hello from the test");
    log.warn("a warning");
    log.scalars("train", 50, {{"loss", 1.5e-3}, {"lr", 1e-4}}, {{"epoch", 1}, {"iter", 50}});
    log.scalars("val", 802, {{"coco/AP", 0.686}});
    tb = log.tensorboard_path();
    CHECK(fs::path(log.log_path()).parent_path() == fs::path(wd) / "logs");
  }
  bool found_log = false;
  for (const auto& e : fs::directory_iterator(wd + "/logs")) {
    const auto text = read_file(e.path().string());
    found_log = text.find("INFO hello from the test") != std::string::npos &&
                text.find("WARNING a warning") != std::string::npos;
  }
  CHECK(found_log);
  std::ifstream js(wd + "/scalars.jsonl");
  std::string l1, l2;
  std::getline(js, l1);
  std::getline(js, l2);
  const auto j1 = nlohmann::json::parse(l1), j2 = nlohmann::json::parse(l2);
  CHECK(j1["mode"] == "train");
  CHECK(j1["step"] == 50);
  CHECK(j1["epoch"] == 1);
  CHECK(j1["loss"].get<double>() == 1.5e-3);
  CHECK(j2["coco/AP"].get<double>() == 0.686);
  const auto ev = tfevents::read_events(tb);
  REQUIRE(ev.size() == 3);
  CHECK(ev[1].scalars[0].tag == "train/loss");
  CHECK(ev[2].scalars[0].tag == "val/coco/AP");
  CHECK(ev[2].step == 802);

  // A work dir that cannot be created: one line naming it.
  const std::string file = dir.str() + "/plain_file";
  std::ofstream(file) << "x";
  const std::string want = "work dir '" + file + "/sub' cannot be created";
  CHECK_THROWS_WITH_AS(RunLogger(file + "/sub", {}), doctest::Contains(want.c_str()), Error);
}

namespace {
/// A small training-checkpoint-like file (seeded values).
safetensors::Writer ckpt_writer(std::uint64_t seed) {
  auto t = testing::random_tensor<float>(Shape{1, 1, 4, 8}, seed);
  safetensors::Writer w;
  w.add<float>("backbone.conv1.weight", std::span<const float>(t.data(), 32), {4, 8});
  return w;
}
}  // namespace

TEST_CASE("checkpoint manager: names, latest pointer, keep-last-N") {
  TempDir dir("ckpt");
  CheckpointManager m(dir.str(), 2);
  CHECK(m.epoch_path(7) == dir.str() + "/epoch_7.safetensors");
  CHECK(m.iter_path(1500) == dir.str() + "/iter_1500.safetensors");
  CHECK_FALSE(m.find_resume().has_value());

  for (int e = 1; e <= 4; ++e) {
    auto w = ckpt_writer(static_cast<std::uint64_t>(e));
    const auto removed = m.save(w, m.epoch_path(e), e, e * 100);
    CHECK(removed.size() == (e <= 2 ? 0u : 1u));
    CHECK(read_file(m.latest_path()) == "epoch_" + std::to_string(e) + ".safetensors\n");
  }
  const auto left = m.list();
  REQUIRE(left.size() == 2);
  CHECK(left[0].path == m.epoch_path(4));
  CHECK(left[1].path == m.epoch_path(3));
  CHECK(left[0].iter == 400);
  CHECK(m.find_resume() == std::optional<std::string>(m.epoch_path(4)));
  // Nothing but the final files is left behind by the atomic writes.
  int n_files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    ++n_files;
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
  }
  CHECK(n_files == 3);  // 2 checkpoints + latest

  // The saved file carries the metadata and the tensor bit-exactly.
  const auto f = safetensors::File::load(m.epoch_path(4));
  CHECK(f.metadata().at("ampkit.run") == "train");
  CHECK(f.metadata().at("ampkit.epoch") == "4");
  const auto want = testing::random_tensor<float>(Shape{1, 1, 4, 8}, 4);
  const auto got = f.read<float>("backbone.conv1.weight");
  CHECK(std::equal(got.begin(), got.end(), want.data()));
}

TEST_CASE("checkpoint manager: a torn or foreign file is never resumed") {
  TempDir dir("torn");
  CheckpointManager m(dir.str(), -1);
  auto w1 = ckpt_writer(1);
  m.save(w1, m.epoch_path(1), 1, 100);
  auto w2 = ckpt_writer(2);
  m.save(w2, m.iter_path(150), 1, 150);
  CHECK(m.find_resume() == std::optional<std::string>(m.iter_path(150)));

  // Truncate the newest checkpoint (a partial copy): resume falls back to the previous one and
  // says why.
  const std::string full = read_file(m.iter_path(150));
  std::ofstream(m.iter_path(150), std::ios::binary | std::ios::trunc) << full.substr(0, full.size() - 10);
  std::vector<std::string> notes;
  auto r = m.find_resume([&](const std::string& s) { notes.push_back(s); });
  CHECK(r == std::optional<std::string>(m.epoch_path(1)));
  REQUIRE(notes.size() == 1);
  CHECK(notes[0].find("iter_150.safetensors") != std::string::npos);
  CHECK(notes[0].find("not usable") != std::string::npos);

  // A newer file that is valid safetensors but not a training checkpoint (a model export) and a
  // file of garbage are skipped too; `latest` naming a missing file is reported.
  auto w3 = ckpt_writer(3);
  w3.save(dir.str() + "/epoch_9.safetensors");
  std::ofstream(dir.str() + "/iter_999.safetensors") << "not a checkpoint";
  write_file_atomic(m.latest_path(), "epoch_42.safetensors\n");
  notes.clear();
  r = m.find_resume([&](const std::string& s) { notes.push_back(s); });
  CHECK(r == std::optional<std::string>(m.epoch_path(1)));
  // Unreadable files sort last (their iteration is unknown), so only the pointer is reported.
  REQUIRE(notes.size() == 1);
  CHECK(notes[0].find("epoch_42.safetensors") != std::string::npos);
  CHECK(m.list().back().iter == -1);
  CHECK(checkpoint_problem(dir.str() + "/epoch_9.safetensors").find("not an ampkit training checkpoint") !=
        std::string::npos);
  CHECK(checkpoint_problem(m.epoch_path(1)).empty());
}

TEST_CASE("checkpoint manager: temp files of killed writers are removed, a live writer's are kept") {
  TempDir dir("stale");
  CheckpointManager m(dir.str(), -1);
  auto w = ckpt_writer(5);
  m.save(w, m.epoch_path(1), 1, 100);
  // A child that exits at once gives a pid that is certainly dead (reaped, not reused this fast
  // in practice); our own pid stands for a writer still running.
  const ::pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  const std::string dead = m.epoch_path(2) + ".tmp." + std::to_string(child);
  const std::string dead_latest = m.latest_path() + ".tmp." + std::to_string(child);
  const std::string live = m.epoch_path(3) + ".tmp." + std::to_string(::getpid());
  const std::string other = dir.str() + "/notes.tmp.txt";  // not a writer's temp name
  for (const auto& p : {dead, dead_latest, live, other}) std::ofstream(p) << "partial";
  auto removed = m.remove_stale_temps();
  std::sort(removed.begin(), removed.end());
  std::vector<std::string> want{dead, dead_latest};
  std::sort(want.begin(), want.end());
  CHECK(removed == want);
  CHECK(fs::exists(live));
  CHECK(fs::exists(other));
  CHECK(fs::exists(m.epoch_path(1)));
  CHECK(m.find_resume() == std::optional<std::string>(m.epoch_path(1)));
}

#include "evaluate_flow.inc"
#include "resume_exact.inc"

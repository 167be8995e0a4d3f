/// @brief The work-dir logs of a run: a timestamped text log (also echoed to stdout), a JSON-lines
/// scalar log, and TensorBoard event files.
///
/// Layout (mmengine keeps the same three, spread differently):
///   WORK_DIR/logs/<YYYYmmdd_HHMMSS>.log   every message, "2025-11-30 00:10:00 INFO message"
///   WORK_DIR/scalars.jsonl                 one JSON object per logged step ({"mode": "train",
///                                          "epoch": 1, "iter": 50, "lr": ..., "loss": ...})
///   WORK_DIR/tensorboard/events.out.tfevents.*   the same scalars, tags "train/loss" ...
/// Only the main rank creates a RunLogger with files; other ranks use the stdout-only default.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/train/progress.hpp"
#include "ampkit/train/tfevents.hpp"

namespace ampkit::train {

/// Local time as "YYYYmmdd_HHMMSS" (file names) or "YYYY-mm-dd HH:MM:SS" (log lines).
inline std::string local_timestamp(bool for_file, std::time_t t = std::time(nullptr)) {
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, for_file ? "%Y%m%d_%H%M%S" : "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

/// Make `dir` (and parents) and check that files can be created in it; one clear error otherwise.
inline void ensure_writable_dir(const std::string& dir, std::string_view what = "work dir") {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  AMPKIT_CHECK(!ec && std::filesystem::is_directory(dir), what, " '", dir, "' cannot be created: ",
               ec ? ec.message() : "a file of that name exists");
  AMPKIT_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, what, " '", dir, "' is not writable");
}

enum class LogLevel { kInfo, kWarning, kError };

class RunLogger {
 public:
  struct Options {
    bool tensorboard = true;
    bool echo = true;  ///< also print to stdout
  };

  /// stdout only (non-main ranks, tools).
  RunLogger() = default;

  /// Create the work dir's log files. Errors (not writable ...) name the path.
  RunLogger(const std::string& work_dir, Options opt) : echo_(opt.echo), work_dir_(work_dir) {
    ensure_writable_dir(work_dir);
    ensure_writable_dir(work_dir + "/logs", "log dir");
    timestamp_ = local_timestamp(true);
    log_path_ = work_dir + "/logs/" + timestamp_ + ".log";
    log_.open(log_path_, std::ios::app);
    AMPKIT_CHECK(log_, "cannot create the log file '", log_path_, "'");
    scalars_path_ = work_dir + "/scalars.jsonl";
    scalars_.open(scalars_path_, std::ios::app);
    AMPKIT_CHECK(scalars_, "cannot create '", scalars_path_, "'");
    if (opt.tensorboard) {
      ensure_writable_dir(work_dir + "/tensorboard", "TensorBoard dir");
      tb_ = tfevents::EventWriter(work_dir + "/tensorboard");
    }
  }

  const std::string& timestamp() const { return timestamp_; }
  const std::string& log_path() const { return log_path_; }
  const std::string& scalars_path() const { return scalars_path_; }
  std::string tensorboard_path() const { return tb_.is_open() ? tb_.path() : std::string(); }
  bool has_files() const { return log_.is_open(); }

  void log(LogLevel level, std::string_view msg) {
    std::lock_guard lk(mu_);
    const char* tag = level == LogLevel::kInfo ? "INFO" : level == LogLevel::kWarning ? "WARNING" : "ERROR";
    if (log_.is_open()) {
      log_ << local_timestamp(false) << ' ' << tag << ' ' << msg << '\n';
      log_.flush();  // a crash must not lose the lines that explain it
    }
    if (echo_) {
      auto& os = level == LogLevel::kInfo ? std::cout : std::cerr;
      if (level == LogLevel::kInfo) os << msg << '\n';
      else os << tag << ": " << msg << '\n';
      os.flush();
    }
  }
  void info(std::string_view msg) { log(LogLevel::kInfo, msg); }
  void warn(std::string_view msg) { log(LogLevel::kWarning, msg); }
  void error(std::string_view msg) { log(LogLevel::kError, msg); }

  /// A progress line: with the bar on a terminal, plain in the file.
  void progress(const ProgressInfo& p) {
    std::lock_guard lk(mu_);
    if (log_.is_open()) {
      log_ << local_timestamp(false) << " INFO " << format_progress(p, false) << '\n';
      log_.flush();
    }
    if (echo_) std::cout << format_progress(p, stdout_is_tty_) << std::endl;
  }

  /// Log scalars at `step` (global iteration): one JSON line and one TensorBoard event with tags
  /// "<mode>/<name>". `extra` adds non-scalar JSON fields (epoch, iter).
  void scalars(std::string_view mode, std::int64_t step, const std::vector<std::pair<std::string, double>>& values,
               const nlohmann::json& extra = nlohmann::json::object()) {
    std::lock_guard lk(mu_);
    if (scalars_.is_open()) {
      nlohmann::ordered_json j;
      j["mode"] = mode;
      j["step"] = step;
      for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
      for (const auto& [k, v] : values) j[k] = v;  // non-finite values become null
      scalars_ << j.dump() << '\n';
      scalars_.flush();
    }
    if (tb_.is_open()) {
      std::vector<tfevents::ScalarValue> tv;
      for (const auto& [k, v] : values) tv.push_back({std::string(mode) + "/" + k, static_cast<float>(v)});
      tb_.add_scalars(step, tv);
    }
  }

 private:
  bool echo_ = true;
  bool stdout_is_tty_ = ::isatty(STDOUT_FILENO) == 1;
  std::string work_dir_, timestamp_, log_path_, scalars_path_;
  std::ofstream log_, scalars_;
  tfevents::EventWriter tb_;
  std::mutex mu_;
};

}  // namespace ampkit::train

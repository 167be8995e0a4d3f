/// @brief Checkpoint files of a run: names (`epoch_N.safetensors`, `iter_N.safetensors`), the
/// `latest` pointer, keep-the-newest-N, and the choice of what `--resume` continues from.
///
/// Why validate before choosing: a checkpoint is written atomically (safetensors::Writer::save:
/// temp file, fsync, rename), but files can still be damaged later (a full disk during a copy, a
/// partial rsync, a crash on a filesystem that ignores fsync). `--resume` without a path must
/// never pick such a file: it checks the pointer's target, then falls back to the newest file
/// that parses completely and carries the ampkit training metadata, and says what it skipped.
///
/// Every checkpoint carries metadata "ampkit.run" = "train" (a training checkpoint, as opposed to
/// a bare model export), "ampkit.epoch" and "ampkit.iter" (completed iterations); `latest` holds
/// the file name of the newest one on one line and is replaced atomically too.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/safetensors.hpp"

namespace ampkit::train {

inline constexpr const char* kLatestFile = "latest";

/// A checkpoint file found in a work dir.
struct CheckpointEntry {
  std::string path;
  std::int64_t number = 0;  ///< N of epoch_N / iter_N
  bool by_epoch = true;
  std::int64_t iter = -1;   ///< completed iterations from its metadata (-1: not read)
};

/// Write `text` to `path` atomically (temp file in the same folder, fsync, rename).
inline void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  AMPKIT_CHECK(fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ::ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      AMPKIT_FAIL("writing '", tmp, "' failed: ", std::strerror(err));
    }
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    AMPKIT_FAIL("replacing '", path, "' failed: ", std::strerror(err));
  }
}

/// Why `path` is not a usable training checkpoint, or an empty string when it is.
inline std::string checkpoint_problem(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return "no such file";
  try {
    // The header against the file size is everything File::load() validates too (safetensors has
    // no checksum): offsets tile the data exactly, so truncation is caught without reading the
    // hundreds of MB of weights and optimizer state.
    const auto f = safetensors::File::load_header(path);
    const auto& m = f.metadata();
    if (!m.contains("ampkit.run") || m.at("ampkit.run") != "train")
      return "not an ampkit training checkpoint (no \"ampkit.run\" = \"train\" metadata)";
    if (!m.contains("ampkit.iter") || !m.contains("ampkit.epoch")) return "no ampkit.iter/ampkit.epoch metadata";
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

/// Names, pointer, retention and resume choice for one checkpoint folder.
class CheckpointManager {
 public:
  /// @param max_keep  keep the newest N checkpoint files (-1: all)
  explicit CheckpointManager(std::string dir, std::int64_t max_keep = -1) : dir_(std::move(dir)), max_keep_(max_keep) {
    AMPKIT_CHECK(max_keep_ == -1 || max_keep_ >= 1, "checkpoints: max_keep must be -1 or >= 1, got ", max_keep_);
  }

  const std::string& dir() const { return dir_; }
  std::string epoch_path(std::int64_t epoch) const { return dir_ + "/epoch_" + std::to_string(epoch) + ".safetensors"; }
  std::string iter_path(std::int64_t iter) const { return dir_ + "/iter_" + std::to_string(iter) + ".safetensors"; }
  std::string latest_path() const { return dir_ + "/" + kLatestFile; }

  /// Save `w` (after adding the run metadata) to `path` atomically, point `latest` at it, and
  /// delete the oldest files beyond max_keep. Returns the files deleted.
  std::vector<std::string> save(safetensors::Writer& w, const std::string& path, std::int64_t epoch, std::int64_t iter) {
    w.metadata("ampkit.run", "train");
    w.metadata("ampkit.epoch", std::to_string(epoch));
    w.metadata("ampkit.iter", std::to_string(iter));
    w.save(path);
    write_file_atomic(latest_path(), std::filesystem::path(path).filename().string() + "\n");
    return prune(path);
  }

  /// Checkpoint files in the folder (by name pattern; not validated), newest (most iterations)
  /// first. An epoch_N and an iter_M are ordered by their "ampkit.iter" metadata when readable.
  std::vector<CheckpointEntry> list() const {
    std::vector<CheckpointEntry> out;
    std::error_code ec;
    if (!std::filesystem::is_directory(dir_, ec)) return out;
    static const std::regex re(R"((epoch|iter)_(\d+)\.safetensors)");
    for (const auto& de : std::filesystem::directory_iterator(dir_, ec)) {
      std::smatch m;
      const std::string name = de.path().filename().string();
      if (!de.is_regular_file() || !std::regex_match(name, m, re)) continue;
      CheckpointEntry e{de.path().string(), std::stoll(m[2].str()), m[1].str() == "epoch", -1};
      e.iter = read_iter(e.path);
      out.push_back(std::move(e));
    }
    std::sort(out.begin(), out.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
      if (a.iter != b.iter) return a.iter > b.iter;
      if (a.by_epoch != b.by_epoch) return a.by_epoch;  // same iteration: prefer the epoch file
      return a.number > b.number;
    });
    return out;
  }

  /// Delete `<name>.tmp.<pid>` files that a writer killed mid-save left behind (save() writes to
  /// such a temp, then renames it): only those whose process no longer exists on this host, so
  /// a save in progress is never touched. A work dir belongs to one run on one host at a time.
  /// Returns the files deleted.
  std::vector<std::string> remove_stale_temps() const {
    std::vector<std::string> removed;
    std::error_code ec;
    if (!std::filesystem::is_directory(dir_, ec)) return removed;
    static const std::regex re(R"(.+\.tmp\.(\d+))");
    for (const auto& de : std::filesystem::directory_iterator(dir_, ec)) {
      std::smatch m;
      const std::string name = de.path().filename().string();
      if (!de.is_regular_file() || !std::regex_match(name, m, re) || m[1].length() > 9) continue;
      const auto pid = static_cast<::pid_t>(std::stol(m[1].str()));
      if (pid == ::getpid() || pid <= 0) continue;
      if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge): keep
      if (std::filesystem::remove(de.path(), ec)) removed.push_back(de.path().string());
    }
    return removed;
  }

  /// What `--resume` without a path continues from: the `latest` target if it is valid, else the
  /// newest valid checkpoint. `note` receives one line per file skipped and why. nullopt: none.
  std::optional<std::string> find_resume(const std::function<void(const std::string&)>& note = {}) const {
    const auto say = [&](const std::string& s) {
      if (note) note(s);
    };
    std::string pointed;
    if (std::ifstream in(latest_path()); in) {
      std::getline(in, pointed);
      if (!pointed.empty()) {
        const std::string p = dir_ + "/" + pointed;
        const std::string why = checkpoint_problem(p);
        if (why.empty()) {
          // save() renames the checkpoint into place before it replaces `latest`, so a crash
          // between the two leaves the pointer one behind a complete, newer file (found by the
          // kill -9 test in tests/unit/hardening): take the newest valid file newer than it.
          const std::int64_t pointed_iter = read_iter(p);
          for (const auto& e : list()) {
            if (e.iter <= pointed_iter) break;  // newest first
            if (checkpoint_problem(e.path).empty()) {
              say("resume: '" + e.path + "' is newer than '" + p + "' named by " + latest_path() +
                  " (the run stopped between saving it and updating the pointer)");
              return e.path;
            }
          }
          return p;
        }
        say("resume: '" + p + "' (named by " + latest_path() + ") is not usable: " + why);
      }
    }
    for (const auto& e : list()) {
      if (std::filesystem::path(e.path).filename() == pointed) continue;  // reported above
      const std::string why = checkpoint_problem(e.path);
      if (why.empty()) return e.path;
      say("resume: skipping '" + e.path + "': " + why);
    }
    return std::nullopt;
  }

 private:
  static std::int64_t read_iter(const std::string& path) {
    try {
      const auto f = safetensors::File::load_header(path);  // list() runs at every save: no data reads
      const auto& m = f.metadata();
      if (auto it = m.find("ampkit.iter"); it != m.end()) return std::stoll(it->second);
    } catch (const std::exception&) {
    }
    return -1;  // unreadable files sort last
  }

  /// Delete all but the newest max_keep files, never the one just written.
  std::vector<std::string> prune(const std::string& keep_path) const {
    std::vector<std::string> removed;
    if (max_keep_ < 0) return removed;
    std::int64_t others = 0;  // the new file counts as one of the max_keep
    for (const auto& e : list()) {
      std::error_code ec;
      if (std::filesystem::equivalent(e.path, keep_path, ec)) continue;
      if (others < max_keep_ - 1) {
        ++others;
        continue;
      }
      if (std::filesystem::remove(e.path, ec)) removed.push_back(e.path);
    }
    return removed;
  }

  std::string dir_;
  std::int64_t max_keep_;
};

}  // namespace ampkit::train

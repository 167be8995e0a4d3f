/// @brief The training progress line (what mmengine's LoggerHook prints, plus what it leaves out:
/// loss scale, skipped steps, grad norm, throughput, a bar on a terminal), and the ETA estimate.
///
/// A plain function of a ProgressInfo, so the loop gathers numbers and this formats them; tests
/// check the text without running a loop. Example (file/plain form):
///   Epoch(train) [1/140][ 50/802]  lr 1.000e-03  eta 5 days, 2:11:03  time 0.355 s (data 0.010)
///   28.2 img/s  mem 7741 MiB  loss 1.312e-03 (heatmap 8.800e-04, displacement 4.320e-04)
///   scale 65536  skipped 0/50  grad_norm 0.8213
/// (one line). On a terminal a bar `|#######-----------|  6%` precedes it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ampkit::train {

/// "5 days, 2:11:03", "0:04:05": Python's timedelta spelling, which mmengine's eta uses.
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<std::int64_t>(seconds + 0.5);
  const std::int64_t days = s / 86400;
  s %= 86400;
  char buf[64];
  if (days > 0)
    std::snprintf(buf, sizeof buf, "%lld day%s, %lld:%02lld:%02lld", static_cast<long long>(days), days == 1 ? "" : "s",
                  static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

/// Everything one progress line shows. Optional fields are left out when empty.
struct ProgressInfo {
  std::int64_t epoch = 1, max_epochs = 1;              ///< 1-based, as mmengine prints
  std::int64_t iter_in_epoch = 0, iters_per_epoch = 0;  ///< 1-based iteration within the epoch
  std::int64_t global_iter = 0, max_iters = 0;          ///< for the bar
  double lr = 0.0;
  std::vector<std::pair<std::string, double>> losses;  ///< first = the total ("loss"), then parts
  std::optional<double> loss_scale;                    ///< fp16 policy only
  std::optional<std::pair<std::int64_t, std::int64_t>> skipped;  ///< (skipped, optimizer steps)
  std::optional<double> grad_norm;
  double step_time = 0.0;  ///< seconds per iteration (averaged over the log interval)
  double data_time = 0.0;  ///< of which waiting for the loader
  double images_per_second = 0.0;
  std::optional<double> memory_mib;  ///< peak device memory
  double eta_seconds = -1.0;
};

namespace detail {
inline std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
}  // namespace detail

/// The progress bar alone: `|#####---------------|  25%`.
inline std::string format_bar(std::int64_t done, std::int64_t total, int width = 20) {
  const double frac = total > 0 ? std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0) : 0.0;
  const int filled = static_cast<int>(frac * width + 1e-9);
  // Built with append(): g++ 12 at -O3 reports a false -Wrestrict on "|" + std::string(n, c).
  std::string s;
  s.reserve(static_cast<std::size_t>(width) + 8);
  s.append(1, '|').append(static_cast<std::size_t>(filled), '#').append(static_cast<std::size_t>(width - filled), '-');
  s.append("| ");
  char pct[16];
  std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(frac * 100.0));
  return s + pct;
}

/// One progress line. `bar`: prefix the progress bar (terminals).
inline std::string format_progress(const ProgressInfo& p, bool bar = false) {
  std::string s;
  if (bar) s += format_bar(p.global_iter, p.max_iters) + "  ";
  const int w = static_cast<int>(std::to_string(p.iters_per_epoch).size());
  char head[96];
  std::snprintf(head, sizeof head, "Epoch(train) [%lld/%lld][%*lld/%lld]", static_cast<long long>(p.epoch),
                static_cast<long long>(p.max_epochs), w, static_cast<long long>(p.iter_in_epoch),
                static_cast<long long>(p.iters_per_epoch));
  s += head;
  s += "  lr " + detail::fmt("%.3e", p.lr);
  if (p.eta_seconds >= 0) s += "  eta " + format_duration(p.eta_seconds);
  s += "  time " + detail::fmt("%.3f", p.step_time) + " s (data " + detail::fmt("%.3f", p.data_time) + ")";
  if (p.images_per_second > 0) s += "  " + detail::fmt("%.1f", p.images_per_second) + " img/s";
  if (p.memory_mib) s += "  mem " + detail::fmt("%.0f", *p.memory_mib) + " MiB";
  if (!p.losses.empty()) {
    s += "  " + p.losses[0].first + " " + detail::fmt("%.4e", p.losses[0].second);
    if (p.losses.size() > 1) {
      s += " (";
      for (std::size_t i = 1; i < p.losses.size(); ++i)
        s += (i > 1 ? ", " : "") + p.losses[i].first + " " + detail::fmt("%.4e", p.losses[i].second);
      s += ")";
    }
  }
  if (p.loss_scale) s += "  scale " + detail::fmt("%g", *p.loss_scale);
  if (p.skipped)
    s += "  skipped " + std::to_string(p.skipped->first) + "/" + std::to_string(p.skipped->second);
  if (p.grad_norm) s += "  grad_norm " + detail::fmt("%.4g", *p.grad_norm);
  return s;
}

/// ETA from the mean time of the most recent iterations (a window, so a slow first epoch with
/// cold caches and cuDNN autotuning does not dominate the estimate for days).
class EtaEstimator {
 public:
  explicit EtaEstimator(std::size_t window = 200) : window_(window) {}

  void add(double seconds_per_iter) {
    times_.push_back(seconds_per_iter);
    sum_ += seconds_per_iter;
    if (times_.size() > window_) {
      sum_ -= times_.front();
      times_.pop_front();
    }
  }
  double mean() const { return times_.empty() ? 0.0 : sum_ / static_cast<double>(times_.size()); }
  /// Seconds left for `remaining_iters`, or -1 before the first sample.
  double eta(std::int64_t remaining_iters) const {
    return times_.empty() ? -1.0 : mean() * static_cast<double>(std::max<std::int64_t>(remaining_iters, 0));
  }

 private:
  std::size_t window_;
  std::deque<double> times_;
  double sum_ = 0.0;
};

}  // namespace ampkit::train

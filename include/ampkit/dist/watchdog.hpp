/// @brief The collective watchdog: a thread that tracks in-flight communication, and when one
/// operation outlives the timeout or the communicator reports an asynchronous error, aborts the
/// communicator and records one clear message naming the rank and the operation.
///
/// Why a thread: a collective whose peer died never completes, and a host thread that waits for
/// it (a stream sync to read the loss) would hang forever. The watchdog does not wait; it polls
/// (an event query, the communicator's error state) and, on failure, aborts the communicator,
/// which makes the stuck kernels exit, so every waiter wakes up. The next call into the process
/// group then throws the recorded message in the caller's thread. Backend-independent: the CUDA
/// process group supplies "is this done" (cudaEventQuery), "any async error" (ncclCommGetAsyncError)
/// and "abort" (ncclCommAbort); the host tests supply fakes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "ampkit/core/error.hpp"
#include "ampkit/dist/launch_env.hpp"

namespace ampkit::dist {

/// 29'600'000 -> "29.6M", 1536 -> "1.5K", 512 -> "512": sizes in messages.
inline std::string format_count(std::uint64_t n) {
  constexpr const char* units[] = {"", "K", "M", "G", "T"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1000.0 && u < 4) {
    v /= 1000.0;
    ++u;
  }
  if (u == 0) return std::to_string(n);
  char buf[32];
  std::snprintf(buf, sizeof(buf), v < 100.0 ? "%.1f%s" : "%.0f%s", v, units[u]);
  return buf;
}

/// "rank 1: all-reduce of 29.6M gradients did not complete in 300 s; ..."
inline std::string collective_timeout_message(int rank, std::string_view what, std::chrono::milliseconds timeout) {
  return ::ampkit::detail::concat(
      "rank ", rank, ": ", what, " did not complete in ", format_seconds(timeout),
      "; a peer rank has probably died or stopped calling collectives. Look at the other ranks' output for "
      "the first error (NCCL_DEBUG=WARN adds NCCL's view); if a step legitimately takes longer, raise the "
      "limit with AMPKIT_DIST_TIMEOUT=seconds. The communicator was aborted");
}

/// "rank 1: NCCL reported 'remote process exited or there was a network error' during ..."
inline std::string collective_error_message(int rank, std::string_view what, std::string_view error) {
  return ::ampkit::detail::concat("rank ", rank, ": the communicator reported '", error, "' during ", what,
                                  "; a peer rank has probably died or a network link failed. Look at the other "
                                  "ranks' output for the first error (NCCL_DEBUG=WARN adds NCCL's view). The "
                                  "communicator was aborted");
}

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  struct Hooks {
    /// The communicator's asynchronous error, if any (std::nullopt while healthy).
    std::function<std::optional<std::string>()> async_error;
    /// Abort the communicator. Called at most once, from the watchdog thread or from fire().
    std::function<void()> abort;
    /// Told the message once the communicator is aborted (default: print it to stderr, because
    /// the main thread may be blocked somewhere that never calls check()).
    std::function<void(const std::string&)> on_abort;
  };

  /// @param rank     named in every message
  /// @param timeout  the most any watched operation may take
  /// @param poll     how often in-flight work is polled
  Watchdog(int rank, std::chrono::milliseconds timeout, Hooks hooks,
           std::chrono::milliseconds poll = std::chrono::milliseconds(5))
      : rank_(rank), timeout_(timeout), poll_(poll), hooks_(std::move(hooks)) {
    AMPKIT_CHECK(timeout.count() > 0, "Watchdog: timeout must be positive");
    if (!hooks_.on_abort)
      hooks_.on_abort = [](const std::string& m) { std::fprintf(stderr, "ampkit: %s\n", m.c_str()); };
    thread_ = std::thread([this] { run(); });
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  int rank() const { return rank_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  /// Track one asynchronous operation. `done` is polled from the watchdog thread; it may throw
  /// (a failed event query), which counts as the operation failing. Its captures are released
  /// on completion (e.g. an event lease going back to its pool).
  void watch(std::string what, std::function<bool()> done) {
    std::lock_guard lk(mu_);
    pending_.push_back({std::move(what), Clock::now(), std::move(done)});
  }

  /// Operations still in flight.
  std::size_t n_pending() const {
    std::lock_guard lk(mu_);
    return pending_.size();
  }

  bool fired() const {
    std::lock_guard lk(mu_);
    return fired_;
  }
  std::string message() const {
    std::lock_guard lk(mu_);
    return message_;
  }

  /// Throw the recorded failure, if there is one. Call from the thread that uses the communicator.
  void check() const {
    std::lock_guard lk(mu_);
    if (fired_) throw Error(message_);
  }

  /// Fail now with `message` (the caller saw a timeout or error itself): abort, record, report.
  /// Only the first failure is kept; later ones are consequences.
  void fire(std::string message) {
    {
      std::lock_guard lk(mu_);
      if (fired_) return;
      fired_ = true;
      message_ = std::move(message);
      pending_.clear();
    }
    if (hooks_.abort) {
      try {
        hooks_.abort();
      } catch (...) {  // aborting is best effort; the message is what matters
      }
    }
    if (hooks_.on_abort) hooks_.on_abort(message_);
  }

 private:
  struct Work {
    std::string what;
    Clock::time_point start;
    std::function<bool()> done;
  };

  void run() {
    std::unique_lock lk(mu_);
    while (!stop_) {
      cv_.wait_for(lk, poll_, [this] { return stop_; });
      if (stop_ || fired_) continue;
      // Poll outside the lock: an event query or the async-error call may take a moment, and
      // watch() must never wait on it.
      std::deque<Work> work;
      work.swap(pending_);
      lk.unlock();
      std::optional<std::string> failure;
      const auto now = Clock::now();
      std::deque<Work> still;
      for (auto& w : work) {
        if (failure) {
          still.push_back(std::move(w));
          continue;
        }
        bool done = false;
        try {
          done = w.done();
        } catch (const std::exception& e) {
          failure = ::ampkit::detail::concat("rank ", rank_, ": ", w.what, " failed: ", e.what());
        }
        if (done || failure) continue;
        if (now - w.start > timeout_)
          failure = collective_timeout_message(rank_, w.what, timeout_);
        else
          still.push_back(std::move(w));
      }
      if (!failure && hooks_.async_error) {
        if (auto e = hooks_.async_error())
          failure = collective_error_message(rank_, still.empty() ? std::string("no collective (idle)") : still.front().what, *e);
      }
      if (failure) {
        fire(std::move(*failure));
        lk.lock();
        continue;
      }
      lk.lock();
      // Work watched while we polled goes after the older work, keeping issue order.
      for (auto& w : pending_) still.push_back(std::move(w));
      pending_.swap(still);
    }
  }

  int rank_;
  std::chrono::milliseconds timeout_, poll_;
  Hooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Work> pending_;
  bool stop_ = false, fired_ = false;
  std::string message_;
  std::thread thread_;
};

}  // namespace ampkit::dist

/// @brief A multi-threaded batch loader: N worker threads fill a ring of batch slots (bounded
/// prefetch) in memory the caller chooses (pinned host memory for the CUDA backend), with
/// per-sample deterministic randomness, so the same seed gives byte-identical batches whatever
/// the thread count.
///
/// Each sample's random draws come from SampleRng(seed, epoch, dataset index) and each sample
/// has a fixed position in its batch, so neither thread count nor scheduling can change a byte.
/// A sample that throws is replaced by the next index in the epoch's order and counted (kSkip,
/// the default: one unreadable JPEG in 118k must not end a 140-epoch run), or ends the epoch with
/// that error at the batch it belongs to (BadSamplePolicy::kThrow); the error always names the
/// sample and its file. Under kSkip a sample whose substitutes all fail too (a dataset whose
/// images are missing) is an error naming how many were tried. Workers never die silently and the
/// consumer never waits on a batch that cannot complete.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"
#include "ampkit/data/sample_rng.hpp"

namespace ampkit::data {

/// Plain host memory for batch slots (64-byte aligned). A memory policy provides
/// allocate(bytes) -> void* and deallocate(void*, bytes).
struct HostBatchMemory {
  void* allocate(std::size_t bytes) { return ::operator new(bytes, std::align_val_t{64}); }
  void deallocate(void* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
};

enum class BadSamplePolicy { kThrow, kSkip };

struct LoaderConfig {
  int batch_size = 10;
  int n_workers = 2;
  /// Batches prepared ahead of the consumer (ring slots = prefetch + 1 in use).
  int prefetch = 2;
  bool drop_last = false;
  std::uint64_t seed = 0;
  BadSamplePolicy bad_sample = BadSamplePolicy::kSkip;
  /// kSkip: how many substitutes to try for one bad sample before giving up.
  int max_substitutes = 8;
};

/// One epoch's problems (kSkip) for the report at the end of the epoch.
struct LoaderReport {
  std::int64_t n_samples = 0, n_skipped = 0;
  std::vector<std::string> messages;  // first few
};

/// A filled batch: one (n, H, W, C) view per field, valid until the next call to next().
struct Batch {
  std::int64_t index = 0;   // batch number within the epoch
  int n = 0;                // samples in this batch (< batch_size only for a last partial batch)
  int slot = 0;             // ring slot (for a caller that keeps per-slot state, e.g. events)
  std::vector<TensorView<float>> fields;
  std::vector<std::size_t> dataset_indices;  // what each position holds (after substitution)
};

/// @tparam Memory allocation policy for the batch slots (HostBatchMemory, or pinned memory:
///         see backend/cuda/data_loader.cuh)
template <class Memory = HostBatchMemory>
class Loader {
 public:
  /// Fills the sample at dataset index `i` into views (one per field, each (1, H, W, C)).
  using SampleFn =
      std::function<void(std::size_t i, SampleRng& rng, std::span<const TensorView<float>> out)>;

  /// @param sample_shapes per-sample shape (1, H, W, C) of each field
  Loader(LoaderConfig cfg, std::vector<Shape> sample_shapes, SampleFn fn, Memory mem = {})
      : cfg_(cfg), shapes_(std::move(sample_shapes)), fn_(std::move(fn)), mem_(std::move(mem)) {
    AMPKIT_CHECK(cfg_.batch_size > 0 && cfg_.n_workers > 0 && cfg_.prefetch > 0,
                 "Loader: batch_size, n_workers and prefetch must be positive (got ",
                 cfg_.batch_size, ", ", cfg_.n_workers, ", ", cfg_.prefetch, ")");
    for (const Shape& s : shapes_) {
      AMPKIT_CHECK(s.n == 1 && s.numel() > 0, "Loader: per-sample shapes are (1,H,W,C), got ", s);
      per_sample_.push_back(static_cast<std::size_t>(s.numel()));
    }
    const int n_slots = cfg_.prefetch + 1;
    slots_.resize(n_slots);
    for (auto& sl : slots_)
      for (std::size_t f = 0; f < shapes_.size(); ++f) {
        const std::size_t bytes = per_sample_[f] * cfg_.batch_size * sizeof(float);
        sl.fields.push_back(static_cast<float*>(mem_.allocate(bytes)));
      }
    for (int t = 0; t < cfg_.n_workers; ++t) workers_.emplace_back([this] { worker(); });
  }

  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  ~Loader() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& t : workers_) t.join();
    for (auto& sl : slots_)
      for (std::size_t f = 0; f < sl.fields.size(); ++f)
        mem_.deallocate(sl.fields[f], per_sample_[f] * cfg_.batch_size * sizeof(float));
  }

  /// Start an epoch over `order` (e.g. DistributedSampler::indices(epoch)). An unfinished
  /// previous epoch is abandoned (its in-flight samples are finished and dropped).
  void begin_epoch(std::uint64_t epoch, std::vector<std::size_t> order) {
    std::unique_lock lk(mu_);
    ++generation_;
    cv_done_.wait(lk, [&] { return in_flight_ == 0; });
    epoch_ = epoch;
    order_ = std::move(order);
    const std::size_t B = static_cast<std::size_t>(cfg_.batch_size);
    n_batches_ = cfg_.drop_last ? order_.size() / B : (order_.size() + B - 1) / B;
    n_items_ = std::min(order_.size(), n_batches_ * B);
    next_item_ = 0;
    consumed_ = 0;
    returned_ = false;
    report_ = LoaderReport{};
    for (auto& sl : slots_) sl.reset(-1);
    lk.unlock();
    cv_work_.notify_all();
  }

  /// The next batch of the epoch, or nullopt at its end. Releases the batch returned before.
  /// Rethrows (once) the error of a sample in this batch under BadSamplePolicy::kThrow.
  std::optional<Batch> next() {
    std::unique_lock lk(mu_);
    if (returned_) {  // the consumer is done with the previous batch: free its slot
      ++consumed_;
      returned_ = false;
      lk.unlock();
      cv_work_.notify_all();
      lk.lock();
    }
    if (consumed_ >= n_batches_) return std::nullopt;
    const std::int64_t b = static_cast<std::int64_t>(consumed_);
    Slot& sl = slots_[b % slots_.size()];
    const int n = batch_count(consumed_);
    cv_done_.wait(lk, [&] { return sl.batch == b && sl.done == n; });
    if (sl.error) {
      std::exception_ptr e = std::exchange(sl.error, nullptr);
      ++consumed_;  // the batch is lost; the next call goes on with the following one
      lk.unlock();
      cv_work_.notify_all();
      std::rethrow_exception(e);
    }
    returned_ = true;
    Batch out;
    out.index = b;
    out.n = n;
    out.slot = static_cast<int>(b % slots_.size());
    for (std::size_t f = 0; f < shapes_.size(); ++f) {
      Shape s = shapes_[f];
      s.n = n;
      out.fields.emplace_back(sl.fields[f], s);
    }
    out.dataset_indices.assign(sl.indices.begin(), sl.indices.begin() + n);
    return out;
  }

  std::size_t batches_per_epoch() const { return n_batches_; }
  LoaderReport report() const {
    std::lock_guard lk(mu_);
    return report_;
  }

 private:
  struct Slot {
    std::int64_t batch = -1;  // which batch the slot currently holds
    int done = 0;             // samples finished (successfully or not)
    std::exception_ptr error;
    std::vector<float*> fields;
    std::vector<std::size_t> indices;
    void reset(std::int64_t b) {
      batch = b;
      done = 0;
      error = nullptr;
    }
  };

  std::size_t batch() const { return static_cast<std::size_t>(cfg_.batch_size); }
  int batch_count(std::size_t b) const {
    const std::size_t B = static_cast<std::size_t>(cfg_.batch_size);
    return static_cast<int>(std::min(B, n_items_ - b * B));
  }

  void worker() {
    std::unique_lock lk(mu_);
    for (;;) {
      // Wait for an item whose batch has a free slot (bounded prefetch).
      cv_work_.wait(lk, [&] {
        return stop_ || (next_item_ < n_items_ &&
                         next_item_ / batch() < consumed_ + slots_.size());
      });
      if (stop_) return;
      const std::size_t item = next_item_++;
      const std::uint64_t gen = generation_;
      const std::size_t b = item / batch();
      const int pos = static_cast<int>(item % batch());
      Slot& sl = slots_[b % slots_.size()];
      if (sl.batch != static_cast<std::int64_t>(b)) {  // first sample of this batch to start
        sl.reset(static_cast<std::int64_t>(b));
        sl.indices.assign(cfg_.batch_size, 0);
      }
      const std::uint64_t epoch = epoch_;
      const std::vector<std::size_t>& order = order_;
      ++in_flight_;
      lk.unlock();

      std::vector<TensorView<float>> views;
      for (std::size_t f = 0; f < shapes_.size(); ++f)
        views.emplace_back(sl.fields[f] + per_sample_[f] * pos, shapes_[f]);
      std::exception_ptr err;
      std::size_t used = order[item];
      std::vector<std::string> skipped;
      for (int attempt = 0;; ++attempt) {
        // Substitutes walk forward through this epoch's order: deterministic, like the sample.
        used = order[(item + attempt) % order.size()];
        try {
          SampleRng rng(cfg_.seed, epoch, used);
          fn_(used, rng, views);
          err = nullptr;
          break;
        } catch (const std::exception& e) {
          err = std::current_exception();
          if (cfg_.bad_sample == BadSamplePolicy::kThrow) break;
          // Substitutes are distinct samples: never more than the rest of the epoch's order.
          const std::size_t max_sub = std::min<std::size_t>(static_cast<std::size_t>(std::max(cfg_.max_substitutes, 0)),
                                                            order.size() - 1);
          if (static_cast<std::size_t>(attempt) >= max_sub) {
            // Not one bad file but a broken dataset: say so instead of showing only the last file.
            err = std::make_exception_ptr(Error(
                "sample " + std::to_string(order[item % order.size()]) + " and the " + std::to_string(max_sub) +
                " substitutes tried after it all failed (data.bad_sample = skip); last: " + e.what()));
            break;
          }
          skipped.push_back(e.what());
        } catch (...) {
          err = std::current_exception();
          break;
        }
      }

      lk.lock();
      --in_flight_;
      if (gen == generation_) {
        sl.indices[pos] = used;
        ++report_.n_samples;
        report_.n_skipped += static_cast<std::int64_t>(skipped.size());
        for (auto& m : skipped)
          if (report_.messages.size() < 20) report_.messages.push_back(std::move(m));
        if (err && !sl.error) sl.error = err;
        ++sl.done;
      }
      cv_done_.notify_all();
    }
  }

  LoaderConfig cfg_;
  std::vector<Shape> shapes_;
  std::vector<std::size_t> per_sample_;
  SampleFn fn_;
  Memory mem_;
  std::vector<Slot> slots_;
  std::vector<std::thread> workers_;

  mutable std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  bool stop_ = false;
  std::uint64_t generation_ = 0, epoch_ = 0;
  std::vector<std::size_t> order_;
  std::size_t n_batches_ = 0, n_items_ = 0, next_item_ = 0, consumed_ = 0;
  int in_flight_ = 0;
  bool returned_ = false;
  LoaderReport report_;
};

}  // namespace ampkit::data

/// @brief Stream-ordered caching allocator, generic over the raw memory system so that its policy
/// (size bins, same-stream reuse, cross-stream reuse only after an event) is tested on the host.
///
/// Why cache: cudaMalloc/cudaFree synchronise the device and cost tens of microseconds; a training
/// step allocates hundreds of activations. Why stream-ordered: a block freed on stream S may be
/// handed to the next allocation on S at once (the stream orders the old reader before the new
/// writer), but a block that another stream still uses may be reused only after an event recorded
/// on that stream has completed. This is the same contract as PyTorch's CUDA caching allocator and
/// CUB's CachingDeviceAllocator.
///
/// The raw system `R` provides:
///   using Stream; using Event;
///   void* malloc(std::size_t) (nullptr when out of memory); void free(void*);
///   Event record(Stream); bool done(const Event&); void wait(const Event&); void release(Event&);
///   std::size_t free_bytes(); std::size_t total_bytes();
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit {

/// Bytes in use and held by an allocator, now and at peak.
struct MemoryStats {
  std::size_t allocated = 0;       ///< handed out and not yet freed
  std::size_t reserved = 0;        ///< obtained from the raw system (allocated + cached)
  std::size_t peak_allocated = 0;
  std::size_t peak_reserved = 0;
  std::size_t n_raw_allocs = 0;    ///< calls to the raw malloc (few, once warm)
  std::size_t n_cache_hits = 0;
};

/// @tparam R  the raw memory system (see file comment): CUDA in backend/cuda/memory.cuh, a fake in
///            tests/unit/core/caching_allocator.cpp.
template <class R>
class CachingAllocator {
 public:
  using Stream = typename R::Stream;
  using Event = typename R::Event;

  /// Small requests round up to 512 B; larger ones to 2 MiB so that slightly different shapes
  /// share blocks (bounded waste: a request never takes a block more than twice its size).
  static constexpr std::size_t kSmallGranularity = 512;
  static constexpr std::size_t kLargeThreshold = std::size_t{1} << 20;
  static constexpr std::size_t kLargeGranularity = std::size_t{2} << 20;

  explicit CachingAllocator(R raw = R{}) : raw_(std::move(raw)) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  ~CachingAllocator() { release_cached(); }

  static std::size_t round_size(std::size_t bytes) {
    if (bytes == 0) bytes = 1;
    const std::size_t g = bytes < kLargeThreshold ? kSmallGranularity : kLargeGranularity;
    return (bytes + g - 1) / g * g;
  }

  /// A block of at least `bytes` that is safe to use on `stream` in stream order.
  void* allocate(std::size_t bytes, Stream stream) {
    std::lock_guard lock(mu_);
    const std::size_t size = round_size(bytes);
    if (void* p = take_cached(size, stream)) return p;
    void* p = raw_.malloc(size);
    if (!p) {  // give back everything cached that nobody uses, then try once more
      release_cached_locked();
      p = raw_.malloc(size);
    }
    if (!p) {
      throw OutOfMemoryError(detail::concat(
          "out of device memory: asked for ", mib(size), " MiB; ", mib(raw_.free_bytes()),
          " MiB free of ", mib(raw_.total_bytes()), " MiB; this process holds ",
          mib(stats_.allocated), " MiB (peak ", mib(stats_.peak_allocated),
          " MiB). Reduce the batch size or the input size, or use gradient accumulation "
          "(accumulative_counts) to keep the effective batch."));
    }
    ++stats_.n_raw_allocs;
    stats_.reserved += size;
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
    live_.emplace(p, Block{size, stream, {}});
    note_alloc(size);
    return p;
  }

  /// Mark that `stream` (other than the allocating one) reads or writes the block; the block will
  /// not be reused until that stream's work queued so far has finished.
  void record_use(void* p, Stream stream) {
    std::lock_guard lock(mu_);
    auto it = live_.find(p);
    AMPKIT_CHECK(it != live_.end(), "record_use: pointer was not allocated by this allocator");
    if (it->second.stream != stream) it->second.other_streams.push_back(stream);
  }

  /// Return a block. Never throws (called from destructors).
  void deallocate(void* p) noexcept {
    if (!p) return;
    std::lock_guard lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    Block b = std::move(it->second);
    live_.erase(it);
    stats_.allocated -= b.size;
    Cached c{p, b.size, b.stream, {}};
    for (Stream s : b.other_streams) c.pending.push_back(raw_.record(s));
    free_.emplace(b.size, std::move(c));
  }

  /// Free every cached (unused) block back to the raw system; waits on their pending events.
  void release_cached() noexcept {
    std::lock_guard lock(mu_);
    release_cached_locked();
  }

  MemoryStats stats() const {
    std::lock_guard lock(mu_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard lock(mu_);
    stats_.peak_allocated = stats_.allocated;
    stats_.peak_reserved = stats_.reserved;
  }
  R& raw() { return raw_; }

 private:
  struct Block {
    std::size_t size;
    Stream stream;
    std::vector<Stream> other_streams;
  };
  struct Cached {
    void* ptr;
    std::size_t size;
    Stream stream;
    std::vector<Event> pending;  ///< events on other streams that must complete before reuse
  };

  static std::size_t mib(std::size_t b) { return (b + (std::size_t{1} << 20) - 1) >> 20; }

  bool ready(Cached& c) {
    for (auto& e : c.pending)
      if (!raw_.done(e)) return false;
    for (auto& e : c.pending) raw_.release(e);
    c.pending.clear();
    return true;
  }

  void* take_cached(std::size_t size, Stream stream) {
    // Best fit among blocks in [size, 2*size]: first the requesting stream's (ordered by the
    // stream itself), then any stream's whose pending uses and own stream work have completed.
    const auto last = free_.upper_bound(2 * size);
    for (int pass = 0; pass < 2; ++pass) {
      for (auto it = free_.lower_bound(size); it != last; ++it) {
        Cached& c = it->second;
        if (pass == 0 && c.stream != stream) continue;
        if (pass == 1) {
          if (c.stream == stream) continue;
          // A block last used on another stream: that stream's queued work must be finished.
          Event e = raw_.record(c.stream);
          const bool idle = raw_.done(e);
          raw_.release(e);
          if (!idle) continue;
        }
        if (!ready(c)) continue;
        void* p = c.ptr;
        live_.emplace(p, Block{c.size, stream, {}});
        note_alloc(c.size);
        ++stats_.n_cache_hits;
        free_.erase(it);
        return p;
      }
    }
    return nullptr;
  }

  void note_alloc(std::size_t size) {
    stats_.allocated += size;
    stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
  }

  void release_cached_locked() noexcept {
    for (auto& [size, c] : free_) {
      for (auto& e : c.pending) {
        raw_.wait(e);
        raw_.release(e);
      }
      raw_.free(c.ptr);
      stats_.reserved -= size;
    }
    free_.clear();
  }

  R raw_;
  mutable std::mutex mu_;
  std::multimap<std::size_t, Cached> free_;
  std::unordered_map<void*, Block> live_;
  MemoryStats stats_;
};

}  // namespace ampkit

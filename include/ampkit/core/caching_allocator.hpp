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
/// Private pools (CUDA graphs, backend/cuda/graph_step.cuh): a captured graph bakes the addresses
/// it was given during capture into its kernels and writes them again at every replay, long after
/// the capture "freed" them. Such blocks must never be handed to an ordinary allocation between
/// replays. While a pool captures on a stream (begin_pool_capture .. end_pool_capture), every
/// allocation on that stream is served from the pool's own free list first, then from the shared
/// cache (the block moves into the pool), then from the raw system; every block freed on that
/// stream during the capture joins the pool too (a captured kernel may have used it). A pool's
/// blocks go back to its own free list whenever they are freed, during or after the capture, and
/// only release_pool (the graphs that use the pool are gone) returns them to the shared cache.
/// Graphs that replay one after the other in stream order may share one pool (the second capture
/// reuses what the first freed, as eager stream-ordered reuse does).
///
/// The raw system `R` provides:
///   using Stream; using Event;
///   void* malloc(std::size_t) (nullptr when out of memory); void free(void*);
///   Event record(Stream); bool done(const Event&); void wait(const Event&); void release(Event&);
///   std::size_t free_bytes(); std::size_t total_bytes();
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <string>
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
  std::size_t pool_bytes = 0;      ///< held by private pools (graphs), live or cached; part of reserved
};

/// @tparam R  the raw memory system (see file comment): CUDA in backend/cuda/memory.cuh, a fake in
///            tests/unit/core/caching_allocator.cpp.
template <class R>
class CachingAllocator {
 public:
  using Stream = typename R::Stream;
  using Event = typename R::Event;

  /// Small requests round up to 512 B; larger ones to 512 KiB, so that slightly different shapes
  /// share blocks (bounded waste: a request never takes a block more than twice its size). The
  /// large granularity was 2 MiB until 2026-11-30: DEKR-W32 at batch 2 has hundreds of 1-MiB
  /// activations (the 1/8-resolution branch: 64x64x64 fp16 per image pair) that each took a
  /// 2 MiB block. The dry run of the fp16 step (train/memory_plan.hpp) fell from 1534 to 1423
  /// MiB at batch 2 and from 5628 to 5298 MiB at batch 10 with 512 KiB (batch 32: 15922 ->
  /// 15906; 128 KiB would save only 4-17 MiB more). A context may pass another granularity
  /// (the memory plan's tests model allocators of earlier measurements that way).
  static constexpr std::size_t kSmallGranularity = 512;
  static constexpr std::size_t kLargeThreshold = std::size_t{1} << 20;
  static constexpr std::size_t kLargeGranularity = std::size_t{512} << 10;

  /// @param large_granularity  rounding of requests >= kLargeThreshold (a multiple of
  ///                           kSmallGranularity)
  explicit CachingAllocator(R raw = R{}, std::size_t large_granularity = kLargeGranularity)
      : raw_(std::move(raw)), large_granularity_(large_granularity) {
    AMPKIT_CHECK(large_granularity >= kSmallGranularity && large_granularity % kSmallGranularity == 0,
                 "CachingAllocator: the large-block granularity ", large_granularity,
                 " must be a positive multiple of ", kSmallGranularity, " bytes");
  }
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  ~CachingAllocator() {
    release_cached();
    for (auto& [id, pool] : pools_)  // graphs never outlive the allocator they draw from
      for (auto& [size, c] : pool.free) raw_.free(c.ptr);
  }

  static std::size_t round_size(std::size_t bytes, std::size_t large_granularity = kLargeGranularity) {
    if (bytes == 0) bytes = 1;
    const std::size_t g = bytes < kLargeThreshold ? kSmallGranularity : large_granularity;
    return (bytes + g - 1) / g * g;
  }
  std::size_t large_granularity() const { return large_granularity_; }

  /// A block of at least `bytes` that is safe to use on `stream` in stream order.
  void* allocate(std::size_t bytes, Stream stream) {
    std::lock_guard lock(mu_);
    const std::size_t size = round_size(bytes, large_granularity_);
    if (void* p = take_lane_local(size)) return p;
    const PoolId pool = capturing_pool(stream);
    if (pool) {
      if (void* p = take_cached(pools_.at(pool).free, size, stream, /*other_streams=*/false)) {
        live_.at(p).pool = pool;  // already counted in the pool's bytes
        return p;
      }
    }
    // While capturing: only blocks this stream freed and nobody else still uses. Taking another
    // stream's block needs an event query, which a global-mode capture forbids (and the capture
    // only orders work on its own stream anyway).
    if (void* p = take_cached(free_, size, stream, /*other_streams=*/!pool)) {
      if (pool) adopt(live_.at(p), pool);
      return p;
    }
    void* p = nullptr;
    try {
      p = raw_.malloc(size);
    } catch (const std::exception& e) {
      // A raw allocation while a pool captures: a global-mode CUDA graph capture forbids it (the
      // capture then falls back to relaxed mode, backend/cuda/graph_step.cuh). Say why the cache
      // could not serve the request, so the capture's report names the cause.
      if (!pool) throw;
      throw Error(detail::concat(e.what(), " [", capture_miss_note(size, stream), "]"));
    }
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
    Block& blk = live_.emplace(p, Block{size, stream, {}, 0, lane_, region_}).first->second;
    if (pool) adopt(blk, pool);
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
    if (defer_depth_ > 0) {
      // vector/map growth may throw; the block then stays live until the allocator dies (a leak
      // of one block beats handing it to a second owner while a side stream still uses it)
      try {
        Block& b = it->second;
        if (lane_ >= 0 && b.lane == lane_ && b.region == region_ && b.other_streams.empty()) {
          // Allocated in this region by the lane now running and freed by it: its users so far
          // are that lane's stream (a fork's branches share nothing), so the lane may take it
          // again at once, in its stream order. Other lanes and the compute stream may not.
          stats_.allocated -= b.size;
          lane_free_[static_cast<std::size_t>(lane_)].emplace(b.size, LaneCached{p, std::move(b)});
          live_.erase(it);
          return;
        }
        deferred_.push_back(p);
      } catch (...) {
      }
      return;
    }
    Block b = std::move(it->second);
    live_.erase(it);
    stats_.allocated -= b.size;
    cache_block(p, std::move(b));
  }

  // ---- deferred frees (fork-join regions) ---------------------------------------------------------
  /// From now on until the matching end_deferred_frees(), returned blocks stay out of the cache.
  /// For work forked from one stream onto side streams (Cuda::fork_branches): every block is
  /// allocated on the forking stream, so a block another branch's stream returns mid-region must
  /// not reach the next allocation, which may be another branch running concurrently with the old
  /// owner's last kernels. At the end (after the join: the forking stream has waited for every
  /// side stream) the held blocks are returned as usual, in the order they were freed. Nests.
  void begin_deferred_frees() {
    std::lock_guard lock(mu_);
    if (defer_depth_++ == 0) ++region_;
  }
  void end_deferred_frees() noexcept {
    std::vector<void*> held;
    {
      std::lock_guard lock(mu_);
      if (defer_depth_ == 0 || --defer_depth_ > 0) return;
      lane_ = -1;
      // The lanes' blocks (already free in the stats) go to the ordinary cache of their stream.
      for (auto& lane : lane_free_) {
        for (auto& [size, c] : lane) {
          try {
            cache_block(c.ptr, std::move(c.block));
          } catch (...) {
          }
        }
        lane.clear();
      }
      held.swap(deferred_);
    }
    for (void* p : held) deallocate(p);
  }
  /// Inside a deferred-free region: the branch (lane, 0..kMaxLanes-1) whose ops are issued from
  /// now on; -1: none (the forking stream). A block allocated by a lane and freed while that lane
  /// is current is reused by the same lane's later requests within the region (its stream orders
  /// the reuse) instead of being held to the end: a branch's temporaries (its gradients in a
  /// backward, its workspaces) then cost the branch's working set, not their sum. The blocks of
  /// one lane are never given to another lane or to the forking stream before the region ends.
  void set_lane(int lane) {
    std::lock_guard lock(mu_);
    AMPKIT_CHECK(lane >= -1 && lane < kMaxLanes, "CachingAllocator::set_lane: lane ", lane, " outside [-1, ",
                 kMaxLanes, ")");
    lane_ = defer_depth_ > 0 ? lane : -1;
  }
  static constexpr int kMaxLanes = 8;
  /// Blocks returned during the current deferred-free region, held until its end (not counting
  /// those a lane keeps for its own reuse).
  std::size_t deferred_blocks() const {
    std::lock_guard lock(mu_);
    return deferred_.size();
  }
  /// Blocks the lanes of the current region keep for their own reuse.
  std::size_t lane_cached_blocks() const {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    for (const auto& l : lane_free_) n += l.size();
    return n;
  }

  // ---- private pools (see the file comment) ------------------------------------------------------
  /// Identifies a private pool; 0 is the shared cache.
  using PoolId = std::uint64_t;

  /// A new, empty private pool.
  PoolId create_pool() {
    std::lock_guard lock(mu_);
    const PoolId id = ++last_pool_;
    pools_.emplace(id, Pool{});
    return id;
  }
  /// From now on, allocations on `stream` come from `pool` and blocks freed on `stream` join it.
  void begin_pool_capture(PoolId pool, Stream stream) {
    std::lock_guard lock(mu_);
    AMPKIT_CHECK(pools_.count(pool), "begin_pool_capture: unknown pool ", pool);
    AMPKIT_CHECK(!capturing_pool(stream), "begin_pool_capture: the stream already captures into pool ",
                 capturing_pool(stream));
    capturing_.emplace_back(stream, pool);
  }
  /// Back to the shared cache for `stream` (the pool keeps its blocks).
  void end_pool_capture(Stream stream) noexcept {
    std::lock_guard lock(mu_);
    std::erase_if(capturing_, [&](const auto& sp) { return sp.first == stream; });
  }
  /// The graphs that used `pool` are gone: its cached blocks join the shared cache, its live ones
  /// will when they are freed. Stream order keeps that safe: a block is reused on its stream after
  /// the last replay queued there.
  void release_pool(PoolId pool) noexcept {
    std::lock_guard lock(mu_);
    const auto it = pools_.find(pool);
    if (it == pools_.end()) return;
    std::erase_if(capturing_, [&](const auto& sp) { return sp.second == pool; });
    for (auto& [p, b] : live_)
      if (b.pool == pool) b.pool = 0;
    stats_.pool_bytes -= it->second.bytes;
    free_.merge(it->second.free);
    pools_.erase(it);
  }
  /// Bytes a pool holds (live or cached); 0 for an unknown pool.
  std::size_t pool_bytes(PoolId pool) const {
    std::lock_guard lock(mu_);
    const auto it = pools_.find(pool);
    return it == pools_.end() ? 0 : it->second.bytes;
  }
  /// The private pool a live block belongs to (0: shared, or not a live block of this allocator).
  PoolId pool_of(const void* p) const {
    std::lock_guard lock(mu_);
    const auto it = live_.find(const_cast<void*>(p));
    return it == live_.end() ? 0 : it->second.pool;
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
    std::uint64_t pool = 0;  ///< PoolId; 0: the shared cache
    int lane = -1;           ///< set_lane's lane when allocated (-1: none)
    std::uint64_t region = 0;  ///< the deferred-free region it was allocated in (0: none)
  };
  struct LaneCached {
    void* ptr;
    Block block;
  };
  struct Cached {
    void* ptr;
    std::size_t size;
    Stream stream;
    std::vector<Event> pending;  ///< events on other streams that must complete before reuse
  };
  struct Pool {
    std::multimap<std::size_t, Cached> free;
    std::size_t bytes = 0;  ///< live + cached blocks of the pool
  };

  std::uint64_t capturing_pool(Stream stream) const {
    for (const auto& [s, pool] : capturing_)
      if (s == stream) return pool;
    return 0;
  }
  void adopt(Block& b, std::uint64_t pool) {
    b.pool = pool;
    pools_.at(pool).bytes += b.size;
    stats_.pool_bytes += b.size;
  }

  static std::size_t mib(std::size_t b) { return (b + (std::size_t{1} << 20) - 1) >> 20; }

  bool ready(Cached& c) {
    for (auto& e : c.pending)
      if (!raw_.done(e)) return false;
    for (auto& e : c.pending) raw_.release(e);
    c.pending.clear();
    return true;
  }

  /// Why a request of `size` bytes on `stream`, during a pool capture, found no cached block: the
  /// shared cache's blocks in the best-fit range [size, 2 size] by what excluded them (another
  /// stream's, or waiting on another stream's recorded use), and the cached total.
  std::string capture_miss_note(std::size_t size, Stream stream) const {
    int other = 0, pending = 0, fits = 0;
    std::size_t cached = 0;
    for (const auto& [sz, c] : free_) {
      cached += sz;
      if (sz < size || sz > 2 * size) continue;
      ++fits;
      if (c.stream != stream) ++other;
      else if (!c.pending.empty()) ++pending;
    }
    return detail::concat("pool capture: ", size, " B requested; the shared cache holds ", free_.size(),
                          " blocks (", mib(cached), " MiB), ", fits, " of them in [", size, ", ", 2 * size,
                          "] B: ", other, " last used on another stream, ", pending,
                          " waiting on another stream's use; the capture may take neither without an event query");
  }

  /// A free block (no longer in live_, not counted in `allocated`) into the cache of its stream,
  /// or of its pool.
  void cache_block(void* p, Block b) {
    Cached c{p, b.size, b.stream, {}};
    for (Stream s : b.other_streams) c.pending.push_back(raw_.record(s));
    // A shared block freed on a capturing stream: a captured kernel may use it at every replay.
    if (!b.pool)
      if (const PoolId pool = capturing_pool(b.stream)) adopt(b, pool);
    (b.pool ? pools_.at(b.pool).free : free_).emplace(b.size, std::move(c));
  }

  /// Best fit in [size, 2*size] among the blocks the current lane freed in this region.
  void* take_lane_local(std::size_t size) {
    if (defer_depth_ == 0 || lane_ < 0) return nullptr;
    auto& list = lane_free_[static_cast<std::size_t>(lane_)];
    const auto it = list.lower_bound(size);
    if (it == list.end() || it->first > 2 * size) return nullptr;
    void* p = it->second.ptr;
    live_.emplace(p, std::move(it->second.block));
    list.erase(it);
    note_alloc(live_.at(p).size);
    ++stats_.n_cache_hits;
    return p;
  }

  void* take_cached(std::multimap<std::size_t, Cached>& list, std::size_t size, Stream stream, bool other_streams) {
    // Best fit among blocks in [size, 2*size]: first the requesting stream's (ordered by the
    // stream itself), then any stream's whose pending uses and own stream work have completed.
    const auto last = list.upper_bound(2 * size);
    for (int pass = 0; pass < (other_streams ? 2 : 1); ++pass) {
      for (auto it = list.lower_bound(size); it != last; ++it) {
        Cached& c = it->second;
        if (pass == 0 && c.stream != stream) continue;
        if (!other_streams && !c.pending.empty()) continue;  // would query events (see allocate)
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
        live_.emplace(p, Block{c.size, stream, {}, 0, lane_, region_});
        note_alloc(c.size);
        ++stats_.n_cache_hits;
        list.erase(it);
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
  std::size_t large_granularity_ = kLargeGranularity;
  mutable std::mutex mu_;
  int defer_depth_ = 0;
  std::vector<void*> deferred_;  ///< blocks returned while defer_depth_ > 0, in order
  int lane_ = -1;                ///< set_lane (only inside a region)
  std::uint64_t region_ = 0;     ///< counts regions; a block's `region` names the one it was made in
  std::array<std::multimap<std::size_t, LaneCached>, kMaxLanes> lane_free_;  ///< per lane, by size
  std::multimap<std::size_t, Cached> free_;
  std::unordered_map<void*, Block> live_;
  std::map<std::uint64_t, Pool> pools_;
  std::vector<std::pair<Stream, std::uint64_t>> capturing_;  ///< (stream, pool) captures in progress
  std::uint64_t last_pool_ = 0;
  MemoryStats stats_;
};

}  // namespace ampkit

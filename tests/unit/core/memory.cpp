// CachingAllocator's policy on a fake raw system (no GPU needed): size bins, same-stream reuse,
// cross-stream reuse only after the other stream's events complete, OOM message, stats, private
// pools for CUDA graphs.
// Device discovery messages (DeviceInfo checks) are here too: they need no device.
#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>

#include "ampkit/core/caching_allocator.hpp"
#include "ampkit/core/device_info.hpp"

using namespace ampkit;

namespace {
// A fake device: streams are ints; an event is "done" once the test marks that stream idle.
struct FakeRaw {
  struct State {
    std::size_t capacity = 64u << 20, used = 0;
    std::map<void*, std::size_t> blocks;
    std::set<int> busy_streams;
    int n_frees = 0;
    bool forbid_malloc = false;  // as cudaMalloc inside a global-mode graph capture
  };
  using Stream = int;
  struct Event {
    int stream;
    bool done_at_record;
  };
  std::shared_ptr<State> s = std::make_shared<State>();

  void* malloc(std::size_t b) {
    if (s->forbid_malloc) throw std::runtime_error("cudaMalloc: operation not permitted when stream is capturing");
    if (s->used + b > s->capacity) return nullptr;
    void* p = std::malloc(b);
    s->used += b;
    s->blocks[p] = b;
    return p;
  }
  void free(void* p) {
    s->used -= s->blocks.at(p);
    s->blocks.erase(p);
    std::free(p);
    ++s->n_frees;
  }
  Event record(Stream st) { return {st, !s->busy_streams.count(st)}; }
  bool done(const Event& e) { return e.done_at_record || !s->busy_streams.count(e.stream); }
  void wait(const Event&) {}
  void release(Event&) {}
  std::size_t free_bytes() { return s->capacity - s->used; }
  std::size_t total_bytes() { return s->capacity; }
};
}  // namespace

TEST_CASE("sizes round to 512 B below 1 MiB and to 512 KiB above (or the granularity given)") {
  using A = CachingAllocator<FakeRaw>;
  CHECK(A::round_size(1) == 512);
  CHECK(A::round_size(513) == 1024);
  CHECK(A::round_size((1u << 20) - 1) == (1u << 20));
  CHECK(A::round_size(1u << 20) == (1u << 20));  // a 1-MiB activation keeps 1 MiB (it took 2 before)
  CHECK(A::round_size((1u << 20) + 1) == (3u << 19));
  CHECK(A::round_size(5u << 20) == (5u << 20));
  CHECK(A::round_size((5u << 20) + 1) == (11u << 19));
  // the earlier 2 MiB rounding, as the memory plan's tests model it
  CHECK(A::round_size((1u << 20) + 1, 2u << 20) == (2u << 20));
  CHECK(A::round_size(5u << 20, 2u << 20) == (6u << 20));
  // an allocator made with another granularity rounds with it
  CachingAllocator<FakeRaw> a(FakeRaw{}, 2u << 20);
  CHECK(a.large_granularity() == (2u << 20));
  void* p = a.allocate((1u << 20) + 1, 1);
  CHECK(a.stats().allocated == (2u << 20));
  a.deallocate(p);
  CHECK_THROWS_WITH_AS(CachingAllocator<FakeRaw>(FakeRaw{}, 1000), doctest::Contains("multiple of 512"), Error);
}

TEST_CASE("a block freed on a stream is reused on that stream without a new raw allocation") {
  CachingAllocator<FakeRaw> a;
  void* p = a.allocate(3000, 1);
  a.deallocate(p);
  void* q = a.allocate(2900, 1);  // same 3072-byte bin
  CHECK(q == p);
  auto st = a.stats();
  CHECK(st.n_raw_allocs == 1);
  CHECK(st.n_cache_hits == 1);
  CHECK(st.allocated == 3072);
  void* big = a.allocate(10000, 1);  // never hands out a block smaller than asked
  CHECK(big != q);
  a.deallocate(q);
  a.deallocate(big);
  CHECK(a.stats().allocated == 0);
  CHECK(a.stats().peak_allocated == 3072 + 10240);
}

TEST_CASE("no block more than twice the request is handed out (bounded waste)") {
  CachingAllocator<FakeRaw> a;
  void* p = a.allocate(8192, 1);
  a.deallocate(p);
  void* q = a.allocate(1024, 1);
  CHECK(q != p);
  CHECK(a.stats().n_raw_allocs == 2);
  a.deallocate(q);
}

TEST_CASE("cross-stream reuse waits for the other streams' recorded uses") {
  CachingAllocator<FakeRaw> a;
  auto& st = *a.raw().s;
  void* p = a.allocate(4096, 1);
  a.record_use(p, 2);        // a copy stream reads it
  st.busy_streams.insert(2);  // ... and has not finished
  a.deallocate(p);
  void* q = a.allocate(4096, 1);  // even the owner stream must not reuse it yet
  CHECK(q != p);
  st.busy_streams.erase(2);
  void* r = a.allocate(4096, 1);
  CHECK(r == p);
  a.deallocate(q);
  a.deallocate(r);
}

TEST_CASE("a block from another stream is reused only once that stream is idle") {
  CachingAllocator<FakeRaw> a;
  auto& st = *a.raw().s;
  void* p = a.allocate(4096, 1);
  a.deallocate(p);
  st.busy_streams.insert(1);
  void* q = a.allocate(4096, 2);
  CHECK(q != p);
  st.busy_streams.erase(1);
  void* r = a.allocate(4096, 3);
  CHECK(r == p);
  a.deallocate(q);
  a.deallocate(r);
}

TEST_CASE("out of memory: cached blocks are released and retried, then a clear error") {
  CachingAllocator<FakeRaw> a;
  auto& st = *a.raw().s;
  st.capacity = 7u << 20;
  void* p = a.allocate(6u << 20, 1);
  a.deallocate(p);  // cached, 6 MiB held
  void* q = a.allocate(2u << 20, 1);  // too small to take the 6 MiB block, and does not fit
                                      // beside it: the cache is freed first
  CHECK(q != nullptr);
  CHECK(st.n_frees == 1);
  CHECK_THROWS_WITH_AS(a.allocate(6u << 20, 1),
                       doctest::Contains("out of device memory: asked for 6 MiB; 5 MiB free of 7 MiB; "
                                         "this process holds 2 MiB (peak 6 MiB). Reduce the batch size"),
                       OutOfMemoryError);
  a.deallocate(q);
  a.release_cached();
  CHECK(st.used == 0);
}

// ---- private pools (CUDA graphs: backend/cuda/graph_step.cuh) ----------------------------------
TEST_CASE("a private pool keeps the blocks of a capture away from ordinary allocations until released") {
  CachingAllocator<FakeRaw> a;
  const auto& st = *a.raw().s;
  // warm-up: the shared cache holds one 4 KiB and one 16 KiB block of stream 1
  void* w4 = a.allocate(4096, 1);
  void* w16 = a.allocate(16384, 1);
  a.deallocate(w4);
  a.deallocate(w16);
  const std::size_t raw0 = a.stats().n_raw_allocs;

  const auto pool = a.create_pool();
  a.begin_pool_capture(pool, 1);
  void* c4 = a.allocate(4096, 1);  // the capture is served by the shared cache: no raw allocation
  CHECK(c4 == w4);
  CHECK(a.pool_of(c4) == pool);
  void* other = a.allocate(65536, 2);  // another stream is not captured: its own (raw) block
  CHECK(a.pool_of(other) == 0);
  a.deallocate(c4);  // freed inside the capture: back to the pool, not to the shared cache
  a.end_pool_capture(1);
  CHECK(a.stats().n_raw_allocs == raw0 + 1);  // only stream 2's block
  CHECK(a.pool_bytes(pool) == 4096);
  CHECK(a.stats().pool_bytes == 4096);

  // Between replays: an ordinary allocation of the same size on the same stream must not get the
  // graph's block (the next replay would overwrite it).
  void* e4 = a.allocate(4096, 1);
  CHECK(e4 != c4);
  CHECK(a.pool_of(e4) == 0);
  // The shared 16 KiB block is still shared (the capture never touched it).
  void* e16 = a.allocate(16384, 1);
  CHECK(e16 == w16);
  a.deallocate(e4);
  a.deallocate(e16);
  a.deallocate(other);

  // release_cached (the OOM path) frees shared blocks only: the graph's stay.
  a.release_cached();
  CHECK(st.blocks.count(c4) == 1);
  CHECK(st.blocks.count(e4) == 0);

  // A second capture into the same pool (the other graph of an accumulation window) reuses it.
  a.begin_pool_capture(pool, 1);
  void* d4 = a.allocate(4096, 1);
  CHECK(d4 == c4);
  a.deallocate(d4);
  a.end_pool_capture(1);

  // The graphs are gone: the block returns to the shared cache and is reused without a raw alloc.
  a.release_pool(pool);
  CHECK(a.pool_bytes(pool) == 0);
  CHECK(a.stats().pool_bytes == 0);
  const std::size_t raw1 = a.stats().n_raw_allocs;
  void* f4 = a.allocate(4096, 1);
  CHECK(f4 == c4);
  CHECK(a.stats().n_raw_allocs == raw1);
  a.deallocate(f4);
}

TEST_CASE("a private pool adopts shared blocks freed during the capture and keeps blocks that outlive it") {
  CachingAllocator<FakeRaw> a;
  void* before = a.allocate(2048, 1);  // allocated eagerly, freed by the captured step
  const auto pool = a.create_pool();
  a.begin_pool_capture(pool, 1);
  CHECK_THROWS_WITH_AS(a.begin_pool_capture(pool, 1), doctest::Contains("already captures into pool"), Error);
  void* kept = a.allocate(1u << 21, 1);  // a raw allocation (relaxed capture), live after the capture
  a.deallocate(before);                   // a captured kernel may have used it: it joins the pool
  a.end_pool_capture(1);
  CHECK(a.pool_of(kept) == pool);
  CHECK(a.pool_bytes(pool) == 2048 + (2u << 20));
  void* e = a.allocate(2048, 1);
  CHECK(e != before);
  // freed after the capture (a layer replacing its saved activation eagerly): still the pool's
  a.deallocate(kept);
  void* big = a.allocate(1u << 21, 1);
  CHECK(big != kept);
  a.deallocate(big);
  a.deallocate(e);
  CHECK(a.pool_bytes(pool) == 2048 + (2u << 20));
  // a live block of a released pool becomes an ordinary block
  a.begin_pool_capture(pool, 1);
  void* live = a.allocate(2048, 1);
  CHECK(live == before);
  a.end_pool_capture(1);
  a.release_pool(pool);
  CHECK(a.pool_of(live) == 0);
  a.deallocate(live);
  void* g = a.allocate(2048, 1);
  CHECK((g == live || g == e));
  a.deallocate(g);
  CHECK_THROWS_WITH_AS(a.begin_pool_capture(pool, 1), doctest::Contains("unknown pool"), Error);
}

TEST_CASE("a capture takes no other stream's block (that would need an event query, forbidden while capturing)") {
  CachingAllocator<FakeRaw> a;
  void* other = a.allocate(4096, 2);
  a.deallocate(other);  // cached on stream 2, which is idle: an ordinary allocation on 1 may take it
  const auto pool = a.create_pool();
  a.begin_pool_capture(pool, 1);
  void* c = a.allocate(4096, 1);
  CHECK(c != other);
  a.deallocate(c);
  a.end_pool_capture(1);
  void* e = a.allocate(4096, 1);
  CHECK(e == other);
  a.deallocate(e);
}

TEST_CASE("a raw allocation refused during a pool capture says why the cache could not serve it") {
  CachingAllocator<FakeRaw> a;
  void* other = a.allocate(8192, 2);  // cached on stream 2 afterwards: the capture on 1 may not take it
  void* used = a.allocate(8192, 1);
  a.record_use(used, 2);               // cached on stream 1, but waiting on stream 2's recorded use
  a.deallocate(other);
  a.deallocate(used);
  const auto pool = a.create_pool();
  a.begin_pool_capture(pool, 1);
  a.raw().s->forbid_malloc = true;
  std::string msg;
  try {
    (void)a.allocate(8192, 1);
  } catch (const Error& e) {
    msg = e.what();
  }
  a.raw().s->forbid_malloc = false;
  a.end_pool_capture(1);
  CAPTURE(msg);
  CHECK(msg.find("operation not permitted when stream is capturing") != std::string::npos);
  CHECK(msg.find("8192 B requested") != std::string::npos);
  CHECK(msg.find("2 of them in [8192, 16384] B: 1 last used on another stream, 1 waiting on another stream's use") !=
        std::string::npos);
  // After the capture an ordinary allocation may query events: it takes the stream-1 block, whose
  // recorded use on the idle stream 2 has completed.
  void* e = a.allocate(8192, 1);
  CHECK(e == used);
  a.deallocate(e);
}

TEST_CASE("blocks returned in a deferred-free region reach the cache only at its end, in order") {
  CachingAllocator<FakeRaw> a;
  a.begin_deferred_frees();
  void* p = a.allocate(3000, 1);
  void* w = a.allocate(3000, 1);
  a.deallocate(p);  // a branch's temporary, returned while another branch may still run
  CHECK(a.deferred_blocks() == 1);
  CHECK(a.stats().allocated == 2 * 3072);  // still counted: its last kernels may not have run
  void* q = a.allocate(3000, 1);  // the next branch's request must not take p
  CHECK(q != p);
  CHECK(q != w);
  a.begin_deferred_frees();  // nested: only the outermost end releases
  a.deallocate(q);
  a.end_deferred_frees();
  CHECK(a.deferred_blocks() == 2);
  a.end_deferred_frees();
  CHECK(a.deferred_blocks() == 0);
  CHECK(a.stats().allocated == 3072);
  CHECK(a.stats().n_raw_allocs == 3);
  // After the region both blocks are cached on their stream and reused without a raw allocation.
  void* r1 = a.allocate(3000, 1);
  void* r2 = a.allocate(3000, 1);
  CHECK(((r1 == p && r2 == q) || (r1 == q && r2 == p)));
  CHECK(a.stats().n_raw_allocs == 3);
  a.end_deferred_frees();  // unmatched: no effect
  a.deallocate(r1);
  CHECK(a.deferred_blocks() == 0);
  a.deallocate(r2);
  a.deallocate(w);
  CHECK(a.stats().allocated == 0);
}

TEST_CASE("in a deferred-free region a lane reuses what it freed itself, and nothing else") {
  CachingAllocator<FakeRaw> a;
  a.set_lane(0);  // outside a region: no effect
  void* before = a.allocate(3000, 1);
  a.begin_deferred_frees();
  a.set_lane(0);
  void* x = a.allocate(3000, 1);  // lane 0's
  a.deallocate(before);           // allocated before the fork: held to the end
  CHECK(a.deferred_blocks() == 1);
  a.deallocate(x);                // lane 0's own: kept for lane 0
  CHECK(a.lane_cached_blocks() == 1);
  CHECK(a.deferred_blocks() == 1);
  CHECK(a.stats().allocated == 3072);  // `before` still counts; x is free again
  a.set_lane(1);
  void* y = a.allocate(3000, 1);  // lane 1 must not take lane 0's block (it may still be in use)
  CHECK(y != x);
  CHECK(y != before);
  a.set_lane(0);
  void* x2 = a.allocate(2900, 1);  // lane 0 again: its own block, no raw allocation
  CHECK(x2 == x);
  CHECK(a.stats().n_raw_allocs == 3);
  a.deallocate(y);  // lane 1's block freed while lane 0 runs: held
  CHECK(a.deferred_blocks() == 2);
  a.deallocate(x2);
  a.set_lane(-1);
  void* m = a.allocate(3000, 1);  // the forking stream inside the region: neither lane's block
  CHECK(m != x);
  CHECK(m != y);
  a.deallocate(m);  // held
  const auto peak = a.stats().peak_allocated;
  a.end_deferred_frees();
  CHECK(a.deferred_blocks() == 0);
  CHECK(a.lane_cached_blocks() == 0);
  CHECK(a.stats().allocated == 0);
  CHECK(a.stats().peak_allocated == peak);  // returning the lanes' blocks is not an allocation
  // After the join every block is an ordinary cached block of its stream: four reuses, no raw.
  std::set<void*> seen;
  for (int i = 0; i < 4; ++i) seen.insert(a.allocate(3000, 1));
  CHECK(seen == std::set<void*>{before, x, y, m});
  CHECK(a.stats().n_raw_allocs == 4);
  for (void* p : seen) a.deallocate(p);
  // A block from an earlier region is not the lane's in a later one.
  a.begin_deferred_frees();
  a.set_lane(0);
  void* r1 = a.allocate(3000, 1);
  a.end_deferred_frees();
  a.begin_deferred_frees();
  a.set_lane(0);
  a.deallocate(r1);
  CHECK(a.lane_cached_blocks() == 0);
  CHECK(a.deferred_blocks() == 1);
  a.end_deferred_frees();
  CHECK_THROWS_AS(a.set_lane(8), Error);
  CHECK(a.stats().allocated == 0);
}

TEST_CASE("device checks say what to use instead") {
  DeviceInfo turing{0, "Tesla T4", 7, 5, 16u << 30, 40, 13000, 13000};
  DeviceInfo pascal{1, "GeForce GTX 1080", 6, 1, 8u << 30, 20, 13000, 13000};
  DeviceInfo hopper{0, "NVIDIA H200", 9, 0, 141u << 30, 132, 13000, 13000};
  CHECK_NOTHROW(check_device_supports<AmpFp16>(turing));
  CHECK_NOTHROW(check_device_supports<AmpBf16>(hopper));
  CHECK_NOTHROW(check_device_supports<Fp32>(pascal));
  CHECK_THROWS_WITH_AS(check_device_supports<AmpBf16>(turing),
                       doctest::Contains("GPU 0 (Tesla T4) has compute capability 7.5; Precision<bf16, "
                                         "fp32_master> needs 8.0 (Ampere or newer)"), Error);
  CHECK_THROWS_WITH_AS(check_device_supports<AmpBf16>(turing), doctest::Contains("Use --amp"), Error);
  CHECK_THROWS_WITH_AS(check_device_supports<AmpFp16>(pascal),
                       doctest::Contains("has compute capability 6.1; Precision<fp16, fp32_master> "
                                         "needs 7.0 or newer"), Error);
  CHECK_THROWS_WITH_AS(check_device_supports<AmpFp16>(pascal), doctest::Contains("--precision fp32"), Error);
  CHECK(no_device_message("CUDA driver version is insufficient", 0, 13000).find("no NVIDIA driver") != std::string::npos);
  CHECK(no_device_message("CUDA driver version is insufficient", 12040, 13000).find(
            "the NVIDIA driver supports CUDA 12.4 but ampkit was built with CUDA 13.0") != std::string::npos);
  CHECK(no_device_message("no CUDA-capable device is detected", 13000, 13000).find("--device host") != std::string::npos);
}

// CachingAllocator's policy on a fake raw system (no GPU needed): size bins, same-stream reuse,
// cross-stream reuse only after the other stream's events complete, OOM message, stats.
// Device discovery messages (DeviceInfo checks) are here too: they need no device.
#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <set>

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
  };
  using Stream = int;
  struct Event {
    int stream;
    bool done_at_record;
  };
  std::shared_ptr<State> s = std::make_shared<State>();

  void* malloc(std::size_t b) {
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

TEST_CASE("sizes round to 512 B below 1 MiB and to 2 MiB above") {
  using A = CachingAllocator<FakeRaw>;
  CHECK(A::round_size(1) == 512);
  CHECK(A::round_size(513) == 1024);
  CHECK(A::round_size((1u << 20) - 1) == (1u << 20));
  CHECK(A::round_size((1u << 20) + 1) == (2u << 20));
  CHECK(A::round_size(5u << 20) == (6u << 20));
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

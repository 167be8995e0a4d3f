// Rendezvous over loopback (threads), gradient bucket plans and readiness, the watchdog's
// timeout / async-error / abort behaviour with fake operations.
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ampkit/dist/bucket_plan.hpp"
#include "ampkit/dist/rendezvous.hpp"
#include "ampkit/dist/watchdog.hpp"

using namespace ampkit;
using namespace ampkit::dist;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

std::vector<std::byte> fake_id(std::uint64_t seed) {
  std::vector<std::byte> id(128);
  std::mt19937_64 rng(seed);
  for (auto& b : id) b = static_cast<std::byte>(rng() & 0xff);
  return id;
}

/// A port nothing listens on: bind an ephemeral one, then release it.
int closed_port() {
  RendezvousServer s(0);
  return s.port();
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

}  // namespace

// ---- rendezvous -----------------------------------------------------------------------------------

TEST_CASE("rendezvous: rank 0 hands a 128-byte id to 1-3 peers over loopback") {
  for (int world : {2, 3, 4}) {
    CAPTURE(world);
    const auto id = fake_id(1234 + static_cast<std::uint64_t>(world));
    std::vector<std::future<std::vector<std::byte>>> peers;
    std::atomic<int> port{0};
    std::promise<void> bound;
    auto server = std::async(std::launch::async, [&] {
      RendezvousServer s(0);
      port = s.port();
      bound.set_value();
      s.serve(id, world, 10s);
    });
    bound.get_future().wait();
    for (int r = 1; r < world; ++r)
      peers.push_back(std::async(std::launch::async, [&, r] {
        return rendezvous_fetch("127.0.0.1", port.load(), r, world, id.size(), 10s);
      }));
    server.get();
    for (auto& p : peers) CHECK(p.get() == id);
  }
}

TEST_CASE("rendezvous: peers that start before rank 0 binds retry until it does") {
  const int port = closed_port();
  const auto id = fake_id(7);
  auto peer = std::async(std::launch::async, [&] { return rendezvous_fetch("localhost", port, 1, 2, 128, 10s); });
  std::this_thread::sleep_for(300ms);
  RendezvousServer s(port);
  s.serve(id, 2, 10s);
  CHECK(peer.get() == id);
}

TEST_CASE("rendezvous_exchange over LaunchEnv") {
  const int port = closed_port();
  const auto id = fake_id(99);
  auto env_of = [&](int rank) {
    LaunchEnv e;
    e.launcher = Launcher::kTorchrun;
    e.rank = rank;
    e.world_size = 3;
    e.local_world_size = 3;
    e.local_rank = rank;
    e.master_addr = "127.0.0.1";
    e.rendezvous_port = port;
    e.timeout = std::chrono::seconds(10);
    return e;
  };
  std::vector<std::future<std::vector<std::byte>>> ranks;
  for (int r = 2; r >= 0; --r)
    ranks.push_back(std::async(std::launch::async, [&, r] {
      return rendezvous_exchange(env_of(r), r == 0 ? std::span<const std::byte>(id) : std::span<const std::byte>{},
                                 128);
    }));
  for (auto& f : ranks) CHECK(f.get() == id);
}

TEST_CASE("rendezvous: a peer with nobody listening times out naming host:port and what to check") {
  const int port = closed_port();
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = error_of([&] { (void)rendezvous_fetch("127.0.0.1", port, 3, 4, 128, 400ms); });
  const auto took = std::chrono::steady_clock::now() - t0;
  INFO(err);
  CHECK(contains(err, "rank 3: no rendezvous with rank 0 at 127.0.0.1:" + std::to_string(port) + " within 0.4 s"));
  CHECK(contains(err, "Connection refused"));
  CHECK(contains(err, "MASTER_ADDR and MASTER_PORT"));
  CHECK(contains(err, "AMPKIT_DIST_TIMEOUT"));
  // The deadline is honoured: not much before, not long after.
  CHECK(took >= 400ms);
  CHECK(took < 3s);
}

TEST_CASE("rendezvous: rank 0 times out naming the ranks that never came") {
  RendezvousServer s(0);
  const int port = s.port();
  auto peer = std::async(std::launch::async, [&] { return rendezvous_fetch("127.0.0.1", port, 2, 4, 128, 5s); });
  const std::string err = error_of([&] { s.serve(fake_id(1), 4, 600ms); });
  INFO(err);
  CHECK(contains(err, "rank 0: rendezvous on port " + std::to_string(port) + " timed out after 0.6 s"));
  CHECK(contains(err, "1 of 3 peer ranks connected, still missing rank(s) 1, 3 (world size 4)"));
  CHECK(peer.get() == fake_id(1));
}

TEST_CASE("rendezvous: inconsistent launches fail at once on both sides") {
  SUBCASE("world size mismatch") {
    RendezvousServer s(0);
    const int port = s.port();
    auto peer = std::async(std::launch::async,
                           [&] { return error_of([&] { (void)rendezvous_fetch("127.0.0.1", port, 1, 3, 128, 5s); }); });
    const std::string server_err = error_of([&] { s.serve(fake_id(2), 2, 5s); });
    const std::string peer_err = peer.get();
    INFO(server_err, " | ", peer_err);
    CHECK(contains(server_err, "rank 1 was started with WORLD_SIZE=3 but rank 0 with WORLD_SIZE=2"));
    CHECK(contains(peer_err, "rank 1: rank 0 at 127.0.0.1:" + std::to_string(port) + " refused this rank"));
  }
  SUBCASE("duplicate rank") {
    RendezvousServer s(0);
    const int port = s.port();
    auto server = std::async(std::launch::async, [&] { return error_of([&] { s.serve(fake_id(3), 3, 5s); }); });
    CHECK(rendezvous_fetch("127.0.0.1", port, 1, 3, 128, 5s) == fake_id(3));
    const std::string peer_err = error_of([&] { (void)rendezvous_fetch("127.0.0.1", port, 1, 3, 128, 5s); });
    const std::string server_err = server.get();
    INFO(server_err, " | ", peer_err);
    CHECK(contains(server_err, "rank 1 connected twice: two processes were started with RANK=1"));
    CHECK(contains(peer_err, "refused this rank"));
  }
}

TEST_CASE("rendezvous: a port scanner is ignored, not fatal") {
  RendezvousServer s(0);
  const int port = s.port();
  auto noise = std::async(std::launch::async, [&] {
    dist::detail::Socket c(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(c.fd(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    const char junk[20] = "GET / HTTP/1.0\r\n\r\n";
    (void)::send(c.fd(), junk, sizeof(junk), MSG_NOSIGNAL);
  });
  auto peer = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(100ms);
    return rendezvous_fetch("127.0.0.1", port, 1, 2, 128, 5s);
  });
  s.serve(fake_id(5), 2, 5s);
  noise.get();
  CHECK(peer.get() == fake_id(5));
}

// ---- buckets --------------------------------------------------------------------------------------

TEST_CASE("bucket plan: reverse order, caps, contiguous ranges") {
  // 10 parameters of random sizes (fp32), caps small enough to make several buckets.
  std::mt19937 rng(42);
  std::vector<std::size_t> sizes(10);
  for (auto& s : sizes) s = 1 + rng() % 300;
  BucketOptions o;
  o.first_bucket_bytes = 256 * 4;
  o.bucket_bytes = 600 * 4;
  const BucketPlan plan(sizes, o);
  const std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
  CHECK(plan.extent() == total);
  REQUIRE(plan.n_buckets() >= 3);
  // Bucket 0 ends at the end of the buffer and holds the last parameter; buckets tile the
  // buffer backwards without gaps; every parameter belongs to exactly its bucket.
  CHECK(plan.bucket(0).end == total);
  CHECK(plan.bucket(0).end_param == sizes.size());
  CHECK(plan.bucket(plan.n_buckets() - 1).first_param == 0);
  CHECK(plan.bucket(plan.n_buckets() - 1).begin == 0);
  for (std::size_t b = 0; b < plan.n_buckets(); ++b) {
    const Bucket& k = plan.bucket(b);
    CAPTURE(b);
    CHECK(k.first_param < k.end_param);
    if (b + 1 < plan.n_buckets()) {
      CHECK(plan.bucket(b + 1).end == k.begin);
      CHECK(plan.bucket(b + 1).end_param == k.first_param);
    }
    const std::size_t cap = (b == 0 ? o.first_bucket_bytes : o.bucket_bytes) / 4;
    std::size_t n = 0;
    for (std::size_t p = k.first_param; p < k.end_param; ++p) {
      CHECK(plan.bucket_of(p) == b);
      n += sizes[p];
    }
    CHECK(n == k.numel());
    // Within the cap, unless a single parameter is larger than it.
    CHECK((k.numel() <= cap || k.end_param - k.first_param == 1));
    // Maximal: the next parameter (going backwards) did not fit.
    if (k.first_param > 0 && b + 1 < plan.n_buckets()) CHECK(k.numel() + sizes[k.first_param - 1] > cap);
  }
}

TEST_CASE("bucket plan: hand-checked example, oversized parameter, padding") {
  // sizes 100, 5000, 30, 30, 40 elements; caps 64 and 4096 elements.
  const std::vector<std::size_t> sizes{100, 5000, 30, 30, 40};
  BucketOptions o;
  o.first_bucket_bytes = 64 * 4;
  o.bucket_bytes = 4096 * 4;
  const BucketPlan plan(sizes, o);
  REQUIRE(plan.n_buckets() == 4);
  // bucket 0: param 4 (40); 3 would make 70 > 64.  bucket 1: params 2-3 (60); 1 would pass 4096.
  // bucket 2: param 1 alone (5000 > cap).  bucket 3: param 0.
  CHECK(plan.bucket(0).first_param == 4);
  CHECK(plan.bucket(1).first_param == 2);
  CHECK(plan.bucket(1).end_param == 4);
  CHECK(plan.bucket(2).first_param == 1);
  CHECK(plan.bucket(2).numel() == 5000);
  CHECK(plan.bucket(3).first_param == 0);
  CHECK(plan.bucket(3).begin == 0);
  CHECK(plan.bucket(3).end == 100);

  // Offsets with 16-element alignment padding: ranges include the padding between parameters.
  const std::vector<std::size_t> offs{0, 112, 5120, 5152, 5184};
  const BucketPlan padded(sizes, o, offs);
  CHECK(padded.extent() == 5224);
  CHECK(padded.bucket(0).begin == 5184);
  CHECK(padded.bucket(1).begin == 5120);
  CHECK(padded.bucket(1).end == 5182);
  CHECK(padded.params_covering(5120, 5182).first == 2);
  CHECK(padded.params_covering(5120, 5182).count == 2);
  CHECK(contains(error_of([&] { (void)padded.params_covering(5121, 5182); }), "does not start at a parameter"));
  CHECK(contains(error_of([&] { (void)padded.params_covering(5120, 5160); }), "does not end at a parameter"));
  const std::vector<std::size_t> overlap{0, 50, 5120, 5152, 5184};
  CHECK(contains(error_of([&] { BucketPlan bad(sizes, o, overlap); }), "parameter 1 at offset 50 overlaps"));
  const std::vector<std::size_t> with_zero{3, 0, 2};
  CHECK(contains(error_of([&] { BucketPlan bad(with_zero); }), "parameter 1 has no elements"));
}

TEST_CASE("bucket plan: DEKR-sized defaults") {
  // 29.6M fp32 gradients in 300 parameters of mixed sizes: ~5 buckets of <= 25 MiB, first 1 MiB.
  std::vector<std::size_t> sizes(300);
  std::mt19937 rng(3);
  for (auto& s : sizes) s = 1000 + rng() % 196000;
  const BucketPlan plan(sizes);
  std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
  CHECK(plan.bucket(0).numel() * 4 <= (std::size_t{1} << 20));
  for (std::size_t b = 1; b < plan.n_buckets(); ++b) CHECK(plan.bucket(b).numel() * 4 <= (std::size_t{25} << 20));
  CHECK(plan.n_buckets() >= total * 4 / (std::size_t{25} << 20));
}

TEST_CASE("bucket tracker: buckets are released in order as backward marks gradients") {
  const std::vector<std::size_t> sizes{100, 5000, 30, 30, 40};
  BucketOptions o;
  o.first_bucket_bytes = 64 * 4;
  o.bucket_bytes = 4096 * 4;
  const BucketPlan plan(sizes, o);  // buckets: {4}, {2,3}, {1}, {0}
  BucketTracker t(plan);
  // Reverse order, one by one: the usual backward.
  BucketSpan s = t.mark_ready({4, 1});
  CHECK(s.first == 0);
  CHECK(s.end == 1);
  CHECK(t.mark_ready({3, 1}).empty());  // bucket 1 waits for param 2
  s = t.mark_ready({2, 1});
  CHECK(s.first == 1);
  CHECK(s.end == 2);
  CHECK(!t.all_released());
  CHECK(t.unready() == "0, 1");
  // Out of order: param 0 (bucket 3) is done before param 1 (bucket 2): bucket 3 is held back
  // until bucket 2 can go, then both go together, in order.
  CHECK(t.mark_ready({0, 1}).empty());
  s = t.mark_ready({1, 1});
  CHECK(s.first == 2);
  CHECK(s.end == 4);
  CHECK(t.all_released());
  CHECK(contains(error_of([&] { (void)t.mark_ready({2, 1}); }), "parameter 2 (bucket 1) was marked ready twice"));
  CHECK(contains(error_of([&] { (void)t.mark_ready({4, 2}); }), "outside the 5 parameters"));

  // A new backward pass starts clean; a multi-parameter range (a whole layer) at once.
  t.reset();
  CHECK(t.n_released() == 0);
  s = t.mark_ready({2, 3});
  CHECK(s.first == 0);
  CHECK(s.end == 2);
  s = t.mark_ready({0, 2});
  CHECK(s.first == 2);
  CHECK(s.end == 4);
}

// ---- watchdog -------------------------------------------------------------------------------------

TEST_CASE("watchdog: completed work is forgotten, nothing fires") {
  std::atomic<int> aborts{0};
  Watchdog w(1, 2s, {{}, [&] { ++aborts; }, [](const std::string&) {}}, 1ms);
  std::atomic<bool> done{false};
  w.watch("all-reduce of 1.0K gradients", [&] { return done.load(); });
  CHECK(w.n_pending() == 1);
  done = true;
  for (int i = 0; i < 2000 && w.n_pending(); ++i) std::this_thread::sleep_for(1ms);
  CHECK(w.n_pending() == 0);
  CHECK(!w.fired());
  CHECK_NOTHROW(w.check());
  CHECK(aborts == 0);
}

TEST_CASE("watchdog: a collective that never completes aborts once, with the rank and the operation") {
  std::atomic<int> aborts{0};
  std::string told;
  std::mutex mu;
  Watchdog w(1, 150ms,
             {{}, [&] { ++aborts; },
              [&](const std::string& m) {
                std::lock_guard lk(mu);
                told = m;
              }},
             2ms);
  const auto t0 = std::chrono::steady_clock::now();
  w.watch("all-reduce of " + format_count(29'600'000) + " gradients", [] { return false; });
  w.watch("barrier", [] { return false; });
  while (!w.fired() && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE(w.fired());
  CHECK(took >= 150ms);
  CHECK(took < 2s);
  CHECK(aborts == 1);
  const std::string m = w.message();
  INFO(m);
  CHECK(m.rfind("rank 1: all-reduce of 29.6M gradients did not complete in 0.15 s; a peer rank has probably died",
                0) == 0);
  CHECK(contains(m, "AMPKIT_DIST_TIMEOUT"));
  {
    std::lock_guard lk(mu);
    CHECK(told == m);
  }
  CHECK_THROWS_WITH_AS(w.check(), doctest::Contains("did not complete in 0.15 s"), Error);
  w.fire("a later consequence");  // only the first failure is kept, abort is not repeated
  CHECK(aborts == 1);
  CHECK(w.message() == m);
}

TEST_CASE("watchdog: an asynchronous communicator error aborts at once") {
  std::atomic<bool> broken{false};
  std::atomic<int> aborts{0};
  Watchdog w(0, 60s,
             {[&]() -> std::optional<std::string> {
                if (broken) return std::string("remote process exited or there was a network error");
                return std::nullopt;
              },
              [&] { ++aborts; }, [](const std::string&) {}},
             1ms);
  w.watch("broadcast of 4.2M weights", [] { return false; });
  std::this_thread::sleep_for(20ms);
  CHECK(!w.fired());
  broken = true;
  for (int i = 0; i < 2000 && !w.fired(); ++i) std::this_thread::sleep_for(1ms);
  REQUIRE(w.fired());
  CHECK(aborts == 1);
  CHECK(w.message().rfind("rank 0: the communicator reported 'remote process exited or there was a network error' "
                          "during broadcast of 4.2M weights",
                          0) == 0);
}

TEST_CASE("watchdog: a failing poll (e.g. an event query error) is a failure of that operation") {
  Watchdog w(2, 60s, {{}, [] {}, [](const std::string&) {}}, 1ms);
  w.watch("all-gather of 8 bytes", []() -> bool { throw Error("cudaEventQuery failed: an illegal memory access"); });
  for (int i = 0; i < 2000 && !w.fired(); ++i) std::this_thread::sleep_for(1ms);
  REQUIRE(w.fired());
  CHECK(contains(w.message(), "rank 2: all-gather of 8 bytes failed: cudaEventQuery failed"));
}

TEST_CASE("format_count") {
  CHECK(format_count(0) == "0");
  CHECK(format_count(999) == "999");
  CHECK(format_count(1536) == "1.5K");
  CHECK(format_count(29'600'000) == "29.6M");
  CHECK(format_count(123'456'789) == "123M");
  CHECK(format_count(2'000'000'000) == "2.0G");
}

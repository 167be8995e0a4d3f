// Process group on the visible GPUs, one thread per rank (2 ranks when 2 GPUs are visible, else
// 1): bucketed gradient averaging vs the host, overflow flag / grad-norm / broadcast / all-gather /
// barrier, SyncBatchNorm statistics, the TCP bootstrap, the watchdog ending a collective or
// a communicator set-up that a rank never joins, and the trainer's overlapped gradient averaging
// (NcclDataParallel + the store's gradient-ready hook) against the non-overlapped one.
#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include <atomic>
#include <future>
#include <mutex>

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/backend/cuda/amp_step.cuh"
#include "ampkit/backend/cuda/batch_norm.cuh"
#include "ampkit/backend/cuda/dist/batch_norm_sync.cuh"
#include "ampkit/backend/cuda/dist/data_parallel.cuh"
#include "ampkit/backend/cuda/dist/grad_reducer.cuh"
#include "ampkit/backend/cuda/dist/process_group.cuh"
#include "ampkit/backend/cuda/fill.cuh"
#include "ampkit/optim/sgd.hpp"
#include "dist_test_support.cuh"

using namespace ampkit;
using namespace ampkit::dist;
using namespace ampkit::testing::dist;
using namespace std::chrono_literals;

namespace {

/// Two ranks when two GPUs are visible (NCCL allows one rank per GPU), else one.
int test_world() { return std::min(cuda::device_count(), 2); }

bool need_two_gpus() {
  if (cuda::device_count() >= 2) return true;
  MESSAGE("skipped: needs 2 GPUs, ", cuda::device_count(), " visible (NCCL allows one rank per GPU)");
  return false;
}

/// One communicator per thread from a shared id (no TCP), with a short timeout.
std::vector<std::unique_ptr<ProcessGroup>> make_groups(int world, std::chrono::milliseconds timeout,
                                                       std::vector<std::string>* aborts = nullptr,
                                                       std::mutex* mu = nullptr) {
  ncclUniqueId id;
  AMPKIT_NCCL_CHECK(ncclGetUniqueId(&id));
  std::vector<std::unique_ptr<ProcessGroup>> pgs(static_cast<std::size_t>(world));
  run_ranks(world, [&](int r) {
    ProcessGroupOptions o;
    o.timeout = timeout;
    if (aborts)
      o.on_abort = [aborts, mu](const std::string& m) {
        std::lock_guard lk(*mu);
        aborts->push_back(m);
      };
    pgs[static_cast<std::size_t>(r)] = std::make_unique<ProcessGroup>(id, r, world, r, o);
  });
  return pgs;
}

}  // namespace

TEST_CASE("dist gpu: bucketed gradient average over an accumulation window equals the host's") {
  const int world = test_world();
  MESSAGE("world size ", world);
  auto pgs = make_groups(world, 60s);
  std::vector<DdpOutcome> outcomes(static_cast<std::size_t>(world));
  run_ranks(world, [&](int r) { outcomes[static_cast<std::size_t>(r)] = run_ddp(*pgs[static_cast<std::size_t>(r)], 3, 2024); });
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    outcomes[static_cast<std::size_t>(r)].print(r);
    check_ddp(outcomes[static_cast<std::size_t>(r)], 3);
  }
}

namespace {

// dst[i] = T(float(dst[i]) + src[i]): a layer's backward accumulating (+=) its gradient.
template <class T>
__global__ void accumulate_grad_kernel(const float* __restrict__ src, T* __restrict__ dst, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x)
    dst[i] = T(static_cast<float>(dst[i]) + src[i]);
}

template <class T>
void accumulate_grad(const float* src, T* dst, std::size_t n, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>(std::min<std::size_t>((n + 255) / 256, 1024));
  accumulate_grad_kernel<T><<<blocks, 256, 0, s>>>(src, dst, n);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// One rank of the overlap test: what the two modes produced and what the overlapped one did.
struct OverlapOutcome {
  // [overlap off, on, on + CUDA graph]: compute gradients (fp32 accumulator or fp32 gradients)
  // then the BN gradients; the graph mode's of each of its two windows
  std::vector<float> averaged[3], graph_windows[2];
  std::int64_t launches_mid_backward = 0;  // overlapped: NCCL launches issued by mid-backward
  bool compute_busy_mid_backward = false;  // ... while the compute stream still spun
  std::int64_t launches[3] = {0, 0, 0}, syncs[3] = {0, 0, 0};
  std::size_t n_params = 0, n_buckets = 0, n_elements = 0;
  std::string capture_mode, capture_error;  // graph mode: the capture's report
  std::size_t graph_nodes = 0;
};

/// A model-shaped parameter store (conv weight [+ bias] + BN gamma/beta per layer, sizes from a
/// seeded RNG, some large), an AmpOptimizer for the fp32 accumulator and its fold, and the real
/// NcclDataParallel, driven as the trainer drives it: per micro-batch begin_backward(sync), a
/// backward emulated in reverse layer order (each layer adds its seeded gradient on the compute
/// stream, then notifies the store), and at the window end the fold (non-overlapped only) and
/// average_gradients(). Run once with AMPKIT_DDP_OVERLAP's two settings on the same gradients,
/// then overlapped with the window's last micro-batch captured as a CUDA graph (as the trainer's
/// step graph: begin_capture / end_capture around the capture, graph_replayed after each replay)
/// for two windows: captured in the first, replayed again in the second.
template <PrecisionPolicy P>
OverlapOutcome run_overlap(int rank, int world, int port, std::uint64_t seed) {
  using T = storage_t<P>;
  OverlapOutcome out;
  Cuda ctx(rank);
  LaunchEnv e;
  e.launcher = world > 1 ? Launcher::kTorchrun : Launcher::kSingle;
  e.rank = rank;
  e.world_size = world;
  e.local_rank = rank;
  e.local_world_size = world;
  e.master_addr = "127.0.0.1";
  e.master_port = e.rendezvous_port = port;
  e.timeout = 60s;
  NcclDataParallel dp(ctx, e);

  struct Layer {
    nn::ParamId w, gamma;
    bool bias = false;
  };
  nn::ParameterStore<P, Cuda> store;
  std::vector<Layer> layers(40);
  std::mt19937_64 rng(seed);  // the same layout on every rank
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::int64_t c = 1 + static_cast<std::int64_t>(rng() % 64);
    const std::int64_t k = 1 + static_cast<std::int64_t>(rng() % (rng() % 4 == 0 ? 100000 : 600));
    const std::string name = "layer" + std::to_string(l);
    layers[l].w = store.add(name + ".weight", {k, c}, Shape{1, 1, k, c}, nn::ParamKind::kCompute,
                            nn::ParamInit::constant(0.f));
    layers[l].bias = rng() % 3 == 0;
    if (layers[l].bias)
      store.add(name + ".bias", {c}, Shape{1, 1, 1, c}, nn::ParamKind::kCompute,
                nn::ParamInit::constant(0.f));
    layers[l].gamma = store.add(name + ".bn.weight", {c}, Shape{1, 1, 1, c}, nn::ParamKind::kFp32,
                                nn::ParamInit::constant(1.f));
    store.add(name + ".bn.bias", {c}, Shape{1, 1, 1, c}, nn::ParamKind::kFp32, nn::ParamInit::constant(0.f));
  }
  store.allocate(ctx, 1);
  amp::AmpOptimizer<P, optim::Sgd, Cuda> opt(ctx, store, optim::Sgd{}, {}, {}, /*accumulative_counts=*/2);
  const auto rb = train::replica_buffers(
      store, opt.flat().grad_accum, {}, opt.state(), [&opt](std::size_t b, std::size_t en) {
        opt.end_micro_batch(static_cast<std::int64_t>(b), static_cast<std::int64_t>(en));
      });
  dp.attach(rb);
  out.n_buckets = dp.n_buckets();
  store.set_grad_ready_observer([&dp](nn::ParamId f, int n) {
    dp.grads_ready(static_cast<std::size_t>(f.index), static_cast<std::size_t>(n));
  });
  const std::size_t n_compute = static_cast<std::size_t>(store.n_compute_slots());
  const std::size_t n_fp32 = static_cast<std::size_t>(store.n_fp32_slots());
  out.n_params = store.params().size();
  out.n_elements = n_compute + n_fp32;
  const cudaStream_t s = ctx.stream();
  auto src = ctx.alloc<float>(n_compute + n_fp32);  // this micro-batch's gradients, by master offset
  constexpr int kMicroBatches = 2;

  const auto read_averaged = [&](std::vector<float>& a) {
    a.resize(n_compute + n_fp32);
    const float* compute = opt.flat().grad_accum
                               ? opt.flat().grad_accum
                               : reinterpret_cast<const float*>(store.grad_compute_all().data);
    AMPKIT_CUDA_CHECK(
        cudaMemcpyAsync(a.data(), compute, n_compute * sizeof(float), cudaMemcpyDeviceToHost, s));
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(a.data() + n_compute, store.grad_fp32_all().data,
                                      n_fp32 * sizeof(float), cudaMemcpyDeviceToHost, s));
    dp.process_group().synchronize(s, "reading the averaged gradients");
  };
  cuda::GraphStep graph(ctx);
  for (const int mode : {0, 1, 2}) {
    const bool overlap = mode >= 1, use_graph = mode == 2;
    dp.set_overlap(overlap);
    const std::int64_t launches0 = dp.n_gradient_launches(), syncs0 = dp.n_gradient_syncs();
    for (int window = 0; window < (use_graph ? 2 : 1); ++window) {
      store.zero_grad(ctx);
      if (opt.flat().grad_accum)
        zero_fill(ctx, TensorView<float>(opt.flat().grad_accum, Shape{1, 1, 1, store.n_compute_slots()}));
      for (int k = 0; k < kMicroBatches; ++k) {
        const bool sync = k == kMicroBatches - 1;
        // Values exact in fp16 and bf16 (multiples of 1/64 in [-2, 2)), so the storage-type
        // gradient of one micro-batch is exactly the seeded value on every policy.
        std::vector<float> g(n_compute + n_fp32);
        std::mt19937_64 grng(seed * 1000 + static_cast<std::uint64_t>(rank) * 10 +
                             static_cast<std::uint64_t>(k));
        for (auto& v : g) v = static_cast<float>(static_cast<int>(grng() % 256) - 128) / 64.f;
        AMPKIT_CUDA_CHECK(cudaMemcpy(src.data(), g.data(), g.size() * sizeof(float), cudaMemcpyHostToDevice));
        const auto micro_batch = [&] {
          const bool capturing = use_graph && sync;
          const bool overlapped = dp.begin_backward(sync);
          AMPKIT_CHECK(overlapped == (overlap && sync), "begin_backward(", sync, ") returned ", overlapped,
                       " with overlap ", overlap);
          if (sync) spin(s, 100);  // every gradient below is written long after its report returns
          for (std::size_t l = layers.size(); l-- > 0;) {
            const Layer& L = layers[l];
            const auto w = store.weight_grad(L.w);
            const auto& wi = store.info(L.w);
            std::size_t n_w = static_cast<std::size_t>(wi.numel);
            accumulate_grad(src.data() + store.master_offset(wi), w.data, n_w, s);
            if (L.bias) {
              const nn::ParamId b{L.w.index + 1};
              const auto& bi = store.info(b);
              accumulate_grad(src.data() + store.master_offset(bi), store.weight_grad(b).data,
                              static_cast<std::size_t>(bi.numel), s);
            }
            store.notify_grads_ready(L.w, L.bias ? 2 : 1);
            for (int j = 0; j < 2; ++j) {
              const nn::ParamId id{L.gamma.index + j};
              const auto& pi = store.info(id);
              accumulate_grad(src.data() + store.master_offset(pi), store.fp32_grad(id).data,
                              static_cast<std::size_t>(pi.numel), s);
            }
            store.notify_grads_ready(L.gamma, 2);
            if (overlap && sync && !capturing && l == layers.size() / 2) {
              out.launches_mid_backward = dp.n_gradient_launches() - launches0;
              const cudaError_t q = cudaStreamQuery(s);
              out.compute_busy_mid_backward = q == cudaErrorNotReady;
              if (q == cudaErrorNotReady) (void)cudaGetLastError();
            }
          }
          if (sync) {
            if (!overlapped) opt.end_micro_batch();
            dp.average_gradients();
          } else {
            opt.end_micro_batch();  // no_sync: fold locally (fp16/bf16), nothing communicated
          }
        };
        if (!(use_graph && sync)) {
          micro_batch();
          continue;
        }
        // The window end as the trainer's step graph: captured in the first window (a capture
        // executes nothing, so it is replayed at once), replayed in the second.
        if (!graph.captured()) {
          dp.begin_capture(true);
          const auto& rep = graph.capture(micro_batch, /*relaxed_only=*/true);
          out.capture_mode = rep.mode;
          out.capture_error = rep.error;
          out.graph_nodes = rep.n_nodes;
          AMPKIT_CHECK(dp.end_capture(rep.ok), "the capture failed on some rank: ", rep.error);
        }
        graph.replay();
        dp.graph_replayed(true);
      }
      if (use_graph) read_averaged(out.graph_windows[window]);
    }
    out.launches[mode] = dp.n_gradient_launches() - launches0;
    out.syncs[mode] = dp.n_gradient_syncs() - syncs0;
    read_averaged(out.averaged[mode]);
  }
  store.set_grad_ready_observer({});
  return out;
}

/// The host's expectation for one element: the average over ranks of the micro-batch sums.
double expected_average(std::uint64_t seed, int world, std::size_t i, int micro_batches) {
  double sum = 0;
  for (int r = 0; r < world; ++r)
    for (int k = 0; k < micro_batches; ++k) {
      std::mt19937_64 grng(seed * 1000 + static_cast<std::uint64_t>(r) * 10 + static_cast<std::uint64_t>(k));
      float v = 0;
      for (std::size_t j = 0; j <= i; ++j) v = static_cast<float>(static_cast<int>(grng() % 256) - 128) / 64.f;
      sum += v;
    }
  return sum / world;
}

}  // namespace

// Why bit-identical (every policy): the overlapped pass forms the same numbers in the same
// operations. fp16/bf16: the fold of a bucket is AmpOptimizer::end_micro_batch(begin, end), the
// kernel of the whole-buffer fold applied to a sub-range: per element grad_accum + float(grad),
// one fp32 rounding, independent of the range. fp32: no fold, the buffers are the gradients. The
// all-reduce then reads identical bytes in identical buckets (the same BucketPlan), only issued
// in several grouped launches instead of one; with 2 ranks each average is fl(fl(a + b) / 2)
// (or the premultiplied equivalent), a function of the two operands alone, so grouping and
// algorithm choice cannot change it. (With more ranks NCCL's summation order could depend on the
// algorithm it picks per launch; the test runs at most 2.)
TEST_CASE_TEMPLATE("dist gpu: overlapped gradient averaging (store hook + per-bucket fold) equals the non-overlapped, bit for bit",
                   P, Fp32, AmpFp16, AmpBf16) {
  const int world = test_world();
  const int port = free_port();
  constexpr std::uint64_t kSeed = 99;
  std::vector<OverlapOutcome> outs(static_cast<std::size_t>(world));
  run_ranks(world, [&](int r) { outs[static_cast<std::size_t>(r)] = run_overlap<P>(r, world, port, kSeed); });
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    const auto& o = outs[static_cast<std::size_t>(r)];
    std::printf("rank %d (%s): %zu params, %zu elements, %zu buckets; non-overlapped %lld launches, overlapped %lld "
                "(%lld issued by mid-backward, compute stream busy then: %s)\n",
                r, std::string(policy_name_v<P>).c_str(), o.n_params, o.n_elements, o.n_buckets,
                static_cast<long long>(o.launches[0]), static_cast<long long>(o.launches[1]),
                static_cast<long long>(o.launches_mid_backward), o.compute_busy_mid_backward ? "yes" : "NO");
    CHECK(o.n_buckets >= 3);
    CHECK(o.syncs[0] == 1);
    CHECK(o.syncs[1] == 1);
    CHECK(o.launches[0] == 2);               // one grouped launch per buffer after backward
    CHECK(o.launches[1] >= 3);               // released bucket by bucket during backward
    CHECK(o.launches_mid_backward >= 1);     // ... some before backward's second half was issued
    CHECK(o.compute_busy_mid_backward);      // ... and without waiting for the compute stream
    // Bit for bit, every element (the padding between parameters included).
    std::size_t n_diff = 0, first = 0;
    for (std::size_t i = 0; i < o.averaged[0].size(); ++i)
      if (std::memcmp(&o.averaged[0][i], &o.averaged[1][i], sizeof(float)) != 0 && n_diff++ == 0) first = i;
    if (n_diff) std::printf("  %zu elements differ; first [%zu]: non-overlapped %.9g, overlapped %.9g\n", n_diff, first,
                            o.averaged[0][first], o.averaged[1][first]);
    CHECK(n_diff == 0);
    // The window end captured as a CUDA graph (relaxed mode, the all-reduces inside) and replayed
    // in two windows: both bit for bit the eager averages; one averaging and the overlapped
    // launch count per replayed window.
    std::printf("  graph: capture %s mode, %zu nodes%s%s; %lld syncs, %lld launches over 2 windows\n",
                o.capture_mode.c_str(), o.graph_nodes, o.capture_error.empty() ? "" : ", error: ",
                o.capture_error.c_str(), static_cast<long long>(o.syncs[2]), static_cast<long long>(o.launches[2]));
    CHECK(o.capture_mode == "relaxed");
    CHECK(o.graph_nodes > 80);  // 40 layers x >= 2 gradient kernels, the folds, the all-reduces
    CHECK(o.syncs[2] == 2);
    CHECK(o.launches[2] == 2 * o.launches[1]);
    for (int w = 0; w < 2; ++w) {
      CAPTURE(w);
      REQUIRE(o.graph_windows[w].size() == o.averaged[0].size());
      CHECK(std::memcmp(o.graph_windows[w].data(), o.averaged[0].data(), o.averaged[0].size() * sizeof(float)) == 0);
    }
    // Real averages, not zeros: a sample of elements against the host (the per-element seed walk
    // is quadratic, so every 997th element of the parameters' first 20000 by offset).
    double max_err = 0, max_ref = 0;
    std::size_t checked = 0;
    for (std::size_t i = 0; i < std::min<std::size_t>(o.averaged[1].size(), 20000); i += 997) {
      // padding elements are zero and absent from the seeded sequence's meaning: skip zeros of both
      const double want = expected_average(kSeed, world, i, 2);
      const double got = o.averaged[1][i];
      if (got == 0.0) continue;
      ++checked;
      max_ref = std::max(max_ref, std::abs(want));
      max_err = std::max(max_err, std::abs(got - want));
    }
    // Values are multiples of 1/64 below 2 in magnitude: their sums over 2 micro-batches and 2
    // ranks, halved, are exact in fp32 (and the fp16/bf16 storage of each term is exact).
    CHECK(checked >= 5);
    CHECK(max_ref > 0.1);
    CHECK(max_err == 0.0);
  }
}

TEST_CASE("dist gpu: overflow flag (max), grad-norm (sum), broadcast, all-gather, barrier") {
  const int world = test_world();
  auto pgs = make_groups(world, 60s);
  struct Tag {  // a small host value to all-gather
    int id;
    float x;
  };
  struct Seen {
    float flag_none = -1, flag_one = -1, norm2 = -1;
    std::vector<float> bcast;
    std::vector<ampkit::half> bcast_half;
    std::vector<Tag> gathered;
  };
  std::vector<Seen> seen(static_cast<std::size_t>(world));
  const int root = world - 1;
  const auto root_values = random_values(4099, 77);
  run_ranks(world, [&](int r) {
    ProcessGroup& pg = *pgs[static_cast<std::size_t>(r)];
    Seen& s = seen[static_cast<std::size_t>(r)];
    cudaStream_t st;
    AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float* d = nullptr;
    AMPKIT_CUDA_CHECK(cudaMalloc(&d, 3 * sizeof(float)));
    // Only the last rank overflowed in d[1]; nobody in d[0]; partial norms (r + 1) * 1.5 in d[2].
    const float init[3] = {0.f, r == world - 1 ? 1.f : 0.f, (r + 1) * 1.5f};
    AMPKIT_CUDA_CHECK(cudaMemcpy(d, init, sizeof(init), cudaMemcpyHostToDevice));
    reduce_overflow_flag(pg, d, st);
    reduce_overflow_flag(pg, d + 1, st);
    reduce_grad_norm_squared(pg, d + 2, st);
    float back[3];
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(back, d, sizeof(back), cudaMemcpyDeviceToHost, st));
    pg.synchronize(st);
    s.flag_none = back[0];
    s.flag_one = back[1];
    s.norm2 = back[2];

    // Broadcast: every rank starts with its own random weights, ends with root's.
    const std::size_t n = root_values.size();
    float* w = nullptr;
    ampkit::half* wh = nullptr;
    AMPKIT_CUDA_CHECK(cudaMalloc(&w, n * sizeof(float)));
    AMPKIT_CUDA_CHECK(cudaMalloc(&wh, n * sizeof(ampkit::half)));
    const auto mine = r == root ? root_values : random_values(n, 500 + static_cast<std::uint64_t>(r));
    std::vector<ampkit::half> mine_h(n);
    for (std::size_t i = 0; i < n; ++i) mine_h[i] = ampkit::half(mine[i]);
    AMPKIT_CUDA_CHECK(cudaMemcpy(w, mine.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    AMPKIT_CUDA_CHECK(cudaMemcpy(wh, mine_h.data(), n * sizeof(ampkit::half), cudaMemcpyHostToDevice));
    pg.broadcast(std::span<float>(w, n), root, st, "broadcast of the initial weights");
    pg.broadcast(std::span<ampkit::half>(wh, n), root, st);
    s.bcast.resize(n);
    s.bcast_half.resize(n);
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(s.bcast.data(), w, n * sizeof(float), cudaMemcpyDeviceToHost, st));
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(s.bcast_half.data(), wh, n * sizeof(ampkit::half), cudaMemcpyDeviceToHost, st));
    pg.synchronize(st);

    s.gathered = pg.all_gather(Tag{r * 10 + 3, 0.25f * static_cast<float>(r)});
    pg.barrier();
    (void)cudaFree(d);
    (void)cudaFree(w);
    (void)cudaFree(wh);
    (void)cudaStreamDestroy(st);
  });
  const float norm2_want = 1.5f * static_cast<float>(world * (world + 1) / 2);
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    const Seen& s = seen[static_cast<std::size_t>(r)];
    CHECK(s.flag_none == 0.f);
    CHECK(s.flag_one == 1.f);  // every rank skips the step together
    CHECK(s.norm2 == norm2_want);
    CHECK(s.bcast == root_values);
    for (std::size_t i = 0; i < root_values.size(); ++i)
      if (s.bcast_half[i].bits != ampkit::half(root_values[i]).bits) {
        FAIL_CHECK("half broadcast differs at ", i);
        break;
      }
    REQUIRE(s.gathered.size() == static_cast<std::size_t>(world));
    for (int q = 0; q < world; ++q) {
      CHECK(s.gathered[static_cast<std::size_t>(q)].id == q * 10 + 3);
      CHECK(s.gathered[static_cast<std::size_t>(q)].x == 0.25f * static_cast<float>(q));
    }
  }
  // Finished work is reaped by the watchdog's next poll, not at once: allow a few poll periods.
  for (auto& pg : pgs) {
    for (int i = 0; i < 200 && pg->n_in_flight() != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(pg->n_in_flight() == 0);
  }
}

TEST_CASE("dist gpu: BatchNorm running statistics averaged; SyncBatchNorm forward and backward on the global batch") {
  const int world = test_world();
  auto pgs = make_groups(world, 60s);
  constexpr int C = 40;
  const Shape shape{2, 6, 5, C};  // per rank (N,H,W,C)
  const std::size_t n = static_cast<std::size_t>(shape.numel());
  const std::size_t rows = n / C;
  // Channel means 50..90 with spread ~1: where E[x^2]-E[x]^2 in fp32 would lose most digits.
  auto rank_x = [&](int r) {
    auto v = random_values(n, 900 + static_cast<std::uint64_t>(r), -1.f, 1.f);
    for (std::size_t i = 0; i < n; ++i) v[i] += 50.f + static_cast<float>(i % C);
    return v;
  };
  auto rank_dy = [&](int r) { return random_values(n, 2900 + static_cast<std::uint64_t>(r), -1.f, 1.f); };
  auto rank_running = [&](int r) { return random_values(2 * C, 1900 + static_cast<std::uint64_t>(r), 0.5f, 1.5f); };
  const auto gamma = random_values(C, 77, 0.5f, 1.5f), beta = random_values(C, 78, -0.5f, 0.5f);
  struct Seen {
    std::vector<float> averaged, y, dx, dgamma, dbeta, mean, invstd, run_mean, run_var;
  };
  std::vector<Seen> seen(static_cast<std::size_t>(world));
  const BatchNormConfig cfg{0.1f, 1e-5f};
  run_ranks(world, [&](int r) {
    ProcessGroup& pg = *pgs[static_cast<std::size_t>(r)];
    Cuda ctx(r);
    const auto dev = [&](Shape sh, const std::vector<float>& v) {
      HostTensor<float> h(sh);
      std::copy(v.begin(), v.end(), h.data());
      return ctx.to_device(h);
    };
    // BN buffer averaging (SyncBuffersHook) on this rank's own running statistics.
    auto run = dev(Shape{1, 1, 1, 2 * C}, rank_running(r));
    const std::span<float> bufs[] = {{run.data(), C}, {run.data() + C, C}};
    sync_batch_norm_buffers(pg, bufs, ctx.stream());
    // SyncBatchNorm through the layer kernels: the NCCL exchange installed on the context.
    ctx.set_batch_norm_sync(std::make_shared<NcclBatchNormSync>(pg));
    auto x = dev(shape, rank_x(r));
    auto dy = dev(shape, rank_dy(r));
    auto g = dev(Shape{1, 1, 1, C}, gamma);
    auto bt = dev(Shape{1, 1, 1, C}, beta);
    auto rm = dev(Shape{1, 1, 1, C}, std::vector<float>(C, 0.f));
    auto rv = dev(Shape{1, 1, 1, C}, std::vector<float>(C, 1.f));
    auto sm = ctx.tensor<float>(Shape{1, 1, 1, C}), si = ctx.tensor<float>(Shape{1, 1, 1, C});
    auto y = ctx.tensor<float>(shape), dx = ctx.tensor<float>(shape);
    auto dg = dev(Shape{1, 1, 1, C}, std::vector<float>(C, 0.f));
    auto db = dev(Shape{1, 1, 1, C}, std::vector<float>(C, 0.f));
    batch_norm_forward_training<float>(ctx, x.view(), g.view(), bt.view(), rm.view(), rv.view(), sm.view(), si.view(),
                                       y.view(), cfg);
    batch_norm_backward<float>(ctx, x.view(), dy.view(), g.view(), sm.view(), si.view(), dx.view(), dg.view(), db.view());
    pg.synchronize(ctx.stream(), "SyncBatchNorm test");
    Seen& s = seen[static_cast<std::size_t>(r)];
    const auto host = [&](auto& t) {
      const auto h = ctx.to_host(t.view());
      return std::vector<float>(h.data(), h.data() + h.numel());
    };
    s.averaged = host(run);
    s.y = host(y);
    s.dx = host(dx);
    s.dgamma = host(dg);
    s.dbeta = host(db);
    s.mean = host(sm);
    s.invstd = host(si);
    s.run_mean = host(rm);
    s.run_var = host(rv);
    ctx.set_batch_norm_sync(nullptr);
  });

  // Host reference in double over the concatenated global batch (rank 0's rows, then rank 1's).
  std::vector<double> running_want(2 * C, 0.0), mean(C, 0.0), var(C, 0.0), sdy(C, 0.0), sdyx(C, 0.0);
  const double count = static_cast<double>(rows) * world;
  for (int r = 0; r < world; ++r) {
    const auto run = rank_running(r);
    for (int i = 0; i < 2 * C; ++i) running_want[i] += run[i] / world;
    const auto xs = rank_x(r);
    for (std::size_t i = 0; i < n; ++i) mean[i % C] += xs[i];
  }
  for (int c = 0; c < C; ++c) mean[c] /= count;
  for (int r = 0; r < world; ++r) {
    const auto xs = rank_x(r), dys = rank_dy(r);
    for (std::size_t i = 0; i < n; ++i) {
      const double d = xs[i] - mean[i % C];
      var[i % C] += d * d;
      sdy[i % C] += dys[i];
      sdyx[i % C] += dys[i] * d;
    }
  }
  for (int c = 0; c < C; ++c) var[c] /= count;
  const double eps = std::numeric_limits<float>::epsilon();
  std::vector<double> dgamma_sum(C, 0.0), dbeta_sum(C, 0.0);
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    const Seen& s = seen[static_cast<std::size_t>(r)];
    const auto xs = rank_x(r), dys = rank_dy(r);
    int bad = 0;
    double max_var_rel = 0, max_y = 0, max_dx = 0;
    for (int c = 0; c < C; ++c) {
      // BN buffers: an average of W fp32 values, a couple of roundings.
      bad += std::abs(s.averaged[c] - running_want[c]) > 4 * eps * 1.5;
      bad += std::abs(s.averaged[C + c] - running_want[C + c]) > 4 * eps * 1.5;
      // Global mean (50..90): Welford merges carry a few roundings of the result.
      bad += std::abs(s.mean[c] - mean[c]) > 8 * eps * 90;
      // Global variance ~1/3 through 1/sqrt(var + eps): Welford/Chan keeps it to a few eps relative
      // (shifted or not); E[x^2]-E[x]^2 in fp32 would be off by ~8000 * eps / (1/3) ~ 2.4e4 eps.
      const double invstd = 1.0 / std::sqrt(var[c] + cfg.eps);
      const double rel = std::abs(s.invstd[c] - invstd) / invstd;
      max_var_rel = std::max(max_var_rel, rel);
      bad += rel > 64 * eps;
      // Running statistics from the global batch (from 0 / 1 with momentum 0.1; unbiased variance).
      bad += std::abs(s.run_mean[c] - 0.1 * mean[c]) > 1e-5 * 0.1 * mean[c];
      bad += std::abs(s.run_var[c] - (0.9 + 0.1 * var[c] * count / (count - 1))) > 1e-5;
      // dgamma / dbeta are this rank's own sums (the data-parallel average makes them global).
      double dg = 0, db = 0;
      for (std::size_t m = 0; m < rows; ++m) {
        const std::size_t i = m * C + c;
        dg += dys[i] * (xs[i] - mean[c]) * invstd;
        db += dys[i];
      }
      bad += std::abs(s.dgamma[c] - dg) > 1e-4 * (1 + std::abs(dg));
      bad += std::abs(s.dbeta[c] - db) > 1e-4 * (1 + std::abs(db));
      dgamma_sum[c] += s.dgamma[c];
      dbeta_sum[c] += s.dbeta[c];
    }
    // y and dx per element against the global-batch formulas. dx: the gradient of the sum of all
    // ranks' losses w.r.t. this rank's x (torch.nn.SyncBatchNorm's), with the global sums.
    for (std::size_t i = 0; i < n; ++i) {
      const int c = static_cast<int>(i % C);
      const double invstd = 1.0 / std::sqrt(var[c] + cfg.eps), xh = (xs[i] - mean[c]) * invstd;
      const double yw = gamma[c] * xh + beta[c];
      const double dxw = gamma[c] * invstd * (dys[i] - sdy[c] / count - xh * sdyx[c] * invstd / count);
      max_y = std::max(max_y, std::abs(s.y[i] - yw));
      max_dx = std::max(max_dx, std::abs(s.dx[i] - dxw));
    }
    // |y| <= ~4, |dx| <= ~5: fp32 with 1/invstd ~ 0.58 amplifying the mean's rounding (8 eps x 90):
    // ~1e-4 absolute for y is the mean's error x invstd; dx the same order.
    bad += max_y > 2e-4;
    bad += max_dx > 2e-4;
    MESSAGE("rank ", r, ": SyncBN invstd max rel err ", max_var_rel, ", y max abs err ", max_y, ", dx max abs err ",
            max_dx, " (", C, " channels, ", count, " values each over ", world, " rank(s)), ", bad, " bad");
    CHECK(bad == 0);
  }
  // Summed over ranks, dgamma / dbeta are the global batch's.
  int bad = 0;
  for (int c = 0; c < C; ++c) {
    const double invstd = 1.0 / std::sqrt(var[c] + cfg.eps);
    bad += std::abs(dgamma_sum[c] - sdyx[c] * invstd) > 1e-4 * (1 + std::abs(sdyx[c] * invstd));
    bad += std::abs(dbeta_sum[c] - sdy[c]) > 1e-4 * (1 + std::abs(sdy[c]));
  }
  CHECK(bad == 0);
  // Every rank normalised with the same statistics, bit for bit.
  for (int r = 1; r < world; ++r) {
    CHECK(seen[static_cast<std::size_t>(r)].mean == seen[0].mean);
    CHECK(seen[static_cast<std::size_t>(r)].invstd == seen[0].invstd);
  }
}

TEST_CASE("dist gpu: ProcessGroup::create bootstraps over the TCP rendezvous") {
  const int world = test_world();
  const int port = free_port();
  std::vector<std::vector<float>> sums(static_cast<std::size_t>(world));
  run_ranks(world, [&](int r) {
    LaunchEnv e;
    e.launcher = world > 1 ? Launcher::kTorchrun : Launcher::kSingle;
    e.rank = r;
    e.world_size = world;
    e.local_rank = r;
    e.local_world_size = world;
    e.master_addr = "127.0.0.1";
    e.master_port = e.rendezvous_port = port;
    e.timeout = 30s;
    auto pg = ProcessGroup::create(e);
    AMPKIT_CHECK(pg->timeout() == 30s, "timeout not taken from the launch environment");
    cudaStream_t st;
    AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float* d = nullptr;
    AMPKIT_CUDA_CHECK(cudaMalloc(&d, 3 * sizeof(float)));
    const float v[3] = {1.f + r, 10.f * (r + 1), -0.5f};
    AMPKIT_CUDA_CHECK(cudaMemcpy(d, v, sizeof(v), cudaMemcpyHostToDevice));
    pg->all_reduce(std::span<float>(d, 3), ReduceOp::kSum, st);
    auto& out = sums[static_cast<std::size_t>(r)];
    out.resize(3);
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(out.data(), d, sizeof(v), cudaMemcpyDeviceToHost, st));
    pg->synchronize(st);
    (void)cudaFree(d);
    (void)cudaStreamDestroy(st);
  });
  for (auto& s : sums) {
    CHECK(s[0] == static_cast<float>(world * (world + 1) / 2));
    CHECK(s[1] == 10.f * static_cast<float>(world * (world + 1) / 2));
    CHECK(s[2] == -0.5f * static_cast<float>(world));
  }
}

TEST_CASE("dist gpu: communicator set-up times out when a rank never joins") {
  // Rank 0 of a world of 2 whose rank 1 never starts: runs on one GPU.
  ncclUniqueId id;
  AMPKIT_NCCL_CHECK(ncclGetUniqueId(&id));
  ProcessGroupOptions o;
  o.timeout = 2s;
  const auto t0 = std::chrono::steady_clock::now();
  std::string err;
  try {
    ProcessGroup pg(id, 0, 2, 0, o);
  } catch (const Error& e) {
    err = e.what();
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("after ", took, " s: ", err);
  CHECK(contains(err, "rank 0: NCCL communicator set-up (world size 2) did not complete in 2 s: not every rank "
                      "joined"));
  CHECK(took >= 2.0);
  CHECK(took < 15.0);
}

TEST_CASE("dist gpu: the watchdog aborts a collective that a live peer never joins") {
  if (!need_two_gpus()) return;
  std::vector<std::string> aborts;
  std::mutex mu;
  auto pgs = make_groups(2, 2s, &aborts, &mu);
  std::promise<void> rank0_done;
  auto rank0_done_f = rank0_done.get_future().share();
  std::string err0;
  double took0 = 0;
  run_ranks(2, [&](int r) {
    ProcessGroup& pg = *pgs[static_cast<std::size_t>(r)];
    cudaStream_t st;
    AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float* d = nullptr;
    AMPKIT_CUDA_CHECK(cudaMalloc(&d, (1 << 20) * sizeof(float)));
    AMPKIT_CUDA_CHECK(cudaMemset(d, 0, (1 << 20) * sizeof(float)));
    // Both ranks: one all-reduce, so the peers are connected (the hang below is then in the kernel).
    pg.all_reduce(d, 1 << 20, ncclFloat32, ReduceOp::kAvg, st, "first all-reduce");
    pg.synchronize(st);
    if (r == 0) {
      const auto t0 = std::chrono::steady_clock::now();
      try {
        pg.all_reduce(d, 1 << 20, ncclFloat32, ReduceOp::kAvg, st,
                      "all-reduce of " + format_count(1 << 20) + " gradients");
        pg.synchronize(st);
      } catch (const Error& e) {
        err0 = e.what();
      }
      took0 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rank0_done.set_value();
    } else {
      rank0_done_f.wait();  // rank 1 is alive but never issues the second all-reduce
      pg.abort("test over");
    }
    (void)cudaFree(d);
    (void)cudaStreamDestroy(st);
  });
  MESSAGE("rank 0 after ", took0, " s: ", err0);
  CHECK(contains(err0, "rank 0: all-reduce of 1.0M gradients did not complete in 2 s; a peer rank has probably died"));
  CHECK(took0 >= 2.0);
  CHECK(took0 < 10.0);
  CHECK(pgs[0]->aborted());
  CHECK(pgs[0]->comm() == nullptr);
  CHECK_THROWS_WITH_AS(pgs[0]->barrier(), doctest::Contains("did not complete in 2 s"), Error);
  std::lock_guard lk(mu);
  REQUIRE(aborts.size() == 2);  // rank 0's timeout and rank 1's own abort, each told once
  CHECK((aborts[0] == err0 || aborts[1] == err0));
}

/// @brief Helpers shared by the dist GPU tests: rank threads, a spin kernel, gradient emulation.
#pragma once

#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ampkit/backend/cuda/check.cuh"
#include "ampkit/backend/cuda/device.cuh"
#include "ampkit/backend/cuda/dist/grad_reducer.cuh"
#include "ampkit/dist/rendezvous.hpp"

namespace ampkit::testing::dist {

/// Run fn(rank) on `world` threads, rank r on GPU r; rethrow the first exception in the caller.
/// (Assertions are made by the caller on what the threads return, not inside the threads.)
inline void run_ranks(int world, const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        AMPKIT_CUDA_CHECK(cudaSetDevice(r));
        fn(r);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

/// Occupies a stream for `ns` nanoseconds of wall time (the global timer, not SM clocks).
/// (Templates, so that two test TUs including this header do not define the same kernel.)
template <int kUnused = 0>
__global__ void spin_kernel(std::uint64_t ns) {
  std::uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

template <class T>
__global__ void add_kernel(const T* __restrict__ g_src, T* __restrict__ g_dst, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x)
    g_dst[i] += g_src[i];
}

inline void spin(cudaStream_t s, double ms) {
  spin_kernel<><<<1, 1, 0, s>>>(static_cast<std::uint64_t>(ms * 1e6));
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// dst[0, n) += src[0, n) on `s` (a layer's backward accumulating its weight gradient).
inline void accumulate(const float* src, float* dst, std::size_t n, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>(std::min<std::size_t>((n + 255) / 256, 1024));
  add_kernel<float><<<blocks, 256, 0, s>>>(src, dst, n);
  AMPKIT_CUDA_CHECK_LAUNCH();
}

/// Seeded uniform values, never all zero: a per-(rank, micro-batch) gradient.
inline std::vector<float> random_values(std::size_t n, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::vector<float> v(n);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& x : v) x = d(rng);
  return v;
}

/// A TCP port that was free a moment ago.
inline int free_port() { return ::ampkit::dist::RendezvousServer(0).port(); }

inline bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

/// What one rank saw in the emulated data-parallel training step (run_ddp).
struct DdpOutcome {
  std::size_t n_params = 0, n_buckets = 0, n_elements = 0;
  std::size_t n_bad = 0;
  double max_abs_err = 0, max_ref = 0, tolerance = 0;
  std::string first_bad;
  std::size_t reductions_in_no_sync_passes = 0;  // must be 0
  std::size_t bucket_reductions = 0, synced_passes = 0, launches = 0;
  bool compute_busy_after_finish = false;  // the spin kernel still ran when finish() returned
  double host_ms = 0, spin_ms = 0;

  void print(int rank) const {
    std::printf("rank %d: %zu params, %zu elements, %zu buckets (%zu reductions in %zu launches, %zu synced "
                "passes); host time of the synced backward %.2f ms while the compute stream spun %.0f ms (busy "
                "after finish: %s); max abs err %.3g (tolerance %.3g, |ref| <= %.3g), %zu bad%s%s\n",
                rank, n_params, n_elements, n_buckets, bucket_reductions, launches, synced_passes, host_ms, spin_ms,
                compute_busy_after_finish ? "yes" : "NO", max_abs_err, tolerance, max_ref, n_bad,
                first_bad.empty() ? "" : "; first: ", first_bad.c_str());
  }
};

/// One accumulation window of `micro_batches` backward passes on every rank of `pg`, with the
/// gradient of (rank r, micro-batch k) seeded by (seed, r, k). Backward is emulated in reverse
/// parameter order: a kernel accumulates each parameter's gradient on the compute stream, then
/// the reducer is told it is ready. The synced pass starts with a 100 ms spin on the compute
/// stream, so every gradient is written long after mark_ready() returns: a reduction that did not
/// wait for the compute stream would average stale values. Compares the result with the host's
/// average over ranks of each rank's accumulated sum (double).
inline DdpOutcome run_ddp(::ampkit::dist::ProcessGroup& pg, int micro_batches, std::uint64_t seed) {
  using namespace ::ampkit::dist;
  DdpOutcome out;
  const int rank = pg.rank(), world = pg.world_size();
  std::mt19937_64 rng(seed);  // same sizes on every rank
  std::vector<std::size_t> sizes(37);
  for (auto& s : sizes) s = 1 + rng() % (rng() % 4 == 0 ? 200000 : 3000);
  std::vector<std::size_t> offsets(sizes.size());
  std::size_t total = 0;
  for (std::size_t p = 0; p < sizes.size(); ++p) {
    offsets[p] = total;
    total += sizes[p];
  }
  out.n_params = sizes.size();
  out.n_elements = total;

  cudaStream_t compute;
  AMPKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  float *grads = nullptr, *src = nullptr, *warm = nullptr;
  AMPKIT_CUDA_CHECK(cudaMalloc(&grads, total * sizeof(float)));
  AMPKIT_CUDA_CHECK(cudaMalloc(&src, total * sizeof(float)));
  AMPKIT_CUDA_CHECK(cudaMalloc(&warm, 1024 * sizeof(float)));
  AMPKIT_CUDA_CHECK(cudaMemsetAsync(grads, 0, total * sizeof(float), compute));  // zero_grad
  // Warm-up: NCCL connects to peers on first use; keep that out of the timed pass.
  AMPKIT_CUDA_CHECK(cudaMemsetAsync(warm, 0, 1024 * sizeof(float), compute));
  pg.all_reduce(warm, 1024, ncclFloat32, ReduceOp::kSum, compute, "warm-up all-reduce");
  pg.synchronize(compute);
  {
    BucketOptions o;
    o.first_bucket_bytes = std::size_t{64} << 10;
    o.bucket_bytes = std::size_t{1} << 20;
    GradReducer<::ampkit::Fp32> reducer(pg, std::span<float>(grads, total), sizes, o);
    out.n_buckets = reducer.plan().n_buckets();
    for (int k = 0; k < micro_batches; ++k) {
      const bool sync = k == micro_batches - 1;
      const auto g = random_values(total, seed * 1000 + static_cast<std::uint64_t>(rank) * 100 + k);
      AMPKIT_CUDA_CHECK(cudaMemcpyAsync(src, g.data(), total * sizeof(float), cudaMemcpyHostToDevice, compute));
      pg.synchronize(compute);  // g is pageable and dies with this iteration
      reducer.begin(compute, sync);
      if (sync) {
        out.spin_ms = 100;
        spin(compute, out.spin_ms);
      }
      const auto t0 = std::chrono::steady_clock::now();
      for (std::size_t p = sizes.size(); p-- > 0;) {
        accumulate(src + offsets[p], grads + offsets[p], sizes[p], compute);
        reducer.mark_ready({p, 1});
      }
      reducer.finish();
      if (sync) {
        out.host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        const cudaError_t q = cudaStreamQuery(compute);
        out.compute_busy_after_finish = q == cudaErrorNotReady;
        if (q == cudaErrorNotReady) (void)cudaGetLastError();
      } else {
        out.reductions_in_no_sync_passes += reducer.n_bucket_reductions();
      }
    }
    out.bucket_reductions = reducer.n_bucket_reductions();
    out.synced_passes = reducer.n_synced_passes();
    out.launches = reducer.n_launches();
    std::vector<float> got(total);
    AMPKIT_CUDA_CHECK(cudaMemcpyAsync(got.data(), grads, total * sizeof(float), cudaMemcpyDeviceToHost, compute));
    pg.synchronize(compute, "reading the averaged gradients");

    std::vector<double> want(total, 0.0);
    for (int r = 0; r < world; ++r)
      for (int k = 0; k < micro_batches; ++k) {
        const auto g = random_values(total, seed * 1000 + static_cast<std::uint64_t>(r) * 100 + k);
        for (std::size_t i = 0; i < total; ++i) want[i] += g[i];
      }
    // Each rank accumulates K values of |g| < 1 in fp32 (K - 1 roundings), NCCL sums W of those
    // and scales (W roundings): every rounding is at most eps/2 of a magnitude <= K.
    const double eps = std::numeric_limits<float>::epsilon();
    out.tolerance = (micro_batches + world) * eps * micro_batches;
    for (std::size_t i = 0; i < total; ++i) {
      want[i] /= world;
      const double err = std::abs(got[i] - want[i]);
      out.max_abs_err = std::max(out.max_abs_err, err);
      out.max_ref = std::max(out.max_ref, std::abs(want[i]));
      if (!(err <= out.tolerance)) {
        if (out.n_bad++ == 0)
          out.first_bad = "[" + std::to_string(i) + "] got " + std::to_string(got[i]) + " want " + std::to_string(want[i]);
      }
    }
  }
  AMPKIT_CUDA_CHECK(cudaStreamSynchronize(compute));
  (void)cudaFree(grads);
  (void)cudaFree(src);
  (void)cudaFree(warm);
  (void)cudaStreamDestroy(compute);
  return out;
}

/// The checks every rank's outcome must pass.
inline void check_ddp(const DdpOutcome& o, int micro_batches) {
  CHECK(o.n_buckets > 3);
  CHECK(o.n_bad == 0);
  CHECK(o.max_ref > 0.5);  // real data, not zeros
  CHECK(o.reductions_in_no_sync_passes == 0);
  CHECK(o.bucket_reductions == o.n_buckets);  // every bucket once, in the synced pass only
  CHECK(o.synced_passes == 1);
  CHECK(o.launches <= o.n_buckets);
  CHECK(o.compute_busy_after_finish);  // no host synchronisation in mark_ready/finish
  CHECK(o.host_ms < o.spin_ms / 2);
  (void)micro_batches;
}

}  // namespace ampkit::testing::dist

// Benchmark of the nn_sampling CUDA ops at DEKR-W32 512x512 shapes (batch 32 by default):
// deformable conv (255 ch, 128x128, groups = offset groups = 17) forward and forward+backward,
// the neck's resize+concat (4 branches -> 480 ch at 128x128) forward+backward, and HRNet's
// nearest upsampling x2/x4/x8 forward+backward. Prints one JSON object (median ms over timed
// iterations, CUDA events) for bench/torch_sampling_bench.py to set beside PyTorch's numbers.
// The deformable conv is timed on every algorithm (rows suffixed _im2col / _fused, and _mma for
// fp16/bf16 on compute capability 8.0+) and on the default one (unsuffixed); "checks" holds each
// one's max relative difference from im2col for every output at the full DEKR shape.
// AMPKIT_DEFORM_CONV_ALGO=im2col|fused|mma|auto sets the default.
//
//   ./build/bench/sampling_bench [--batch 32] [--iters 20] [--dtype fp16|bf16|fp32] > ampkit.json
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "ampkit/backend/cuda/affine_offsets.cuh"
#include "ampkit/backend/cuda/concat.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/deform_conv2d.cuh"
#include "ampkit/backend/cuda/upsample_nearest.cuh"

namespace {

using namespace ampkit;

/// Fill with a cheap deterministic pattern in [lo, hi] (never all zeros).
template <class T>
__global__ void fill_kernel(T* p, std::int64_t n, float lo, float hi, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += std::int64_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    cuda::sampling::store_f(p + i, lo + (hi - lo) * (h & 0xffffff) / 16777216.f);
  }
}

template <class T>
cuda::DeviceTensor<T> filled(Cuda& ctx, Shape s, float lo, float hi, std::uint32_t seed) {
  auto t = ctx.tensor<T>(s);
  fill_kernel<T><<<cuda::sampling::grid_for(s.numel(), 256), 256, 0, ctx.stream()>>>(t.data(), s.numel(), lo, hi, seed);
  AMPKIT_CUDA_CHECK_LAUNCH();
  return t;
}

double time_ms(Cuda& ctx, int iters, const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();  // warm-up: workspace cached, cuBLAS heuristics chosen
  cudaEvent_t a, b;
  AMPKIT_CUDA_CHECK(cudaEventCreate(&a));
  AMPKIT_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < iters; ++i) {
    AMPKIT_CUDA_CHECK(cudaEventRecord(a, ctx.stream()));
    f();
    AMPKIT_CUDA_CHECK(cudaEventRecord(b, ctx.stream()));
    AMPKIT_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    AMPKIT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <class T>
void run(int batch, int iters, const char* dtype, int argc, char** argv) {
  Cuda ctx;
  std::vector<std::pair<std::string, double>> rows, checks;
  {  // deformable conv, DEKR adaptive block
    const int groups = 17;
    const Shape xs{batch, 128, 128, 255};
    DeformConv2dParams p;
    p.groups = p.offset_groups = groups;
    auto x = filled<T>(ctx, xs, -1, 1, 1);
    auto off = filled<T>(ctx, {batch, 128, 128, p.offset_channels()}, -2, 2, 2);
    auto w = filled<T>(ctx, {255, 3, 3, 15}, -0.1f, 0.1f, 3);
    auto y = ctx.tensor<T>(xs), dy = filled<T>(ctx, xs, -1, 1, 4), dx = ctx.tensor<T>(xs);
    auto doff = ctx.tensor<T>(off.view().shape);
    auto dw = filled<T>(ctx, w.view().shape, 0, 0, 5);
    auto affine = filled<T>(ctx, {batch, 128, 128, 6 * groups}, -1, 1, 6), daffine = ctx.tensor<T>(affine.view().shape);
    auto fwd = [&] { deform_conv2d_forward<T>(ctx, x.cview(), off.cview(), w.cview(), y.view(), p); };
    auto bwd = [&] {
      deform_conv2d_backward<T>(ctx, x.cview(), off.cview(), w.cview(), dy.cview(), dx.view(), doff.view(), dw.view(), p);
    };
    // Both algorithms side by side (suffixed rows), then the default one (unsuffixed rows, the
    // names bench/torch_sampling_bench.py compares against). Before timing, the fused outputs are
    // compared with im2col's on this full DEKR shape (max |diff| / max |im2col|, per tensor).
    namespace s = cuda::sampling;
    auto& algo = s::deform_conv_algo();
    const s::DeformConvAlgo default_algo = algo;
    auto snapshot = [&] {
      AMPKIT_CUDA_CHECK(cudaMemsetAsync(dw.data(), 0, dw.view().shape.numel() * sizeof(T), ctx.stream()));
      fwd();
      bwd();
      std::vector<HostTensor<T>> r;
      r.push_back(ctx.to_host(y.cview()));
      r.push_back(ctx.to_host(dx.cview()));
      r.push_back(ctx.to_host(doff.cview()));
      r.push_back(ctx.to_host(dw.cview()));
      return r;
    };
    algo = s::DeformConvAlgo::kIm2col;
    const auto ref = snapshot();
    // The tensor-core kernels where they apply (fp16/bf16, compute capability 8.0+).
    std::vector<std::pair<s::DeformConvAlgo, const char*>> algos{{s::DeformConvAlgo::kIm2col, "im2col"},
                                                                 {s::DeformConvAlgo::kFused, "fused"}};
    if (!std::is_same_v<T, float> && ctx.device().cc_major >= 8) algos.emplace_back(s::DeformConvAlgo::kMma, "mma");
    const char* names[4] = {"y", "dL_dx", "dL_doffsets", "dL_dw"};
    for (std::size_t ai = 1; ai < algos.size(); ++ai) {
      algo = algos[ai].first;
      const auto got = snapshot();
      for (int i = 0; i < 4; ++i) {
        double md = 0, mr = 0;
        auto a = ref[i].span();
        auto b = got[i].span();
        for (std::size_t e = 0; e < a.size(); ++e) {
          const double va = static_cast<float>(a[e]), vb = static_cast<float>(b[e]);
          md = std::max(md, std::abs(va - vb));
          mr = std::max(mr, std::abs(va));
        }
        checks.emplace_back(std::string("deform_") + algos[ai].second + "_vs_im2col_" + names[i],
                            md / std::max(mr, 1e-30));
      }
    }
    for (auto [a, name] : algos) {
      algo = a;
      rows.emplace_back(std::string("deform_conv2d_fwd_") + name, time_ms(ctx, iters, fwd));
      rows.emplace_back(std::string("deform_conv2d_fwd_bwd_") + name, time_ms(ctx, iters, [&] { fwd(); bwd(); }));
    }
    algo = default_algo;
    rows.emplace_back("deform_conv2d_fwd", time_ms(ctx, iters, fwd));
    rows.emplace_back("deform_conv2d_fwd_bwd", time_ms(ctx, iters, [&] { fwd(); bwd(); }));
    rows.emplace_back("adaptive_offsets_deform_fwd_bwd", time_ms(ctx, iters, [&] {
                        affine_offsets_forward<T>(ctx, affine.cview(), off.view());
                        fwd();
                        bwd();
                        affine_offsets_backward<T>(ctx, doff.cview(), daffine.view());
                      }));
  }
  {  // neck: resize + concat of the 4 HRNet-W32 branches to 1/4 resolution
    std::vector<cuda::DeviceTensor<T>> xs, dxs;
    const int ch[4] = {32, 64, 128, 256};
    for (int i = 0; i < 4; ++i) {
      const Shape s{batch, 128 >> i, 128 >> i, ch[i]};
      xs.push_back(filled<T>(ctx, s, -1, 1, 10 + i));
      dxs.push_back(ctx.tensor<T>(s));
    }
    auto y = ctx.tensor<T>({batch, 128, 128, 480}), dy = filled<T>(ctx, {batch, 128, 128, 480}, -1, 1, 20);
    std::vector<TensorView<const T>> xv;
    std::vector<TensorView<T>> dv;
    for (int i = 0; i < 4; ++i) xv.push_back(xs[i].cview()), dv.push_back(dxs[i].view());
    rows.emplace_back("resize_concat_fwd_bwd", time_ms(ctx, iters, [&] {
                        resize_concat_forward<T>(ctx, xv, y.view());
                        resize_concat_backward<T>(ctx, dy.cview(), dv);
                      }));
  }
  for (int s : {2, 4, 8}) {  // HRNet fuse: branch j (already conv1x1'd to 32 ch) upsampled to branch 0
    const Shape xs{batch, 128 / s, 128 / s, 32}, ys{batch, 128, 128, 32};
    auto x = filled<T>(ctx, xs, -1, 1, 30), y = filled<T>(ctx, ys, -1, 1, 31), dy = filled<T>(ctx, ys, -1, 1, 32);
    auto dx = ctx.tensor<T>(xs);
    rows.emplace_back("upsample_nearest_x" + std::to_string(s) + "_fwd_bwd", time_ms(ctx, iters, [&] {
                        upsample_nearest_forward<T>(ctx, x.cview(), y.view(), s, Accumulate::kYes);
                        upsample_nearest_backward<T>(ctx, dy.cview(), dx.view(), s);
                      }));
  }
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::printf("{\"command\": \"%s\", \"date\": \"%s\", \"gpu\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, "
              "\"iters\": %d, \"median_ms\": {",
              cmd.c_str(), date, ctx.device().name.c_str(), dtype, batch, iters);
  for (std::size_t i = 0; i < rows.size(); ++i)
    std::printf("%s\"%s\": %.4f", i ? ", " : "", rows[i].first.c_str(), rows[i].second);
  std::printf("}, \"checks\": {");
  for (std::size_t i = 0; i < checks.size(); ++i)
    std::printf("%s\"%s\": %.3e", i ? ", " : "", checks[i].first.c_str(), checks[i].second);
  DeformConv2dParams q;
  q.groups = q.offset_groups = 17;
  const char* default_name = cuda::sampling::use_mma<T>(ctx, {batch, 128, 128, 255}, 255, q)   ? "mma"
                             : cuda::sampling::use_fused({batch, 128, 128, 255}, 255, q) ? "fused"
                                                                                          : "im2col";
  std::printf("}, \"deform_conv_algo_default\": \"%s\"}\n", default_name);
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 32, iters = 20;
  std::string dtype = "fp16";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--batch")) batch = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--iters")) iters = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
  }
  try {
    if (dtype == "fp16") run<ampkit::half>(batch, iters, "fp16", argc, argv);
    else if (dtype == "bf16") run<ampkit::bfloat16>(batch, iters, "bf16", argc, argv);
    else if (dtype == "fp32") run<float>(batch, iters, "fp32", argc, argv);
    else {
      std::fprintf(stderr, "sampling_bench: --dtype must be fp16, bf16 or fp32, given %s\n", dtype.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sampling_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

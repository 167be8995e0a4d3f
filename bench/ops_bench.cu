// Per-op benchmark of area nn's CUDA ops at DEKR-W32 512x512 shapes (batch 32, fp16 by default):
// the convolutions HRNet/DEKR run (cuDNN, plan-cached), BN (+ReLU, +add+ReLU, training mode),
// ReLU, residual add and the fuse layer's sum+ReLU. Each op is timed forward and
// forward+backward (median over >= 20 reps after warm-up, CUDA events) and printed as JSON, with
// the same op names as bench/torch_ops_bench.py so the two can be joined:
//
//   ./build/bench/ampkit_ops_bench [--batch 32] [--iters 20] [--dtype fp16|bf16|fp32] [--only SUBSTR] >
//   ampkit.json python3 bench/torch_ops_bench.py --ampkit-json ampkit.json --out bench/results/ops_$(date
//   +%Y%m%d).json
//
// Adding an op: append one `add(name, shape, fwd, fwd_bwd)` in register_*() below, and the same
// name in torch_ops_bench.py's OPS table.
//
// Each result names the implementation that ran ("path": direct-grouped / cudnn for convs, with
// cuDNN's chosen algorithms; flat / per-channel layout and pack width for BN) and, for convs,
// the backward directions timed alone (ms_bwd_data, ms_bwd_filter). --force-cudnn and
// --no-bn-flat select the older paths, so one session can time both:
//   ampkit_ops_bench --only g17; ampkit_ops_bench --only g17 --force-cudnn
// 1x1 convs may run a direction as a cuBLASLt GEMM (conv1x1_gemm.cuh): the path then names the
// engine per direction ("fwd=cublaslt", "fwd=cublaslt-padded" for the staged variant of rows
// that are not 16-byte aligned, or cuDNN's algorithm number). The bench runs in
// benchmark mode (CudnnOptions default), so each direction is the faster of cuDNN and cuBLASLt;
// --conv-gemm always|never forces one side (--force-cudnn implies never).
// cuDNN's backend-API plans are candidates by default (CudnnOptions::graph_api = kBenchmark;
// --cudnn-graph forces kAlways, --no-cudnn-graph kNever = the legacy algorithms alone, as
// AMPKIT_CUDNN_GRAPH_API=never): each cuDNN direction is the fastest of the backend-API
// plans and the legacy pick, and the path names it per direction ("fwd=cudnn-graph#<engine>"
// for a graph-API plan, cuDNN's legacy algorithm number otherwise). Backend-API failures seen
// while planning (expected for some engines) go to stderr at the end.
// "conv1x1 480->256 (alignment probe)" is not a DEKR layer: next to 480->255 it shows whether
// cuDNN's time on the head comes from K = 255 not being a multiple of 8.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ampkit/backend/cuda/batch_norm.cuh"
#include "ampkit/backend/cuda/context.cuh"
#include "ampkit/backend/cuda/conv2d.cuh"
#include "ampkit/backend/cuda/elementwise.cuh"

namespace {

using namespace ampkit;

/// Deterministic pattern in [lo, hi) (never all zeros), written on the device.
template <class N>
__global__ void fill_kernel(N* p, std::int64_t n, float lo, float hi, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = cuda::detail::from_float<N>(lo + (hi - lo) * static_cast<float>(h & 0xffffff) / 16777216.f);
  }
}

template <class T>
cuda::DeviceTensor<T> filled(Cuda& ctx, Shape s, float lo, float hi, std::uint32_t seed) {
  auto t = ctx.tensor<T>(s);
  fill_kernel<<<cuda::detail::grid_for(s.numel(), 256, ctx.device().multiprocessors), 256, 0, ctx.stream()>>>(
      reinterpret_cast<native_t<T>*>(t.data()), s.numel(), lo, hi, seed);
  AMPKIT_CUDA_CHECK_LAUNCH();
  return t;
}

double time_ms(Cuda& ctx, int iters, const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();  // warm-up: cuDNN Find runs here, workspace gets cached
  AMPKIT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
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

struct Entry {
  std::string op, shape;
  std::function<void()> fwd, fwd_bwd;
  std::shared_ptr<void> keep;  // the tensors the closures use
  std::function<std::string()> path;  // which implementation ran (asked after the timing)
  std::vector<std::pair<std::string, std::function<void()>>> parts;  // extra timings (name, op)
};

std::string cudnn_algos(const cuda::detail::ConvKey& key) {
  auto& plan = cuda::detail::ConvPlanCache::instance().get(key);
  // cuDNN's algorithm number, or the engine that replaced it
  auto algo = [](cuda::ConvEngine e, int a, const std::unique_ptr<cuda::detail::GraphConvPlan>& g) {
    if (e == cuda::ConvEngine::kCudnnGraph && g)
      return std::string(cuda::conv_engine_name(e)) + "#" + std::to_string(g->engine_index);
    return cuda::is_gemm_engine(e) ? std::string(cuda::conv_engine_name(e)) : std::to_string(a);
  };
  std::string s;
  if (plan.has_fwd) s += " fwd=" + algo(plan.fwd_engine, static_cast<int>(plan.fwd_algo), plan.fwd_graph);
  if (plan.has_bwd_data)
    s += " bwd_data=" + algo(plan.bwd_data_engine, static_cast<int>(plan.bwd_data_algo), plan.bwd_data_graph);
  if (plan.has_bwd_filter)
    s += " bwd_filter=" +
         algo(plan.bwd_filter_engine, static_cast<int>(plan.bwd_filter_algo), plan.bwd_filter_graph);
  return s;
}

std::string shape_str(Shape s) {
  return "(" + std::to_string(s.n) + "," + std::to_string(s.h) + "," + std::to_string(s.w) + "," +
         std::to_string(s.c) + ")";
}

template <class T>
struct Registry {
  Cuda& ctx;
  std::int64_t B;
  std::vector<Entry> entries;

  /// conv (x: (B,H,W,C), w: (K,R,R,C/g)); backward = data + filter (+ bias).
  void conv(const std::string& name, std::int64_t H, std::int64_t C, std::int64_t K, std::int64_t R,
            std::int64_t stride, std::int64_t groups, bool bias) {
    struct S {
      cuda::DeviceTensor<T> x, w, b, y, dy, dx, dw, db;
      Conv2dParams p;
    };
    auto s = std::make_shared<S>();
    s->p = Conv2dParams::square(stride, R / 2, 1, groups);
    const Shape xs{B, H, H, C}, ws{K, R, R, C / groups};
    const Shape ys = conv2d_output_shape(xs, ws, s->p);
    const float wr = 1.f / std::sqrt(static_cast<float>(R * R * C / groups));
    s->x = filled<T>(ctx, xs, -1, 1, 1);
    s->w = filled<T>(ctx, ws, -wr, wr, 2);
    s->y = ctx.tensor<T>(ys);
    s->dy = filled<T>(ctx, ys, -1, 1, 3);
    s->dx = ctx.tensor<T>(xs);
    s->dw = filled<T>(ctx, ws, -0.01f, 0.01f, 4);
    if (bias) {
      s->b = filled<T>(ctx, {1, 1, 1, K}, -1, 1, 5);
      s->db = filled<T>(ctx, {1, 1, 1, K}, -1, 1, 6);
    }
    auto fwd = [this, s, bias] {
      conv2d_forward<T>(ctx, s->x.cview(), s->w.cview(), bias ? s->b.cview() : TensorView<const T>{},
                        s->y.view(), s->p);
    };
    auto bwd = [this, s, bias, fwd] {
      fwd();
      conv2d_backward_data<T>(ctx, s->dy.cview(), s->w.cview(), s->dx.view(), s->p);
      conv2d_backward_filter<T>(ctx, s->x.cview(), s->dy.cview(), s->dw.view(), s->p);
      if (bias) conv2d_backward_bias<T>(ctx, s->dy.cview(), s->db.view());
    };
    auto path = [this, xs, ws, s]() -> std::string {
      const std::string p = conv2d_path_name<T>(ctx, xs, ws, s->p);
      if (p != "cudnn") return p;
      return p + cudnn_algos(cuda::detail::conv_key<T>(ctx, xs, ws, s->p));
    };
    auto bwd_data = [this, s] { conv2d_backward_data<T>(ctx, s->dy.cview(), s->w.cview(), s->dx.view(), s->p); };
    auto bwd_filter = [this, s] {
      conv2d_backward_filter<T>(ctx, s->x.cview(), s->dy.cview(), s->dw.view(), s->p);
    };
    entries.push_back({name, "x" + shape_str(xs) + " w" + shape_str(ws), fwd, bwd, s, path,
                       {{"ms_bwd_data", bwd_data}, {"ms_bwd_filter", bwd_filter}}});
  }

  /// BN in training mode with epilogue e at (B,H,H,C).
  void bn(const std::string& name, std::int64_t H, std::int64_t C, BatchNormEpilogue e) {
    struct S {
      cuda::DeviceTensor<T> x, res, y, dy, dx, dres;
      cuda::DeviceTensor<float> g, b, rm, rv, sm, si, dg, db;
    };
    auto s = std::make_shared<S>();
    const Shape xs{B, H, H, C}, v{1, 1, 1, C};
    s->x = filled<T>(ctx, xs, -2, 3, 11);
    s->res = filled<T>(ctx, xs, -1, 1, 12);
    s->dy = filled<T>(ctx, xs, -1, 1, 13);
    s->y = ctx.tensor<T>(xs);
    s->dx = ctx.tensor<T>(xs);
    s->dres = ctx.tensor<T>(xs);
    s->g = filled<float>(ctx, v, 0.5f, 1.5f, 14);
    s->b = filled<float>(ctx, v, -0.5f, 0.5f, 15);
    s->rm = filled<float>(ctx, v, -0.1f, 0.1f, 16);
    s->rv = filled<float>(ctx, v, 0.9f, 1.1f, 17);
    s->sm = ctx.tensor<float>(v);
    s->si = ctx.tensor<float>(v);
    s->dg = filled<float>(ctx, v, 0, 1, 18);
    s->db = filled<float>(ctx, v, 0, 1, 19);
    auto fwd = [this, s, e] {
      if (e == BatchNormEpilogue::kNone)
        batch_norm_forward_training<T>(ctx, s->x.cview(), s->g.cview(), s->b.cview(), s->rm.view(),
                                       s->rv.view(), s->sm.view(), s->si.view(), s->y.view());
      else if (e == BatchNormEpilogue::kRelu)
        batch_norm_relu_forward_training<T>(ctx, s->x.cview(), s->g.cview(), s->b.cview(), s->rm.view(),
                                            s->rv.view(), s->sm.view(), s->si.view(), s->y.view());
      else
        batch_norm_add_relu_forward_training<T>(ctx, s->x.cview(), s->res.cview(), s->g.cview(), s->b.cview(),
                                                s->rm.view(), s->rv.view(), s->sm.view(), s->si.view(),
                                                s->y.view());
    };
    auto bwd = [this, s, e, fwd] {
      fwd();
      if (e == BatchNormEpilogue::kNone)
        batch_norm_backward<T>(ctx, s->x.cview(), s->dy.cview(), s->g.cview(), s->sm.cview(), s->si.cview(),
                               s->dx.view(), s->dg.view(), s->db.view());
      else if (e == BatchNormEpilogue::kRelu)
        batch_norm_relu_backward<T>(ctx, s->x.cview(), s->y.cview(), s->dy.cview(), s->g.cview(),
                                    s->sm.cview(), s->si.cview(), s->dx.view(), s->dg.view(), s->db.view());
      else
        batch_norm_add_relu_backward<T>(ctx, s->x.cview(), s->y.cview(), s->dy.cview(), s->g.cview(),
                                        s->sm.cview(), s->si.cview(), s->dx.view(), s->dres.view(),
                                        s->dg.view(), s->db.view());
    };
    auto path = [xs, s] { return cuda::detail::bn_path_name<T>(xs, s->x.data()); };
    entries.push_back({name, shape_str(xs), fwd, bwd, s, path, {}});
  }

  /// relu / add / sum_relu(n) at (B,H,H,C). Backward: relu_backward (the only elementwise
  /// backward with work; add/sum pass the gradient through).
  void elementwise(const std::string& name, std::int64_t H, std::int64_t C, int n_inputs, bool relu) {
    struct S {
      std::vector<cuda::DeviceTensor<T>> in;
      cuda::DeviceTensor<T> y, dy, dx;
    };
    auto s = std::make_shared<S>();
    const Shape xs{B, H, H, C};
    for (int i = 0; i < n_inputs; ++i) s->in.push_back(filled<T>(ctx, xs, -1, 1, 20 + i));
    s->y = ctx.tensor<T>(xs);
    s->dy = filled<T>(ctx, xs, -1, 1, 30);
    s->dx = ctx.tensor<T>(xs);
    auto fwd = [this, s, n_inputs, relu] {
      if (n_inputs == 1) {
        relu_forward<T>(ctx, s->in[0].cview(), s->y.view());
        return;
      }
      std::vector<TensorView<const T>> v;
      for (auto& t : s->in) v.push_back(t.cview());
      if (n_inputs == 2 && !relu)
        add_forward<T>(ctx, v[0], v[1], s->y.view());
      else if (relu)
        sum_relu_forward<T>(ctx, std::span<const TensorView<const T>>(v), s->y.view());
      else
        sum_forward<T>(ctx, std::span<const TensorView<const T>>(v), s->y.view());
    };
    auto bwd = [this, s, relu, fwd] {
      fwd();
      if (relu) relu_backward<T>(ctx, s->y.cview(), s->dy.cview(), s->dx.view());
    };
    entries.push_back({name, shape_str(xs), fwd, bwd, s, [] { return std::string("elementwise"); }, {}});
  }
};

/// DEKR-W32 at 512x512: stem at 1/2 and 1/4, branches at 128/64/32/16, head at 128.
template <class T>
void register_nn(Registry<T>& r) {
  // name, H, C, K, R, stride, groups, bias
  r.conv("conv3x3 s2 3->64 (stem1)", 512, 3, 64, 3, 2, 1, false);
  r.conv("conv3x3 s2 64->64 (stem2)", 256, 64, 64, 3, 2, 1, false);
  r.conv("conv1x1 256->64 (bottleneck)", 128, 256, 64, 1, 1, 1, false);
  r.conv("conv3x3 64->64 (bottleneck)", 128, 64, 64, 3, 1, 1, false);
  r.conv("conv1x1 64->256 (bottleneck)", 128, 64, 256, 1, 1, 1, false);
  r.conv("conv3x3 32->32 (branch1/4)", 128, 32, 32, 3, 1, 1, false);
  r.conv("conv3x3 64->64 (branch1/8)", 64, 64, 64, 3, 1, 1, false);
  r.conv("conv3x3 128->128 (branch1/16)", 32, 128, 128, 3, 1, 1, false);
  r.conv("conv3x3 256->256 (branch1/32)", 16, 256, 256, 3, 1, 1, false);
  r.conv("conv3x3 s2 32->64 (fuse down)", 128, 32, 64, 3, 2, 1, false);
  r.conv("conv1x1 64->32 (fuse up)", 64, 64, 32, 1, 1, 1, false);
  r.conv("conv1x1 480->32 (head heatmap)", 128, 480, 32, 1, 1, 1, false);
  r.conv("conv1x1 480->255 (head offset)", 128, 480, 255, 1, 1, 1, false);
  r.conv("conv1x1 480->256 (alignment probe)", 128, 480, 256, 1, 1, 1, false);
  r.conv("conv3x3 g17 255->102 bias (adaptive transform)", 128, 255, 102, 3, 1, 17, true);
  r.conv("conv1x1 g17 255->34 bias (offset out)", 128, 255, 34, 1, 1, 17, true);
  r.conv("conv1x1 32->18 bias (heatmap out)", 128, 32, 18, 1, 1, 1, true);
  // BN in training mode
  r.bn("bn_relu C64 (stem1)", 256, 64, BatchNormEpilogue::kRelu);
  r.bn("bn C32 (branch1/4)", 128, 32, BatchNormEpilogue::kNone);
  r.bn("bn_relu C32 (branch1/4)", 128, 32, BatchNormEpilogue::kRelu);
  r.bn("bn_add_relu C32 (branch1/4)", 128, 32, BatchNormEpilogue::kAddRelu);
  r.bn("bn_relu C64 (bottleneck)", 128, 64, BatchNormEpilogue::kRelu);
  r.bn("bn_add_relu C256 (bottleneck)", 128, 256, BatchNormEpilogue::kAddRelu);
  r.bn("bn_relu C255 (head offset)", 128, 255, BatchNormEpilogue::kRelu);
  r.bn("bn_add_relu C255 (adaptive block)", 128, 255, BatchNormEpilogue::kAddRelu);
  // elementwise
  r.elementwise("relu C32", 128, 32, 1, true);
  r.elementwise("add C32", 128, 32, 2, false);
  r.elementwise("sum3_relu C32 (fuse)", 128, 32, 3, true);
}

/// --cudnn-graph / --no-cudnn-graph: CudnnOptions::graph_api kAlways / kNever for the bench's
/// context (default: the library's, kBenchmark, which is kAlways here as the bench runs in
/// benchmark mode).
std::optional<CudnnGraphApi> g_cudnn_graph;

template <class T>
int run(int batch, int iters, const std::string& dtype, const std::string& only, int argc, char** argv) {
  Cuda ctx(0);
  if (g_cudnn_graph) {
    CudnnOptions o = ctx.cudnn_options();
    o.graph_api = *g_cudnn_graph;
    ctx.set_cudnn_options(o);
  }
  Registry<T> r{ctx, batch, {}};
  register_nn(r);
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::printf("{\n  \"command\": \"%s\",\n  \"date\": \"%s\",\n  \"gpu\": \"%s\",\n  \"cudnn\": %zu,\n",
              cmd.c_str(), date, ctx.device().name.c_str(), cudnnGetVersion());
  const bool graph_api = cuda::cudnn_graph_api_applies(ctx.cudnn_options());
  std::printf("  \"cudnn_graph_api\": %s,\n", graph_api ? "true" : "false");
  std::printf("  \"dtype\": \"%s\",\n  \"batch\": %d,\n  \"iters\": %d,\n  \"results\": [\n", dtype.c_str(),
              batch, iters);
  bool first = true;
  for (auto& e : r.entries) {
    if (!only.empty() && e.op.find(only) == std::string::npos) continue;
    const double f = time_ms(ctx, iters, e.fwd);
    const double fb = time_ms(ctx, iters, e.fwd_bwd);
    std::string extra;
    for (auto& [name, op] : e.parts) {
      char buf[64];
      std::snprintf(buf, sizeof buf, ", \"%s\": %.4f", name.c_str(), time_ms(ctx, iters, op));
      extra += buf;
    }
    std::printf("%s    {\"op\": \"%s\", \"shape\": \"%s\", \"ms_fwd\": %.4f, \"ms_fwd_bwd\": %.4f%s, \"path\": \"%s\"}",
                first ? "" : ",\n", e.op.c_str(), e.shape.c_str(), f, fb, extra.c_str(), e.path().c_str());
    std::fflush(stdout);
    first = false;
  }
  std::printf("\n  ]\n}\n");
  if (const std::string err = cuda::cudnn_graph_errors(); !err.empty())
    std::fprintf(stderr, "cuDNN backend-API failures while planning (skipped engines): %s\n", err.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 32, iters = 20;
  std::string dtype = "fp16", only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--batch")
      batch = std::stoi(next());
    else if (a == "--iters")
      iters = std::max(20, std::stoi(next()));
    else if (a == "--dtype")
      dtype = next();
    else if (a == "--only")
      only = next();
    else if (a == "--force-cudnn")
      cuda::conv_force_cudnn() = true;
    else if (a == "--no-bn-flat")
      cuda::bn_flat_packs() = false;
    else if (a == "--cudnn-graph")
      g_cudnn_graph = CudnnGraphApi::kAlways;
    else if (a == "--no-cudnn-graph")
      g_cudnn_graph = CudnnGraphApi::kNever;
    else if (a == "--conv-gemm") {
      const std::string m = next();
      if (m == "auto")
        cuda::conv1x1_gemm() = cuda::Conv1x1Gemm::kAuto;
      else if (m == "always")
        cuda::conv1x1_gemm() = cuda::Conv1x1Gemm::kAlways;
      else if (m == "never")
        cuda::conv1x1_gemm() = cuda::Conv1x1Gemm::kNever;
      else {
        std::fprintf(stderr, "--conv-gemm takes auto, always or never\n");
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--batch 32] [--iters 20] [--dtype fp16|bf16|fp32] [--only SUBSTR] "
                   "[--force-cudnn] [--no-bn-flat] [--conv-gemm auto|always|never] [--cudnn-graph|--no-cudnn-graph]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    if (dtype == "fp16") return run<ampkit::half>(batch, iters, dtype, only, argc, argv);
    if (dtype == "bf16") return run<ampkit::bfloat16>(batch, iters, dtype, only, argc, argv);
    if (dtype == "fp32") return run<float>(batch, iters, dtype, only, argc, argv);
    std::fprintf(stderr, "unknown --dtype %s (fp16, bf16, fp32)\n", dtype.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ampkit_ops_bench: %s\n", e.what());
    return 1;
  }
}

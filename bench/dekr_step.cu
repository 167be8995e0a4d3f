// The full DEKR-W32 training step on the CUDA backend, timed: forward (training BN), loss in fp32,
// loss backward seeded with the device-resident loss scale, model backward, then the AMP step
// (inf/NaN check, unscale, Adam on the fp32 master weights, storage-type copies, zeroed gradients),
// with micro-batch accumulation when asked. Synthetic random data already on the device, with the
// value ranges of bench/torch_dekr_step.py (normalised image ~ N(0,1); heatmaps U[0,1) with
// weights 1 / 0.1; mask 95 % ones; displacements N(0,4^2) with 10 % of weights 0.1).
//
// Per configuration: warm-up (>= 3 steps: cuDNN Find and the caching allocator settle), then the
// median over >= 20 steps timed with CUDA events. One JSON object per line with the keys of
// bench/torch_dekr_step.py (impl, variant, batch, accumulate, input, ms_per_step, img_per_s,
// peak_allocated_bytes, loss, params, command, date, gpu, cudnn) plus ampkit's own, so that
// bench/compare_dekr_step.py can join the two. Human-readable notes go to stderr prefixed "# ".
//
//   ./build/bench/ampkit_dekr_step [--policy fp32,fp16,bf16] [--batch 2,10,32] [--accumulate 1]
//        [--variants fp16:32,fp16:2x4,...] [--steps 20] [--warmup 5] [--size 512] [--graph] [--profile]
//        [--recompute]
//
// --recompute: build the model with DekrConfig::recompute_conv_outputs (every ConvBn frees its
//   conv output after forward and recomputes it in backward, nn/conv_bn.hpp) and plan the memory
//   with it; every row's variant gets the suffix "_recompute" ("fp16_recompute",
//   "fp16_recompute_graph") and the JSON the member "recompute":true, so that a run with and one
//   without the flag set step time and peak side by side (rows without it carry "recompute":false).
// --graph: after the eager rows, capture one whole step (all micro-batches + the AMP step) as a
//   CUDA graph and time its replays (an extra row, variant "<policy>_graph"), with the library's
//   cuda::GraphStep (backend/cuda/graph_step.cuh, also what `dekr_amp train` uses with
//   runtime.cuda_graph). Capture needs no host synchronisation inside the step (there is none by
//   design) and no cudaMalloc: after the warm-up every allocation is a cache hit of the caching
//   allocator; the blocks handed out during capture move into the graph's private pool, so no
//   other allocation receives them between replays. cuDNN Find runs only at the first call of
//   each conv shape (plan cache), i.e. in the warm-up. Capture is tried in global mode first (any
//   unsafe call fails it, naming the call); if that fails it says why and retries in relaxed
//   mode (which permits a cudaMalloc). The JSON row adds graph_nodes, capture_mode,
//   capture_instantiate_ms and graph_pool_bytes.
// --profile: where the time goes. (1) Phases with CUDA events between them: forward, loss
//   (forward + backward), model backward, optimizer (accumulate fold + check/unscale/Adam), plus
//   the host time to enqueue a step (≈ GPU time means launch-bound). (2) When CUPTI can be loaded
//   at run time (dlopen; AMPKIT_CUPTI=/path/libcupti.so.13 overrides the search), every kernel of
//   a few eager steps, grouped by kind (cuDNN conv, cuBLAS GEMM, deformable im2col/col2im, BN,
//   elementwise, resample, loss, optimizer, ...), with the top kernels by time.
#include <cuda_runtime.h>
#include <cudnn.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#if __has_include(<cupti_activity.h>)
#include <cupti_activity.h>
#define AMPKIT_BENCH_HAS_CUPTI 1
#else
#define AMPKIT_BENCH_HAS_CUPTI 0
#endif

#include "ampkit/amp/amp_optimizer.hpp"
#include "ampkit/backend/cuda/amp_step.cuh"
#include "ampkit/backend/cuda/dekr.cuh"
#include "ampkit/backend/cuda/graph_step.cuh"
#include "ampkit/nn/branch_scope.hpp"
#include "ampkit/optim/adam.hpp"
#include "ampkit/train/memory_plan.hpp"

namespace ak = ampkit;  // cuda_fp16.h declares a global `half`

namespace {

/// One DEKR-W32 training image at 512x512 costs 272.7 GFLOP (3 x 90.9 GFLOP forward; see
/// docs/reference "pytorch_peer.md"); it scales with the pixel count.
constexpr double kGflopPerImage512 = 272.7;

// ---- synthetic data on the device -----------------------------------------------------------
__device__ __forceinline__ float uniform01(std::uint64_t seed, std::uint64_t i) {
  // splitmix64 of (seed, i): independent, reproducible, in (0, 1]
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (static_cast<float>(z >> 40) + 1.f) * (1.f / 16777216.f);
}

template <class N>
__device__ __forceinline__ N narrow(float x) {
  if constexpr (std::is_same_v<N, float>)
    return x;
  else if constexpr (std::is_same_v<N, __half>)
    return __float2half_rn(x);
  else
    return __float2bfloat16_rn(x);
}

enum class Dist : int { kNormal, kUniform, kBernoulli };

/// p[i] = mean + stddev * N(0,1) | lo + (hi - lo) * U | (U > thr ? hi : lo).
template <class N>
__global__ void random_fill(N* p, std::int64_t n, Dist d, float a, float b, float thr, std::uint64_t seed) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const float u = uniform01(seed, static_cast<std::uint64_t>(i));
    float v;
    if (d == Dist::kNormal) {  // Box-Muller with a second independent uniform
      const float u2 = uniform01(seed ^ 0x5DEECE66Dull, static_cast<std::uint64_t>(i));
      v = a + b * sqrtf(-2.f * logf(u)) * cospif(2.f * u2);
    } else if (d == Dist::kUniform) {
      v = a + (b - a) * (u - 0x1p-24f);
    } else {
      v = u > thr ? b : a;
    }
    p[i] = narrow<N>(v);
  }
}

/// w[i] = t[i] > thr ? hi : lo (the heatmap weights follow the heatmap targets, as in the peer).
__global__ void weights_from(const float* t, float* w, std::int64_t n, float thr, float hi, float lo) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    w[i] = t[i] > thr ? hi : lo;
}

template <class T>
ak::cuda::DeviceTensor<T> random_tensor(ak::Cuda& ctx, ak::Shape s, Dist d, float a, float b, float thr,
                                        std::uint64_t seed) {
  auto t = ctx.tensor<T>(s);
  random_fill<<<1024, 256, 0, ctx.stream()>>>(reinterpret_cast<ak::native_t<T>*>(t.data()), s.numel(), d, a, b, thr,
                                               seed);
  AMPKIT_CUDA_CHECK_LAUNCH();
  return t;
}

// ---- small helpers ----------------------------------------------------------------------------
std::string json_str(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    r += c;
  }
  return r + "\"";
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::size_t free_device_bytes() {
  std::size_t f = 0, t = 0;
  AMPKIT_CUDA_CHECK(cudaMemGetInfo(&f, &t));
  return f;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> r;
  std::size_t a = 0;
  while (a <= s.size()) {
    const std::size_t b = s.find(sep, a);
    const std::string part = s.substr(a, b == std::string::npos ? std::string::npos : b - a);
    if (!part.empty()) r.push_back(part);
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return r;
}

struct Options {
  struct Variant {
    std::string policy;
    int batch = 2, accumulate = 1;
  };
  std::vector<Variant> variants;
  int steps = 20, warmup = 5, size = 512, profile_steps = 5;
  bool graph = false, profile = false, recompute = false;
  double lr = 1e-3;
  std::string command, date;
};

/// Everything a row prints besides the configuration.
struct Row {
  std::string variant;
  double ms = 0, ms_min = 0, ms_max = 0, host_enqueue_ms = 0, first_step_ms = 0;
  std::size_t peak_allocated = 0, peak_reserved = 0, mem_get_info_delta = 0, raw_allocs = 0;
  float loss = 0, loss_scale = 1;
  std::int64_t skipped = 0, opt_steps = 0;
  std::string extra;  ///< more JSON members, each starting with ','
};

// ---- CUPTI (optional, loaded at run time) -------------------------------------------------------
#if AMPKIT_BENCH_HAS_CUPTI
/// Kernel and memset records of a profiled region, collected through CUPTI's activity API.
class KernelTrace {
 public:
  struct Record {
    std::string name;
    double ms;
  };

  /// Loads CUPTI; false (and why()) when it is not there.
  bool load() {
    std::vector<std::string> candidates;
    if (const char* e = std::getenv("AMPKIT_CUPTI")) candidates.emplace_back(e);
    for (const char* c : {"libcupti.so.13", "libcupti.so", "/usr/local/cuda/lib64/libcupti.so.13",
                          "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13",
                          "/usr/local/cuda/targets/x86_64-linux/lib/libcupti.so.13"})
      candidates.emplace_back(c);
    for (const auto& c : candidates)
      if ((lib_ = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL))) {
        loaded_from_ = c;
        break;
      }
    if (!lib_) {
      why_ = "libcupti not found (set AMPKIT_CUPTI=/path/to/libcupti.so.13)";
      return false;
    }
    enable_ = reinterpret_cast<decltype(enable_)>(dlsym(lib_, "cuptiActivityEnable"));
    disable_ = reinterpret_cast<decltype(disable_)>(dlsym(lib_, "cuptiActivityDisable"));
    register_ = reinterpret_cast<decltype(register_)>(dlsym(lib_, "cuptiActivityRegisterCallbacks"));
    flush_ = reinterpret_cast<decltype(flush_)>(dlsym(lib_, "cuptiActivityFlushAll"));
    next_ = reinterpret_cast<decltype(next_)>(dlsym(lib_, "cuptiActivityGetNextRecord"));
    if (!enable_ || !disable_ || !register_ || !flush_ || !next_) {
      why_ = "libcupti lacks the activity API symbols";
      return false;
    }
    instance() = this;
    if (register_(&on_request, &on_complete) != CUPTI_SUCCESS) {
      why_ = "cuptiActivityRegisterCallbacks failed";
      return false;
    }
    return true;
  }
  const std::string& why() const { return why_; }
  const std::string& loaded_from() const { return loaded_from_; }

  bool start() {
    records_.clear();
    return enable_(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) == CUPTI_SUCCESS &&
           enable_(CUPTI_ACTIVITY_KIND_MEMSET) == CUPTI_SUCCESS;
  }
  std::vector<Record> stop() {
    AMPKIT_CUDA_CHECK(cudaDeviceSynchronize());
    (void)disable_(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    (void)disable_(CUPTI_ACTIVITY_KIND_MEMSET);
    (void)flush_(1);  // CUPTI_ACTIVITY_FLAG_FLUSH_FORCED: hand over partly filled buffers too
    return std::move(records_);
  }

 private:
  static KernelTrace*& instance() {
    static KernelTrace* p = nullptr;
    return p;
  }
  static void CUPTIAPI on_request(std::uint8_t** buffer, std::size_t* size, std::size_t* max_records) {
    constexpr std::size_t kBytes = 8 << 20;
    *buffer = static_cast<std::uint8_t*>(std::aligned_alloc(8, kBytes));
    *size = kBytes;
    *max_records = 0;
  }
  static void CUPTIAPI on_complete(CUcontext, std::uint32_t, std::uint8_t* buffer, std::size_t, std::size_t valid) {
    KernelTrace* self = instance();
    CUpti_Activity* r = nullptr;
    while (self && self->next_(buffer, valid, &r) == CUPTI_SUCCESS) {
      if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
        self->records_.push_back({demangle(k->name), static_cast<double>(k->end - k->start) * 1e-6});
      } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
        self->records_.push_back({"[memset]", static_cast<double>(m->end - m->start) * 1e-6});
      }
    }
    std::free(buffer);
  }
  static std::string demangle(const char* n) {
    if (!n) return "?";
    int status = 0;
    char* d = abi::__cxa_demangle(n, nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : n;
    std::free(d);
    return s;
  }

  void* lib_ = nullptr;
  std::string why_, loaded_from_;
  CUptiResult (*enable_)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*disable_)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*register_)(CUpti_BuffersCallbackRequestFunc, CUpti_BuffersCallbackCompleteFunc) = nullptr;
  CUptiResult (*flush_)(std::uint32_t) = nullptr;
  CUptiResult (*next_)(std::uint8_t*, std::size_t, CUpti_Activity**) = nullptr;
  std::vector<Record> records_;
};
#endif

/// The layer kind a kernel belongs to, from its (demangled) name. ampkit's own kernels are
/// recognised by namespace and name; library kernels by the usual cuDNN / cuBLAS naming (cuDNN
/// convolution kernels carry conv/fprop/dgrad/wgrad/implicit, cuBLAS ones gemm without them:
/// in this network the only cuBLAS GEMMs are the deformable convolutions').
std::string kernel_kind(const std::string& n) {
  const auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (n == "[memset]") return "memset (zero grads / buffers)";
  if (has("deform_im2col") || has("deform_col2im") || has("store_f32")) return "deform conv: im2col/col2im (ampkit)";
  if (has("ampkit::")) {
    if (has("bn_")) return "batch norm (+relu/add) (ampkit)";
    if (has("amp_kernels")) return "optimizer: check/unscale/Adam/accumulate";
    if (has("dekr_loss")) return "loss (fwd + bwd)";
    if (has("affine_offsets")) return "adaptive offsets (ampkit)";
    if (has("resize_") || has("upsample_")) return "resample: bilinear neck / nearest fuse-up";
    if (has("add_bias") || has("column_sum")) return "conv bias fwd/bwd (ampkit)";
    if (has("elementwise_kernel")) return "elementwise relu/add/sum (ampkit)";
    if (has("convert_copy")) return "dtype conversion";
    return "other ampkit kernels";
  }
  const bool conv = has("conv") || has("fprop") || has("dgrad") || has("wgrad") || has("implicit") || has("Conv");
  if (!conv && (has("gemm") || has("Gemm") || has("GEMM"))) return "cuBLAS GEMM (deformable conv)";
  return "cuDNN conv (+ other library kernels)";
}

// ---- one configuration ------------------------------------------------------------------------
template <ak::PrecisionPolicy P>
void run_config(const Options& o, const Options::Variant& v) {
  using T = ak::storage_t<P>;
  constexpr bool kScaled = ak::PrecisionTraits<P>::needs_loss_scaling;
  const int B = v.batch, A = v.accumulate, S = o.size, hs = o.size / 4;
  // The row label: the policy, plus "_recompute" with --recompute (graph rows append "_graph").
  const std::string policy = std::string(ak::policy_name_v<P>) + (o.recompute ? "_recompute" : "");

  // The memory plan (train/memory_plan.hpp): a dry run of this step's code before the first
  // step, printed here and set next to the measured peak in the report. The image is generated
  // in the storage type below, so no fp32 staging buffer.
  ak::train::MemoryPlanRequest plan_req;
  plan_req.batch_size = B;
  plan_req.input_h = plan_req.input_w = S;
  plan_req.accumulative_counts = A;
  plan_req.fp32_image_staging = false;
  plan_req.model.recompute_conv_outputs = o.recompute;
  const ak::train::MemoryPlan plan = ak::train::plan_dekr_step<P>(plan_req);
  {
    const std::string t = plan.table();
    for (std::size_t a = 0, b; a < t.size(); a = b + 1) {
      b = t.find('\n', a);
      if (b == std::string::npos) b = t.size();
      if (b > a) std::fprintf(stderr, "# %s\n", t.substr(a, b - a).c_str());
    }
  }

  AMPKIT_CUDA_CHECK(cudaFree(nullptr));  // the CUDA context exists before the baseline reading
  AMPKIT_CUDA_CHECK(cudaDeviceSynchronize());
  const std::size_t free_before = free_device_bytes();
  // Measure anyway (the point of a benchmark), but say beforehand that the plan expects no fit.
  if (const std::string why = ak::train::memory_plan_problem(plan, free_before); !why.empty())
    std::fprintf(stderr, "# memory plan: %s\n", why.c_str());

  ak::Cuda ctx;
  auto model_cfg = ak::models::DekrConfig::w32();
  model_cfg.recompute_conv_outputs = o.recompute;
  ak::models::Dekr<P, ak::Cuda> model(ctx, model_cfg, 1);
  const std::int64_t n_params = model.n_params();
  // inputs and targets (see the file comment for the ranges)
  const auto x = random_tensor<T>(ctx, {B, S, S, 3}, Dist::kNormal, 0.f, 1.f, 0.f, 11);
  const auto gt_hm = random_tensor<float>(ctx, {B, hs, hs, 18}, Dist::kUniform, 0.f, 1.f, 0.f, 12);
  auto hm_w = ctx.tensor<float>({B, hs, hs, 18});
  weights_from<<<1024, 256, 0, ctx.stream()>>>(gt_hm.data(), hm_w.data(), hm_w.numel(), 0.5f, 1.f, 0.1f);
  AMPKIT_CUDA_CHECK_LAUNCH();
  const auto mask = random_tensor<float>(ctx, {B, hs, hs, 1}, Dist::kBernoulli, 0.f, 1.f, 0.05f, 13);
  const auto gt_d = random_tensor<float>(ctx, {B, hs, hs, 34}, Dist::kNormal, 0.f, 4.f, 0.f, 14);
  const auto d_w = random_tensor<float>(ctx, {B, hs, hs, 34}, Dist::kBernoulli, 0.f, 0.1f, 0.9f, 15);
  auto dL_dhm = ctx.tensor<T>({B, hs, hs, 18});
  auto dL_dd = ctx.tensor<T>({B, hs, hs, 34});

  ak::DekrLoss<P, ak::Cuda> loss(ctx);
  ak::amp::AmpOptimizer<P, ak::optim::Adam, ak::Cuda> opt(ctx, model.store(), ak::optim::Adam{},
                                                          ak::amp::loss_scaler_t<P>{}, ak::amp::StepOptions{}, A);
  model.store().zero_grad(ctx);
  opt.set_lr(o.lr);  // constant lr: written once, outside any captured region
  ctx.synchronize();

  // Phase markers for --profile (nullptr: no markers). Index 0: start; micro-batch a: 1+4a end of
  // forward, 2+4a end of loss (forward + backward), 3+4a end of model backward, 4+4a end of the
  // accumulate fold; 1+4A: end of the optimizer step.
  std::vector<cudaEvent_t>* marks = nullptr;
  const auto mark = [&](std::size_t i) {
    if (marks) AMPKIT_CUDA_CHECK(cudaEventRecord((*marks)[i], ctx.stream()));
  };
  const float factor = 1.f / static_cast<float>(A);
  const auto step = [&] {
    mark(0);
    for (int a = 0; a < A; ++a) {
      const auto out = model.forward(ctx, x.cview(), /*training=*/true);
      mark(1 + 4 * a);
      const ak::DekrLossInputs<T> in{out.heatmaps,  out.displacements, gt_hm.cview(), hm_w.cview(),
                                     mask.cview(), gt_d.cview(),       d_w.cview()};
      loss.forward(ctx, in);
      ak::TensorView<const float> scale{};
      if constexpr (kScaled) scale = ak::TensorView<const float>(opt.scale_ptr(), ak::Shape{1, 1, 1, 1});
      loss.backward(ctx, in, dL_dhm.view(), dL_dd.view(), factor, scale);
      mark(2 + 4 * a);
      model.backward(ctx, dL_dhm.cview(), dL_dd.cview());
      mark(3 + 4 * a);
      if (a + 1 < A) opt.end_micro_batch();
      mark(4 + 4 * a);
    }
    opt.step();
    mark(1 + 4 * static_cast<std::size_t>(A));
  };
  const auto read_state = [&] {
    ak::amp::StepState st;
    ctx.synchronize();
    AMPKIT_CUDA_CHECK(cudaMemcpy(&st, opt.state(), sizeof st, cudaMemcpyDeviceToHost));
    return st;
  };
  const auto fill_row = [&](Row& r) {
    const auto st = read_state();
    r.loss = loss.values(ctx).total;
    r.loss_scale = st.scale;
    r.skipped = st.n_skipped;
    r.opt_steps = st.n_steps;
    r.mem_get_info_delta = free_before - std::min(free_before, free_device_bytes());
  };

  cudaEvent_t e0, e1;
  AMPKIT_CUDA_CHECK(cudaEventCreate(&e0));
  AMPKIT_CUDA_CHECK(cudaEventCreate(&e1));
  const auto timed = [&](auto&& launch, Row& r, bool host_time) {
    std::vector<double> ms, host_ms;
    for (int i = 0; i < o.steps; ++i) {
      AMPKIT_CUDA_CHECK(cudaEventRecord(e0, ctx.stream()));
      const auto t0 = std::chrono::steady_clock::now();
      launch();
      const auto t1 = std::chrono::steady_clock::now();
      AMPKIT_CUDA_CHECK(cudaEventRecord(e1, ctx.stream()));
      AMPKIT_CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      AMPKIT_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
      host_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    r.ms = median(ms);
    r.ms_min = *std::min_element(ms.begin(), ms.end());
    r.ms_max = *std::max_element(ms.begin(), ms.end());
    if (host_time) r.host_enqueue_ms = median(host_ms);
  };

  std::vector<Row> rows;
  // ---- eager: warm-up, then timed ----
  Row eager;
  eager.variant = policy;
  for (int i = 0; i < o.warmup; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    ctx.synchronize();
    if (i == 0) eager.first_step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  ctx.allocator().reset_peak();
  const std::size_t raw0 = ctx.memory_stats().n_raw_allocs;
  timed(step, eager, true);
  {
    const auto m = ctx.memory_stats();
    eager.peak_allocated = m.peak_allocated;
    eager.peak_reserved = m.peak_reserved;
    eager.raw_allocs = m.n_raw_allocs - raw0;
  }
  fill_row(eager);
  rows.push_back(eager);

  // ---- CUDA graph: capture one whole step after the warm-up, replay it ----
  if (o.graph) {
#ifdef AMPKIT_DEBUG_SYNC
    std::fprintf(stderr, "# graph: skipped, AMPKIT_DEBUG_SYNC synchronises after every launch\n");
#else
    Row g;
    g.variant = policy + "_graph";
    ctx.synchronize();
    ctx.allocator().reset_peak();
    // One whole step (all micro-batches + the AMP step) in one graph, its blocks in the graph's
    // private pool (backend/cuda/graph_step.cuh).
    ak::cuda::GraphStep graph(ctx);
    const ak::cuda::CaptureReport& cap = graph.capture(step);
    if (!cap.error.empty()) std::fprintf(stderr, "# graph: %s\n", cap.error.c_str());
    if (!cap.ok) {
      std::fprintf(stderr, "# graph: no graph for %s batch %d x %d (raw cudaMalloc calls during capture: %zu)\n",
                   policy.c_str(), B, A, cap.raw_allocs);
    } else {
      // The step's memory high-water mark, reached while capturing: replays reuse exactly those
      // blocks (the pool's), and nothing is allocated between replays.
      const auto m = ctx.memory_stats();
      g.peak_allocated = m.peak_allocated;
      g.peak_reserved = m.peak_reserved;
      g.raw_allocs = cap.raw_allocs;
      const auto replay = [&] { graph.replay(); };
      for (int i = 0; i < 3; ++i) replay();  // first replays upload / page in
      ctx.synchronize();
      timed(replay, g, false);
      fill_row(g);
      char buf[320];
      std::snprintf(buf, sizeof buf,
                    ",\"graph_nodes\":%zu,\"capture_mode\":\"%s\",\"capture_instantiate_ms\":%.1f,\"graph_pool_bytes\":%zu",
                    cap.n_nodes, cap.mode.c_str(), cap.ms, graph.pool()->bytes());
      g.extra += buf;
      rows.push_back(g);
    }
#endif
  }
  // ---- where the time goes (eager; after the graph rows, so CUPTI cannot touch their timing) ----
  if (o.profile) {
    const std::size_t n_marks = 2 + 4 * static_cast<std::size_t>(A);
    std::vector<cudaEvent_t> ev(n_marks);
    for (auto& e : ev) AMPKIT_CUDA_CHECK(cudaEventCreate(&e));
    std::vector<double> fwd, lss, bwd, optm, tot;
    marks = &ev;
    for (int i = 0; i < o.steps; ++i) {
      step();
      AMPKIT_CUDA_CHECK(cudaEventSynchronize(ev.back()));
      const auto dt = [&](std::size_t a, std::size_t b) {
        float t = 0;
        AMPKIT_CUDA_CHECK(cudaEventElapsedTime(&t, ev[a], ev[b]));
        return static_cast<double>(t);
      };
      double f = 0, l = 0, b = 0, u = 0;
      for (std::size_t a = 0; a < static_cast<std::size_t>(A); ++a) {
        f += dt(4 * a, 1 + 4 * a);
        l += dt(1 + 4 * a, 2 + 4 * a);
        b += dt(2 + 4 * a, 3 + 4 * a);
        u += dt(3 + 4 * a, 4 + 4 * a);  // the accumulate fold (empty on the last micro-batch)
      }
      fwd.push_back(f);
      lss.push_back(l);
      bwd.push_back(b);
      optm.push_back(u + dt(4 * static_cast<std::size_t>(A), n_marks - 1));
      tot.push_back(dt(0, n_marks - 1));
    }
    marks = nullptr;
    for (auto& e : ev) (void)cudaEventDestroy(e);
    const double t = median(tot);
    std::fprintf(stderr, "# profile %s batch %d x %d: step %.2f ms (events between phases), host enqueue %.2f ms\n",
                 policy.c_str(), B, A, t, eager.host_enqueue_ms);
    const std::pair<const char*, double> ph[] = {
        {"forward", median(fwd)}, {"loss fwd+bwd", median(lss)}, {"backward", median(bwd)}, {"optimizer", median(optm)}};
    char buf[512];
    std::string js = ",\"phases_ms\":{";
    for (const auto& [name, ms] : ph) {
      std::fprintf(stderr, "#   %-14s %9.3f ms  %5.1f %%\n", name, ms, t > 0 ? 100.0 * ms / t : 0.0);
      std::snprintf(buf, sizeof buf, "%s\"%s\":%.4f", js.back() == '{' ? "" : ",", name, ms);
      js += buf;
    }
    js += "}";
    if (eager.host_enqueue_ms > 0.8 * eager.ms)
      std::fprintf(stderr, "#   host enqueue %.1f ms is %.0f %% of the GPU step: launch-bound (try --graph)\n",
                   eager.host_enqueue_ms, 100.0 * eager.host_enqueue_ms / eager.ms);
#if AMPKIT_BENCH_HAS_CUPTI
    static KernelTrace trace;
    static const bool cupti_ok = trace.load();
    if (!cupti_ok) {
      std::fprintf(stderr, "#   per-kernel breakdown skipped: %s\n", trace.why().c_str());
    } else if (!trace.start()) {
      std::fprintf(stderr, "#   per-kernel breakdown skipped: cuptiActivityEnable failed\n");
    } else {
      ctx.synchronize();
      for (int i = 0; i < o.profile_steps; ++i) step();
      const auto recs = trace.stop();
      struct Acc {
        double ms = 0;
        std::int64_t n = 0;
      };
      std::map<std::string, Acc> by_kind, by_name;
      double all = 0;
      for (const auto& r : recs) {
        auto& k = by_kind[kernel_kind(r.name)];
        k.ms += r.ms;
        ++k.n;
        auto& nm = by_name[r.name];
        nm.ms += r.ms;
        ++nm.n;
        all += r.ms;
      }
      const double per = 1.0 / o.profile_steps;
      std::fprintf(stderr, "#   kernels (CUPTI, %s, %d steps): %.2f ms GPU busy per step, %.0f launches per step\n",
                   trace.loaded_from().c_str(), o.profile_steps, all * per, recs.size() * per);
      std::vector<std::pair<std::string, Acc>> kinds(by_kind.begin(), by_kind.end());
      std::sort(kinds.begin(), kinds.end(), [](auto& a, auto& b) { return a.second.ms > b.second.ms; });
      js += ",\"kernel_kinds\":{";
      bool first = true;
      for (const auto& [name, acc] : kinds) {
        std::fprintf(stderr, "#   %-45s %9.3f ms  %5.1f %%  %6.0f kernels\n", name.c_str(), acc.ms * per,
                     all > 0 ? 100.0 * acc.ms / all : 0.0, acc.n * per);
        std::snprintf(buf, sizeof buf, "%s%s:{\"ms\":%.4f,\"n\":%.1f}", first ? "" : ",", json_str(name).c_str(),
                      acc.ms * per, acc.n * per);
        js += buf;
        first = false;
      }
      js += "}";
      std::vector<std::pair<std::string, Acc>> names(by_name.begin(), by_name.end());
      std::sort(names.begin(), names.end(), [](auto& a, auto& b) { return a.second.ms > b.second.ms; });
      std::fprintf(stderr, "#   top kernels:\n");
      for (std::size_t i = 0; i < std::min<std::size_t>(15, names.size()); ++i)
        std::fprintf(stderr, "#   %9.3f ms %6.0fx  %.110s\n", names[i].second.ms * per, names[i].second.n * per,
                     names[i].first.c_str());
      std::snprintf(buf, sizeof buf, ",\"gpu_busy_ms\":%.4f,\"kernels_per_step\":%.1f", all * per, recs.size() * per);
      js += buf;
    }
#else
    std::fprintf(stderr, "#   per-kernel breakdown skipped: built without cupti_activity.h\n");
#endif
    rows.front().extra += js;
  }

  (void)cudaEventDestroy(e0);
  (void)cudaEventDestroy(e1);

  // ---- report ----
  for (Row& r : rows) {
    char buf[224];
    // branch_sites: the fork sites' mask (nn::BranchSite) when branch streams are on, else 0.
    std::snprintf(buf, sizeof buf,
                  ",\"plan_peak_allocated_bytes\":%zu,\"plan_total_bytes\":%zu,\"recompute\":%s,\"branch_sites\":%u",
                  plan.peak_allocated, plan.total(), o.recompute ? "true" : "false",
                  ctx.branch_streams() ? ak::nn::branch_sites() : 0u);
    r.extra += buf;
  }
  std::fprintf(stderr, "# memory plan vs measured (%s batch %d x %d): dry-run peak %zu B, measured peak_allocated %zu B "
               "(%+.2f %%), plan total with allowance %zu B%s\n", policy.c_str(), B, A, plan.peak_allocated,
               rows.front().peak_allocated,
               100.0 * (static_cast<double>(rows.front().peak_allocated) / static_cast<double>(plan.peak_allocated) - 1.0),
               plan.total(), rows.front().peak_allocated > plan.total() ? "  WARNING: measured above the plan's total" : "");
  const double gflop_img = kGflopPerImage512 * (static_cast<double>(S) * S) / (512.0 * 512.0);
  for (const Row& r : rows) {
    const double img_s = static_cast<double>(B) * A / r.ms * 1000.0;
    std::printf(
        "{\"impl\":\"ampkit\",\"variant\":\"%s\",\"batch\":%d,\"accumulate\":%d,\"input\":%d,\"ms_per_step\":%.4f,"
        "\"img_per_s\":%.3f,\"peak_allocated_bytes\":%zu,\"loss\":%.8g,\"params\":%lld,\"command\":%s,\"date\":\"%s\","
        "\"gpu\":%s,\"cudnn\":%zu,\"cudart\":%d,\"driver\":%d,\"policy\":\"%s\",\"steps\":%d,\"warmup\":%d,"
        "\"ms_min\":%.4f,\"ms_max\":%.4f,\"tflops\":%.3f,\"peak_reserved_bytes\":%zu,\"mem_get_info_delta_bytes\":%zu,"
        "\"raw_allocs_timed\":%zu,\"skipped_steps\":%lld,\"optimizer_steps\":%lld,\"loss_scale\":%g,"
        "\"host_enqueue_ms\":%.4f,\"first_step_ms\":%.1f%s}\n",
        r.variant.c_str(), B, A, S, r.ms, img_s, r.peak_allocated, static_cast<double>(r.loss),
        static_cast<long long>(n_params), json_str(o.command).c_str(), o.date.c_str(),
        json_str(ctx.device().name).c_str(), cudnnGetVersion(), ctx.device().runtime_version,
        ctx.device().driver_version, std::string(ak::policy_name_v<P>).c_str(), o.steps, o.warmup, r.ms_min,
        r.ms_max, img_s * gflop_img / 1000.0,
        r.peak_reserved, r.mem_get_info_delta, r.raw_allocs, static_cast<long long>(r.skipped),
        static_cast<long long>(r.opt_steps), static_cast<double>(r.loss_scale), r.host_enqueue_ms, r.first_step_ms,
        r.extra.c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "# %-10s batch %2d x %d: %8.2f ms/step %8.1f img/s %6.1f TFLOP/s, peak %.2f GiB (alloc) "
                 "%.2f GiB (cudaMemGetInfo), loss %.6g, %lld skipped of %lld\n",
                 r.variant.c_str(), B, A, r.ms, img_s, img_s * gflop_img / 1000.0, r.peak_allocated / 1073741824.0,
                 r.mem_get_info_delta / 1073741824.0, static_cast<double>(r.loss), static_cast<long long>(r.skipped),
                 static_cast<long long>(r.opt_steps));
    if (!std::isfinite(r.loss)) std::fprintf(stderr, "# WARNING: non-finite loss in %s\n", r.variant.c_str());
  }
}

int usage(const char* argv0, int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: %s [--policy fp32,fp16,bf16] [--batch 2,10,32] [--accumulate N]\n"
               "          [--variants POLICY:BATCH[xACCUM],...] [--steps N>=20] [--warmup N>=3] [--size 512]\n"
               "          [--graph] [--profile] [--profile-steps N] [--lr 1e-3] [--recompute]\n"
               "JSON lines on stdout (keys of bench/torch_dekr_step.py), notes on stderr.\n",
               argv0);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string policies = "fp32,fp16,bf16", batches = "2,10,32", variants;
  int accumulate = 1;
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + std::string(argv[i]);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(usage(argv[0], 2));
      }
      return argv[++i];
    };
    if (a == "--policy") policies = val();
    else if (a == "--batch") batches = val();
    else if (a == "--accumulate") accumulate = std::stoi(val());
    else if (a == "--variants") variants = val();
    else if (a == "--steps") o.steps = std::stoi(val());
    else if (a == "--warmup") o.warmup = std::stoi(val());
    else if (a == "--size") o.size = std::stoi(val());
    else if (a == "--profile-steps") o.profile_steps = std::stoi(val());
    else if (a == "--lr") o.lr = std::stod(val());
    else if (a == "--graph") o.graph = true;
    else if (a == "--profile") o.profile = true;
    else if (a == "--recompute") o.recompute = true;
    else if (a == "-h" || a == "--help") return usage(argv[0], 0);
    else {
      std::fprintf(stderr, "unknown option '%s'\n", a.c_str());
      return usage(argv[0], 2);
    }
  }
  if (o.steps < 20) std::fprintf(stderr, "# note: --steps %d < 20, the median is less stable\n", o.steps);
  if (o.warmup < 3) {
    std::fprintf(stderr, "# --warmup %d raised to 3 (cuDNN Find and the allocator cache settle in the warm-up)\n",
                 o.warmup);
    o.warmup = 3;
  }
  if (o.size <= 0 || o.size % 32) {
    std::fprintf(stderr, "--size must be a positive multiple of 32 (HRNet), got %d\n", o.size);
    return 2;
  }
  o.profile_steps = std::max(1, o.profile_steps);
  if (!variants.empty()) {
    for (const auto& spec : split(variants, ',')) {
      const auto colon = spec.find(':');
      Options::Variant v;
      v.policy = spec.substr(0, colon);
      if (colon != std::string::npos) {
        const std::string b = spec.substr(colon + 1);
        const auto x = b.find('x');
        v.batch = std::stoi(b.substr(0, x));
        if (x != std::string::npos) v.accumulate = std::stoi(b.substr(x + 1));
      }
      o.variants.push_back(v);
    }
  } else {
    for (const auto& p : split(policies, ','))
      for (const auto& b : split(batches, ',')) o.variants.push_back({p, std::stoi(b), accumulate});
  }
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", std::localtime(&now));
  o.date = date;

  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    (void)cudaGetLastError();
    std::fprintf(stderr, "no CUDA device: this benchmark needs a GPU\n");
    return 77;
  }
  int rc = 0;
  for (const auto& v : o.variants) {
    try {
      if (v.batch < 1 || v.accumulate < 1) AMPKIT_FAIL("batch and accumulate must be >= 1, got ", v.batch, "x", v.accumulate);
      ak::dispatch_precision(v.policy, [&]<ak::PrecisionPolicy P>() { run_config<P>(o, v); });
    } catch (const std::exception& e) {
      // One failed configuration (e.g. out of memory at a large batch) does not stop the others.
      std::fprintf(stderr, "# FAILED %s batch %d x %d: %s\n", v.policy.c_str(), v.batch, v.accumulate, e.what());
      std::printf("{\"impl\":\"ampkit\",\"variant\":\"%s\",\"batch\":%d,\"accumulate\":%d,\"input\":%d,\"error\":%s}\n",
                  (v.policy + (o.recompute ? "_recompute" : "")).c_str(), v.batch, v.accumulate, o.size,
                  json_str(e.what()).c_str());
      std::fflush(stdout);
      (void)cudaGetLastError();
      rc = 1;
    }
  }
  return rc;
}

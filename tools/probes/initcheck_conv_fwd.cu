// Which cuDNN forward algorithms' stores does compute-sanitizer's initcheck see?
//
//   nvcc -O2 -arch=sm_90 -std=c++20 -Iinclude -I$CUDNN_ROOT/include tools/probes/initcheck_conv_fwd.cu
//        -L$CUDNN_ROOT/lib -l:libcudnn.so.9 -Xlinker -rpath=$CUDNN_ROOT/lib -o /tmp/initcheck_conv_fwd
//   (one command line; PARTS=csprobe bash tools/gpu_pending.sh builds and runs it both ways)
//   compute-sanitizer --tool initcheck /tmp/initcheck_conv_fwd          # the blind spot
//   compute-sanitizer --tool initcheck /tmp/initcheck_conv_fwd --mark   # with ampkit's NVTX marks
//
// For fp16 NHWC convolutions of tiny-HRNet shapes, every forward algorithm cuDNN lists runs into
// a freshly cudaMalloc'd output (never written by anything else), which is then copied to the
// host in one cudaMemcpy and compared with a float reference computed on the host. initcheck
// reports that memcpy ("Host API ... uninitialized access ... cudaMemcpy source") when it did
// not see a store to some of the output's bytes. An algorithm whose output matches the
// reference everywhere but whose copy is reported wrote bytes the tool did not track: a
// sanitizer blind spot, not an uninitialised read. With --mark, each output is marked initialised
// after the conv the way ampkit's conv ops do (backend/cuda/sanitizer_marks.cuh): the reports must
// then be gone. Results on the H200: bench/results/sanitize_h200_20261130_1703.md (7 shapes) and
// sanitize_h200_20261130_1916.md (--mark: 3584 -> 0); the stem and odd-channel shapes were added
// after those runs, for the reports inside cuDNN's own pre-pass kernels (an
// initcheck report *during* a conv, not at the copy, names the kernel that read unseen bytes;
// the inputs here come from cudaMemcpy, which the tool tracks). The program prints one line per algorithm
// (flushed, so the tool's reports follow the line of the algorithm they belong to) and exits 1
// if any output is wrong.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "ampkit/backend/cuda/sanitizer_marks.cuh"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string_view>
#include <vector>

#define CK(x)                                                                                  \
  do {                                                                                         \
    if (auto e_ = (x); e_ != 0) {                                                              \
      std::fprintf(stderr, "%s:%d: %s failed (%d)\n", __FILE__, __LINE__, #x, static_cast<int>(e_)); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

namespace {

struct Shape {
  int n, c, h, w, k, r, stride, pad;
};

// y[n][p][q][k] = sum over (r, s, c) of x[n][p*st-pad+r][q*st-pad+s][c] * w[k][r][s][c], NHWC / KRSC.
std::vector<float> reference(const Shape& s, const std::vector<__half>& x, const std::vector<__half>& w, int P,
                             int Q) {
  std::vector<float> y(static_cast<std::size_t>(s.n) * P * Q * s.k, 0.f);
  for (int n = 0; n < s.n; ++n)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q)
        for (int k = 0; k < s.k; ++k) {
          double acc = 0;
          for (int r = 0; r < s.r; ++r)
            for (int t = 0; t < s.r; ++t) {
              const int hi = p * s.stride - s.pad + r, wi = q * s.stride - s.pad + t;
              if (hi < 0 || hi >= s.h || wi < 0 || wi >= s.w) continue;
              for (int c = 0; c < s.c; ++c)
                acc += static_cast<double>(__half2float(x[((static_cast<std::size_t>(n) * s.h + hi) * s.w + wi) * s.c + c])) *
                       __half2float(w[((static_cast<std::size_t>(k) * s.r + r) * s.r + t) * s.c + c]);
            }
          y[((static_cast<std::size_t>(n) * P + p) * Q + q) * s.k + k] = static_cast<float>(acc);
        }
  return y;
}

int probe(cudnnHandle_t h, const Shape& s, bool mark) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<__half> x(static_cast<std::size_t>(s.n) * s.h * s.w * s.c), w(static_cast<std::size_t>(s.k) * s.r * s.r * s.c);
  for (auto& v : x) v = __float2half(u(rng));
  for (auto& v : w) v = __float2half(u(rng));
  cudnnTensorDescriptor_t xd, yd;
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  CK(cudnnCreateTensorDescriptor(&xd));
  CK(cudnnCreateTensorDescriptor(&yd));
  CK(cudnnCreateFilterDescriptor(&wd));
  CK(cudnnCreateConvolutionDescriptor(&cd));
  CK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, s.n, s.c, s.h, s.w));
  CK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, s.k, s.c, s.r, s.r));
  CK(cudnnSetConvolution2dDescriptor(cd, s.pad, s.pad, s.stride, s.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                     CUDNN_DATA_FLOAT));
  CK(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH));
  int n, c, P, Q;
  CK(cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, &n, &c, &P, &Q));
  CK(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, c, P, Q));
  const std::vector<float> ref = reference(s, x, w, P, Q);
  const std::size_t ny = ref.size();
  void *dx, *dw;
  CK(cudaMalloc(&dx, x.size() * 2));
  CK(cudaMalloc(&dw, w.size() * 2));
  CK(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice));
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int found = 0;
  CK(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf));
  int bad = 0;
  for (int i = 0; i < found; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    std::size_t ws_bytes = 0;
    if (cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, perf[i].algo, &ws_bytes) != CUDNN_STATUS_SUCCESS)
      continue;
    void *dy = nullptr, *ws = nullptr;
    CK(cudaMalloc(&dy, ny * 2));
    if (ws_bytes) CK(cudaMalloc(&ws, ws_bytes));
    const float one = 1.f, zero = 0.f;
    // The ranges too, in the AMPKIT_SANITIZER_TRACE layout, so tools/sanitizer_report.py can say
    // whose bytes a report inside a cuDNN kernel touched (x / w: written by cudaMemcpy; ws: cuDNN's).
    std::printf("ampkit-trace: probe x=%p+%zu w=%p+%zu y=%p+%zu ws=%p+%zu\n", dx, x.size() * 2, dw, w.size() * 2, dy,
                ny * 2, ws, ws_bytes);
    std::printf("probe: %dx%d s%d, %d->%d channels, %dx%d, batch %d: algo %d (math %d), workspace %zu: ", s.r, s.r,
                s.stride, s.c, s.k, s.h, s.w, s.n, static_cast<int>(perf[i].algo), static_cast<int>(perf[i].mathType),
                ws_bytes);
    std::fflush(stdout);
    const cudnnStatus_t st =
        cudnnConvolutionForward(h, &one, xd, dx, wd, dw, cd, perf[i].algo, ws, ws_bytes, &zero, yd, dy);
    if (st == CUDNN_STATUS_SUCCESS && mark) ampkit::cuda::mark_initialized(nullptr, dy, ny * 2);
    if (st != CUDNN_STATUS_SUCCESS) {
      std::printf("not run (%s)\n", cudnnGetErrorString(st));
    } else {
      std::vector<__half> y(ny);
      CK(cudaMemcpy(y.data(), dy, ny * 2, cudaMemcpyDeviceToHost));
      double worst = 0;
      for (std::size_t j = 0; j < ny; ++j) {
        const double r = ref[j], e = std::fabs(__half2float(y[j]) - r) / (1.0 + std::fabs(r));
        worst = std::isnan(e) ? INFINITY : std::max(worst, e);
      }
      // fp16 output: half an ulp of values up to ~|20| is 2^-7 relative to 1 + |ref|, plus the
      // fp32 accumulation over <= 9*32 terms (far below that).
      const bool ok = worst < 1e-2;
      bad += !ok;
      std::printf("worst |y - ref| / (1 + |ref|) = %.3g %s\n", worst, ok ? "ok" : "WRONG");
    }
    std::fflush(stdout);
    CK(cudaFree(dy));
    if (ws) CK(cudaFree(ws));
  }
  CK(cudaFree(dx));
  CK(cudaFree(dw));
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyConvolutionDescriptor(cd);
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const bool mark = argc > 1 && std::string_view(argv[1]) == "--mark";
  cudnnHandle_t h;
  CK(cudnnCreate(&h));
  std::printf("cuDNN %zu%s\n", cudnnGetVersion(), mark ? ", outputs marked initialised (NVTX)" : "");
  int bad = 0;
  // tiny-HRNet-like shapes: 3x3 branch convs, a stride-2 transition, 1x1 fuse convs; then the
  // stem's 3-channel 3x3 stride-2 conv and a 1x1 conv to an odd channel count (the head's 17 / 34
  // / 255): the shapes whose engines run cuDNN's nhwcAddPadding pre-pass, inside which initcheck
  // reported the training step's first reads (2026-11-30 19:16, reliability.md s. 4). Here the
  // input is written by cudaMemcpy, which initcheck tracks: a report inside the pre-pass then
  // means the blind spot (cuDNN's own intermediate), not an unwritten input.
  for (const Shape& s : {Shape{2, 16, 32, 32, 16, 3, 1, 1}, Shape{2, 32, 16, 16, 32, 3, 1, 1},
                         Shape{2, 16, 32, 32, 32, 3, 2, 1}, Shape{2, 32, 16, 16, 16, 1, 1, 0},
                         Shape{2, 64, 16, 16, 32, 1, 1, 0}, Shape{2, 128, 8, 8, 32, 1, 1, 0},
                         Shape{2, 64, 64, 64, 64, 3, 1, 1}, Shape{2, 3, 64, 64, 32, 3, 2, 1},
                         Shape{2, 32, 16, 16, 17, 1, 1, 0}})
    bad += probe(h, s, mark);
  cudnnDestroy(h);
  std::printf("probe: %d wrong outputs\n", bad);
  return bad ? 1 : 0;
}

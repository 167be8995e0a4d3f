// dekr_amp's CUDA part: instantiates the trainer for the three policies on ampkit::Cuda. The
// flag -> type dispatch happens here and in main.cpp's host twin, nowhere else.
#include <cstdlib>
#include <string>

#include "ampkit/backend/cuda/amp_step.cuh"
#include "ampkit/backend/cuda/dekr.cuh"
#include "ampkit/backend/cuda/dekr_decode.cuh"
#include "ampkit/backend/cuda/device.cuh"
#include "ampkit/backend/cuda/dist/data_parallel.cuh"
#include "ampkit/core/device_info.hpp"
#include "app.hpp"

namespace dekr_amp {

int cuda_device_count() { return ampkit::cuda::device_count(); }

int run_cuda(const Request& req_in, ampkit::train::RunLogger& log, const ampkit::dist::LaunchEnv& env) {
  ampkit::Cuda ctx(env.local_rank);
  Request req = req_in;
  if (env.distributed()) {
    // One process per GPU: join the job (TCP rendezvous at MASTER_ADDR, then NCCL) before the
    // model exists; the trainer broadcasts rank 0's weights and averages gradients through it.
    auto dp = std::make_shared<ampkit::dist::NcclDataParallel>(ctx, env);
    log.info("data parallel: " + env.describe() + ", NCCL " + std::to_string(NCCL_MAJOR) + "." +
             std::to_string(NCCL_MINOR) + ", collective timeout " + ampkit::dist::format_seconds(
                 std::chrono::duration_cast<std::chrono::milliseconds>(env.timeout)) +
             " (AMPKIT_DIST_TIMEOUT), rank-0-only work timeout " + ampkit::dist::format_seconds(
                 std::chrono::duration_cast<std::chrono::milliseconds>(dp->slow_timeout())) +
             " (AMPKIT_DIST_SLOW_TIMEOUT); gradients averaged in fp32 buckets after backward");
    req.run.data_parallel = std::move(dp);
  }
  // runtime.cudnn_benchmark / randomness.deterministic mean what torch.backends.cudnn's two flags
  // mean: time the algorithms per shape or take cuDNN's ranking; only deterministic ones or any.
  const auto& cfg = req.run.config.config;
  // model.recompute_conv_outputs needs no guard on CUDA: one step with and without it is bit-identical
  // there (fp16 DEKR with W32 head widths, HRNet; fp32 DEKR within the deformable conv's run-to-run
  // atomics noise), tests/gpu/models/dekr.cu, H200 2026-11-30 (bench/results/gpu_h200x2_20261130_0825.md).
  ctx.set_cudnn_options({.benchmark = cfg.runtime.cudnn_benchmark, .deterministic = cfg.randomness.deterministic});
  if (cfg.randomness.deterministic)
    log.info("randomness.deterministic: cuDNN convolutions use deterministic algorithms only; deformable "
             "convolution's input gradient still adds with atomics (as torchvision's does), so two runs agree "
             "to rounding, not bit for bit");
  const auto& dev = ctx.device();
  log.info("GPU " + std::to_string(dev.index) + ": " + dev.name + ", compute capability " +
           std::to_string(dev.cc_major) + "." + std::to_string(dev.cc_minor) + ", " +
           std::to_string(dev.total_bytes >> 20) + " MiB");
  return ampkit::dispatch_precision(req.precision, [&]<ampkit::PrecisionPolicy P>() -> int {
    ampkit::check_device_supports<P>(dev);  // refuse AMP without tensor cores, with advice
    log.info(ampkit::train::policy_banner<P>(req.run.config.config.amp));
    return run_command<P>(ctx, req, log);
  });
}

}  // namespace dekr_amp

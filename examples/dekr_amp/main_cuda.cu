// dekr_amp's CUDA part: instantiates the trainer for the three policies on ampkit::Cuda. The
// flag -> type dispatch happens here and in main.cpp's host twin, nowhere else.
#include "ampkit/backend/cuda/amp_step.cuh"
#include "ampkit/backend/cuda/dekr.cuh"
#include "ampkit/backend/cuda/dekr_decode.cuh"
#include "ampkit/backend/cuda/device.cuh"
#include "ampkit/core/device_info.hpp"
#include "app.hpp"

namespace dekr_amp {

int cuda_device_count() { return ampkit::cuda::device_count(); }

int run_cuda(const Request& req, ampkit::train::RunLogger& log, int local_rank) {
  ampkit::Cuda ctx(local_rank);
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

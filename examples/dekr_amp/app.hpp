/// @brief What dekr_amp's host part (main.cpp, g++) and CUDA part (main_cuda.cu, nvcc) share: the
/// resolved request and the entry points of the CUDA part. The CUDA part exists only in builds with
/// CUDA (AMPKIT_DEKR_AMP_CUDA is then defined for main.cpp).
#pragma once

#include <string>

#include "ampkit/train/run_logger.hpp"
#include "ampkit/train/trainer.hpp"

namespace dekr_amp {

/// Everything a command body needs, decided at the top level of main().
struct Request {
  std::string command;    ///< train, test or demo
  std::string precision;  ///< fp32, fp16, bf16 (already validated)
  std::string checkpoint; ///< test
  ampkit::train::RunOptions run;
};

#if AMPKIT_DEKR_AMP_CUDA
/// Visible CUDA devices (0 without a driver or GPU; never throws).
int cuda_device_count();
/// Run `req` on GPU `local_rank` with the requested policy. Throws ampkit::Error.
int run_cuda(const Request& req, ampkit::train::RunLogger& log, int local_rank);
#endif

}  // namespace dekr_amp

/// @brief What dekr_amp's host part (main.cpp, g++) and CUDA part (main_cuda.cu, nvcc) share: the
/// resolved request and the entry points of the CUDA part. The CUDA part exists only in builds with
/// CUDA (AMPKIT_DEKR_AMP_CUDA is then defined for main.cpp).
#pragma once

#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>

#include "ampkit/dist/launch_env.hpp"
#include "ampkit/train/run_logger.hpp"
#include "ampkit/train/evaluate.hpp"
#include "ampkit/train/trainer.hpp"

namespace dekr_amp {

/// Everything a command body needs, decided at the top level of main().
struct Request {
  std::string command;    ///< train, test or demo
  std::string precision;  ///< fp32, fp16, bf16 (already validated)
  std::string checkpoint; ///< test
  bool json = false;      ///< test: stats as JSON on stdout
  ampkit::train::RunOptions run;
};

/// The command bodies after the backend and policy are chosen, shared by the host part and the
/// CUDA part: `train` trains; `test` evaluates a checkpoint and prints pycocotools' summary (or
/// JSON); `demo` trains, then evaluates its last checkpoint exactly as `test` does (the PNG is
/// drawn afterwards by the host part from the written results). Returns the exit code.
template <ampkit::PrecisionPolicy P, class Backend>
int run_command(Backend& ctx, const Request& req, ampkit::train::RunLogger& log) {
  namespace tr = ampkit::train;
  const tr::TrainConfig& cfg = req.run.config.config;
  const auto print_report = [&](const tr::EvalResult& r) {
    if (req.json) {
      nlohmann::ordered_json j;
      j["stats"] = r.report.stats;
      for (std::size_t i = 0; i < r.report.stats.size(); ++i) j["stats_by_name"][tr::kCocoMetricNames[i]] = r.report.stats[i];
      j["num_images"] = r.report.n_images;
      j["num_results"] = r.report.n_results;
      j["results_file"] = r.results_path;
      std::cout << j.dump() << std::endl;
    } else {
      std::cout << r.report.summary << std::flush;
    }
  };
  if (req.command == "test") {
    print_report(tr::run_test<P, Backend>(ctx, cfg, req.run.work_dir, req.checkpoint, log, tr::dekr_config(cfg)));
    return 0;
  }
  const auto t = tr::run_training<P>(ctx, req.run, log);
  log.info("done: " + std::to_string(t.iterations) + " iterations, last loss " + std::to_string(t.last_loss) +
           (t.last_checkpoint.empty() ? std::string() : ", checkpoint " + t.last_checkpoint));
  if (req.command == "demo") {
    AMPKIT_CHECK(!t.last_checkpoint.empty(), "demo: the training saved no checkpoint");
    const auto r = tr::run_test<P, Backend>(ctx, cfg, req.run.work_dir, t.last_checkpoint, log, tr::dekr_config(cfg));
    print_report(r);
    std::ostringstream ap;
    ap << std::fixed << std::setprecision(4) << r.report.stats[0];
    log.info("demo: COCO keypoint AP = " + ap.str() + " on " + std::to_string(r.report.n_images) + " images after " +
             std::to_string(t.iterations) + " iterations (" + std::string(ampkit::policy_name_v<P>) +
             "); trained and evaluated on the same images, so the AP measures how well the model memorised "
             "the sample, not its COCO accuracy");
  }
  return 0;
}

#if AMPKIT_DEKR_AMP_CUDA
/// Visible CUDA devices (0 without a driver or GPU; never throws).
int cuda_device_count();
/// Run `req` on GPU env.local_rank with the requested policy; with env.world_size > 1 as one rank
/// of a data-parallel job (NCCL; the ranks meet at env.master_addr). Throws ampkit::Error.
int run_cuda(const Request& req, ampkit::train::RunLogger& log, const ampkit::dist::LaunchEnv& env);
#endif

}  // namespace dekr_amp

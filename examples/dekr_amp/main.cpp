// dekr_amp: the DEKR training application. Host part (g++): command line, config, decisions and
// why, logs, the host backend; the CUDA part (main_cuda.cu) is linked in builds with CUDA.
//
//   dekr_amp train CONFIG --work-dir DIR [--amp] [--precision fp32|fp16|bf16]
//                  [--cfg-options k=v ...] [--resume [CKPT]] [--device cuda|host]
//   dekr_amp test CONFIG CHECKPOINT
//   dekr_amp cocoeval GT.json RESULTS.json [--json]
//   dekr_amp demo [--device ..] [--precision ..] [--work-dir ..]
// USE_AMP=1 selects fp16 like --amp; GPUS=N is checked against the launcher's world size.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "ampkit/backend/host/amp_step.hpp"
#include "ampkit/backend/host/dekr.hpp"
#include "ampkit/dist/launch_env.hpp"
#include "ampkit/eval/cocoeval_command.hpp"
#include "ampkit/eval/draw_poses.hpp"
#include "ampkit/train/config.hpp"
#include "ampkit/train/launch.hpp"
#include "app.hpp"
#include "cli.hpp"

#ifndef AMPKIT_DEKR_AMP_CUDA
#define AMPKIT_DEKR_AMP_CUDA 0
#endif
#ifndef AMPKIT_SOURCE_DIR
#define AMPKIT_SOURCE_DIR "."
#endif

namespace {

namespace fs = std::filesystem;
using namespace ampkit::train;

/// A repo file (configs, the bundled sample) from the current folder, else from the source tree.
std::string repo_path(const std::string& rel) {
  if (fs::exists(rel)) return rel;
  const std::string in_src = std::string(AMPKIT_SOURCE_DIR) + "/" + rel;
  return fs::exists(in_src) ? in_src : rel;
}

int cuda_devices() {
#if AMPKIT_DEKR_AMP_CUDA
  return dekr_amp::cuda_device_count();
#else
  return -1;  // built without CUDA
#endif
}

int run_host(const dekr_amp::Request& req, RunLogger& log) {
  const int threads = static_cast<int>(req.run.config.config.runtime.host_threads);
  ampkit::Host ctx(threads);
  log.info("host backend: " + std::to_string(ctx.n_threads()) + " thread(s)");
  return ampkit::dispatch_precision(req.precision, [&]<ampkit::PrecisionPolicy P>() -> int {
    log.info(policy_banner<P>(req.run.config.config.amp));
    if constexpr (ampkit::PrecisionTraits<P>::has_master_weights)
      log.info("(the host backend emulates " + std::string(ampkit::policy_name_v<P>) +
               " storage with round-to-nearest-even: numerically faithful, not faster)");
    return dekr_amp::run_command<P>(ctx, req, log);
  });
}

int run(const dekr_amp::CliArgs& a) {
  if (a.command == "cocoeval") return ampkit::eval::cocoeval_command(a.cocoeval_args);

  LaunchRequest lr;
  lr.precision_flag = a.precision;
  lr.amp_flag = a.amp;
  lr.device_flag = a.device;
  lr.use_amp_env = LaunchRequest::env("USE_AMP");
  lr.gpus_env = LaunchRequest::env("GPUS");
  const auto env = ampkit::dist::launch_env_from_process();
  check_gpus_env(lr, env.world_size);
  const int n_cuda = cuda_devices();

  // The demo picks its config from the device: W32 fp16 at 512 on a GPU, the tiny model on the host.
  std::string config_path = a.config;
  std::string work_dir = a.work_dir;
  if (a.command == "demo") {
    const auto dev = resolve_device(lr, LoadedConfig{}, n_cuda);
    config_path = repo_path(dev.value == "cuda" ? "configs/demo_gpu.toml" : "configs/demo_host.toml");
    if (work_dir.empty()) work_dir = "work_dirs/demo";
  }
  LoadedConfig lc = load_config(config_path, a.cfg_options);
  if (a.command == "demo") {  // the bundled sample, wherever the binary is started from
    lc.config.data.data_root = repo_path(lc.config.data.data_root);
  }
  if (a.list_keys) {
    std::cout << to_toml(lc.config);
    return 0;
  }
  if (work_dir.empty()) work_dir = "work_dirs/" + fs::path(config_path).stem().string();  // mmpose's default

  const Choice precision = resolve_precision(lr, lc);
  const Choice device = resolve_device(lr, lc, n_cuda);

  dekr_amp::Request req;
  req.command = a.command;
  req.precision = precision.value;
  req.checkpoint = a.checkpoint;
  req.json = a.json;
  req.run.config = lc;
  req.run.work_dir = work_dir;
  req.run.resume = a.resume;
  req.run.resume_from = a.resume_from;
  req.run.rank = env.rank;
  req.run.world_size = env.world_size;

  RunLogger log = env.is_main() ? RunLogger(work_dir, {lc.config.logger.tensorboard, true}) : RunLogger();
  if (env.is_main()) {
    write_file_atomic(work_dir + "/config.toml", "# resolved from " + lc.source + "\n" + to_toml(lc.config));
    log.info("dekr_amp " + a.command + ": config " + lc.source + ", work dir " + work_dir + " (log " +
             log.log_path() + ")");
    for (const auto& k : lc.from_overrides) log.info("  --cfg-options " + k + " = " + value_text(lc.config, k));
  }
  log.info("precision: " + precision.value + " (" + precision.reason + ")");
  log.info("device: " + device.value + " (" + device.reason + ")");
  if (env.distributed()) log.info("distributed: " + env.describe());
  AMPKIT_CHECK(!env.distributed() || device.value == "cuda", "world size ", env.world_size, " (",
               env.describe(), "): multi-process training needs the CUDA backend (NCCL) but the device is ",
               device.value, " (", device.reason, "); the host backend trains in one process: start one "
               "process (GPUS=1, no launcher variables) or train on GPUs");
  AMPKIT_CHECK(!env.distributed() || a.command == "train", "dekr_amp ", a.command,
               " runs in one process; start it without tools/dist_train.sh (world size ", env.world_size, ")");

  int rc = 0;
  if (device.value == "cuda") {
#if AMPKIT_DEKR_AMP_CUDA
    rc = dekr_amp::run_cuda(req, log, env);
#else
    AMPKIT_FAIL("this dekr_amp was built without CUDA");
#endif
  } else {
    rc = run_host(req, log);
  }
  if (rc == 0 && a.command == "demo" && env.is_main()) {
    // The predictions of the demo's test pass, drawn from its results file on the val images.
    const auto& c = lc.config;
    // Only confident people and joints: the decoder keeps up to 30 candidate roots per image (the
    // results file and the AP use them all), and the low-score ones would hide the real skeletons.
    ampkit::eval::DrawOptions draw;
    draw.min_person_score = 0.2;
    draw.keypoint_thr = 0.1;
    const std::string png = work_dir + "/demo_predictions.png";
    const auto n = ampkit::eval::draw_results_png(c.data.data_root + c.data.val_ann_file,
                                                  c.data.data_root + c.data.val_img_prefix,
                                                  test_results_path(work_dir), png, draw);
    log.info("demo: predicted skeletons of " + std::to_string(n) + " people (score >= 0.2) drawn on the sample images: " + png);
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  const auto parsed = dekr_amp::parse_cli(argc, argv);
  if (const int* code = std::get_if<int>(&parsed)) return *code;
  try {
    return run(std::get<dekr_amp::CliArgs>(parsed));
  } catch (const std::exception& e) {
    // One clear line; whatever was already written (logs, checkpoints) stays.
    std::fflush(stdout);
    std::cerr << "dekr_amp: error: " << e.what() << '\n';
    return 1;
  }
}

/// @brief dekr_amp's command line (CLI11): `train`, `test`, `cocoeval`, `demo`, mirroring
/// mmpose's `tools/train.py CONFIG --work-dir DIR --amp --resume [CKPT] --cfg-options k=v ...`
/// and `tools/test.py CONFIG CHECKPOINT`. Parsing only: the decisions (which policy, which
/// backend, and why) are ampkit::train::resolve_precision / resolve_device.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace dekr_amp {

struct CliArgs {
  std::string command;  ///< train, test, cocoeval or demo
  std::string config;
  std::string work_dir;
  std::string checkpoint;  ///< test
  bool amp = false;
  std::optional<std::string> precision;
  std::optional<std::string> device;
  std::vector<std::string> cfg_options;
  bool resume = false;
  std::string resume_from;  ///< empty with resume: the latest valid checkpoint in the work dir
  std::vector<std::string> cocoeval_args;  ///< everything after `cocoeval`
  bool list_keys = false;
  bool json = false;  ///< test: print the stats as JSON instead of the summary
};

/// Parse `argv`. Returns the arguments, or the exit code after printing help (0) or an error (2).
inline std::variant<CliArgs, int> parse_cli(int argc, const char* const* argv) {
  CliArgs a;
  CLI::App app{"dekr_amp: DEKR (HRNet) bottom-up pose training with mixed precision (ampkit)", "dekr_amp"};
  app.require_subcommand(1);
  std::string precision, device, resume;

  const auto common = [&](CLI::App* s, bool with_work_dir) {
    s->add_flag("--amp", a.amp, "fp16 mixed precision: Precision<fp16, fp32_master> (also USE_AMP=1)");
    s->add_option("--precision", precision, "policy: fp32, fp16 or bf16 (overrides --amp's fp16)")
        ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
    s->add_option("--device", device, "cuda, host or auto (default: the config's runtime.device)")
        ->check(CLI::IsMember({"cuda", "host", "auto"}));
    s->add_option("--cfg-options", a.cfg_options, "override config keys: key=value ...")->expected(1, -1);
    if (with_work_dir) s->add_option("--work-dir", a.work_dir, "folder for logs, checkpoints and results");
  };

  auto* train = app.add_subcommand("train", "train DEKR with a TOML config");
  train->add_option("config", a.config, "TOML config (configs/*.toml)")->required()->check(CLI::ExistingFile);
  common(train, true);
  train->add_option("--resume", resume,
                    "continue from CKPT, or (no value) from the latest complete checkpoint in the work dir")
      ->expected(0, 1);
  train->add_flag("--list-keys", a.list_keys, "print every config key with its value and exit");

  auto* test = app.add_subcommand("test", "evaluate a checkpoint (COCO keypoint AP)");
  test->add_option("config", a.config, "TOML config")->required()->check(CLI::ExistingFile);
  test->add_option("checkpoint", a.checkpoint, "checkpoint (.safetensors)")->required()->check(CLI::ExistingFile);
  common(test, true);
  test->add_flag("--json", a.json, "print the ten stats as JSON (full precision) instead of the summary");

  auto* coco = app.add_subcommand("cocoeval", "COCO keypoint AP of a results file (pycocotools-exact)");
  coco->allow_extras();
  coco->prefix_command();  // hand everything after `cocoeval` to the evaluator untouched

  auto* demo = app.add_subcommand("demo", "train on the bundled COCO sample, evaluate, draw the predictions");
  common(demo, true);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto* s : {train, test, coco, demo})
    if (s->parsed()) a.command = s->get_name();
  if (coco->parsed()) a.cocoeval_args = coco->remaining();
  if (!precision.empty()) a.precision = precision;
  if (!device.empty()) a.device = device;
  if (train->parsed() && train->count("--resume") > 0) {
    a.resume = true;
    a.resume_from = resume;
  }
  return a;
}

}  // namespace dekr_amp

// Config schema, TOML parsing, --cfg-options overrides, the shipped configs, and dekr_amp's command
// line with the precision/device decisions (flag, environment, config, default).
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "../../../examples/dekr_amp/cli.hpp"
#include "ampkit/train/config.hpp"
#include "ampkit/train/launch.hpp"
#include "support/testing.hpp"

using namespace ampkit;
using namespace ampkit::train;

namespace {
std::string error_of(auto&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}
bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("config defaults are mmpose's dekr_hrnet-w32_8xb10-140e_coco-512x512 values") {
  const TrainConfig c;
  // Values from the mmpose config and its _base_ (dekr_amp_facts.md section 1.1/1.2/3.2).
  CHECK(c.model.backbone_channels == std::vector<std::int64_t>{32, 64, 128, 256});
  CHECK(c.model.num_heatmap_filters == 32);
  CHECK(c.model.num_displacement_filters_per_keypoint == 15);
  CHECK(c.codec.input_size == std::vector<std::int64_t>{512, 512});
  CHECK(c.codec.heatmap_size == std::vector<std::int64_t>{128, 128});
  CHECK(c.codec.sigma == std::vector<double>{4.0, 2.0});
  CHECK(c.codec.minimal_diagonal_length == doctest::Approx(std::sqrt(32.0)).epsilon(1e-15));
  CHECK(c.codec.decode_max_instances == 30);
  CHECK(c.loss.heatmap_weight == 1.0);
  CHECK(c.loss.displacement_weight == 0.002);
  CHECK(c.loss.beta == 1.0 / 9.0);
  CHECK(c.optimizer.type == "Adam");
  CHECK(c.optimizer.lr == 1e-3);
  CHECK(c.optimizer.betas == std::vector<double>{0.9, 0.999});
  CHECK(c.optimizer.eps == 1e-8);
  CHECK(c.optimizer.weight_decay == 0.0);
  CHECK(c.param_scheduler.warmup_start_factor == 0.001);
  CHECK(c.param_scheduler.warmup_iters == 500);
  CHECK(c.param_scheduler.warmup_stepping == "iteration");
  CHECK(c.param_scheduler.milestones == std::vector<std::int64_t>{90, 120});
  CHECK(c.param_scheduler.gamma == 0.1);
  CHECK(c.train_cfg.max_epochs == 140);
  CHECK(c.train_cfg.val_interval == 10);
  CHECK(c.train_cfg.batch_size == 10);
  CHECK(c.train_cfg.num_workers == 2);
  CHECK(c.optim_wrapper.accumulative_counts == 1);
  CHECK(c.optim_wrapper.clip_grad_max_norm == 0.0);
  CHECK(c.amp.precision == "fp32");
  CHECK(c.amp.loss_scale.dynamic);
  CHECK(c.amp.init_scale == 65536.0);  // torch GradScaler defaults
  CHECK(c.amp.growth_factor == 2.0);
  CHECK(c.amp.backoff_factor == 0.5);
  CHECK(c.amp.growth_interval == 2000);
  CHECK(c.test_cfg.flip_test);
  CHECK(c.test_cfg.nms_dist_thr == 0.05);
  CHECK(c.pipeline.scale_factor == std::vector<double>{0.75, 1.5});
  CHECK(c.pipeline.rotate_factor == 30.0);
  CHECK(c.pipeline.shift_factor == 0.2);
  CHECK(c.runtime.cudnn_benchmark == true);  // ampkit's one departure from mmpose (False): fixed input size
  CHECK(c.runtime.cuda_graph == true);  // on since tests/gpu/train/graph_step.cu passed on the H200
  CHECK_NOTHROW(validate(c));
}

TEST_CASE("config: TOML values, type errors and unknown keys with suggestions") {
  auto lc = parse_config("[optimizer]\nlr = 2\nbetas = [0.8, 0.99]\n[amp]\nloss_scale = 512\n"
                         "[default_hooks.checkpoint]\nmax_keep_ckpts = 3\n",
                         "t.toml");
  CHECK(lc.config.optimizer.lr == 2.0);  // an integer where a number is expected is fine
  CHECK(lc.config.optimizer.betas == std::vector<double>{0.8, 0.99});
  CHECK_FALSE(lc.config.amp.loss_scale.dynamic);
  CHECK(lc.config.amp.loss_scale.value == 512.0);
  CHECK(lc.config.checkpoint.max_keep_ckpts == 3);
  CHECK(lc.from_file.contains("optimizer.lr"));
  CHECK_FALSE(lc.from_file.contains("optimizer.eps"));

  const auto e1 = error_of([] { parse_config("[train_cfg]\nmax_epochs = 1.5\n", "t.toml"); });
  CHECK(contains(e1, "t.toml:2"));
  CHECK(contains(e1, "'train_cfg.max_epochs' expects an integer, given a number (1.5)"));
  const auto e2 = error_of([] { parse_config("[optimiser]\nlr = 0.1\n", "t.toml"); });
  CHECK(contains(e2, "unknown key 'optimiser.lr'"));
  CHECK(contains(e2, "did you mean 'optimizer.lr'"));
  const auto e3 = error_of([] { parse_config("[amp]\nloss_scale = 'static'\n", "t.toml"); });
  CHECK(contains(e3, "expects 'dynamic' or a number"));
  const auto e4 = error_of([] { parse_config("[optimizer\nlr = 1\n", "bad.toml"); });
  CHECK(contains(e4, "bad.toml:1"));
  CHECK(contains(e4, "TOML syntax error"));
  const auto e5 = error_of([] { load_config("/nonexistent/x.toml"); });
  CHECK(contains(e5, "cannot open '/nonexistent/x.toml' (no such file)"));
}

TEST_CASE("config: --cfg-options overrides") {
  LoadedConfig lc;
  apply_overrides(lc, {"randomness.seed=42", "optim_wrapper.accumulative_counts=4", "param_scheduler.milestones=[10, 20]",
                       "data.data_root=/data/coco/", "amp.loss_scale=dynamic", "amp.precision='bf16'",
                       "test_cfg.flip_test=false", "optimizer.lr=5e-4"});
  CHECK(lc.config.randomness.seed == 42);
  CHECK(lc.config.optim_wrapper.accumulative_counts == 4);
  CHECK(lc.config.param_scheduler.milestones == std::vector<std::int64_t>{10, 20});
  CHECK(lc.config.data.data_root == "/data/coco/");  // not TOML: taken as a bare string
  CHECK(lc.config.amp.loss_scale.dynamic);
  CHECK(lc.config.amp.precision == "bf16");
  CHECK_FALSE(lc.config.test_cfg.flip_test);
  CHECK(lc.config.optimizer.lr == 5e-4);
  CHECK(lc.from_overrides.contains("randomness.seed"));

  const auto unknown = error_of([&] { apply_overrides(lc, {"randomness.sed=1"}); });
  CHECK(contains(unknown, "--cfg-options: unknown key 'randomness.sed'; did you mean 'randomness.seed'"));
  const auto leaf = error_of([&] { apply_overrides(lc, {"seed=1"}); });
  CHECK(contains(leaf, "did you mean 'randomness.seed'"));
  const auto far = error_of([&] { apply_overrides(lc, {"completely.unrelated_thing=1"}); });
  CHECK(contains(far, "unknown key"));
  CHECK_FALSE(contains(far, "did you mean"));
  const auto type = error_of([&] { apply_overrides(lc, {"train_cfg.batch_size=ten"}); });
  CHECK(contains(type, "'train_cfg.batch_size' expects an integer, given a string ('ten')"));
  const auto arr = error_of([&] { apply_overrides(lc, {"param_scheduler.milestones=[1.5]"}); });
  CHECK(contains(arr, "expects an array of integers, given an array"));
  const auto noeq = error_of([&] { apply_overrides(lc, {"randomness.seed"}); });
  CHECK(contains(noeq, "is not key=value"));
  const auto bad = error_of([&] {
    apply_overrides(lc, {"optim_wrapper.accumulative_counts=0"});
    validate(lc.config, "--cfg-options");
  });
  CHECK(contains(bad, "accumulative_counts must be >= 1, given 0"));
}

TEST_CASE("config: edit distance and close keys") {
  CHECK(edit_distance("kitten", "sitting") == 3);
  CHECK(edit_distance("", "abc") == 3);
  CHECK(edit_distance("seed", "seed") == 0);
  const auto k = close_keys("optimizer.weight_decy");
  REQUIRE_FALSE(k.empty());
  CHECK(k.front() == "optimizer.weight_decay");
}

TEST_CASE("config: to_toml round-trips every value exactly") {
  LoadedConfig lc;
  apply_overrides(lc, {"optimizer.lr=0.00123456789012345", "loss.beta=0.3333333333333333", "randomness.seed=-7",
                       "amp.loss_scale=1024", "model.pretrained='a \"quoted\" path'"});
  const std::string text = to_toml(lc.config);
  const auto back = parse_config(text, "dump.toml");
  CHECK(to_toml(back.config) == text);
  CHECK(back.config.optimizer.lr == 0.00123456789012345);
  CHECK(back.config.loss.beta == 0.3333333333333333);
  CHECK(back.config.model.pretrained == "a \"quoted\" path");
  CHECK(back.from_file.size() == config_keys().size());  // the dump lists every key
  CHECK(value_text(lc.config, "param_scheduler.milestones") == "[90, 120]");
}

TEST_CASE("a value from --cfg-options that fails validation is reported with the override, not the file alone") {
  const auto msg = error_of([] {
    load_config(testing::source_path("configs/demo_host.toml"), {"train_cfg.batch_size=-3"});
  });
  CHECK(contains(msg, "with --cfg-options train_cfg.batch_size=-3"));
  CHECK(contains(msg, "train_cfg.batch_size must be >= 1"));
  CHECK(contains(msg, "demo_host.toml"));
}

TEST_CASE("shipped configs parse, validate and match the mmpose values") {
  const auto w32 = load_config(testing::source_path("configs/dekr_hrnet-w32_coco-512x512.toml"));
  CHECK(to_toml(w32.config) == to_toml(TrainConfig{}));  // explicit file == schema defaults
  const auto w48 = load_config(testing::source_path("configs/dekr_hrnet-w48_coco-640x640.toml"));
  CHECK(w48.config.model.variant == "w48");
  CHECK(w48.config.model.backbone_channels == std::vector<std::int64_t>{48, 96, 192, 384});
  CHECK(w48.config.model.num_heatmap_filters == 48);
  CHECK(w48.config.codec.input_size == std::vector<std::int64_t>{640, 640});
  CHECK(w48.config.codec.heatmap_size == std::vector<std::int64_t>{160, 160});
  CHECK(w48.config.optimizer.lr == 1e-3);  // inherited through _base_
  int n_ablation = 0;
  for (const auto& e : std::filesystem::directory_iterator(testing::source_path("configs/ablation/loss_weight"))) {
    const auto lc = load_config(e.path().string());
    CHECK(lc.config.loss.displacement_weight > 0.0);
    CHECK(lc.config.model.variant == "w32");
    ++n_ablation;
  }
  CHECK(n_ablation >= 4);
  for (const char* demo : {"configs/demo_host.toml", "configs/demo_gpu.toml"}) {
    const auto lc = load_config(testing::source_path(demo));
    CHECK(std::filesystem::exists(testing::source_path(lc.config.data.data_root + lc.config.data.train_ann_file)));
  }
}

// ---- command line --------------------------------------------------------------------------------
namespace {
std::variant<dekr_amp::CliArgs, int> parse(std::vector<std::string> args) {
  args.insert(args.begin(), "dekr_amp");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return dekr_amp::parse_cli(static_cast<int>(argv.size()), argv.data());
}
}  // namespace

TEST_CASE("dekr_amp command line") {
  const std::string cfg = testing::source_path("configs/demo_host.toml");
  {
    auto r = parse({"train", cfg, "--work-dir", "/tmp/w", "--amp", "--cfg-options", "randomness.seed=42",
                    "optimizer.lr=0.01", "--resume"});
    REQUIRE(std::holds_alternative<dekr_amp::CliArgs>(r));
    const auto& a = std::get<dekr_amp::CliArgs>(r);
    CHECK(a.command == "train");
    CHECK(a.config == cfg);
    CHECK(a.work_dir == "/tmp/w");
    CHECK(a.amp);
    CHECK_FALSE(a.precision.has_value());
    CHECK(a.cfg_options == std::vector<std::string>{"randomness.seed=42", "optimizer.lr=0.01"});
    CHECK(a.resume);
    CHECK(a.resume_from.empty());  // latest in the work dir
  }
  {
    auto r = parse({"train", cfg, "--resume", cfg, "--precision", "bf16", "--device", "host"});
    const auto& a = std::get<dekr_amp::CliArgs>(r);
    CHECK(a.resume_from == cfg);
    CHECK(a.precision == std::optional<std::string>("bf16"));
    CHECK(a.device == std::optional<std::string>("host"));
    CHECK_FALSE(a.amp);
  }
  {
    auto r = parse({"cocoeval", "gt.json", "res.json", "--json"});
    const auto& a = std::get<dekr_amp::CliArgs>(r);
    CHECK(a.command == "cocoeval");
    CHECK(a.cocoeval_args == std::vector<std::string>{"gt.json", "res.json", "--json"});
  }
  {
    auto r = parse({"demo", "--device", "host", "--work-dir", "/tmp/d"});
    const auto& a = std::get<dekr_amp::CliArgs>(r);
    CHECK(a.command == "demo");
    CHECK(a.work_dir == "/tmp/d");
  }
  CHECK(std::get<int>(parse({"train", cfg, "--precision", "fp8"})) != 0);
  CHECK(std::get<int>(parse({"train", "/nonexistent.toml"})) != 0);
  CHECK(std::get<int>(parse({})) != 0);
  CHECK(std::get<int>(parse({"--help"})) == 0);
}

TEST_CASE("precision: --precision > --amp > --cfg-options > USE_AMP > config file > default") {
  LoadedConfig defaults;
  LoadedConfig file = parse_config("[amp]\nprecision = 'bf16'\n", "f.toml");
  LoadedConfig over;
  apply_overrides(over, {"amp.precision=bf16"});

  LaunchRequest r;
  auto c = resolve_precision(r, defaults);
  CHECK(c.value == "fp32");
  CHECK(contains(c.reason, "default"));
  c = resolve_precision(r, file);
  CHECK(c.value == "bf16");
  CHECK(c.reason == "amp.precision in f.toml");

  r.use_amp_env = "1";
  c = resolve_precision(r, file);
  CHECK(c.value == "fp16");
  CHECK(c.reason == "USE_AMP=1");
  c = resolve_precision(r, over);  // typed on the command line: beats the environment
  CHECK(c.value == "bf16");
  CHECK(contains(c.reason, "--cfg-options"));

  r.use_amp_env = "0";
  CHECK(resolve_precision(r, defaults).value == "fp32");
  r.use_amp_env = "";
  CHECK(resolve_precision(r, defaults).value == "fp32");
  r.use_amp_env = "maybe";
  CHECK(contains(error_of([&] { resolve_precision(r, defaults); }), "USE_AMP='maybe'"));

  r.use_amp_env = "1";
  r.amp_flag = true;
  c = resolve_precision(r, over);
  CHECK(c.value == "fp16");
  CHECK(c.reason == "--amp");

  r.precision_flag = "bf16";
  c = resolve_precision(r, defaults);
  CHECK(c.value == "bf16");
  CHECK(c.reason == "--precision bf16 (with --amp)");
  r.precision_flag = "fp32";
  CHECK(contains(error_of([&] { resolve_precision(r, defaults); }), "contradict"));
  r.amp_flag = false;
  CHECK(resolve_precision(r, file).value == "fp32");
}

TEST_CASE("device choice and GPUS") {
  LoadedConfig lc;
  LaunchRequest r;
  auto d = resolve_device(r, lc, 0);
  CHECK(d.value == "host");
  CHECK(d.reason == "no CUDA device: running the host backend");
  CHECK(resolve_device(r, lc, 2).value == "cuda");
  CHECK(resolve_device(r, lc, -1).value == "host");
  r.device_flag = "cuda";
  CHECK(contains(error_of([&] { resolve_device(r, lc, 0); }), "no CUDA device is visible"));
  CHECK(contains(error_of([&] { resolve_device(r, lc, -1); }), "built without CUDA"));
  r.device_flag = "host";
  CHECK(resolve_device(r, lc, 4).value == "host");
  r.device_flag.reset();
  apply_overrides(lc, {"runtime.device=host"});
  d = resolve_device(r, lc, 4);
  CHECK(d.value == "host");
  CHECK(d.reason == "--cfg-options runtime.device=host");

  r.gpus_env = "4";
  CHECK(contains(error_of([&] { check_gpus_env(r, 1); }), "tools/dist_train.sh CONFIG 4"));
  CHECK_NOTHROW(check_gpus_env(r, 4));
  r.gpus_env = "1";
  CHECK_NOTHROW(check_gpus_env(r, 1));
  r.gpus_env = "two";
  CHECK(contains(error_of([&] { check_gpus_env(r, 1); }), "not a number"));
}

TEST_CASE("policy banner spells the C++ type") {
  AmpConfig amp;
  CHECK(policy_banner<AmpFp16>(amp) ==
        "Using Precision<fp16, fp32_master>: fp16 compute, fp32 master weights, dynamic loss scale 65536");
  amp.loss_scale = {false, 512.0};
  CHECK(policy_banner<AmpFp16>(amp) ==
        "Using Precision<fp16, fp32_master>: fp16 compute, fp32 master weights, static loss scale 512");
  CHECK(contains(policy_banner<AmpBf16>(amp), "Using Precision<bf16, fp32_master>: bf16 compute"));
  CHECK(policy_banner<Fp32>(amp) == "Using Precision<fp32>: fp32 compute, no loss scaling");
}

#include "graph_mode.inc"

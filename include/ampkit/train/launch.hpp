/// @brief How a training binary decides its precision policy and backend from flags, environment
/// and config, and says why: the run-time half of the one place where a flag becomes a type
/// (the binary then calls ampkit::dispatch_precision with the chosen name).
///
/// Precision, first match wins (mmpose: `--amp` or `USE_AMP=1` in the scripts):
///   1. `--precision fp32|fp16|bf16`          (with `--amp`: must be fp16 or bf16)
///   2. `--amp`                                -> fp16 (mmpose's AmpOptimWrapper, dtype fp16)
///   3. `--cfg-options amp.precision=...`     (typed on the command line: beats the environment)
///   4. `USE_AMP=1` in the environment        -> fp16 (`USE_AMP=0` or empty: no effect)
///   5. `amp.precision` in the config file
///   6. default fp32 (mmpose's DEKR config has no AMP)
/// Backend: `--device`, else `runtime.device`, else auto: CUDA when a device exists; otherwise
/// the host backend, with the line "no CUDA device: running the host backend".
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "ampkit/core/error.hpp"
#include "ampkit/precision.hpp"
#include "ampkit/train/config_schema.hpp"

namespace ampkit::train {

/// What the command line and the environment asked for.
struct LaunchRequest {
  std::optional<std::string> precision_flag;  ///< --precision
  bool amp_flag = false;                      ///< --amp
  std::optional<std::string> use_amp_env;     ///< USE_AMP (nullopt: unset)
  std::optional<std::string> device_flag;     ///< --device
  std::optional<std::string> gpus_env;        ///< GPUS (nullopt: unset)

  /// Fill the environment fields from the process environment.
  static std::optional<std::string> env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::optional<std::string>(v) : std::nullopt;
  }
};

/// A decision and the reason printed beside it.
struct Choice {
  std::string value;
  std::string reason;
};

namespace detail {
inline bool check_precision_name(std::string_view v, std::string_view where) {
  AMPKIT_CHECK(v == "fp32" || v == "fp16" || v == "bf16", where, ": unknown precision '", v,
               "'; use fp32, fp16 or bf16");
  return true;
}
/// USE_AMP as mmpose's scripts test it: set and non-empty means on; we also accept 0/false/no/off
/// as off, and refuse anything else instead of guessing.
inline std::optional<bool> parse_use_amp(const std::optional<std::string>& v) {
  if (!v || v->empty()) return std::nullopt;
  std::string s = *v;
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "1" || s == "true" || s == "yes" || s == "on") return true;
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  AMPKIT_FAIL("USE_AMP='", *v, "' in the environment: use USE_AMP=1 (fp16 AMP) or USE_AMP=0");
}
}  // namespace detail

/// The precision policy name ("fp32", "fp16", "bf16") and why.
inline Choice resolve_precision(const LaunchRequest& r, const LoadedConfig& lc) {
  if (r.precision_flag) {
    const auto& p = *r.precision_flag;
    detail::check_precision_name(p, "--precision");
    AMPKIT_CHECK(!(r.amp_flag && p == "fp32"), "--amp and --precision fp32 contradict each other: --amp means "
                 "mixed precision (fp16 or bf16); drop one of them");
    return {p, r.amp_flag ? "--precision " + p + " (with --amp)" : "--precision " + p};
  }
  if (r.amp_flag) return {"fp16", "--amp"};
  if (lc.from_overrides.contains("amp.precision"))
    return {lc.config.amp.precision, "--cfg-options amp.precision=" + lc.config.amp.precision};
  if (const auto on = detail::parse_use_amp(r.use_amp_env); on && *on) return {"fp16", "USE_AMP=" + *r.use_amp_env};
  if (lc.from_file.contains("amp.precision"))
    return {lc.config.amp.precision, "amp.precision in " + lc.source};
  return {lc.config.amp.precision, "default (pass --amp or set USE_AMP=1 for fp16 mixed precision)"};
}

/// "cuda" or "host", and why. `n_cuda_devices` < 0: the binary was built without CUDA.
inline Choice resolve_device(const LaunchRequest& r, const LoadedConfig& lc, int n_cuda_devices) {
  std::string want = "auto", why;
  if (r.device_flag) {
    want = *r.device_flag;
    why = "--device " + want;
    AMPKIT_CHECK(want == "cuda" || want == "host" || want == "auto", "--device: unknown device '", want,
                 "'; use cuda, host or auto");
  } else if (lc.config.runtime.device != "auto") {
    want = lc.config.runtime.device;
    why = lc.from_overrides.contains("runtime.device") ? "--cfg-options runtime.device=" + want
                                                         : "runtime.device in " + lc.source;
  }
  if (want == "host") return {"host", why};
  if (want == "cuda") {
    AMPKIT_CHECK(n_cuda_devices != 0, why, ": no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES), "
                 "or run on the host backend with --device host");
    AMPKIT_CHECK(n_cuda_devices > 0, why, ": this dekr_amp was built without CUDA (configure with nvcc on PATH); "
                 "use --device host");
    return {"cuda", why};
  }
  if (n_cuda_devices > 0) return {"cuda", "auto: " + std::to_string(n_cuda_devices) + " CUDA device(s) visible"};
  if (n_cuda_devices == 0) return {"host", "no CUDA device: running the host backend"};
  return {"host", "built without CUDA: running the host backend"};
}

/// GPUS=N as mmpose's scripts use it: the number of processes tools/dist_train.sh starts. Inside
/// one process it can only be checked against the launcher's world size.
inline void check_gpus_env(const LaunchRequest& r, std::int64_t world_size) {
  if (!r.gpus_env || r.gpus_env->empty()) return;
  std::int64_t n = 0;
  try {
    std::size_t used = 0;
    n = std::stoll(*r.gpus_env, &used);
    AMPKIT_CHECK(used == r.gpus_env->size(), "");
  } catch (const std::exception&) {
    AMPKIT_FAIL("GPUS='", *r.gpus_env, "' in the environment is not a number of GPUs");
  }
  AMPKIT_CHECK(n >= 1, "GPUS=", n, " in the environment: need at least 1");
  AMPKIT_CHECK(n == 1 || n == world_size, "GPUS=", n, " but this process was started alone (world size ",
               world_size, "): start ", n, " processes with `tools/dist_train.sh CONFIG ", n,
               " [args]` (one per GPU), or unset GPUS");
}

/// The C++ spelling of a policy: "Precision<fp16, fp32_master>".
template <PrecisionPolicy P>
std::string policy_type_name() {
  if constexpr (PrecisionTraits<P>::has_master_weights)
    return "Precision<" + std::string(policy_name_v<P>) + ", fp32_master>";
  else
    return "Precision<" + std::string(policy_name_v<P>) + ">";
}

/// The line users grep for to check that AMP is on, e.g.
/// "Using Precision<fp16, fp32_master>: fp16 compute, fp32 master weights, dynamic loss scale 65536".
template <PrecisionPolicy P>
std::string policy_banner(const AmpConfig& amp) {
  std::string s = "Using " + policy_type_name<P>() + ": " + std::string(policy_name_v<P>) + " compute";
  if constexpr (PrecisionTraits<P>::has_master_weights) s += ", fp32 master weights";
  if constexpr (PrecisionTraits<P>::needs_loss_scaling) {
    char b[64];
    if (amp.loss_scale.dynamic) std::snprintf(b, sizeof b, ", dynamic loss scale %g", amp.init_scale);
    else std::snprintf(b, sizeof b, ", static loss scale %g", amp.loss_scale.value);
    s += b;
  } else if constexpr (PrecisionTraits<P>::has_master_weights) {
    s += ", no loss scaling (bf16 has fp32's exponent range)";
  } else {
    s += ", no loss scaling";
  }
  return s;
}

}  // namespace ampkit::train

/// @brief What a CUDA device is and whether it can run a precision policy: the checks and their
/// messages, kept free of CUDA headers so they are tested on machines without a GPU.
#pragma once

#include <string>

#include "ampkit/core/error.hpp"
#include "ampkit/precision.hpp"

namespace ampkit {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  std::size_t total_bytes = 0;
  int multiprocessors = 0;
  int driver_version = 0;   ///< CUDA version the driver supports, e.g. 13000 (0 = no driver)
  int runtime_version = 0;  ///< CUDA runtime ampkit was built with, e.g. 13000

  int compute_capability() const { return cc_major * 10 + cc_minor; }
};

namespace detail {
inline std::string cuda_version_string(int v) {
  return concat(v / 1000, ".", (v % 1000) / 10);
}
}  // namespace detail

/// The message for "there is no usable device", given why the runtime said so.
inline std::string no_device_message(const std::string& runtime_reason, int driver_version,
                                     int runtime_version) {
  if (driver_version == 0) {
    return detail::concat(
        "no CUDA device: no NVIDIA driver was found (", runtime_reason,
        "). Run on the host backend (--device host), or install the NVIDIA driver and check that "
        "nvidia-smi lists the GPU.");
  }
  if (driver_version < runtime_version) {
    return detail::concat(
        "no CUDA device: the NVIDIA driver supports CUDA ", detail::cuda_version_string(driver_version),
        " but ampkit was built with CUDA ", detail::cuda_version_string(runtime_version),
        ". Update the driver, rebuild ampkit with a CUDA toolkit no newer than ",
        detail::cuda_version_string(driver_version), ", or run on the host backend (--device host).");
  }
  return detail::concat("no CUDA device (", runtime_reason,
                        "). Check CUDA_VISIBLE_DEVICES and nvidia-smi, or run on the host backend "
                        "(--device host).");
}

/// Throws a clear ampkit::Error if `dev` cannot run policy P's tensor-core paths.
template <PrecisionPolicy P>
void check_device_supports(const DeviceInfo& dev) {
  constexpr int need = PrecisionTraits<P>::min_compute_capability;
  const int have = dev.compute_capability();
  if (have >= need) return;
  constexpr std::string_view name = policy_name_v<P>;
  if (name == "bf16") {
    AMPKIT_FAIL("GPU ", dev.index, " (", dev.name, ") has compute capability ", dev.cc_major, ".",
                dev.cc_minor, "; Precision<bf16, fp32_master> needs 8.0 (Ampere or newer) for bf16 "
                "tensor cores. Use --amp (Precision<fp16, fp32_master>, needs 7.0) or "
                "--precision fp32.");
  }
  AMPKIT_FAIL("GPU ", dev.index, " (", dev.name, ") has compute capability ", dev.cc_major, ".",
              dev.cc_minor, "; Precision<fp16, fp32_master> needs 7.0 or newer for fp16 tensor "
              "cores. Use --precision fp32 (Precision<fp32>) or the host backend (--device host).");
}

}  // namespace ampkit

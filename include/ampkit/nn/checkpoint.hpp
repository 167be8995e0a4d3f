/// @brief Model checkpoints as safetensors with mmpose's state-dict names: write/read a parameter
/// store (fp32 master weights + BN running statistics), plus a hook for extra named tensors
/// (optimizer state, loss-scaler state, counters), saved atomically (temp file, fsync, rename).
///
/// Layout in the file: conv weights KRSC [K, R, S, C/groups] (PyTorch's OIHW permuted (0,2,3,1));
/// vectors [C]; all F32. Metadata "ampkit.layout" = "KRSC" and "ampkit.format" = "ampkit-dekr-1".
/// tools/convert_checkpoint.py converts between this and mmpose .pth state dicts (it adds/drops
/// `num_batches_tracked` and the AdaptiveActivationBlock's constant `regular_matrix`).
/// Reading accepts F16/BF16/F32/F64 tensors and ignores names the store does not have (so a
/// training checkpoint with optimizer state, or a golden file, loads into a bare model).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/safetensors.hpp"
#include "ampkit/nn/parameter_store.hpp"

namespace ampkit::nn {

inline constexpr const char* kCheckpointFormat = "ampkit-dekr-1";

/// Add every parameter (fp32 master) and buffer of `store` to `w` under its name.
template <PrecisionPolicy P, class Backend>
void write_state(const ParameterStore<P, Backend>& store, Backend& ctx, safetensors::Writer& w) {
  const auto master = ctx.to_host(TensorView<const float>(store.master_all()));
  for (const auto& p : store.params()) {
    const float* src = master.data() + store.master_offset(p);
    w.add<float>(p.name, std::span<const float>(src, static_cast<std::size_t>(p.numel)), p.dims);
  }
  const auto bufs = ctx.to_host(TensorView<const float>(store.buffers_all()));
  for (const auto& b : store.buffers())
    w.add<float>(b.name, std::span<const float>(bufs.data() + b.offset, static_cast<std::size_t>(b.numel)), b.dims);
  w.metadata("ampkit.layout", "KRSC");
  w.metadata("ampkit.format", kCheckpointFormat);
}

/// Load every parameter and buffer of `store` from `f` (names, shapes checked), then refresh the
/// compute copies. Missing names are an error when `strict`, else they keep their values.
/// @return the number of tensors loaded
template <PrecisionPolicy P, class Backend>
int read_state(ParameterStore<P, Backend>& store, Backend& ctx, const safetensors::File& f, bool strict = true) {
  auto master = ctx.to_host(TensorView<const float>(store.master_all()));
  auto bufs = ctx.to_host(TensorView<const float>(store.buffers_all()));
  std::vector<std::string> missing;
  int n_loaded = 0;
  auto load = [&](const std::string& name, const std::vector<std::int64_t>& dims, float* dst) {
    if (!f.contains(name)) {
      missing.push_back(name);
      return;
    }
    const auto& info = f.info(name);
    AMPKIT_CHECK(info.shape == dims, "checkpoint '", f.origin(), "': '", name, "' has shape ",
                 safetensors::detail::shape_str(info.shape), ", the model expects ", safetensors::detail::shape_str(dims),
                 " (weights are KRSC; convert PyTorch .pth files with tools/convert_checkpoint.py)");
    const auto v = f.read_as<float>(name);
    std::copy(v.begin(), v.end(), dst);
    ++n_loaded;
  };
  for (const auto& p : store.params()) load(p.name, p.dims, master.data() + store.master_offset(p));
  for (const auto& b : store.buffers()) load(b.name, b.dims, bufs.data() + b.offset);
  if (strict && !missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    AMPKIT_FAIL("checkpoint '", f.origin(), "' lacks ", missing.size(), " of the model's tensors (", list,
                missing.size() > 5 ? ", ..." : "", ")");
  }
  ctx.copy_to_device(store.master_all(), std::span<const float>(master.span()));
  ctx.copy_to_device(store.buffers_all(), std::span<const float>(bufs.span()));
  store.sync_compute(ctx);
  return n_loaded;
}

/// Write the model and any extras atomically. `extra` adds more tensors (e.g. "optimizer.exp_avg",
/// "scaler.scale", "state.step") to the same file; `metadata` adds string entries (config, policy).
template <PrecisionPolicy P, class Backend>
void save_checkpoint(const std::string& path, const ParameterStore<P, Backend>& store, Backend& ctx,
                     const std::function<void(safetensors::Writer&)>& extra = {},
                     const std::map<std::string, std::string>& metadata = {}) {
  safetensors::Writer w;
  write_state(store, ctx, w);
  w.metadata("ampkit.policy", std::string(policy_name_v<P>));
  for (const auto& [k, v] : metadata) w.metadata(k, v);
  if (extra) extra(w);
  w.save(path);
}

/// Read a checkpoint into the store; returns the file so the caller can read its extras.
template <PrecisionPolicy P, class Backend>
safetensors::File load_checkpoint(const std::string& path, ParameterStore<P, Backend>& store, Backend& ctx,
                                  bool strict = true) {
  auto f = safetensors::File::load(path);
  read_state(store, ctx, f, strict);
  return f;
}

}  // namespace ampkit::nn

// Test fixture shared by the optim/amp cpu tests and the amp gpu test: a parameter store with one
// compute-type parameter ("w", n_compute elements) and one fp32 parameter ("bn", n_fp32
// elements), addressed as one flat vector [w | bn] like the golden files, on either backend.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ampkit/core/safetensors.hpp"
#include "ampkit/nn/parameter_store.hpp"
#include "ampkit/precision.hpp"
#include "support/testing.hpp"

namespace ampkit::testing {

template <PrecisionPolicy P, class Ctx>
struct FlatFixture {
  using T = storage_t<P>;
  nn::ParameterStore<P, Ctx> store;
  nn::ParamId w, bn;
  std::int64_t n_compute = 0, n_fp32 = 0;

  FlatFixture(Ctx& ctx, std::int64_t n_c, std::int64_t n_f) : n_compute(n_c), n_fp32(n_f) {
    w = store.add("w", {n_c}, {1, 1, 1, n_c}, nn::ParamKind::kCompute, nn::ParamInit::uniform(1.f));
    if (n_f) bn = store.add("bn", {n_f}, {1, 1, 1, n_f}, nn::ParamKind::kFp32, nn::ParamInit::constant(1.f));
    store.allocate(ctx, 7);
  }
  std::int64_t size() const { return n_compute + n_fp32; }

  /// master = p (flat [w | bn]); compute copies rewritten.
  void set_master(Ctx& ctx, std::span<const float> p) {
    ctx.copy_to_device(store.master(w), p.subspan(0, n_compute));
    if (n_fp32) ctx.copy_to_device(store.master(bn), p.subspan(n_compute, n_fp32));
    store.sync_compute(ctx);
  }
  /// Backward of one micro-batch under the gradient contract: parameter gradients are
  /// ACCUMULATED (+=), w's in T (rounded once per accumulation, as a storage-type backward does),
  /// bn's in fp32. `mult` multiplies first (loss scale / loss factor), in fp32.
  void set_grads(Ctx& ctx, std::span<const float> g, float mult = 1.f) {
    auto old_w = ctx.to_host(TensorView<const T>(store.weight_grad(w)));
    std::vector<T> gw(static_cast<std::size_t>(n_compute));
    for (std::int64_t i = 0; i < n_compute; ++i) {
      const float prev = static_cast<float>(old_w[i]);
      gw[i] = convert<T>(prev == 0.f ? g[i] * mult : prev + g[i] * mult);  // 0 + x keeps inf/NaN as is
    }
    ctx.copy_to_device(store.weight_grad(w), std::span<const T>(gw));
    if (n_fp32) {
      auto old_b = ctx.to_host(TensorView<const float>(store.fp32_grad(bn)));
      std::vector<float> gb(static_cast<std::size_t>(n_fp32));
      for (std::int64_t i = 0; i < n_fp32; ++i) gb[i] = old_b[i] + g[n_compute + i] * mult;
      ctx.copy_to_device(store.fp32_grad(bn), std::span<const float>(gb));
    }
  }
  std::vector<float> master(Ctx& ctx) const {
    std::vector<float> out;
    auto a = ctx.to_host(TensorView<const float>(store.master(w)));
    out.assign(a.data(), a.data() + a.numel());
    if (n_fp32) {
      auto b = ctx.to_host(TensorView<const float>(store.master(bn)));
      out.insert(out.end(), b.data(), b.data() + b.numel());
    }
    return out;
  }
  std::vector<T> weights(Ctx& ctx) const {
    auto a = ctx.to_host(store.weight(w));
    return std::vector<T>(a.data(), a.data() + a.numel());
  }
};

/// The golden file of areas optim and amp (tests/golden/gen_amp.py).
inline const safetensors::File& amp_golden() {
  static const safetensors::File f =
      safetensors::File::load(source_path("tests/golden/data/amp_optim.safetensors"));
  return f;
}

/// Row s of a (S, n) golden tensor.
inline std::vector<float> golden_row(const std::vector<float>& all, std::int64_t n, std::int64_t s) {
  return std::vector<float>(all.begin() + s * n, all.begin() + (s + 1) * n);
}

}  // namespace ampkit::testing

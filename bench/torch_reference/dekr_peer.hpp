/// @brief One DEKR training step (forward in training mode, DEKR loss, backward) on weights, input
/// and targets read from a safetensors file, everything compared written to another: the ampkit
/// side of bench/torch_reference/compare_w32.py. Included by dekr_peer.cpp (host backend) and
/// dekr_peer.cu (host or CUDA backend).
///
///   ampkit_dekr_peer IN.safetensors OUT.safetensors --policy fp32|fp16 [--backend host|cuda]
///
/// IN (written by compare_w32.py): the model state (mmpose names, KRSC conv weights, F32), `input`
/// (N,H,W,3), `target/{heatmaps,heatmap_weights,heatmap_mask,displacements,displacement_weights}`,
/// metadata `config` (w32|w48|tiny) and `loss_scale` (fp16 only; a power of two).
/// OUT: `out/{heatmaps,displacements}` (F32 NHWC), `loss` [total, heatmap, displacement, n_pos],
/// `grad/<param>` (unscaled, F32, KRSC), `running/<buffer>` (BN running statistics after the step),
/// metadata policy, backend, seconds.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ampkit/backend/host/dekr.hpp"

namespace ampkit::peer {

template <class T>
std::vector<float> floats(const HostTensor<T>& h) {
  std::vector<float> r(static_cast<std::size_t>(h.numel()));
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = static_cast<float>(h[static_cast<std::int64_t>(i)]);
  return r;
}

/// The step on backend B with policy P; writes OUT.
template <class P, class B>
void run(B& ctx, const safetensors::File& f, const std::string& out_path, const char* backend_name) {
  using T = storage_t<P>;
  constexpr bool fp32 = std::is_same_v<T, float>;
  const auto& meta = f.metadata();
  const std::string config = meta.contains("config") ? meta.at("config") : "w32";
  const float scale = fp32 ? 1.f : (meta.contains("loss_scale") ? std::stof(meta.at("loss_scale")) : 1024.f);
  models::Dekr<P, B> m(ctx, models::DekrConfig::by_name(config), 1);
  const int n = nn::read_state(m.store(), ctx, f);
  AMPKIT_CHECK(n == static_cast<int>(m.store().params().size() + m.store().buffers().size()), "dekr_peer: ", n,
               " tensors loaded, the model has ", m.store().params().size() + m.store().buffers().size());
  const auto x = ctx.to_device(f.tensor<T>("input"));
  const auto gt_hm = ctx.to_device(f.tensor<float>("target/heatmaps"));
  const auto hm_w = ctx.to_device(f.tensor<float>("target/heatmap_weights"));
  const auto mask = ctx.to_device(f.tensor<float>("target/heatmap_mask"));
  const auto gt_d = ctx.to_device(f.tensor<float>("target/displacements"));
  const auto d_w = ctx.to_device(f.tensor<float>("target/displacement_weights"));

  const auto t0 = std::chrono::steady_clock::now();
  auto out = m.forward(ctx, x.cview(), true);
  const DekrLossInputs<T> in{out.heatmaps, out.displacements, gt_hm.cview(), hm_w.cview(),
                             mask.cview(),  gt_d.cview(),     d_w.cview()};
  DekrLoss<P, B> loss(ctx);
  loss.forward(ctx, in);
  auto dhm = ctx.template tensor<T>(out.heatmaps.shape);
  auto dd = ctx.template tensor<T>(out.displacements.shape);
  // The scale through the device-resident path, as the dynamic loss scaler passes it.
  HostTensor<float> s_host({1, 1, 1, 1}, scale);
  const auto s = ctx.to_device(s_host);
  loss.backward(ctx, in, dhm.view(), dd.view(), 1.f, s.cview());
  m.store().zero_grad(ctx);
  m.backward(ctx, dhm.cview(), dd.cview());
  ctx.synchronize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  safetensors::Writer w;
  const auto add = [&](const std::string& name, const std::vector<float>& v, const Shape& sh) {
    w.add<float>(name, std::span<const float>(v), {sh.n, sh.h, sh.w, sh.c});
  };
  add("out/heatmaps", floats(ctx.to_host(out.heatmaps)), out.heatmaps.shape);
  add("out/displacements", floats(ctx.to_host(out.displacements)), out.displacements.shape);
  const auto v = floats(ctx.to_host(loss.result()));
  w.add<float>("loss", std::span<const float>(v.data(), 4), {4});
  const auto& st = m.store();
  for (const auto& p : st.params()) {
    const auto id = *st.find(p.name);
    auto g = p.kind == nn::ParamKind::kCompute ? floats(ctx.to_host(TensorView<const T>(st.weight_grad(id))))
                                               : floats(ctx.to_host(TensorView<const float>(st.fp32_grad(id))));
    for (auto& e : g) e /= scale;
    w.add<float>("grad/" + p.name, std::span<const float>(g), p.dims);
  }
  for (const auto& b : st.buffers()) {
    const auto id = *st.find_buffer(b.name);
    const auto r = floats(ctx.to_host(TensorView<const float>(st.buffer(id))));
    w.add<float>("running/" + b.name, std::span<const float>(r), {static_cast<std::int64_t>(r.size())});
  }
  w.metadata("policy", std::string(policy_name_v<P>));
  w.metadata("backend", backend_name);
  w.metadata("config", config);
  w.metadata("loss_scale", std::to_string(scale));
  w.metadata("seconds", std::to_string(seconds));
  w.save(out_path);
  std::printf("dekr_peer: %s %s %s, loss %.7g (hm %.7g, disp %.7g, n_pos %.0f), step %.2f s -> %s\n", config.c_str(),
              std::string(policy_name_v<P>).c_str(), backend_name, v[0], v[1], v[2], v[3], seconds, out_path.c_str());
}

struct Args {
  std::string in, out, policy = "fp32", backend = "host";
};

inline Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if ((s == "--policy" || s == "--backend") && i + 1 < argc)
      (s == "--policy" ? a.policy : a.backend) = argv[++i];
    else
      pos.push_back(s);
  }
  if (pos.size() != 2 || (a.policy != "fp32" && a.policy != "fp16")) {
    std::fprintf(stderr, "usage: %s IN.safetensors OUT.safetensors --policy fp32|fp16 [--backend host|cuda]\n",
                 argv[0]);
    std::exit(2);
  }
  a.in = pos[0];
  a.out = pos[1];
  return a;
}

}  // namespace ampkit::peer

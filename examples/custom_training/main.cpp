// A custom training binary built OUT OF TREE against an installed ampkit (find_package(ampkit) or
// dependency('ampkit')). It trains a tiny least-squares model y = X·w with fp16 storage of the
// weights and activations, fp32 master weights and a static loss scale, switching the precision
// with a template argument, on the host backend (no GPU needed).
#include <ampkit/backend/host/context.hpp>
#include <ampkit/core/tensor.hpp>
#include <ampkit/precision.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

template <ampkit::PrecisionPolicy P>
int train() {
  using S = ampkit::storage_t<P>;
  using M = ampkit::master_t<P>;
  constexpr int n = 256, d = 8;
  ampkit::Host host;
  std::mt19937 rng(42);
  std::normal_distribution<float> g;
  ampkit::HostTensor<S> x({1, 1, n, d});
  std::vector<float> w_true(d), y(n);
  for (auto& v : w_true) v = g(rng);
  for (int i = 0; i < n; ++i) {
    float acc = 0;
    for (int j = 0; j < d; ++j) {
      x(0, 0, i, j) = ampkit::convert<S>(g(rng));
      acc += static_cast<float>(x(0, 0, i, j)) * w_true[j];
    }
    y[i] = acc;
  }
  std::vector<M> master(d, 0.f);      // fp32 master weights
  std::vector<S> w(d, S(0.f));        // compute-type copies the "kernels" read
  const float loss_scale = ampkit::PrecisionTraits<P>::needs_loss_scaling ? 1024.f : 1.f;
  float loss = 0;
  for (int step = 0; step < 200; ++step) {
    std::vector<float> grad(d, 0.f);
    loss = 0;
    for (int i = 0; i < n; ++i) {
      float pred = 0;
      for (int j = 0; j < d; ++j) pred += static_cast<float>(x(0, 0, i, j)) * static_cast<float>(w[j]);
      const float r = pred - y[i];
      loss += r * r / n;
      for (int j = 0; j < d; ++j)  // scaled gradient, stored in the compute type as a GPU would
        grad[j] += static_cast<float>(ampkit::convert<S>(loss_scale * 2 * r * static_cast<float>(x(0, 0, i, j)) / n));
    }
    for (int j = 0; j < d; ++j) {
      master[j] -= 0.1f * grad[j] / loss_scale;  // unscale, update the master
      w[j] = ampkit::convert<S>(master[j]);       // write the compute-type copy
    }
  }
  std::printf("policy %s: final loss %.3g on %d threads\n", std::string(ampkit::policy_name_v<P>).c_str(),
              loss, host.n_threads());
  return loss < 1e-3f ? 0 : 1;
}

int main(int argc, char** argv) {
  const std::string precision = argc > 1 ? argv[1] : "fp16";
  try {
    return ampkit::dispatch_precision(precision, []<ampkit::PrecisionPolicy P>() { return train<P>(); });
  } catch (const ampkit::Error& e) {
    std::fprintf(stderr, "custom_training: %s\n", e.what());
    return 2;
  }
}

// The ampkit side of bench/torch_reference/compare_w32.py on the CUDA (default) or host backend
// (see dekr_peer.hpp). Built by bench/CMakeLists.txt / meson.build as `ampkit_dekr_peer`.
#include "ampkit/backend/cuda/dekr.cuh"
#include "dekr_peer.hpp"

int main(int argc, char** argv) {
  namespace ak = ampkit;
  auto a = ak::peer::parse(argc, argv);
  bool seen_backend = false;
  for (int i = 1; i < argc; ++i) seen_backend |= std::string(argv[i]) == "--backend";
  if (!seen_backend) a.backend = "cuda";
  try {
    const auto f = ak::safetensors::File::load(a.in);
    if (a.backend == "cuda") {
      ak::Cuda ctx;
      if (a.policy == "fp32")
        ak::peer::run<ak::Fp32>(ctx, f, a.out, "cuda");
      else
        ak::peer::run<ak::AmpFp16>(ctx, f, a.out, "cuda");
    } else {
      ak::Host ctx;
      if (a.policy == "fp32")
        ak::peer::run<ak::Fp32>(ctx, f, a.out, "host");
      else
        ak::peer::run<ak::AmpFp16>(ctx, f, a.out, "host");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dekr_peer: %s\n", e.what());
    return 1;
  }
  return 0;
}

// The ampkit side of bench/torch_reference/compare_w32.py on the host backend (see dekr_peer.hpp).
// Build: g++ -std=c++20 -O2 -fopenmp -Iinclude -I/usr/include/eigen3 bench/torch_reference/dekr_peer.cpp
#include "dekr_peer.hpp"

int main(int argc, char** argv) {
  using namespace ampkit;
  const auto a = peer::parse(argc, argv);
  if (a.backend != "host") {
    std::fprintf(stderr, "dekr_peer: this build has the host backend only (build dekr_peer.cu for cuda)\n");
    return 2;
  }
  try {
    const auto f = safetensors::File::load(a.in);
    Host ctx;
    if (a.policy == "fp32")
      peer::run<Fp32>(ctx, f, a.out, "host");
    else
      peer::run<AmpFp16>(ctx, f, a.out, "host");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dekr_peer: %s\n", e.what());
    return 1;
  }
  return 0;
}

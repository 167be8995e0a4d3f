#!/usr/bin/env bash
# The Quick start: install what is missing, build dekr_amp, run `dekr_amp demo` (train DEKR on the
# bundled COCO sample). With a GPU: W32, fp16 policy, 512x512. Without: the tiny model on the host
# backend (a few minutes on 2 cores). Extra arguments go to `dekr_amp demo` (--device, --precision,
# --work-dir, --cfg-options ...); USE_AMP=1 works as for `dekr_amp train`.
# Environment: BUILD_DIR (default build/demo), JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build/demo}
JOBS=${JOBS:-$(nproc)}

AMPKIT_PIP_PEERS="" bash tools/install_deps.sh   # the demo needs no Python
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then export PATH=/usr/local/cuda/bin:$PATH; fi
if command -v nvcc >/dev/null; then cuda=ON; arch=${AMPKIT_CUDA_ARCHITECTURES:-native}; else cuda=OFF; arch=90; fi

printf '\n== building dekr_amp (CUDA %s) in %s\n' "$cuda" "$BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMPKIT_BUILD_TESTS=OFF -DAMPKIT_BUILD_BENCH=OFF \
      -DAMPKIT_ENABLE_CUDA="$cuda" -DAMPKIT_CUDA_ARCHITECTURES="$arch" >"$BUILD_DIR.configure.log" 2>&1 \
  || { cat "$BUILD_DIR.configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j "$JOBS" --target dekr_amp

printf '\n== dekr_amp demo %s\n' "$*"
exec "$BUILD_DIR/examples/dekr_amp/dekr_amp" demo "$@"

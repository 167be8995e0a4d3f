#!/usr/bin/env bash
# DEKR-W32 at 512x512, batch 2: ampkit (CUDA) vs PyTorch, fp32 and fp16, in ONE GPU call.
# Builds `ampkit_dekr_peer` with CMake (unless DEKR_PEER_BIN names a built one), then runs
# bench/torch_reference/compare_w32.py with the device's torch. Everything lands in $OUT:
# compare_w32.log (summary, PASS/FAIL), compare_w32.txt (every tensor), the build log.
#
# Usage (GPU machine, repository root):  bench/torch_reference/run_compare_w32.sh [extra compare_w32.py args]
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
export OUT=${OUT:-/tmp/ampkit-gpu-out}
mkdir -p "$OUT"
PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=python3
source tools/gpu_env.sh   # PATH, pip cuDNN/NCCL (CUDNN_ROOT, NCCL_ROOT, rpath), .deps
BIN=${DEKR_PEER_BIN:-}
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  B=${GPU_BUILD:-/tmp/ampkit-build}
  t0=$SECONDS
  { cmake -S . -B "$B/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMPKIT_CUDA_ARCHITECTURES=90 \
          -DAMPKIT_WARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_RPATH="$rpath" && cmake --build "$B/cmake" --target ampkit_dekr_peer; } \
    > "$OUT/compare_w32_build.log" 2>&1 || { grep -B2 -A12 -E "error|FAILED" "$OUT/compare_w32_build.log" | head -60; exit 1; }
  echo "built ampkit_dekr_peer in $((SECONDS - t0)) s"
  BIN=$B/cmake/bench/ampkit_dekr_peer
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$PY" bench/torch_reference/compare_w32.py --peer "$BIN" --device cuda --work "$OUT" "$@" 2>&1 | tee "$OUT/compare_w32.log"
exit "${PIPESTATUS[0]}"

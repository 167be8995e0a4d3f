#!/usr/bin/env bash
# On a GPU machine: build the tree with CMake AND Meson and run the tests (gpu label by default).
# Usage: tools/gpu_check.sh [ctest-label-regex] [extra ctest args...]
# Uses the pip cuDNN/NCCL when the machine has them (the H200 image does), header-only deps that
# the machine lacks from .deps/include (stb, toml++, CLI11: copy them there from a Debian box).
set -uo pipefail
cd "$(dirname "$0")/.."
label=${1:-gpu}; shift || true
out=${OUT:-/tmp/ampkit-gpu-out}; mkdir -p "$out"
source tools/gpu_env.sh   # PATH, pip cuDNN/NCCL (CUDNN_ROOT, NCCL_ROOT, rpath), .deps
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
nvcc --version | tail -2 | tee -a "$out/gpu.txt"
B=${GPU_BUILD:-/tmp/ampkit-build}
rc=0
t0=$(date +%s)
cmake -S . -B "$B/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMPKIT_CUDA_ARCHITECTURES=90 \
      -DCMAKE_BUILD_RPATH="$rpath" > "$out/cmake-configure.log" 2>&1 || { tail -30 "$out/cmake-configure.log"; exit 1; }
cmake --build "$B/cmake" -j "$(nproc)" -- -k 0 > "$out/cmake-build.log" 2>&1 || { grep -B2 -A12 -E "error|FAILED" "$out/cmake-build.log" | head -80; rc=1; }
echo "cmake build: $(( $(date +%s) - t0 )) s"
(cd "$B/cmake" && ctest -L "$label" --output-on-failure "$@") > "$out/ctest.log" 2>&1 || rc=1
tail -15 "$out/ctest.log"
if [ "${SKIP_MESON:-0}" != 1 ]; then
  t0=$(date +%s)
  # The GPU image's g++ 13.3 raises -O3 -Wstringop-overflow false positives inside std::string that
  # g++ 12 (CI) does not; warnings stay visible but do not stop the device build.
  margs=(-Dampkit_cuda_architectures=90 -Dbuildtype=release -Dwarnings_as_errors=false)
  [ -n "${CUDNN_ROOT:-}" ] && margs+=(-Dcudnn_root="$CUDNN_ROOT" -Dnccl_root="$NCCL_ROOT")
  [ -n "${AMPKIT_EXTRA_INCLUDE:-}" ] && margs+=(-Dextra_include="$AMPKIT_EXTRA_INCLUDE")
  meson setup "$B/meson" "${margs[@]}" > "$out/meson-setup.log" 2>&1 || { tail -30 "$out/meson-setup.log"; rc=1; }
  meson compile -C "$B/meson" -j "$(nproc)" --ninja-args=-k0 > "$out/meson-build.log" 2>&1 || { grep -A12 -E "error|FAILED" "$out/meson-build.log" | head -60; rc=1; }
  echo "meson build: $(( $(date +%s) - t0 )) s"
  meson test -C "$B/meson" --suite "$label" --print-errorlogs > "$out/meson-test.log" 2>&1 || rc=1
  grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Skipped|Expected Fail|Timeout):" "$out/meson-test.log" | tail -20
fi
exit $rc

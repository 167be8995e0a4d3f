#!/usr/bin/env bash
# One GPU session: build (CMake + Meson), run every gpu test, then the benchmarks side by side with
# the PyTorch peers. Results land in $OUT (default /tmp/ampkit-gpu-out); copy them to bench/results/.
# Usage (on the GPU machine, repository root): bench/run_gpu_session.sh [tests|bench|all]
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
export OUT=${OUT:-/tmp/ampkit-gpu-out}; mkdir -p "$OUT"
B=${GPU_BUILD:-/tmp/ampkit-build}
export GPU_BUILD=$B
if [ "$what" != bench ]; then
  timeout 420 bash tools/gpu_check.sh gpu --timeout 300 2>&1 | tail -30
else
  SKIP_MESON=1 timeout 300 bash tools/gpu_check.sh none 2>&1 | tail -5
fi
if [ "$what" = tests ]; then (cd "$OUT" && tar czf logs.tgz ./*.log ./*.txt 2>/dev/null && rm -f ./*.log); exit 0; fi
date -Is > "$OUT/bench_meta.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >> "$OUT/bench_meta.txt"
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cudnn", torch.backends.cudnn.version())' >> "$OUT/bench_meta.txt"
cd "$B/cmake"
(
  echo "### ampkit ops (fp16, batch 32)"; timeout 120 ./bench/ampkit_ops_bench --dtype fp16 --batch 32 --iters 20 > "$OUT/ampkit_ops.json"; echo rc=$?
  echo "### ampkit sampling ops (fp16, batch 32)"; timeout 120 ./bench/sampling_bench --dtype fp16 > "$OUT/ampkit_sampling.json"; echo rc=$?
) 2>&1 | tee "$OUT/bench.log"
cd - >/dev/null
(
  timeout 180 python3 bench/torch_ops_bench.py --dtype fp16 --batch 32 --ampkit-json "$OUT/ampkit_ops.json" --out "$OUT/ops.json"; echo rc=$?
  timeout 180 python3 bench/torch_sampling_bench.py --ampkit-json "$OUT/ampkit_sampling.json" --out "$OUT/sampling.json"; echo rc=$?
) 2>&1 | tail -60 | tee -a "$OUT/bench.log"
# The device tool returns at most 8 files: pack the logs into one archive.
(cd "$OUT" && tar czf logs.tgz ./*.log ./*.txt 2>/dev/null && rm -f ./*.log)
exit 0

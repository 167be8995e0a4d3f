#!/usr/bin/env bash
# What is still unmeasured on the H200 (issues 3-12), as ONE device call of < 10 minutes on a
# single H200. Run from the repository root with `.deps` carried (docs/development.md):
#
#   PARTS=all bash tools/gpu_pending.sh        # default; or a comma list of the parts below
#
# Parts (each with its own time limit, results in $OUT, at most 8 files come back):
#   build     gpu tests, dekr_amp, ampkit_dekr_step, ampkit_dekr_peer (sm_90)
#   tests     every gpu test (ctest -L gpu); the eval test prints the decode speed (issue 7)
#   w32       bench/torch_reference/run_compare_w32.sh: W32 512x512 outputs/gradients vs PyTorch (issue 4)
#   plan      ampkit_dekr_step fp16:2,fp16:32,fp32:32: the memory plan next to the measured peak (issue 4),
#             and dekr_amp with an oversized batch: the one-line early failure
#   data      ampkit_data_pipeline on this machine's CPUs: samples/s per core and with 16 threads (issue 6)
#   demo      dekr_amp demo --device cuda: AP, PNG, and the log's grad_norm changing every line
#             (the step-stats readout no longer lags)
# The 2-GPU checks are tests/gpu/dist/ddp_train.sh on nvidia-h200-x2 (tests/gpu/dist/README.md);
# compute-sanitizer is tools/sanitize_gpu.sh (tens of minutes: a call of its own).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/ampkit-gpu-out}; mkdir -p "$OUT"
source tools/gpu_env.sh   # PATH, pip cuDNN/NCCL (CUDNN_ROOT, NCCL_ROOT, rpath), .deps
B=${GPU_BUILD:-/tmp/ampkit-build}/cmake
S=$OUT/summary.txt
PARTS=${PARTS:-all}
want() { [ "$PARTS" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }
log() { echo "== $*" | tee -a "$S"; }
log "$(date -Is) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sort | uniq -c | tr -s ' ') $(nproc) CPUs"

if want build; then
  t0=$SECONDS
  # g++ 13 on the GPU image raises -O3 stringop false positives that CI's g++ 12 does not: no -Werror here.
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMPKIT_CUDA_ARCHITECTURES=90 \
        -DAMPKIT_WARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_RPATH="$rpath" > "$OUT/build.log" 2>&1
  targets=$(cd "$B" && ninja -t targets all 2>/dev/null |
            grep -oE '^(test_gpu_[a-z_]+|dekr_amp|ampkit_dekr_step|ampkit_dekr_peer):' | tr -d ':' | sort -u)
  timeout 330 cmake --build "$B" -j "$(nproc)" --target $targets -- -k 0 >> "$OUT/build.log" 2>&1
  log "build ($(echo $targets | wc -w) targets): rc=$? in $((SECONDS - t0)) s"
  grep -E "^FAILED" "$OUT/build.log" | head -5 | tee -a "$S"
fi

if want tests; then
  t0=$SECONDS
  (cd "$B" && timeout 200 ctest -L gpu --output-on-failure --timeout 180) > "$OUT/tests.log" 2>&1
  log "gpu tests: $(grep -E 'tests passed|tests failed' "$OUT/tests.log" | tail -1) in $((SECONDS - t0)) s"
  grep -E "Test +#|images/s" "$OUT/tests.log" | tee -a "$S"
fi

if want w32; then
  t0=$SECONDS
  DEKR_PEER_BIN=$B/bench/ampkit_dekr_peer timeout 150 bash bench/torch_reference/run_compare_w32.sh > "$OUT/w32_run.log" 2>&1
  log "W32 512x512 vs PyTorch: rc=$? in $((SECONDS - t0)) s"
  grep -E "PASS|FAIL|worst" "$OUT/w32_run.log" "$OUT/compare_w32.log" 2>/dev/null | tail -20 | tee -a "$S"
fi

if want plan; then
  t0=$SECONDS
  timeout 120 "$B/bench/ampkit_dekr_step" --variants fp16:2,fp16:32,fp32:32 --steps 10 > "$OUT/plan.log" 2>&1
  log "memory plan vs measured (ampkit_dekr_step): rc=$? in $((SECONDS - t0)) s"
  grep -E "^# |plan" "$OUT/plan.log" | tail -12 | tee -a "$S"
  timeout 60 "$B/examples/dekr_amp/dekr_amp" train configs/dekr_hrnet-w32_coco-512x512.toml --amp --work-dir /tmp/oom \
    --cfg-options data.data_root=data/coco_sample/ data.train_ann_file=annotations/person_keypoints_sample.json \
    data.train_img_prefix=images/ train_cfg.val_interval=0 train_cfg.batch_size=4096 > "$OUT/oom.log" 2>&1
  log "oversized batch: rc=$? (expect 1 and one error line before step 1)"
  grep -E "error|plan|needs" "$OUT/oom.log" | tail -4 | tee -a "$S"
fi

if want data; then
  t0=$SECONDS
  # Built as bench/results/data_pipeline.md says (one g++ line; stb from .deps on the GPU image).
  stb=/usr/include/stb; [ -d .deps/include/stb ] && stb=$PWD/.deps/include/stb
  g++ -std=c++20 -O2 -DNDEBUG -Iinclude -I"$stb" -I.deps/include bench/data_pipeline.cpp -o /tmp/data_pipeline -pthread > "$OUT/data.log" 2>&1
  { timeout 60 /tmp/data_pipeline cpu 300; timeout 60 /tmp/data_pipeline train 600 16; } >> "$OUT/data.log" 2>&1
  log "data pipeline on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)): rc=$? in $((SECONDS - t0)) s"
  tee -a "$S" < "$OUT/data.log" | tail -6
fi

if want demo; then
  t0=$SECONDS
  timeout 200 "$B/examples/dekr_amp/dekr_amp" demo --device cuda --work-dir /tmp/demo > "$OUT/demo.log" 2>&1
  log "dekr_amp demo --device cuda: rc=$? in $((SECONDS - t0)) s"
  grep -iE "Precision<|coco/AP|memoris|error|png" "$OUT/demo.log" | tail -8 | tee -a "$S"
  n_norms=$(grep -oE 'grad_norm [0-9.e+-]+' "$OUT/demo.log" | sort -u | wc -l)
  n_lines=$(grep -cE 'grad_norm' "$OUT/demo.log")
  log "grad_norm: $n_norms distinct values on $n_lines log lines (the readout lagged when far fewer)"
  png=$(ls /tmp/demo/*.png 2>/dev/null | head -1); [ -n "$png" ] && cp "$png" "$OUT/demo_predictions.png"
fi
log "done"

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
#   decode    the DEKR decoder's timing case (512x640 input, flip test): images/s (issue 7)
#   ddp       tests/gpu/dist/ddp_train.sh (2 GPUs: equivalence, all-reduce count, dead rank, resume)
#   seed      tools/seed_run.sh: the users' `dist_train.sh CONFIG N --amp` (batch 2 x accumulation 4)
#             on every visible GPU, loss down on all ranks, identical weights, a killed rank and
#             the resume of the newest checkpoint (issue 11; from 2 GPUs, 4 for the issue)
#   scaling   bench/run_ddp_scaling.sh: W32 512 AMP img/s on 1 vs 2 GPUs (issue 9; graphs, overlap on)
#   precision tools/compare_precision.sh on W32 512, batch 2: the fp32/fp16/bf16 memory and speed
#             table of docs/amp_guide.md (issue 8)
#   parity    tools/plot_parity.py --device cuda on configs/demo_gpu.toml: the W32 loss curves under
#             the three policies (issue 5; the PNG is drawn afterwards where matplotlib is)
#   sanitize  tools/sanitize_gpu.sh over the GPU op tests (memcheck unless SANITIZE_TOOLS says; the
#             other SANITIZE_* variables pass through; SANITIZE_TIMEOUT caps the whole part);
#             every log in sanitize_logs.tgz
#   tgraph    dekr_amp train W32 --amp at batch 2 and 2 x 4, runtime.cuda_graph false vs true (the
#             trainer's step as CUDA graphs, issue 10): img/s and the capture log lines
#   initprobe compute-sanitizer initcheck over ampkit_dekr_step (fp16, batch 2, 256x256) with the
#             1x1 GEMMs on (default) and off (AMPKIT_CONV_GEMM=never), side by side (2026-11-30: the
#             reports stayed without the GEMMs; csprobe found the cause in cuDNN, reliability.md s. 4)
#   csprobe   tools/probes/initcheck_conv_fwd.cu under initcheck, without and with --mark: which cuDNN
#             forward algorithms' stores initcheck misses, and that ampkit's NVTX marks cover them
#   ncudeform Nsight Compute (--set full, clocks left alone) on the fused deformable conv's forward
#             and backward kernels in bench/sampling_bench (fp16, batch 32, DEKR-W32 shape): where
#             their time goes (issue 10; build with BUILD_TARGETS='sampling_bench' first)
#   sanrest   what the sixth sanitizer run (2026-12-01, reliability.md s. 4) left unfinished, as two
#             calls: racecheck on cuDNN's heuristic picks (SANITIZE_RACECHECK_ENV=
#             AMPKIT_CUDNN_BENCHMARK=0), SANREST_JOBS (8) at once over both GPUs, on the cases that
#             were cut or never started (racecheck's host memory grows ~1 GB per 15 s per models
#             run: watch host_memory.log). SANREST_SET=a: models cases 1, 3, 4, 8-10, 12, 14 (the
#             W32 512 report-only case: SANREST_W32 overrides its pattern, e.g. '^$' to leave it
#             out), train cases, the training step at 128x128; SANREST_SET=b: nn (1x1 GEMM,
#             graph-API, grouped, elementwise fp32) and
#             eval, with initcheck of nn c22/c23 and models c12 and memcheck + initcheck of the
#             grouped-conv test after its fix. SANREST_TIMEOUT caps each run (default 480 s);
#             results, classifications and the tails of failed or cut runs in sanrest.tgz;
#             SANREST_GPUS (default 0,1; 0 on a one-GPU machine)
#   sanbg     the sanitizer runs that do not fit one device call (racecheck of the models and
#             train cases left unfinished, initcheck of nn c22/c23 and models c12, optionally the
#             training step at 128x128), started in their own process session (setsid): the
#             device tool leaves such processes running between calls until the machine goes
#             back. SANBG_JOBS racecheck runs at once (default 3: racecheck's host memory grows
#             ~1 GB per 15 s per run), SANBG_TIMEOUT per run (default 1500 s), SANBG_GPUS (0),
#             SANBG_CPUS (taskset list, default all), SANBG_STEP=1 adds the training step
#             (SANBG_STEP_SIZE: its input side, default 128; heatmap a quarter of it).
#             Collect with `sancollect` in a later call on the same machine
#   sancollect what the detached runs have so far: finished results, classifications, the tails
#             of running ones, host memory; sanbg.tgz. SANCOLLECT_WAIT seconds to wait first for
#             the detached runs to end (default 0)
#   mma       the tensor-core deformable conv (DeformConvAlgo::kMma, opt-in): test_gpu_nn_sampling's
#             deform cases (CUDA vs host on every algorithm), bench/sampling_bench fp16 and bf16
#             (im2col / fused / mma rows, each one's difference from im2col at the DEKR-W32 shape),
#             and the whole step (ampkit_dekr_step fp16 b32 and b2, graph) with
#             AMPKIT_DEFORM_CONV_ALGO=fused vs mma in the same call (issue 10). Build with
#             BUILD_TARGETS='test_gpu_nn_sampling|sampling_bench|ampkit_dekr_step'
#   branch    branch streams (AMPKIT_BRANCH_STREAMS=1, every site: AMPKIT_BRANCH_SITES=31 unless
#             BRANCH_SITES says): test_gpu_train (graph vs eager, the failed-capture retry case),
#             test_gpu_models' branch-stream cases, then ampkit_dekr_step fp16 2, 2x4, 32 in graph
#             mode with branch streams off and on (img/s, skipped steps, graph_nodes, capture mode,
#             peak), and test_gpu_train once more with heuristic deterministic cuDNN
#             (AMPKIT_CUDNN_BENCHMARK=0 and the test's own options) to tell the atomics' reordering
#             from a race. Build with BUILD_TARGETS='test_gpu_(train|models)|ampkit_dekr_step'
#   ops       bench/ampkit_ops_bench and bench/torch_ops_bench.py side by side (fp16, batch 32,
#             DEKR-W32 shapes; OPS_ONLY narrows both to rows containing a substring): issue 3
# "all" is the first six (about 8 minutes); name the others. Every part needs `build` first, in
# this call or an earlier one on the same machine (GPU_BUILD keeps the build between calls).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/ampkit-gpu-out}; mkdir -p "$OUT"
source tools/gpu_env.sh   # PATH, pip cuDNN/NCCL (CUDNN_ROOT, NCCL_ROOT, rpath), .deps
B=${GPU_BUILD:-/tmp/ampkit-build}/cmake
S=$OUT/summary.txt
PARTS=${PARTS:-all}
want() {
  case $1 in build | tests | w32 | plan | data | demo) [ "$PARTS" = all ] && return 0 ;; esac
  [[ ",$PARTS," == *",$1,"* ]]
}
log() { echo "== $*" | tee -a "$S"; }
log "$(date -Is) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sort | uniq -c | tr -s ' ') $(nproc) CPUs"

if want build; then
  t0=$SECONDS
  # g++ 13 on the GPU image raises -O3 stringop false positives that CI's g++ 12 does not: no -Werror here.
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMPKIT_CUDA_ARCHITECTURES=90 \
        -DAMPKIT_WARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_RPATH="$rpath" > "$OUT/build.log" 2>&1
  targets=$(cd "$B" && ninja -t targets all 2>/dev/null |
            grep -oE "^(${BUILD_TARGETS:-test_gpu_[a-z_]+|dekr_amp|ampkit_dekr_step|ampkit_dekr_peer}):" | tr -d ':' | sort -u)
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
if want decode; then
  t0=$SECONDS
  "$B/tests/gpu/eval/test_gpu_eval" -tc="*timing*" -s > "$OUT/decode.log" 2>&1
  log "decode timing: rc=$? in $((SECONDS - t0)) s"
  grep -E "images/s" "$OUT/decode.log" | tee -a "$S"
fi

if want ddp; then
  t0=$SECONDS
  AMPKIT_BIN=$B/examples/dekr_amp/dekr_amp DDP_TEST_DIR=/tmp/ddp DDP_ADAM=${DDP_ADAM:-0} \
    timeout ${DDP_TIMEOUT:-240} bash tests/gpu/dist/ddp_train.sh > "$OUT/ddp.log" 2>&1
  log "ddp_train.sh: rc=$? in $((SECONDS - t0)) s"
  grep -E "PASS|FAIL|SKIP|ratio|verdict" "$OUT/ddp.log" | tee -a "$S"
fi

if want seed; then
  t0=$SECONDS
  AMPKIT_BIN=$B/examples/dekr_amp/dekr_amp OUT=/tmp/seed timeout ${SEED_TIMEOUT:-420} bash tools/seed_run.sh > "$OUT/seed.log" 2>&1
  log "seed_run.sh: rc=$? in $((SECONDS - t0)) s"
  grep -E "PASS|FAIL|seed_run.sh:|rank [0-9]+ of|peak per GPU" "$OUT/seed.log" | tee -a "$S"
fi

if want scaling; then
  t0=$SECONDS
  # The default configuration (graphs, overlap on), 480 iterations: ~140 s for both variants on
  # 2 H200s (2026-11-30 19:14). MODES / OVERLAPS / ITERS override (bench/run_ddp_scaling.sh).
  AMPKIT_BIN=$B/examples/dekr_amp/dekr_amp MODES=${MODES:-graph} OVERLAPS=${OVERLAPS:-1} ITERS=${ITERS:-480} \
    timeout ${SCALING_TIMEOUT:-330} bash bench/run_ddp_scaling.sh > "$OUT/scaling.log" 2>&1
  log "ddp scaling: rc=$? in $((SECONDS - t0)) s"
  tee -a "$S" < "$OUT/scaling.log" | tail -12
fi

if want precision; then
  t0=$SECONDS
  AMPKIT_BIN=$B/examples/dekr_amp/dekr_amp WORK_ROOT=/tmp/compare_precision OUT=$OUT/compare_precision.md \
    ITERS=${PRECISION_ITERS:-60} timeout ${PRECISION_TIMEOUT:-200} bash tools/compare_precision.sh \
    configs/dekr_hrnet-w32_coco-512x512.toml 1 --cfg-options data.data_root=data/coco_sample/ \
    data.train_ann_file=annotations/person_keypoints_sample.json data.train_img_prefix=images/ \
    train_cfg.batch_size=2 default_hooks.logger.tensorboard=false runtime.device=cuda > "$OUT/precision.log" 2>&1
  log "compare_precision (W32 512, batch 2): rc=$? in $((SECONDS - t0)) s"
  tee -a "$S" < "$OUT/precision.log" | tail -10
fi

if want parity; then
  t0=$SECONDS
  rm -rf /tmp/parity_w32
  # An exported tree (.clean, docs/development.md) names its commit in .source_commit.
  export AMPKIT_SOURCE_COMMIT=${AMPKIT_SOURCE_COMMIT:-$(cat .source_commit 2>/dev/null || git rev-parse HEAD 2>/dev/null)}
  PYTHONUNBUFFERED=1 timeout ${PARITY_TIMEOUT:-240} python3 tools/plot_parity.py --run --device cuda \
    --binary "$B/examples/dekr_amp/dekr_amp" --config configs/demo_gpu.toml --iters ${PARITY_ITERS:-300} \
    --work-root /tmp/parity_w32 --out-json "$OUT/parity_h200_w32.json" --out-png "$OUT/parity_h200_w32.png" \
    --no-plot > "$OUT/parity.log" 2>&1
  log "parity W32 (plot_parity.py --device cuda): rc=$? in $((SECONDS - t0)) s"
  grep -E "PASS|FAIL|wrote|error" "$OUT/parity.log" | tee -a "$S"
  # the work dirs, for drawing the PNG where matplotlib is
  tar czf "$OUT/parity_runs.tgz" -C /tmp parity_w32 2>/dev/null
fi

if want csprobe; then
  t0=$SECONDS
  nvcc -O2 -arch=sm_90 -std=c++20 -Iinclude ${CUDNN_ROOT:+-I$CUDNN_ROOT/include} tools/probes/initcheck_conv_fwd.cu \
    ${CUDNN_ROOT:+-L$CUDNN_ROOT/lib -Xlinker -rpath=$CUDNN_ROOT/lib} -l:libcudnn.so.9 -o /tmp/initcheck_conv_fwd \
    > "$OUT/csprobe_build.log" 2>&1
  for m in plain mark; do
    arg=; [ $m = mark ] && arg=--mark
    timeout 150 compute-sanitizer --tool initcheck --print-limit 100000 /tmp/initcheck_conv_fwd $arg \
      > "$OUT/csprobe_$m.log" 2>&1
    echo "initcheck probe ($m): $(grep -c 'Uninitialized access' "$OUT/csprobe_$m.log") reports," \
         "$(tail -2 "$OUT/csprobe_$m.log" | head -1)" | tee -a "$S"
    # whose bytes the reports touched (the probe prints its ranges as ampkit-trace lines)
    python3 tools/sanitizer_report.py "$OUT/csprobe_$m.log" 2>&1 | head -14 | tee -a "$S"
  done
  log "cuDNN forward initcheck probe: in $((SECONDS - t0)) s"
fi

if want ncudeform; then
  t0=$SECONDS
  sb=$(find "$B/bench" -type f -name sampling_bench -executable | head -1)
  # The second launch of each kernel (-s 1 skips the warm-up one), one ncu run per kernel since
  # every forward launch comes before the first backward one; --clock-control none: the GPU's
  # clocks are not ours to pin (METHOD.md).
  for k in forward backward; do
    timeout 200 ncu --clock-control none --set full -k "regex:deform_fused_${k}_kernel" -s 1 -c 1 \
      -o "$OUT/ncu_deform_$k" -f "$sb" --batch 32 --iters 3 > "$OUT/ncu_deform_${k}_run.log" 2>&1
    echo "ncu deform_fused_${k}_kernel: rc=$?" | tee -a "$S"
    ncu --import "$OUT/ncu_deform_$k.ncu-rep" --page details --print-units base > "$OUT/ncu_deform_$k.txt" 2>&1
    grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|L1/TEX Hit|L2 Hit|Registers Per|Warp Cycles Per Issued" \
      "$OUT/ncu_deform_$k.txt" | head -12 | tee -a "$S"
  done
  log "ncu on the fused deformable conv kernels: in $((SECONDS - t0)) s"
fi

if want initprobe; then
  t0=$SECONDS
  for g in auto never; do
    AMPKIT_CONV_GEMM=$g timeout ${INITPROBE_TIMEOUT:-250} compute-sanitizer --tool initcheck --print-limit 20 \
      "$B/bench/ampkit_dekr_step" --variants fp16:2 --size 256 --steps 20 --warmup 3 > "$OUT/initprobe_gemm_$g.log" 2>&1 &
  done
  wait
  log "initcheck probe (ampkit_dekr_step fp16:2 256x256, AMPKIT_CONV_GEMM=auto vs never): in $((SECONDS - t0)) s"
  for g in auto never; do
    echo "AMPKIT_CONV_GEMM=$g: $(grep -oE 'ERROR SUMMARY: [0-9]+ errors?' "$OUT/initprobe_gemm_$g.log" | tail -1)" | tee -a "$S"
    grep -A1 "Uninitialized" "$OUT/initprobe_gemm_$g.log" | grep -oE "at [^(]+" | sort | uniq -c | head -5 | tee -a "$S"
  done
fi

if want sanitize; then
  t0=$SECONDS
  SANITIZE_TOOLS=${SANITIZE_TOOLS:-memcheck} SANITIZE_OUT=/tmp/sanitize timeout ${SANITIZE_TIMEOUT:-300} \
    bash tools/sanitize_gpu.sh "$B" > "$OUT/sanitize.log" 2>&1
  log "compute-sanitizer (${SANITIZE_TOOLS:-memcheck}; filter ${SANITIZE_FILTER:-all}): rc=$? in $((SECONDS - t0)) s"
  grep -vE '^sanitize_gpu: ' "$OUT/sanitize.log" | tail -40 | tee -a "$S"
  # Every run's log in one archive: the device tool returns a limited number of files, and
  # per-case logs are many (SANITIZE_SPLIT). Checkpoints of the training run stay behind.
  tar czf "$OUT/sanitize_logs.tgz" --exclude='*.safetensors' -C /tmp sanitize 2>/dev/null
fi
if want sanrest; then
  t0=$SECONDS
  rt=${SANREST_TIMEOUT:-480}
  rm -rf /tmp/sanrest
  common=(SANITIZE_CLASSIFY=1 SANITIZE_RUN_TIMEOUT=$rt SANITIZE_TRAIN=0 "SANITIZE_SPLIT=test_gpu_(models|nn|train)\$"
          SANITIZE_JOBS=${SANREST_JOBS:-8} SANITIZE_GPUS=${SANREST_GPUS:-0,1})
  # racecheck on cuDNN's heuristic picks (the same ampkit kernels, no library candidates timed)
  rc=(SANITIZE_TOOLS=racecheck SANITIZE_RACECHECK_ENV=AMPKIT_CUDNN_BENCHMARK=0 SANITIZE_OUT=/tmp/sanrest/rc)
  if [ "${SANREST_SET:-a}" = a ]; then
    # models and train cases cut or never started, and the training step at 128x128
    env "${common[@]}" "${rc[@]}" "SANITIZE_FILTER=test_gpu_(models|train)\$" \
      "SANITIZE_CASES=CUDA vs host.*fp16|as one CUDA graph|on vs off on CUDA .one step.*fp16|W32 head widths: recompute_bn|W32 head widths: recompute_conv.*fp16|${SANREST_W32:-W32 512x512 batch 2: one training step.*fp16}|HRNet tiny .no deformable conv.: recompute_bn.*fp16|trainer graph mode|run_training" \
      timeout $((rt + 30)) bash tools/sanitize_gpu.sh "$B" > /tmp/sanrest_rc.log 2>&1 &
    env SANITIZE_CLASSIFY=1 SANITIZE_RUN_TIMEOUT=$rt SANITIZE_FILTER='^$' SANITIZE_TOOLS=racecheck SANITIZE_GPUS=${SANREST_GPUS##*,} \
      SANITIZE_OUT=/tmp/sanrest/step SANITIZE_TRAIN_ARGS="train configs/demo_gpu.toml --amp --device cuda --work-dir /tmp/sanrest/step/run_@TOOL@ --cfg-options train_cfg.max_epochs=1 train_cfg.batch_size=2 train_cfg.num_workers=1 train_cfg.val_interval=0 codec.input_size=[128,128] codec.heatmap_size=[32,32] runtime.cudnn_benchmark=false" \
      timeout $((rt + 30)) bash tools/sanitize_gpu.sh "$B" > /tmp/sanrest_step.log 2>&1 &
  else
    # nn cases cut or never started, eval; initcheck left unfinished; the grouped-conv test after its fix
    env "${common[@]}" "${rc[@]}" "SANITIZE_FILTER=test_gpu_(nn|eval)\$" \
      "SANITIZE_CASES=1x1 as cuBLASLt|graph-API engines|grouped direct|relu / add.*<float>" \
      timeout $((rt + 30)) bash tools/sanitize_gpu.sh "$B" > /tmp/sanrest_rc.log 2>&1 &
    env "${common[@]}" "SANITIZE_TOOLS=memcheck initcheck" SANITIZE_JOBS=4 SANITIZE_OUT=/tmp/sanrest/mi \
      "SANITIZE_FILTER=test_gpu_(models|nn)\$" "SANITIZE_CASES=graph-API engines|W32 512x512 batch 2: one training step.*fp16|grouped direct" \
      timeout $((rt + 30)) bash tools/sanitize_gpu.sh "$B" > /tmp/sanrest_mi.log 2>&1 &
  fi
  wait
  log "sanitizer, the sixth run's remainder (set ${SANREST_SET:-a}): in $((SECONDS - t0)) s"
  sort -V /tmp/sanrest/*/results.txt | awk '{print $1, $2, $3, $4, $(NF-1), $NF}' | tee -a "$S"
  for f in $(grep -hE ' (FAILED|TIMEOUT) rc=' /tmp/sanrest/*/results.txt | awk '{print $(NF-2)}'); do tail -c 30000 "$f" > "$f.tail"; done
  (cd /tmp/sanrest && tar czf "$OUT/sanrest.tgz" --exclude='*.safetensors' */results.txt */*.classified */*.tail */host_memory.log 2>/dev/null)
fi
if want sanbg; then
  rm -rf /tmp/sanbg; mkdir -p /tmp/sanbg
  bg=(SANITIZE_CLASSIFY=1 SANITIZE_RUN_TIMEOUT=${SANBG_TIMEOUT:-1500} SANITIZE_TRAIN=0 "SANITIZE_SPLIT=test_gpu_(models|nn|train)\$"
      SANITIZE_GPUS=${SANBG_GPUS:-0})
  cpus=${SANBG_CPUS:-0-$(($(nproc) - 1))}
  # The sixth and seventh runs' unfinished racecheck cases (models c3, c4, c8-c10, c12-c14; train c1, c2)
  env "${bg[@]}" SANITIZE_JOBS=${SANBG_JOBS:-3} SANITIZE_TOOLS=racecheck SANITIZE_RACECHECK_ENV=AMPKIT_CUDNN_BENCHMARK=0 \
    SANITIZE_OUT=/tmp/sanbg/rc "SANITIZE_FILTER=test_gpu_(models|train)\$" \
    "SANITIZE_CASES=CUDA vs host.*fp16|as one CUDA graph|on vs off on CUDA .one step.*fp16|W32 head widths: recompute_bn|W32 head widths: recompute_conv.*fp16|W32 512x512 batch 2: one training step|HRNet tiny .no deformable conv.: recompute_bn.*fp16|trainer graph mode|run_training" \
    setsid nohup taskset -c "$cpus" bash tools/sanitize_gpu.sh "$B" > /tmp/sanbg/rc.log 2>&1 < /dev/null &
  # initcheck left unfinished: the graph-API engine cases and the W32 512 step (report only)
  env "${bg[@]}" SANITIZE_JOBS=3 SANITIZE_TOOLS=initcheck SANITIZE_OUT=/tmp/sanbg/ic "SANITIZE_FILTER=test_gpu_(models|nn)\$" \
    "SANITIZE_CASES=graph-API engines|W32 512x512 batch 2: one training step.*fp16" \
    setsid nohup taskset -c "$cpus" bash tools/sanitize_gpu.sh "$B" > /tmp/sanbg/ic.log 2>&1 < /dev/null &
  if [ "${SANBG_STEP:-0}" = 1 ]; then
    sz=${SANBG_STEP_SIZE:-128}
    env SANITIZE_CLASSIFY=1 SANITIZE_RUN_TIMEOUT=${SANBG_TIMEOUT:-1500} SANITIZE_FILTER='^$' SANITIZE_TOOLS=racecheck \
      SANITIZE_RACECHECK_ENV=AMPKIT_CUDNN_BENCHMARK=0 SANITIZE_GPUS=${SANBG_GPUS:-0} SANITIZE_OUT=/tmp/sanbg/step \
      SANITIZE_TRAIN_ARGS="train configs/demo_gpu.toml --amp --device cuda --work-dir /tmp/sanbg/step/run_@TOOL@ --cfg-options train_cfg.max_epochs=1 train_cfg.batch_size=2 train_cfg.num_workers=1 train_cfg.val_interval=0 codec.input_size=[$sz,$sz] codec.heatmap_size=[$((sz / 4)),$((sz / 4))] runtime.cudnn_benchmark=false" \
      setsid nohup taskset -c "$cpus" bash tools/sanitize_gpu.sh "$B" > /tmp/sanbg/step.log 2>&1 < /dev/null &
  fi
  sleep 5
  log "sanitizer runs started detached (racecheck ${SANBG_JOBS:-3} at once, initcheck 3, step ${SANBG_STEP:-0}): $(pgrep -fc compute-sanitizer) tool processes"
fi
if want sancollect; then
  w=${SANCOLLECT_WAIT:-0}
  while ((w > 0)) && pgrep -f 'tools/sanitize_gpu.sh' > /dev/null; do sleep 10; w=$((w - 10)); done
  running=$(pgrep -f 'tools/sanitize_gpu.sh' > /dev/null && echo yes || echo no)
  log "detached sanitizer runs: still running: $running; $(pgrep -fc compute-sanitizer) tool processes"
  sort -V /tmp/sanbg/*/results.txt 2>/dev/null | awk '{print $1, $2, $3, $4, $(NF-1), $NF}' | tee -a "$S"
  for d in /tmp/sanbg/*/; do tail -n 2 "$d/host_memory.log" 2>/dev/null | cut -c1-200; done | tee -a "$S"
  # Runs without a result line yet: the tail of their log (in progress or killed).
  for f in /tmp/sanbg/*/*.log; do
    case $f in */host_memory.log) continue ;; esac
    grep -qF "$f" /tmp/sanbg/*/results.txt 2>/dev/null || tail -c 20000 "$f" > "$f.tail"
  done
  for f in $(grep -hE ' (FAILED|TIMEOUT) rc=' /tmp/sanbg/*/results.txt 2>/dev/null | awk '{print $(NF-2)}'); do tail -c 20000 "$f" > "$f.tail"; done
  (cd /tmp/sanbg && tar czf "$OUT/sanbg.tgz" --exclude='*.safetensors' *.log */results.txt */*.classified */*.tail */host_memory.log 2>/dev/null)
fi
if want mma; then
  t0=$SECONDS
  timeout 150 "$B/tests/gpu/nn_sampling/test_gpu_nn_sampling" '-tc=deform*' > "$OUT/mma_tests.log" 2>&1
  log "deform_conv2d tests (im2col, fused, mma vs host): rc=$? $(grep -E 'test cases:' "$OUT/mma_tests.log")"
  grep -E "ERROR|FAILED|mma \(tensor" "$OUT/mma_tests.log" | head -12 | tee -a "$S"
  sb=$(find "$B/bench" -type f -name sampling_bench -executable | head -1)
  for dt in fp16 bf16; do
    timeout 120 "$sb" --dtype $dt --batch 32 --iters 20 > "$OUT/mma_sampling_$dt.json" 2> "$OUT/mma_sampling_$dt.log"
    echo "sampling_bench $dt: rc=$?" | tee -a "$S"
    python3 - "$OUT/mma_sampling_$dt.json" <<'PY' 2>&1 | tee -a "$S"
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in d.items():
    if isinstance(v, dict):
        for r, x in v.items():
            if "deform" in r: print(f"  {r:40s} {x}")
PY
  done
  for a in fused mma; do
    AMPKIT_DEFORM_CONV_ALGO=$a timeout 150 "$B/bench/ampkit_dekr_step" --variants fp16:32,fp16:2 --graph --steps 20 \
      > "$OUT/mma_step_$a.json" 2> "$OUT/mma_step_$a.log"
    echo "dekr step, deform conv $a: rc=$?" | tee -a "$S"
    grep -E "^# +fp16" "$OUT/mma_step_$a.log" | tee -a "$S"
  done
  log "tensor-core deformable conv: in $((SECONDS - t0)) s"
fi
if want branch; then
  t0=$SECONDS
  sites=${BRANCH_SITES:-31}
  AMPKIT_BRANCH_STREAMS=1 AMPKIT_BRANCH_SITES=$sites timeout 90 "$B/tests/gpu/train/test_gpu_train" > "$OUT/branch_train.log" 2>&1
  log "test_gpu_train, branch streams on (sites $sites): rc=$? $(grep -E 'test cases:' "$OUT/branch_train.log")"
  grep -E "ERROR|^losses:|e2e losses|^masters|captured the" "$OUT/branch_train.log" | cut -c1-160 | head -16 | tee -a "$S"
  AMPKIT_BRANCH_SITES=$sites timeout 120 "$B/tests/gpu/models/test_gpu_models" '-tc=*branch streams*' > "$OUT/branch_models.log" 2>&1
  log "test_gpu_models branch-stream cases: rc=$? $(grep -E 'test cases:' "$OUT/branch_models.log")"
  for bs in 0 1; do
    AMPKIT_BRANCH_STREAMS=$bs AMPKIT_BRANCH_SITES=$sites timeout 150 "$B/bench/ampkit_dekr_step" \
      --variants fp16:2,fp16:2x4,fp16:32 --graph --steps 20 > "$OUT/branch_step_$bs.json" 2> "$OUT/branch_step_$bs.log"
    log "ampkit_dekr_step, AMPKIT_BRANCH_STREAMS=$bs: rc=$?"
    grep -E "^# +fp16_graph|graph: " "$OUT/branch_step_$bs.log" | cut -c1-220 | tee -a "$S"
    grep -oE '"graph_nodes":[0-9]+,"capture_mode":"[a-z]+"' "$OUT/branch_step_$bs.json" | tee -a "$S"
  done
  AMPKIT_CUDNN_BENCHMARK=0 AMPKIT_BRANCH_STREAMS=1 AMPKIT_BRANCH_SITES=$sites timeout 90 \
    "$B/tests/gpu/train/test_gpu_train" > "$OUT/branch_train_heuristic.log" 2>&1
  log "test_gpu_train, branch streams on, heuristic cuDNN: rc=$? $(grep -E 'test cases:' "$OUT/branch_train_heuristic.log")"
  grep -E "^losses:|e2e losses|^masters" "$OUT/branch_train_heuristic.log" | cut -c1-160 | tee -a "$S"
  log "branch streams: in $((SECONDS - t0)) s"
fi

if want ops; then
  t0=$SECONDS
  only=()
  [ -n "${OPS_ONLY:-}" ] && only=(--only "$OPS_ONLY")
  alib=; [ -d "$SP/nvidia/cudnn/lib" ] && alib=$SP/nvidia/cudnn/lib:$SP/nvidia/cu13/lib:
  LD_LIBRARY_PATH="$alib${LD_LIBRARY_PATH:-}" timeout 150 "$B/bench/ampkit_ops_bench" --dtype fp16 --batch 32 --iters 20 \
    "${only[@]}" > "$OUT/ampkit_ops.json" 2> "$OUT/ops.log"
  timeout 200 python3 bench/torch_ops_bench.py --dtype fp16 --batch 32 --iters 20 "${only[@]}" \
    --ampkit-json "$OUT/ampkit_ops.json" --out "$OUT/ops_vs_torch.json" >> "$OUT/ops.log" 2>&1
  log "ops vs PyTorch (fp16, batch 32${OPS_ONLY:+, only $OPS_ONLY}): rc=$? in $((SECONDS - t0)) s"
  python3 - "$OUT/ops_vs_torch.json" <<'PY' 2>&1 | tee -a "$S"
import json, sys
d = json.load(open(sys.argv[1]))
for r in d.get("comparison", []):
    print(f"{r['op'][:44]:44s} fwd {r.get('speedup_fwd', 0):5.2f}x  fwd+bwd {r.get('speedup_fwd_bwd', 0):5.2f}x")
PY
fi
if want tgraph; then
  t0=$SECONDS
  for g in false true; do
    WORK=/tmp/tgraph_$g OUT=$OUT/tgraph_$g ITERS=${TG_ITERS:-100} LOG_INTERVAL=10 REPEAT=100 VARIANTS="${TG_VARIANTS:-2x1 2x4}" \
      OVERLAPS="" EXTRA_CFG="runtime.cuda_graph=$g" AMPKIT_BIN=$B/examples/dekr_amp/dekr_amp \
      timeout ${TG_TIMEOUT:-100} bash bench/run_ddp_scaling.sh > "$OUT/tgraph_$g.log" 2>&1
  done
  log "trainer graph mode (dekr_amp W32 --amp, runtime.cuda_graph false/true): in $((SECONDS - t0)) s"
  python3 - <<'PY' 2>&1 | tee -a "$S"
import json, os, statistics
for v in ("2x1", "2x4"):
    row = []
    for g in ("false", "true"):
        p = f"/tmp/tgraph_{g}/b{v}_1gpu/scalars.jsonl"
        recs = [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
        recs = [r for r in recs if r.get("mode") == "train" and "img_per_s" in r]
        steady = [r["img_per_s"] for r in recs[2:]] or [r["img_per_s"] for r in recs]
        mem = max((r.get("memory_mib", 0) for r in recs), default=0)
        row.append(f"cuda_graph={g}: {statistics.median(steady):.1f} img/s, {mem:.0f} MiB" if steady else f"cuda_graph={g}: no data")
    print(f"batch {v}: " + "; ".join(row))
PY
  grep -hiE "cuda graph|graph mode" "$OUT"/tgraph_true/*.log 2>/dev/null | sort | uniq -c | head -8 | tee -a "$S"
fi
log "done"

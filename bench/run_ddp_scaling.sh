#!/usr/bin/env bash
# Data-parallel scaling of DEKR-W32 512x512 AMP training (issues 9 and 11): the real dekr_amp,
# 1 process on 1 GPU against N processes on N GPUs (tools/dist_train.sh; N from GPU_COUNTS, 2 by
# default), for batch 10 per GPU and for batch 2 per GPU with accumulation 4 (the users'
# memory-starved configuration). Scaling = img/s on N GPUs / img/s on 1 GPU (target >= 0.95 N:
# 1.9 on 2, 3.8 on 4).
#
#   AMPKIT_BIN=build/examples/dekr_amp/dekr_amp bash bench/run_ddp_scaling.sh
#
# What is timed: whole training iterations (data loading on worker threads, H2D copy, forward,
# loss, backward, the bucketed fp32 gradient all-reduce, the optimizer), as the trainer logs them:
# img/s = images of all ranks per second of wall time, logged every LOG_INTERVAL iterations; the
# number reported is the median of the logged intervals after the first two (cuDNN algorithm
# timing, allocator growth and the first batches fall into those). Data: the 4 bundled COCO images
# listed REPEAT times under new image ids (so an epoch has enough batches; decoding and
# augmentation run for every sample as for real data, with the config's random augmentation).
# The defaults come from the first runs (bench/results/gpu_h200x2_20261130_0533.md): 40 and 120
# iterations on 400 images gave ratios that disagreed by up to 1.8x between two calls, and a
# 2-GPU epoch of 20 iterations puts an epoch end (loader restart, BN statistics all-reduce) into
# every other logged interval.
# Environment: ITERS (iterations per run, default 300), LOG_INTERVAL (20), REPEAT (1000), WORKERS
# (loader threads per process, 6), VARIANTS ("10x1 2x4": batch x accumulation), OVERLAPS ("1 0":
# the 2-GPU run with the gradient all-reduce overlapped with backward, AMPKIT_DDP_OVERLAP=1, and
# without, =0, in the same session; the table's scaling column is the first), WORK (scratch dir),
# OUT (where ddp_scaling.md and the logs go), EXTRA_CFG (more k=v config overrides for every run,
# e.g. amp.init_scale=1024; with OVERLAPS="" only the 1-GPU runs happen), MODES ("graph eager":
# the step as replayed CUDA graphs, runtime.cuda_graph=true, the default of the config and of
# dekr_amp, with the all-reduce inside the graph under data parallelism; and every iteration
# eagerly, runtime.cuda_graph=false; each mode's scaling is against the 1-GPU run of the same mode),
# GPU_COUNTS ("2": the data-parallel world sizes to run, e.g. "2 4" on a 4-GPU machine for issue
# 11; each against the same 1-GPU run, target >= 0.95 x N).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${AMPKIT_BIN:-build/examples/dekr_amp/dekr_amp}
[ -x "$BIN" ] || { echo "run_ddp_scaling.sh: $BIN not built (set AMPKIT_BIN)"; exit 2; }
OUT=${OUT:-/tmp/ampkit-ddp-scaling}
WORK=${WORK:-/tmp/ampkit_ddp_scaling}
ITERS=${ITERS:-300}
LOG_INTERVAL=${LOG_INTERVAL:-20}
REPEAT=${REPEAT:-1000}
WORKERS=${WORKERS:-6}
VARIANTS=${VARIANTS:-10x1 2x4}
OVERLAPS=${OVERLAPS-1 0}
MODES=${MODES:-graph eager}
GPU_COUNTS=${GPU_COUNTS:-2}
NEED=2
for g in $GPU_COUNTS; do
  [[ $g =~ ^[0-9]+$ ]] && [ "$g" -ge 2 ] || { echo "run_ddp_scaling.sh: GPU_COUNTS='$GPU_COUNTS': each entry is a world size >= 2"; exit 2; }
  [ "$g" -gt "$NEED" ] && NEED=$g
done
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
[ "${NGPU:-0}" -ge "$NEED" ] || { echo "run_ddp_scaling.sh: skipped: needs $NEED GPUs, ${NGPU:-0} visible"; exit 77; }
mkdir -p "$OUT" "$WORK/data"
export NCCL_NVLS_ENABLE=0

# The dataset: data/coco_sample's images, each listed REPEAT times.
python3 tools/repeat_coco.py data/coco_sample/annotations/person_keypoints_sample.json "$WORK/data/ann.json" "$REPEAT" ||
  exit 2
ln -sfn "$PWD/data/coco_sample/images" "$WORK/data/images"

run() {  # run NAME GPUS BATCH ACCUM OVERLAP MODE
  local name=$1 g=$2 b=$3 a=$4 ov=$5 mode=$6 wd=$WORK/$1
  local graph=false
  [ "$mode" = graph ] && graph=true
  rm -rf "$wd"
  local opts=(--amp --work-dir "$wd" --cfg-options "train_cfg.batch_size=$b" "optim_wrapper.accumulative_counts=$a"
              "train_cfg.max_iters=$ITERS" train_cfg.val_interval=0 "default_hooks.logger.interval=$LOG_INTERVAL"
              default_hooks.logger.tensorboard=false default_hooks.checkpoint.interval=100000
              "train_cfg.num_workers=$WORKERS" "data.data_root=$WORK/data/" data.train_ann_file=ann.json
              data.train_img_prefix=images/ runtime.device=cuda "runtime.cuda_graph=$graph")
  # shellcheck disable=SC2206
  opts+=(${EXTRA_CFG:-})
  local t0=$SECONDS
  if [ "$g" -eq 1 ]; then
    env -u RANK -u WORLD_SIZE -u LOCAL_RANK CUDA_VISIBLE_DEVICES=0 "$BIN" train configs/dekr_hrnet-w32_coco-512x512.toml \
      "${opts[@]}" > "$OUT/$name.log" 2>&1
  else
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((g - 1))) AMPKIT_BIN=$BIN PORT=$((29700 + RANDOM % 200)) AMPKIT_DDP_OVERLAP=$ov \
      tools/dist_train.sh configs/dekr_hrnet-w32_coco-512x512.toml "$g" "${opts[@]}" > "$OUT/$name.log" 2>&1
  fi
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || tail -5 "$OUT/$name.log"
}

for v in $VARIANTS; do
  b=${v%x*} a=${v#*x}
  for mode in $MODES; do
    run "b${b}x${a}_${mode}_1gpu" 1 "$b" "$a" 1 "$mode"
    for g in $GPU_COUNTS; do
      for ov in $OVERLAPS; do
        if [ "$ov" = 1 ]; then n="b${b}x${a}_${mode}_${g}gpu"; else n="b${b}x${a}_${mode}_${g}gpu_overlap$ov"; fi
        run "$n" "$g" "$b" "$a" "$ov" "$mode"
      done
    done
  done
done
grep -h 'cuda graph' "$OUT"/*.log 2>/dev/null | sed 's/^.*cuda graph/cuda graph/' | sort | uniq -c | head -20

python3 - "$WORK" "$OUT/ddp_scaling.md" "$ITERS" "$LOG_INTERVAL" "$REPEAT" "$WORKERS" "$VARIANTS" "$OVERLAPS" "$MODES" "$GPU_COUNTS" <<'EOF'
import json, os, statistics, subprocess, sys, datetime
work, out, iters, interval, repeat, workers, variants, overlaps, modes, counts = sys.argv[1:11]
def speed(name):
    path = os.path.join(work, name, "scalars.jsonl")
    if not os.path.exists(path):
        return None, None
    recs = [json.loads(l) for l in open(path) if l.strip()]
    recs = [r for r in recs if r.get("mode") == "train" and "img_per_s" in r]
    steady = [r["img_per_s"] for r in recs[2:]] or [r["img_per_s"] for r in recs]
    mem = max((r.get("memory_mib", 0) for r in recs), default=0)
    return (statistics.median(steady) if steady else None), mem
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip().splitlines()
lines = [f"# DEKR-W32 512x512 AMP (fp16, fp32 master) training: 1 GPU vs {' / '.join(counts.split())} GPUs (dekr_amp, NCCL)", "",
         f"Date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; GPUs: {'; '.join(gpu)}.",
         f"Command: `ITERS={iters} LOG_INTERVAL={interval} REPEAT={repeat} WORKERS={workers} "
         f"VARIANTS=\"{variants}\" OVERLAPS=\"{overlaps}\" MODES=\"{modes}\" GPU_COUNTS=\"{counts}\" bash bench/run_ddp_scaling.sh` "
         "(img/s of all ranks, median of the logged intervals after the first two).", "",
         "| batch per GPU x accumulation | step | GPUs | 1 GPU img/s | N GPUs img/s | scaling | efficiency | peak MiB per GPU (1 / N GPUs) |",
         "|---|---|---|---|---|---|---|---|"]
for v in variants.split():
    for mode in modes.split():
        step = "CUDA graph" if mode == "graph" else "eager"
        s1, m1 = speed(f"b{v}_{mode}_1gpu")
        for g in counts.split():
            n = int(g)
            for ov in overlaps.split() or ["-"]:
                name = f"b{v}_{mode}_{g}gpu" if ov == "1" else f"b{v}_{mode}_{g}gpu_overlap{ov}"
                label = f"{v} (AMPKIT_DDP_OVERLAP={ov})"
                s2, m2 = speed(name) if ov != "-" else (None, None)
                if s1 and s2:
                    lines.append(f"| {label} | {step} | {n} | {s1:.1f} | {s2:.1f} | {s2 / s1:.2f}x | {100 * s2 / (n * s1):.0f} % | {m1:.0f} / {m2:.0f} |")
                else:
                    lines.append(f"| {label} | {step} | {n} | {s1 or 'failed'} | {s2 or ('failed' if ov != '-' else '-')} | - | - | - |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
EOF

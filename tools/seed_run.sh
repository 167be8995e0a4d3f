#!/usr/bin/env bash
# The users' multi-GPU run, self-checking (issue 11): `tools/dist_train.sh
# configs/dekr_hrnet-w32_coco-512x512.toml N --amp` with batch 2 per GPU and
# accumulative_counts=4, on a COCO-format set made from the bundled sample, then one rank killed
# mid-run. N is every visible GPU (4 for issue 11; it runs from 2 on, so the script itself can be
# proven on a 2-GPU machine first). One PASS/FAIL line per check; exit 0 only if every check
# passed, 77 when fewer than 2 GPUs are visible. Scaling (img/s on 1, 2, 4 GPUs) is
# bench/run_ddp_scaling.sh with GPU_COUNTS="2 4".
#
#   AMPKIT_BIN=build/examples/dekr_amp/dekr_amp bash tools/seed_run.sh
#
# Checks:
#   1. ITERS iterations (default 300) train on all N ranks: every rank's logged loss at the last
#      log point is below the one at the first (the rank line "loss A -> B"), and the weights are
#      identical on all ranks at the end (the rank line's checksum, one per rank). Peak memory per
#      GPU (the trainer's `mem`, the caching allocator's peak) is printed.
#   2. kill -9 the last rank after the first iteration checkpoint: every other rank ends within
#      TIMEOUT_S (AMPKIT_DIST_TIMEOUT) + 25 s with a non-zero status and a message naming the
#      collective that did not complete; no temporary checkpoint file is left; the newest
#      checkpoint (the work dir's `latest`) resumes on one GPU and trains 4 more iterations.
# Environment: ITERS (300), REPEAT (250: the 4 sample images listed 250 times = 1000 images),
# WORKERS (loader threads per process, 6), TIMEOUT_S (60; the first iterations time cuDNN
# algorithms and capture graphs, slower on a busy host: 30 s was hit there on 2026-12-01), OUT (work dirs and logs), NGPU
# (world size; default every visible GPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
BIN=${AMPKIT_BIN:-build/examples/dekr_amp/dekr_amp}
[ -x "$BIN" ] || { echo "seed_run.sh: $BIN not built (cmake --build build --target dekr_amp, or set AMPKIT_BIN)"; exit 2; }
export AMPKIT_BIN=$BIN
VISIBLE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
N=${NGPU:-${VISIBLE:-0}}
if [ "${VISIBLE:-0}" -lt 2 ] || [ "$N" -lt 2 ] || [ "$N" -gt "${VISIBLE:-0}" ]; then
  echo "seed_run.sh: skipped: needs 2 or more GPUs (world size $N, ${VISIBLE:-0} visible)"; exit 77
fi
ITERS=${ITERS:-300}
REPEAT=${REPEAT:-250}
WORKERS=${WORKERS:-6}
TIMEOUT_S=${TIMEOUT_S:-60}
OUT=${OUT:-$(mktemp -d /tmp/ampkit_seed.XXXXXX)}
CFG=configs/dekr_hrnet-w32_coco-512x512.toml
mkdir -p "$OUT/data"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((N - 1)))}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
FAILS=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
echo "seed_run.sh: $N GPUs, binary $BIN, outputs in $OUT"

# A larger COCO-format set from the sample: every image listed REPEAT times under new ids (decoding
# and the config's random augmentation run for every sample, as for real data).
python3 tools/repeat_coco.py data/coco_sample/annotations/person_keypoints_sample.json "$OUT/data/ann.json" "$REPEAT" ||
  exit 2
ln -sfn "$PWD/data/coco_sample/images" "$OUT/data/images"

OPTS=(--cfg-options train_cfg.batch_size=2 optim_wrapper.accumulative_counts=4 train_cfg.val_interval=0
      default_hooks.logger.interval=20 default_hooks.logger.tensorboard=false "train_cfg.num_workers=$WORKERS"
      "data.data_root=$OUT/data/" data.train_ann_file=ann.json data.train_img_prefix=images/ runtime.device=cuda)
rank_lines() { grep -E '^dekr_amp: rank [0-9]+ of [0-9]+:' "$1"; }

# ---- 1: the run --------------------------------------------------------------------------------
A=$OUT/run
t0=$SECONDS
PORT=$((29800 + RANDOM % 150)) tools/dist_train.sh "$CFG" "$N" --amp --work-dir "$A" "${OPTS[@]}" \
  "train_cfg.max_iters=$ITERS" default_hooks.checkpoint.interval=100000 > "$A.log" 2>&1
rc=$?
echo "seed_run.sh: $N-GPU run of $ITERS iterations: rc=$rc in $((SECONDS - t0)) s ($A.log)"
rank_lines "$A.log" | sed 's/^/  /'
grep -hoE 'mem [0-9]+ ?MiB' "$A.log" | sort -t' ' -k2 -n | tail -1 | sed 's/^/  peak per GPU (rank 0 log): /'
if [ $rc -ne 0 ]; then
  fail "1: the $N-GPU run failed (rc=$rc, $A.log)"; tail -8 "$A.log"
else
  n=0 down=0
  while read -r line; do
    n=$((n + 1))
    read -r first last < <(grep -oE 'loss [0-9.e+-]+ -> [0-9.e+-]+' <<< "$line" | awk '{print $2, $4}')
    python3 -c "import sys; sys.exit(0 if float('${last:-nan}') < float('${first:-nan}') else 1)" && down=$((down + 1))
  done < <(rank_lines "$A.log")
  mapfile -t sums < <(rank_lines "$A.log" | grep -oE 'checksum [0-9a-f]+' | awk '{print $2}')
  same=1
  for s in "${sums[@]}"; do [ "$s" = "${sums[0]}" ] || same=0; done
  if [ "$n" -eq "$N" ] && [ "$down" -eq "$N" ]; then pass "1: the loss decreased on all $N ranks over $ITERS iterations"
  else fail "1: the loss decreased on $down of $n rank lines (want $N) ($A.log)"; fi
  if [ ${#sums[@]} -eq "$N" ] && [ $same -eq 1 ]; then pass "1: identical weights on all $N ranks (checksum ${sums[0]})"
  else fail "1: checksums ${sums[*]:-none} (want $N equal)"; fi
fi

# ---- 2: kill one rank mid-run, then resume the newest checkpoint on one GPU ---------------------------
K=$OUT/kill
mkdir -p "$K"
PORT=$((29960 + RANDOM % 30))
pids=()
for r in $(seq 0 $((N - 1))); do  # started directly: tools/dist_train.sh would stop the peers itself
  RANK=$r WORLD_SIZE=$N LOCAL_RANK=$r LOCAL_WORLD_SIZE=$N MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
    AMPKIT_DIST_TIMEOUT=$TIMEOUT_S "$BIN" train "$CFG" --amp --work-dir "$K" "${OPTS[@]}" train_cfg.max_iters=100000 \
    default_hooks.checkpoint.interval=100000 default_hooks.checkpoint.iter_interval=20 > "$K/rank$r.log" 2>&1 &
  pids+=($!)
done
victim=$((N - 1))
for _ in $(seq 1 1200); do  # until the first iteration checkpoint is complete (`latest` names it)
  [ -s "$K/latest" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.5
done
sleep 3  # into the next checkpoint interval
alive=1
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || alive=0; done
if [ ! -s "$K/latest" ] || [ $alive -eq 0 ]; then
  fail "2: no checkpoint before the kill, or a rank ended early ($K/rank*.log)"; tail -5 "$K"/rank0.log
  kill -KILL "${pids[@]}" 2>/dev/null
else
  kill -KILL "${pids[$victim]}"
  t0=$(date +%s)
  limit=$((TIMEOUT_S + 25))  # the timeout + the watchdog's reaction + process exit
  ended=1
  for r in $(seq 0 $((victim - 1))); do
    while kill -0 "${pids[$r]}" 2>/dev/null && [ $(($(date +%s) - t0)) -lt $limit ]; do sleep 0.2; done
    kill -0 "${pids[$r]}" 2>/dev/null && { ended=0; kill -KILL "${pids[$r]}"; }
  done
  dt=$(($(date +%s) - t0))
  ok=$ended
  for r in $(seq 0 $((victim - 1))); do
    wait "${pids[$r]}"; rc=$?
    msg=$(grep -E "rank $r: .*(did not complete|communicator reported|failed|aborted)" "$K/rank$r.log" | head -1)
    { [ $rc -ne 0 ] && [ -n "$msg" ]; } || { ok=0; echo "  rank $r: rc=$rc, message '${msg:0:160}'"; }
  done
  partial=$(find "$K" -name '*.tmp*' | head -1)
  if [ $ok -eq 1 ] && [ -z "$partial" ]; then
    pass "2: $((N - 1)) surviving ranks ended within ${dt}s of the kill (timeout ${TIMEOUT_S}s), each naming the collective: $(grep -hE 'rank 0: ' "$K/rank0.log" | grep -E 'did not complete|communicator' | head -1 | cut -c1-160)"
  else
    fail "2: after the kill: ended=$ended within ${limit}s, partial checkpoint '${partial}' ($K/rank*.log)"
  fi
  ckpt=$K/$(cat "$K/latest")
  done_iters=$(grep -oE 'iter_[0-9]+' <<< "$ckpt" | grep -oE '[0-9]+')
  R=$OUT/resume
  env -u RANK -u WORLD_SIZE -u LOCAL_RANK CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES%%,*}" "$BIN" train "$CFG" --amp \
    --work-dir "$R" "${OPTS[@]}" "train_cfg.max_iters=$(( ${done_iters:-0} + 4 ))" default_hooks.checkpoint.interval=100000 \
    --resume "$ckpt" > "$R.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -qs 'resumed from' "$R.log"; then pass "2: the newest checkpoint ($(basename "$ckpt")) loads and training continues on 1 GPU"
  else fail "2: resuming $ckpt failed (rc=$rc, $R.log)"; tail -5 "$R.log"; fi
fi
wait 2>/dev/null

echo
if [ $FAILS -eq 0 ]; then echo "seed_run.sh: ALL PASSED ($N GPUs)"; exit 0; fi
echo "seed_run.sh: $FAILS check(s) FAILED (outputs in $OUT)"
exit 1

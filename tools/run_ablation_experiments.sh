#!/usr/bin/env bash
# Run every config of one ablation group, one after the other, each as a data-parallel job through
# tools/dist_train.sh, then print a summary table (final training loss and the last COCO AP of
# each run), as mmpose's script of the same name does.
#
#   USE_AMP=1 GPUS=2 bash tools/run_ablation_experiments.sh loss_weight
#   GPUS=4 bash tools/run_ablation_experiments.sh loss_weight --cfg-options train_cfg.max_epochs=10
#
# GROUP is a folder under configs/ablation/. Environment: GPUS (default: all visible), USE_AMP=1
# (--amp: fp16 + fp32 master weights), WORK_ROOT (default work_dirs/ablation/GROUP), CONTINUE=1
# (skip configs whose work dir already has a final summary line: resume a partly done sweep),
# plus everything tools/dist_train.sh reads (PORT, AMPKIT_BIN, AMPKIT_DIST_TIMEOUT, ...).
# Extra arguments go to every run. A failing run is reported in the table and the sweep goes on;
# the exit status is non-zero if any run failed.
set -uo pipefail

die() {
  echo "run_ablation_experiments.sh: $*" >&2
  exit 2
}
[ $# -ge 1 ] || die "usage: [USE_AMP=1] [GPUS=N] tools/run_ablation_experiments.sh GROUP [args...]  (GROUP: a folder under configs/ablation/)"
GROUP=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$ROOT/configs/ablation/$GROUP
[ -d "$DIR" ] || die "no ablation group '$GROUP': $DIR does not exist (groups: $(ls "$ROOT/configs/ablation" 2>/dev/null | tr '\n' ' '))"
mapfile -t CONFIGS < <(find "$DIR" -maxdepth 1 -name '*.toml' | sort)
[ ${#CONFIGS[@]} -gt 0 ] || die "$DIR holds no .toml config"
WORK_ROOT=${WORK_ROOT:-work_dirs/ablation/$GROUP}
AMP_ARGS=()
case "${USE_AMP:-0}" in
  1 | true | yes) AMP_ARGS=(--amp) ;;
  0 | false | no | "") ;;
  *) die "USE_AMP='${USE_AMP}': use 1 or 0" ;;
esac
GPU_ARGS=()
[ -n "${GPUS:-}" ] && GPU_ARGS=("$GPUS")
PY=$(command -v python3 || command -v python || true)

# "loss AP" of a finished run from its scalars.jsonl (last train loss, last val coco/AP).
summarise() {
  local jsonl=$1/scalars.jsonl
  [ -f "$jsonl" ] || { echo "- -"; return; }
  if [ -n "$PY" ]; then
    "$PY" - "$jsonl" <<'EOF'
import json, sys
loss = ap = None
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    flat = dict(r)
    for k in ('scalars', 'values'):
        if isinstance(r.get(k), dict):
            flat.update(r[k])
    mode = r.get('mode', '')
    if mode == 'train' and 'loss' in flat:
        loss = flat['loss']
    for k in ('coco/AP', 'val/coco/AP'):
        if k in flat and mode in ('val', ''):
            ap = flat[k]
        elif k in flat and ap is None:
            ap = flat[k]
fmt = lambda v: '-' if v is None else f'{v:.4f}'
print(fmt(loss), fmt(ap))
EOF
  else  # no Python: the last "loss" and "coco/AP" numbers, by pattern
    local loss ap
    loss=$(grep '"mode": *"train"' "$jsonl" | grep -oE '"loss": *[-0-9.eE+]+' | tail -1 | grep -oE '[-0-9.eE+]+$')
    ap=$(grep -oE '"(val/)?coco/AP": *[-0-9.eE+]+' "$jsonl" | tail -1 | grep -oE '[-0-9.eE+]+$')
    echo "${loss:--} ${ap:--}"
  fi
}

declare -a NAMES=() STATUS=() SECS=()
FAILED=0
for cfg in "${CONFIGS[@]}"; do
  name=$(basename "$cfg" .toml)
  wd=$WORK_ROOT/$name
  if [ "${CONTINUE:-0}" = 1 ] && [ -f "$wd/.ablation_done" ]; then
    echo "=== $name: done before (CONTINUE=1), skipped"
    NAMES+=("$name"); STATUS+=("done"); SECS+=("-")
    continue
  fi
  mkdir -p "$wd"
  echo "=== $name: $cfg -> $wd (GPUS=${GPUS:-all}, ${AMP_ARGS[*]:-fp32/config precision})"
  t0=$(date +%s)
  bash "$ROOT/tools/dist_train.sh" "$cfg" "${GPU_ARGS[@]}" --work-dir "$wd" "${AMP_ARGS[@]}" "$@" 2>&1 |
    tee "$wd/ablation_run.log"
  rc=${PIPESTATUS[0]}
  dt=$(($(date +%s) - t0))
  NAMES+=("$name"); SECS+=("$dt")
  if [ "$rc" -eq 0 ]; then
    STATUS+=("ok"); touch "$wd/.ablation_done"
  else
    STATUS+=("FAILED($rc)"); FAILED=$((FAILED + 1))
    echo "=== $name: FAILED with status $rc (log: $wd/ablation_run.log); continuing with the next config" >&2
  fi
done

echo
echo "Ablation '$GROUP' (${#NAMES[@]} configs, GPUS=${GPUS:-all}, USE_AMP=${USE_AMP:-0}), work dirs under $WORK_ROOT"
printf '%-34s %-11s %10s %10s %8s\n' config status final_loss coco_AP time_s
printf '%-34s %-11s %10s %10s %8s\n' ---------------------------------- ----------- ---------- ---------- --------
for i in "${!NAMES[@]}"; do
  read -r loss ap < <(summarise "$WORK_ROOT/${NAMES[$i]}")
  printf '%-34s %-11s %10s %10s %8s\n' "${NAMES[$i]}" "${STATUS[$i]}" "$loss" "$ap" "${SECS[$i]}"
done
[ $FAILED -eq 0 ] || { echo "$FAILED run(s) failed"; exit 1; }
exit 0

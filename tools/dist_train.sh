#!/usr/bin/env bash
# Data-parallel training: one dekr_amp process per GPU, with torchrun's variables (RANK,
# WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), like mmpose's script.
#
#   tools/dist_train.sh CONFIG GPUS [args...]       tools/dist_train.sh configs/dekr_w32.toml 4 --amp
#   GPUS=2 tools/dist_train.sh CONFIG [args...]     (GPUS defaults to the number of visible GPUs)
#
# Several machines (run it once on each, same PORT and MASTER_ADDR):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node01 PORT=29500 tools/dist_train.sh CONFIG 4 ...   # on node01
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node01 PORT=29500 tools/dist_train.sh CONFIG 4 ...   # on node02
#
# Environment: AMPKIT_BIN (default build/examples/dekr_amp/dekr_amp), PORT or MASTER_PORT (29500),
# MASTER_ADDR (127.0.0.1), NNODES (1), NODE_RANK (0), AMPKIT_DIST_TIMEOUT (seconds, default 300,
# read by the ranks), AMPKIT_KILL_GRACE (seconds between SIGTERM and SIGKILL, default 10).
# If any rank exits with an error, the others are stopped and this script exits non-zero with a
# message naming the rank: a job never limps on with a missing rank.
set -uo pipefail

die() {
  echo "dist_train.sh: $*" >&2
  exit 2
}
[ $# -ge 1 ] || die "usage: tools/dist_train.sh CONFIG GPUS [args...]  (or GPUS=N tools/dist_train.sh CONFIG [args...])"
CONFIG=$1
shift
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
  GPUS=$1
  shift
fi
if [ -z "${GPUS:-}" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a _visible <<< "$CUDA_VISIBLE_DEVICES"
    GPUS=${#_visible[@]}
  else
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
  [ "${GPUS:-0}" -ge 1 ] 2>/dev/null || GPUS=1
fi
[[ $GPUS =~ ^[0-9]+$ ]] && [ "$GPUS" -ge 1 ] || die "GPUS='$GPUS': give the number of GPUs (processes) per node, at least 1"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${AMPKIT_BIN:-$ROOT/build/examples/dekr_amp/dekr_amp}
[ -x "$BIN" ] || die "training binary '$BIN' not found or not executable: build it (cmake --build build --target dekr_amp) or set AMPKIT_BIN"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-${MASTER_PORT:-29500}}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
GRACE=${AMPKIT_KILL_GRACE:-10}
[[ $NNODES =~ ^[0-9]+$ && $NODE_RANK =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] ||
  die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
WORLD=$((NNODES * GPUS))

# NVLink SHARP (NVLS) needs multicast memory that containers and some drivers/fabrics do not
# provide, and its set-up failures show up as hangs at the first all-reduce; the gradient buckets
# here gain nothing measurable from it.
export NCCL_NVLS_ENABLE=0

declare -A rank_of=() alive=()
stop_all() {  # SIGTERM every live rank, SIGKILL what is left after the grace period
  [ ${#alive[@]} -eq 0 ] && return
  kill -TERM "${!alive[@]}" 2>/dev/null
  local waited=0
  while [ $waited -lt $((GRACE * 10)) ]; do
    local any=0 p
    for p in "${!alive[@]}"; do
      if kill -0 "$p" 2>/dev/null; then any=1; else unset "alive[$p]"; fi
    done
    [ $any -eq 0 ] && return
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL "${!alive[@]}" 2>/dev/null
}
on_signal() {
  echo "dist_train.sh: interrupted; stopping all $GPUS local ranks" >&2
  stop_all
  exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

for ((i = 0; i < GPUS; i++)); do
  RANK=$((NODE_RANK * GPUS + i)) WORLD_SIZE=$WORLD LOCAL_RANK=$i LOCAL_WORLD_SIZE=$GPUS \
    MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$PORT "$BIN" train "$CONFIG" "$@" &
  rank_of[$!]=$((NODE_RANK * GPUS + i))
  alive[$!]=1
done

while [ ${#alive[@]} -gt 0 ]; do
  finished=
  wait -n -p finished "${!alive[@]}"
  status=$?
  [ -n "$finished" ] || continue  # interrupted by a signal whose trap returned
  unset "alive[$finished]"
  if [ "$status" -ne 0 ]; then
    how="exited with status $status"
    [ "$status" -gt 128 ] && how="was killed by signal SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
    echo "dist_train.sh: rank ${rank_of[$finished]} (pid $finished) $how; stopping the other ${#alive[@]} local rank(s)" >&2
    stop_all
    exit "$status"
  fi
done
exit 0

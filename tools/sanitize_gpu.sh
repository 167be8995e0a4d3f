#!/usr/bin/env bash
# compute-sanitizer over the GPU tests of a CMake build dir and one short training run:
# memcheck (+ leak check), racecheck and initcheck; prints one line per binary and tool with the
# error count, and exits 1 if any tool reported an error.
#
# usage: tools/sanitize_gpu.sh [BUILD_DIR (default build)]
# Environment:
#   SANITIZE_TOOLS   default "memcheck racecheck initcheck"
#   SANITIZE_FILTER  regex of test binaries to run (default all test_gpu_*)
#   SANITIZE_EXCLUDE regex of binaries to skip (default: NCCL/multi-process tests, test_gpu_dist)
#   SANITIZE_TRAIN   0 to skip the training run; SANITIZE_TRAIN_ARGS overrides its arguments
#   SANITIZE_OUT     log folder (default BUILD_DIR/sanitize)
#   SANITIZE_JOBS    (binary, tool) runs at a time (default 1); SANITIZE_GPUS: comma list of GPU
#                    indices handed out round-robin as CUDA_VISIBLE_DEVICES (default: all visible)
#   SANITIZE_EXTRA   more compute-sanitizer options for every run (e.g. a kernel filter)
#   SANITIZE_SPLIT   regex of binaries run as one job per doctest test case (listed with
#                    --list-test-cases), so a slow binary spreads over SANITIZE_JOBS and a cut-off
#                    run names the case that was cut; its result lines read BINARY.cN (N: the
#                    case's place in the sorted list, printed first)
#   SANITIZE_CASES   with SANITIZE_SPLIT: a regex; only the cases whose names match run;
#                    SANITIZE_SKIP_CASES: a regex of cases left out
#   SANITIZE_RACECHECK_KERNELS  a --kernel-name filter for racecheck runs. Do not use it with the
#                    CUDA 13.0 tool: kns=ampkit (only ampkit's kernels instrumented) made it fail
#                    ("Internal Sanitizer Error: failed to handle a hardware exception", then a
#                    cuBLAS launch failure) on the H200 on 2026-12-01, as --kernel-name-exclude
#                    kns=nvjet had in 4 of 7 cases before (reliability.md s. 4)
#   SANITIZE_RACECHECK_ENV  VAR=value words added to the environment of racecheck runs only, e.g.
#                    AMPKIT_CUDNN_BENCHMARK=0: cuDNN's heuristic picks instead of timing every
#                    library candidate under the tool (the same ampkit kernels run; the sixth run
#                    cut most models / train cases at 361-379 s in benchmark mode)
#   SANITIZE_RACECHECK_JOBS  at most this many racecheck runs at once (default SANITIZE_JOBS):
#                    racecheck's host-side state is the largest (host_memory.log samples it)
#   SANITIZE_TIMING_REPS  AMPKIT_TIMING_REPS for the runs (default 1: benchmark mode's timing
#                    loops run every candidate once after its warm-up; timings mean nothing here)
#   SANITIZE_RUN_TIMEOUT  seconds per run (default 0: none); a run cut off is reported TIMEOUT
#                    with the errors found until then (the tools print as they go)
#   SANITIZE_CLASSIFY 1: print every report (no print limit), run with AMPKIT_SANITIZER_TRACE=1
#                    (ampkit logs the device ranges each conv call and workspace covers) and sort
#                    the reports with tools/sanitizer_report.py by the module that launched the
#                    kernel and the traced range holding the address. A racecheck run whose
#                    hazards are all inside CUDA libraries' own kernels (cuDNN engines, cuBLASLt,
#                    NCCL), or an initcheck run whose reports are all library kernels reading
#                    their own workspace, is reported LIBRARY instead of FAILED and does not fail
#                    the script (the library exception of issue 12). A library kernel's report on
#                    a tensor ampkit passed in, or on an untraced address, stays FAILED (the
#                    classification is still written). A memcheck run whose only reports are the
#                    capture-mode API errors of GraphStep's global-mode attempt (cudaMalloc while
#                    capturing; it falls back to relaxed mode by design) is CAPTURE-FALLBACK
# racecheck is the slow one (shared-memory hazards only); expect tens of minutes for all three.
set -uo pipefail
cd "$(dirname "$0")/.."
bd=${1:-build}
tools=${SANITIZE_TOOLS:-memcheck racecheck initcheck}
filter=${SANITIZE_FILTER:-.}
exclude=${SANITIZE_EXCLUDE:-dist|nccl}
out=${SANITIZE_OUT:-$bd/sanitize}
cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[ -x "$cs" ] || { echo "sanitize_gpu: compute-sanitizer not found (CUDA toolkit bin/)"; exit 1; }
mkdir -p "$out"
mapfile -t bins < <(find "$bd/tests/gpu" -type f -name 'test_gpu_*' -executable 2>/dev/null | sort | grep -E "$filter" | grep -vE "$exclude")
# A filter that matches no binary on purpose (e.g. '^$') leaves only the training run.
if ((${#bins[@]} == 0)) && [ -z "${SANITIZE_FILTER:-}" ]; then
  echo "sanitize_gpu: no test_gpu_* binaries under $bd/tests/gpu (build them first)"; exit 1
fi

runs=()
for b in "${bins[@]}"; do
  n=$(basename "$b")
  case $n in
    # Two test cases make CUDA API calls fail on purpose (a 1 PiB cudaMalloc for the OOM message,
    # cudaMemcpy(nullptr, ...) for the error macro's text); memcheck reports every failing API
    # call, so they run everywhere but here. Doctest filters: '?' stands for a space.
    test_gpu_core) runs+=("$n|$b -tce=*clear?OOM*,error?macros*") ;;
    # This case measures free device memory around cuDNN's Find; the tool's own device memory
    # lands in the same window. The Find path itself runs under the tools in the other conv cases.
    test_gpu_nn) runs+=("$n|$b -tce=*outside?the?allocator*") ;;
    *) runs+=("$n|$b") ;;
  esac
  if [ -n "${SANITIZE_SPLIT:-}" ] && [[ $n =~ $SANITIZE_SPLIT ]]; then
    # One job per test case instead (a template case: one per type). A doctest filter is a comma
    # list with '*' and '?' wildcards: '?' stands for a space or comma of the name.
    base=${runs[-1]#*|}
    unset 'runs[-1]'
    k=0
    while IFS= read -r tc; do
      k=$((k + 1))
      [[ $tc =~ ${SANITIZE_CASES:-.} ]] || continue
      [ -n "${SANITIZE_SKIP_CASES:-}" ] && [[ $tc =~ $SANITIZE_SKIP_CASES ]] && continue
      f=${tc//[ ,]/?}
      runs+=("$n.c$k|$base -tc=$f")
      echo "sanitize_gpu: $n.c$k = $tc"
    done < <("$b" --list-test-cases --no-version 2>/dev/null | grep -vE '^(\[doctest\]|=+$)' | sort -u)
  fi
done
if [ "${SANITIZE_TRAIN:-1}" = 1 ]; then
  app=$(find "$bd" -type f -name dekr_amp -executable | head -1)
  if [ -n "$app" ]; then
    # Two fp16 iterations of the demo config on the bundled images (a full step: loader, forward,
    # loss, backward, AMP step, BN statistics), no evaluation.
    args=${SANITIZE_TRAIN_ARGS:-"train configs/demo_gpu.toml --amp --device cuda --work-dir $out/train_run_@TOOL@ --cfg-options train_cfg.max_epochs=1 train_cfg.batch_size=2 train_cfg.num_workers=1 train_cfg.val_interval=0"}
    runs+=("dekr_amp_train|$app $args")
  else
    echo "sanitize_gpu: no dekr_amp binary in $bd: the training step is not checked"
  fi
fi

# One (binary, tool) run: writes its log and one result line.
run_one() {
  local idx=$1 name=$2 t=$3 cmd=$4
  local extra=() log=$out/${name}.$t.log gpu=""
  [ "$t" = memcheck ] && extra=(--leak-check full)
  [ "$t" = racecheck ] && extra=(--racecheck-report analysis)
  # racecheck looks for shared-memory hazards inside one kernel; with SANITIZE_RACECHECK_KERNELS
  # (e.g. kns=ampkit: every ampkit kernel's mangled name holds its namespace) only those kernels
  # are instrumented, skipping cuDNN / cuBLASLt kernels whose hazards are library-internal anyway
  [ "$t" = racecheck ] && [ -n "${SANITIZE_RACECHECK_KERNELS:-}" ] && extra+=(--kernel-name "$SANITIZE_RACECHECK_KERNELS")
  # shellcheck disable=SC2206
  extra+=(${SANITIZE_EXTRA:-})
  if [ -n "${SANITIZE_GPUS:-}" ]; then
    IFS=, read -ra g <<< "$SANITIZE_GPUS"
    gpu=${g[$((idx % ${#g[@]}))]}
  fi
  # the training run writes a work dir: one per tool, so parallel runs do not share it
  cmd=${cmd//@TOOL@/$t}
  local t0 rc secs n status limit=50
  local trace=0
  # every report printed, to be classified; ampkit's ranges logged next to them (sanitizer_marks.cuh)
  [ "${SANITIZE_CLASSIFY:-0}" = 1 ] && limit=10000000 trace=1
  set -f  # the doctest filters in $cmd are not file globs
  t0=$(date +%s)
  local to=()
  [ "${SANITIZE_RUN_TIMEOUT:-0}" != 0 ] && to=(timeout "$SANITIZE_RUN_TIMEOUT")
  # shellcheck disable=SC2086
  local envs=("AMPKIT_SANITIZER_TRACE=$trace" "AMPKIT_TIMING_REPS=${SANITIZE_TIMING_REPS:-1}")
  [ -n "$gpu" ] && envs+=("CUDA_VISIBLE_DEVICES=$gpu")
  # shellcheck disable=SC2206
  [ "$t" = racecheck ] && envs+=(${SANITIZE_RACECHECK_ENV:-})
  env "${envs[@]}" "${to[@]}" "$cs" --tool "$t" "${extra[@]}" --error-exitcode 99 --print-limit "$limit" $cmd >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  n=$(grep -oE 'ERROR SUMMARY: [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
  # racecheck's count is in its own summary line ("RACECHECK SUMMARY: N hazards displayed (E
  # errors, W warnings)"), which the line above does not see
  n=$((n + $(grep -oE 'RACECHECK SUMMARY: [0-9]+ hazards? displayed \([0-9]+ errors?, [0-9]+ warnings?\)' "$log" |
             sed -E 's/.*\(([0-9]+) errors?, ([0-9]+) warnings?\)/\1 \2/' | awk '{s+=$1+$2} END {print s+0}')))
  # counted as they are reported when the run was cut off before its summary
  [ "$rc" = 124 ] && n=$(grep -cE '^========= (Invalid|Uninitialized|Error|Race|Warning|Program hit)' "$log")
  # Reports that may be excepted: classification on, and the program itself succeeded
  # (--error-exitcode makes rc 99 whenever the tool reported, which hides the program's own exit
  # status, so its success line decides: doctest's summary, dekr_amp's "done:").
  local classifiable=0
  [ "$n" != 0 ] && [ "${SANITIZE_CLASSIFY:-0}" = 1 ] && { [ "$rc" = 0 ] || [ "$rc" = 99 ]; } &&
    grep -qE '^\[doctest\] Status: SUCCESS|^done: ' "$log" && classifiable=1
  status=ok
  if [ "$rc" = 77 ] || grep -q 'skipped: no CUDA device' "$log"; then status=SKIPPED
  elif [ "$rc" = 124 ]; then status=TIMEOUT
  elif [ $classifiable = 1 ] && { [ "$t" = racecheck ] || [ "$t" = initcheck ]; } &&
       python3 tools/sanitizer_report.py "$log" > "$log.classified" 2>&1; then
    status=LIBRARY  # every report inside a CUDA library's own kernels (sanitizer_report.py)
  # memcheck's only reports the API errors of a global-mode graph capture that GraphStep falls
  # back from (a cudaMalloc while capturing; it then captures in relaxed mode, by design)
  elif [ $classifiable = 1 ] && [ "$t" = memcheck ] &&
       python3 tools/sanitizer_report.py --allow-capture-fallback "$log" > "$log.classified" 2>&1; then
    status=CAPTURE-FALLBACK
  elif [ "$rc" != 0 ] || [ "$n" != 0 ]; then status=FAILED; fi
  [ "${SANITIZE_CLASSIFY:-0}" = 1 ] && [ "$n" != 0 ] && [ ! -f "$log.classified" ] &&
    python3 tools/sanitizer_report.py "$log" > "$log.classified" 2>&1
  # rc: the tool's exit status (99: it reported; 124: cut off by SANITIZE_RUN_TIMEOUT; otherwise
  # the program's own; rc 9 with no program output at all was seen for racecheck runs that were
  # killed while 18 tool processes shared the host's memory: host_memory.log tells)
  printf '%-28s %-10s %8s %8s  %s %s rc=%s\n' "$name" "$t" "$n" "$secs" "$log" "$status" "$rc"
}

printf '%-28s %-10s %8s %8s  %s\n' binary tool errors seconds log
results=$out/results.txt
: > "$results"
# Host memory every 15 s (used / available MiB, and the largest processes' resident MiB): the
# tools keep shadow state on the host, racecheck the most, and a run killed for memory ends
# without a word (reliability.md section 4). Disowned, so the job count below does not see it.
(
  while :; do
    printf '%s %s | %s\n' "$(date +%T)" "$(free -m | awk '/^Mem:/ {print "used " $3 " available " $7}')" \
      "$(ps -eo rss=,comm= --sort=-rss | head -4 | awk '{printf "%s %d; ", $2, $1 / 1024}')"
    sleep 15
  done
) > "$out/host_memory.log" 2>&1 &
sampler=$!
disown "$sampler" 2>/dev/null || true
trap 'kill "$sampler" 2>/dev/null' EXIT
# SANITIZE_RACECHECK_JOBS caps the racecheck runs at once (default: SANITIZE_JOBS), the memory-hungry
# ones; each running one holds a marker file.
rdir=$out/.racecheck_running
mkdir -p "$rdir"
rm -f "$rdir"/*
i=0
pids=()
for r in "${runs[@]}"; do
  name=${r%%|*}; cmd=${r#*|}
  for t in $tools; do
    while [ "$(jobs -rp | wc -l)" -ge "${SANITIZE_JOBS:-1}" ]; do wait -n; done
    if [ "$t" = racecheck ]; then
      while [ "$(find "$rdir" -type f | wc -l)" -ge "${SANITIZE_RACECHECK_JOBS:-${SANITIZE_JOBS:-1}}" ]; do
        wait -n 2>/dev/null || sleep 2
      done
      : > "$rdir/$i"
      { run_one "$i" "$name" "$t" "$cmd" | tee -a "$results"; rm -f "$rdir/$i"; } &
    else
      run_one "$i" "$name" "$t" "$cmd" | tee -a "$results" &
    fi
    pids+=($!)
    i=$((i + 1))
  done
done
wait
# FAILED and TIMEOUT both fail the script: a run cut off has not shown it is clean.
if grep -qE ' (FAILED|TIMEOUT) rc=' "$results"; then exit 1; fi
exit 0

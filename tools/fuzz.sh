#!/usr/bin/env bash
# Build the libFuzzer targets of tests/fuzz (clang, AddressSanitizer + UndefinedBehaviorSanitizer +
# LeakSanitizer), replay the committed seeds and regression inputs, then fuzz each target for a
# bounded time and print one line of figures per target. Exit status 1 on any crash, leak, UB or
# timeout; the input that caused it is kept under $FUZZ_BUILD/artifacts/<target>/ and the command
# to reproduce it is printed.
#
# Environment:
#   FUZZ_SECONDS  seconds of fuzzing per target (default 20: six targets, two at a time on CI's
#                 two cores, about 1.5 min with the build); by hand: FUZZ_SECONDS=600 tools/fuzz.sh
#   FUZZ_RUNS     executions per target instead of a time budget (tools/test.sh sets 40000): with a
#                 fixed FUZZ_SEED a run then does the same amount of work on any machine; a time
#                 budget explores further on a faster or less loaded machine, which is how a
#                 "fixed seed" CI run still found a new stb defect (docs/reliability.md, defect 14).
#                 Not bit-reproducible either (two runs here: coverage 914 vs 916), but no longer
#                 machine-dependent.
#                 FUZZ_SECONDS then only guards against a pathological slowdown (x10).
#   FUZZ_TARGETS  space-separated subset (default: every tests/fuzz/fuzz_*.cpp)
#   FUZZ_JOBS     targets fuzzed at once (default: nproc, at most the number of targets)
#   FUZZ_BUILD    build and working-corpus folder (default: build/fuzz)
#   FUZZ_SEED     libFuzzer's -seed (default: 1 when CI is set, so a CI run explores the same
#                 mutations each time and cannot turn red at random; unset by hand: a fresh seed
#                 every run, printed in the log as "Seed: N", to find new inputs)
#   FUZZ_KEEP_CORPUS=1  keep the working corpus between runs (default: start from the seeds)
#   FUZZ_MERGE=1  after fuzzing, minimise each working corpus into tests/fuzz/corpus/<target>
#                 (by hand only; commit seeds that stay small)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ -z "${FUZZ_SEED:-}" ] && [ -n "${CI:-}" ]; then FUZZ_SEED=1; fi
FUZZ_SEED=${FUZZ_SEED:-0}  # 0: libFuzzer picks one
FUZZ_BUILD=${FUZZ_BUILD:-$root/build/fuzz}
mkdir -p "$FUZZ_BUILD"
FUZZ_BUILD=$(cd "$FUZZ_BUILD" && pwd)
say() { printf '== fuzz: %s\n' "$*"; }

# ---- clang with the libFuzzer runtime (Debian: clang + libclang-rt-<ver>-dev) ----------------
have_fuzzer_rt() {
  command -v clang++ >/dev/null || return 1
  echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' >"$FUZZ_BUILD/probe.cpp"
  clang++ -fsanitize=fuzzer,address,undefined "$FUZZ_BUILD/probe.cpp" -o "$FUZZ_BUILD/probe" >/dev/null 2>&1
}
if ! have_fuzzer_rt; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  say "installing clang and the libFuzzer runtime with apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang >/dev/null
  ver=$(clang++ --version | sed -nE 's/.*clang version ([0-9]+).*/\1/p' | head -1)
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "libclang-rt-$ver-dev" >/dev/null 2>&1 || true
  have_fuzzer_rt || { echo "fuzz: FAILED: clang++ cannot link -fsanitize=fuzzer (install clang and libclang-rt-<ver>-dev)"; exit 1; }
fi
say "$(clang++ --version | head -1)"

# ---- build (parallel; a target is rebuilt when any header or fuzz source is newer) ----------
targets=${FUZZ_TARGETS:-$(cd tests/fuzz && ls fuzz_*.cpp | sed 's/^fuzz_//; s/\.cpp$//')}
ntargets=$(wc -w <<<"$targets")
jobs=${FUZZ_JOBS:-$(nproc)}
(( jobs > ntargets )) && jobs=$ntargets
flags=(-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -DTOML_HEADER_ONLY=1 -Iinclude -Itests -I/usr/include/stb -I/usr/include/eigen3)
newest=$(find include tests/fuzz -type f -printf '%T@\n' | sort -n | tail -1)
build_one() {
  local t=$1 bin=$FUZZ_BUILD/fuzz_$1
  if [ -x "$bin" ] && [ "$(stat -c %Y "$bin")" -ge "${newest%.*}" ]; then return 0; fi
  clang++ "${flags[@]}" "tests/fuzz/fuzz_$t.cpp" -o "$bin" -lpthread 2>"$FUZZ_BUILD/build_$t.log" \
    || { cat "$FUZZ_BUILD/build_$t.log"; echo "fuzz: FAILED to build fuzz_$t"; return 1; }
}
export -f build_one; export FUZZ_BUILD newest
export flags_str="${flags[*]}"
say "building $ntargets targets (-j$jobs)"
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'flags=($flags_str); build_one {}'

# ---- replay seeds + regressions, then fuzz ---------------------------------------------------
# -rss_limit_mb: the parsers must not need more than this for inputs of -max_len bytes.
run_one() {
  local t=$1 bin=$FUZZ_BUILD/fuzz_$1 log=$FUZZ_BUILD/fuzz_$1.log
  local seeds=tests/fuzz/corpus/$t regress=tests/fuzz/regressions/$t work=$FUZZ_BUILD/corpus/$t art=$FUZZ_BUILD/artifacts/$t/
  mkdir -p "$work" "$art"
  [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "${work:?}"/*
  local replay=()
  [ -d "$seeds" ] && replay+=("$seeds"/*)
  [ -d "$regress" ] && replay+=("$regress"/*)
  if ((${#replay[@]})); then
    if ! "$bin" -rss_limit_mb=2048 -timeout=20 "${replay[@]}" >"$FUZZ_BUILD/replay_$t.log" 2>&1; then
      tail -40 "$FUZZ_BUILD/replay_$t.log"; echo "fuzz_$t: FAILED replaying seeds/regressions"; return 1
    fi
  fi
  local dirs=("$work"); [ -d "$seeds" ] && dirs+=("$seeds")
  local t0=$SECONDS budget=(-max_total_time="$FUZZ_SECONDS")
  [ -n "${FUZZ_RUNS:-}" ] && budget=(-runs="$FUZZ_RUNS" -max_total_time=$((FUZZ_SECONDS * 10)))
  if "$bin" "${budget[@]}" -seed="$FUZZ_SEED" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
       -artifact_prefix="$art" "${dirs[@]}" >"$log" 2>&1; then
    local runs eps rss cov
    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log")
    eps=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log")
    rss=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    printf 'fuzz_%-18s ok  %6ss  %10s runs  %7s exec/s  cov %5s  peak %5s MB  replayed %d\n' \
      "$t" "$((SECONDS - t0))" "$runs" "$eps" "${cov:-?}" "$rss" "${#replay[@]}"
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
      mkdir -p "$seeds"; "$bin" -merge=1 -max_len=8192 "$seeds" "$work" >/dev/null 2>&1 || true
    fi
  else
    grep -E 'ERROR|runtime error|SUMMARY|uncaught|Test unit written|deadly' "$log" | head -20
    echo "fuzz_$t: FAILED (log $log); reproduce: $bin $art<crash-file>"
    return 1
  fi
}
export -f run_one; export FUZZ_SECONDS FUZZ_SEED FUZZ_RUNS
if [ -n "${FUZZ_RUNS:-}" ]; then what="$FUZZ_RUNS runs (seed $FUZZ_SEED)"; else what="${FUZZ_SECONDS}s"; fi
say "replaying seeds + regressions, then fuzzing $what per target ($jobs at a time)"
set +e
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}' | tee "$FUZZ_BUILD/summary.txt"
rc=${PIPESTATUS[1]}
set -e
if [ "$rc" = 0 ]; then say "all $ntargets targets clean"; else say "FAILED"; exit 1; fi

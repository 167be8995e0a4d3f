#!/usr/bin/env bash
# The host test suite (every ctest test that runs without a GPU, the dekr_amp end-to-end tests
# included) built with g++'s AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer), no
# CUDA. The fuzz targets (tools/fuzz.sh) cover the parsers with hostile input; this covers
# everything else the host backend runs -- layers, model, AMP step, loader threads, evaluator,
# trainer, checkpoints -- on the inputs the tests give it. Any report fails the test it came
# from (halt_on_error, -fno-sanitize-recover), so ctest's summary is the result.
#
# usage: tools/sanitize_host.sh [BUILD_DIR (default build/sanitize-host)]
# Environment:
#   SANITIZE_JOBS   build and ctest parallelism (default nproc)
#   CTEST_ARGS      extra ctest arguments (e.g. "-R test_nn" to narrow the run)
# By hand, not in CI: the build alone takes about 15 minutes on 2 cores, the run about 10
# (docs/reliability.md, section 1, has the last run's figures).
set -euo pipefail
cd "$(dirname "$0")/.."
bd=${1:-build/sanitize-host}
jobs=${SANITIZE_JOBS:-$(nproc)}
# -O1: ASan's stack checks stay meaningful and the suite runs in minutes; -fno-omit-frame-pointer:
# readable stacks. GLIBCXX_ASSERTIONS adds bounds checks to std::vector/array/string operator[].
# The two checks tools/sanitize_host.supp exempts inside stb_image must be recoverable (UBSan
# applies suppressions to recoverable checks only); halt_on_error still stops at any other report.
flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
flags+=" -fsanitize-recover=shift-exponent,nonnull-attribute -D_GLIBCXX_ASSERTIONS"
cmake -S . -B "$bd" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAMPKIT_ENABLE_CUDA=OFF \
      -DAMPKIT_BUILD_BENCH=OFF -DAMPKIT_CHECK_CUDA_HEADERS=OFF -DAMPKIT_WARNINGS_AS_ERRORS=OFF \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$bd" -j "$jobs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:suppressions=$PWD/tools/sanitize_host.supp}
# The Python peers (pycocotools, torch) run in their own interpreters; only ampkit's binaries are
# instrumented. A test that needs a GPU prints "skipped: no CUDA device" and passes.
(cd "$bd" && ctest -j "$jobs" --output-on-failure ${CTEST_ARGS:-})

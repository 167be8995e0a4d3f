#!/usr/bin/env bash
# Crash-safe checkpoints by hand: fork a process that resumes and writes checkpoints through
# train::CheckpointManager (safetensors atomic writer: temp file, fsync, rename; `latest` pointer;
# keep 3), SIGKILL it at a random moment, check that what --resume picks is the newest complete
# checkpoint and holds exactly what was written; repeat TRIALS times (CI runs the same test with
# 200 trials inside test_hardening, ~15-20 s).
#
# usage: tools/ckpt_kill_test.sh [TRIALS (default 1000)] [BUILD_DIR (default build-hardening)]
#   TMPDIR picks the filesystem the checkpoints go to (default /tmp; try a real disk too).
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-1000}
bd=${2:-build-hardening}
if [ ! -f "$bd/build.ninja" ]; then
  cmake -S . -B "$bd" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$bd" test_hardening >/dev/null
AMPKIT_KILL_TRIALS=$trials "$bd/tests/unit/hardening/test_hardening" \
  -tc="crash-safe checkpoints*,resume takes a complete checkpoint newer*" 2>&1 | grep -E "MESSAGE|kill -9|ERROR|FATAL|failed|Status|test cases"

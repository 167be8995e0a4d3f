#!/usr/bin/env bash
# Train the same config for a short fixed number of iterations under each precision policy (fp32,
# fp16 = --amp, bf16) and write the memory/speed table with MEASURED numbers, read back from each
# run's own logs: policy (the `Using Precision<...>` line), batch size and accumulation (the
# resolved config.toml of the work dir), peak memory and img/s (scalars.jsonl).
#
#   tools/compare_precision.sh CONFIG [GPUS] [args...]
#   ITERS=100 tools/compare_precision.sh configs/dekr_hrnet-w32_coco-512x512.toml 1 --cfg-options train_cfg.batch_size=32
#   ITERS=6 POLICIES="fp32 fp16" tools/compare_precision.sh configs/demo_host.toml --device host
#
# Environment: ITERS (iterations per run, default 50), POLICIES (default "fp32 fp16 bf16"),
# LOG_INTERVAL (scalars every N iterations, default ITERS/10 or 1), WORK_ROOT (default
# work_dirs/compare_precision/CONFIG_NAME), OUT (the markdown table, default WORK_ROOT/table.md),
# AMPKIT_BIN (default build/examples/dekr_amp/dekr_amp). With GPUS > 1 each run goes through
# tools/dist_train.sh. Extra arguments go to every run (e.g. --device host, --cfg-options ...).
#
# Columns: img/s is the median of the logged intervals after the first (the first one holds the
# warm-up: cuDNN plans, allocator growth, first data). Peak memory is the device allocator's high
# water mark (`memory_mib`, CUDA backend); on the host backend there is no device memory and the
# column says so: it reports the process's peak resident set (`peak_rss_mib`, getrusage), marked
# "host RSS" -- the whole process (model, optimizer, data, loader buffers), not comparable to GPU
# memory. Validation is off and every run starts from the same seed.
set -uo pipefail

die() {
  echo "compare_precision.sh: $*" >&2
  exit 2
}
[ $# -ge 1 ] || die "usage: [ITERS=N] [POLICIES=\"fp32 fp16 bf16\"] tools/compare_precision.sh CONFIG [GPUS] [args...]"
CONFIG=$1
shift
[ -f "$CONFIG" ] || die "config '$CONFIG' not found"
GPUS=1
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
  GPUS=$1
  shift
fi
[ "$GPUS" -ge 1 ] || die "GPUS='$GPUS': give at least 1"
ITERS=${ITERS:-50}
[[ $ITERS =~ ^[0-9]+$ ]] && [ "$ITERS" -ge 1 ] || die "ITERS='$ITERS': give a positive number of iterations"
LOG_INTERVAL=${LOG_INTERVAL:-$((ITERS / 10 > 0 ? ITERS / 10 : 1))}
POLICIES=${POLICIES:-fp32 fp16 bf16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${AMPKIT_BIN:-$ROOT/build/examples/dekr_amp/dekr_amp}
[ -x "$BIN" ] || die "training binary '$BIN' not found or not executable: build it (cmake --build build --target dekr_amp) or set AMPKIT_BIN"
PY=$(command -v python3 || command -v python || true)
[ -n "$PY" ] || die "python3 is needed to read the runs' scalars.jsonl and config.toml"
WORK_ROOT=${WORK_ROOT:-work_dirs/compare_precision/$(basename "$CONFIG" .toml)}
OUT=${OUT:-$WORK_ROOT/table.md}
mkdir -p "$WORK_ROOT" || die "cannot create '$WORK_ROOT'"

# --cfg-options is one flag taking every following k=v: ours go first so the user's may follow.
RUN_OPTS=(--cfg-options "train_cfg.max_iters=$ITERS" "train_cfg.val_interval=0"
          "default_hooks.logger.interval=$LOG_INTERVAL")
FAILED=0
declare -a DONE=()
for p in $POLICIES; do
  case "$p" in fp32 | fp16 | bf16) ;; *) die "POLICIES: '$p' is not fp32, fp16 or bf16" ;; esac
  wd=$WORK_ROOT/$p
  rm -rf "$wd"
  mkdir -p "$wd"
  echo "=== $p: $ITERS iterations of $CONFIG -> $wd"
  if [ "$GPUS" -gt 1 ]; then
    AMPKIT_BIN=$BIN bash "$ROOT/tools/dist_train.sh" "$CONFIG" "$GPUS" --work-dir "$wd" --precision "$p" \
      "${RUN_OPTS[@]}" "$@" > "$wd/compare_run.log" 2>&1
  else
    "$BIN" train "$CONFIG" --work-dir "$wd" --precision "$p" "${RUN_OPTS[@]}" "$@" > "$wd/compare_run.log" 2>&1
  fi
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "=== $p: FAILED with status $rc; last lines of $wd/compare_run.log:" >&2
    tail -5 "$wd/compare_run.log" >&2
    FAILED=$((FAILED + 1))
  fi
  DONE+=("$p:$rc")
done

"$PY" - "$WORK_ROOT" "$CONFIG" "$ITERS" "$GPUS" "$OUT" "$*" "${DONE[@]}" <<'EOF'
import glob, json, os, re, statistics, sys, tomllib
root, config, iters, gpus, out, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
rows, notes = [], set()
for item in sys.argv[7:]:
    p, rc = item.rsplit(':', 1)
    wd = os.path.join(root, p)
    policy = batch = acc = mem = ips = '-'
    status = 'ok' if rc == '0' else f'FAILED ({rc})'
    for log in sorted(glob.glob(os.path.join(wd, 'logs', '*.log'))):
        m = re.search(r'Using (Precision<[^>]*>)', open(log, errors='replace').read())
        if m:
            policy = m.group(1)
    try:
        with open(os.path.join(wd, 'config.toml'), 'rb') as f:
            c = tomllib.load(f)
        batch = int(c['train_cfg']['batch_size'])
        acc = int(c['optim_wrapper']['accumulative_counts'])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    train = []
    try:
        for line in open(os.path.join(wd, 'scalars.jsonl')):
            r = json.loads(line)
            if r.get('mode') == 'train':
                train.append(r)
    except OSError:
        pass
    if train:
        dev = [r['memory_mib'] for r in train if 'memory_mib' in r]
        rss = [r['peak_rss_mib'] for r in train if 'peak_rss_mib' in r]
        if dev:
            mem = f'{max(dev) / 1024:.2f} GiB'
        elif rss:
            mem = f'{max(rss):.1f} MiB host RSS'
            notes.add('rss')
        else:
            mem = 'n/a'
        speeds = [r['img_per_s'] for r in train if 'img_per_s' in r]
        steady = speeds[1:] if len(speeds) > 1 else speeds
        if steady:
            ips = f'{statistics.median(steady):.2f}'
        if train[-1].get('step') != iters and status == 'ok':
            status = f'stopped at {train[-1].get("step")}'
    eff = batch * acc * gpus if isinstance(batch, int) and isinstance(acc, int) else '-'
    rows.append((policy, batch, acc, mem, eff, ips, status))

cmd = f'ITERS={iters} tools/compare_precision.sh {config} {gpus}' + (f' {extra}' if extra else '')
lines = [f'Measured by `{cmd}`: {iters} iterations per policy, '
         f'{gpus} process(es); img/s = median of the logged intervals after the first (warm-up).', '',
         '| policy | batch size | accumulation | peak memory | effective batch | img/s | run |',
         '|---|---|---|---|---|---|---|']
for r in rows:
    cells = [f'`{r[0]}`' if r[0] != '-' else '-'] + [str(v) for v in r[1:]]
    lines.append('| ' + ' | '.join(cells) + ' |')
if 'rss' in notes:
    lines += ['', 'Peak memory on the host backend is the process\'s peak resident set (getrusage '
              '`ru_maxrss`: model, optimizer state, data, loader buffers), not device memory; there is no '
              'device memory to report.']
text = '\n'.join(lines) + '\n'
open(out, 'w').write(text)
print(text, end='')
print(f'(written to {out})')
EOF
[ $? -eq 0 ] || exit 1
[ $FAILED -eq 0 ] || { echo "$FAILED run(s) failed" >&2; exit 1; }
exit 0

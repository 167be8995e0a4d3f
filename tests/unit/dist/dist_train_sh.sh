#!/usr/bin/env bash
# tools/dist_train.sh with a fake training binary: per-rank variables, GPUS from the argument or
# the environment, multi-node ranks, NCCL_NVLS_ENABLE=0, and a dying rank stopping the others
# quickly with a message naming it. Usage: dist_train_sh.sh PATH/TO/dist_train.sh
set -u
SCRIPT=$1
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect_eq() { [ "$1" == "$2" ] || fail "$3: got '$1', want '$2'"; }

cat > "$T/fake" <<'FAKE'
#!/usr/bin/env bash
echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $NCCL_NVLS_ENABLE | $*" > "$FAKE_DIR/rank$RANK.txt"
echo $$ > "$FAKE_DIR/pid$RANK"
case "${FAKE_MODE:-ok}" in
  ok) exit 0 ;;
  die) if [ "$RANK" = 1 ]; then sleep 0.3; exit 7; else exec sleep 60; fi ;;
  segv) if [ "$RANK" = 0 ]; then sleep 0.3; kill -SEGV $$; else exec sleep 60; fi ;;
esac
FAKE
chmod +x "$T/fake"
export AMPKIT_BIN=$T/fake FAKE_DIR=$T
unset GPUS NNODES NODE_RANK PORT MASTER_PORT MASTER_ADDR CUDA_VISIBLE_DEVICES

# 1. CONFIG GPUS args: ranks 0..2 with torchrun's variables; the args follow "train CONFIG".
bash "$SCRIPT" cfg.toml 3 --amp --work-dir w > "$T/out" 2>&1
expect_eq "$?" 0 "exit status, all ranks fine"
for r in 0 1 2; do
  expect_eq "$(cat "$T/rank$r.txt" 2>/dev/null)" "$r 3 $r 3 127.0.0.1 29500 0 | train cfg.toml --amp --work-dir w" "rank $r variables"
done
rm -f "$T"/rank*.txt

# 2. GPUS from the environment (mmpose's scripts), PORT, a second node.
GPUS=2 NNODES=2 NODE_RANK=1 PORT=29777 MASTER_ADDR=node01 bash "$SCRIPT" cfg.toml --amp > "$T/out" 2>&1
expect_eq "$?" 0 "exit status, second node"
expect_eq "$(cat "$T/rank2.txt" 2>/dev/null)" "2 4 0 2 node01 29777 0 | train cfg.toml --amp" "node 1 rank 2"
expect_eq "$(cat "$T/rank3.txt" 2>/dev/null)" "3 4 1 2 node01 29777 0 | train cfg.toml --amp" "node 1 rank 3"
[ -e "$T/rank0.txt" ] && fail "node 1 must not start ranks 0/1"
rm -f "$T"/rank*.txt

# 3. GPUS from CUDA_VISIBLE_DEVICES when not given.
CUDA_VISIBLE_DEVICES=4,5 bash "$SCRIPT" cfg.toml > "$T/out" 2>&1
expect_eq "$?" 0 "exit status, CUDA_VISIBLE_DEVICES"
[ -e "$T/rank1.txt" ] && [ ! -e "$T/rank2.txt" ] || fail "CUDA_VISIBLE_DEVICES=4,5 should start 2 ranks"
rm -f "$T"/rank*.txt

# 4. Rank 1 of 4 dies: the others (sleeping 60 s) are stopped within seconds, exit status 7.
start=$(date +%s)
FAKE_MODE=die bash "$SCRIPT" cfg.toml 4 > "$T/out" 2>&1
st=$?
took=$(($(date +%s) - start))
expect_eq "$st" 7 "exit status when rank 1 dies"
grep -q "dist_train.sh: rank 1 (pid [0-9]*) exited with status 7; stopping the other 3 local rank(s)" "$T/out" ||
  fail "message naming rank 1: $(cat "$T/out")"
[ "$took" -lt 15 ] || fail "took $took s to stop the job"
sleep 0.2
for r in 0 2 3; do
  p=$(cat "$T/pid$r" 2>/dev/null)
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null && { fail "rank $r (pid $p) still running"; kill -9 "$p"; }
done

# 5. A rank killed by a signal is named with the signal.
FAKE_MODE=segv bash "$SCRIPT" cfg.toml 2 > "$T/out" 2>&1
expect_eq "$?" 139 "exit status when rank 0 segfaults"
grep -q "rank 0 (pid [0-9]*) was killed by signal SIGSEGV" "$T/out" || fail "signal message: $(cat "$T/out")"

# 6. Errors: bad GPUS, missing binary, no arguments.
GPUS=x bash "$SCRIPT" cfg.toml > "$T/out" 2>&1
expect_eq "$?" 2 "bad GPUS"
grep -q "GPUS='x'" "$T/out" || fail "bad GPUS message: $(cat "$T/out")"
AMPKIT_BIN=$T/none bash "$SCRIPT" cfg.toml 1 > "$T/out" 2>&1
expect_eq "$?" 2 "missing binary"
grep -q "training binary '$T/none' not found" "$T/out" || fail "missing binary message: $(cat "$T/out")"
bash "$SCRIPT" > "$T/out" 2>&1
expect_eq "$?" 2 "no arguments"

if [ $fails -ne 0 ]; then
  echo "$fails check(s) failed"
  exit 1
fi
echo "dist_train.sh: all checks passed"

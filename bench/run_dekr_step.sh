#!/usr/bin/env bash
# The DEKR-W32 training step, ampkit and PyTorch back to back in one GPU session, everything in ONE
# file: $OUT/dekr_step.txt (JSON lines of both, "# " notes and profiles, then the markdown table of
# bench/compare_dekr_step.py). Copy it to bench/results/ and the table to docs/amp_guide.md.
#
# Usage (GPU machine, repository root):  bench/run_dekr_step.sh [quick|full]
#   quick (default): ampkit fp16 at 2, 2x4, 10, 32 + bf16 32 + fp32 32, each eager AND graph;
#                    PyTorch amp_cl at 2, 2x4, 10, 32 + bf16_cl 32 + fp32 32.
#   full:            every policy at 2, 2x4, 10, 32 on both sides.
# Environment:
#   DEKR_STEP_BIN     the ampkit_dekr_step binary (carry one built on the dev machine, see the
#                     report); when unset, bench/ is built here with CMake into $GPU_BUILD/cmake.
#   AMPKIT_VARIANTS   override the ampkit list (POLICY:BATCH[xACCUM],...)
#   TORCH_VARIANTS    override the PyTorch list (amp_cl|bf16_cl|fp32|amp:BATCH[xACCUM],...)
#   PROFILE_VARIANTS  ampkit variants that also get --profile (default fp16:32,fp16:2)
#   STEPS (20), GRAPH (1: add --graph), BUDGET_S (540: the ampkit part stops starting new
#   configurations after 55 % of it, PyTorch gets the rest; the device tool allows 600 s a command).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mode=${1:-quick}
export OUT=${OUT:-/tmp/ampkit-gpu-out}
mkdir -p "$OUT"
F=$OUT/dekr_step.txt
: > "$F"
STEPS=${STEPS:-20}
BUDGET_S=${BUDGET_S:-540}
GRAPH=${GRAPH:-1}
PROFILE_VARIANTS=${PROFILE_VARIANTS:-fp16:32,fp16:2}
if [ "$mode" = full ]; then
  av=""; tv=""
  for p in fp16 bf16 fp32; do for b in 2 2x4 10 32; do av+="$p:$b,"; done; done
  for p in amp_cl bf16_cl fp32; do for b in 2 2x4 10 32; do tv+="$p:$b,"; done; done
  AMPKIT_VARIANTS=${AMPKIT_VARIANTS:-${av%,}}
  TORCH_VARIANTS=${TORCH_VARIANTS:-${tv%,}}
else
  AMPKIT_VARIANTS=${AMPKIT_VARIANTS:-fp16:2,fp16:2x4,fp16:10,fp16:32,bf16:32,fp32:32}
  TORCH_VARIANTS=${TORCH_VARIANTS:-amp_cl:2,amp_cl:2x4,amp_cl:10,amp_cl:32,bf16_cl:32,fp32:32}
fi
note() { echo "# $*" | tee -a "$F"; }

source tools/gpu_env.sh   # PATH, pip cuDNN/NCCL (CUDNN_ROOT, NCCL_ROOT, rpath), .deps
note "run_dekr_step.sh $mode, $(date -Is)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/# gpu: /' | tee -a "$F"
python3 -c 'import torch, torchvision; print("# torch", torch.__version__, "torchvision", torchvision.__version__, "cudnn", torch.backends.cudnn.version())' 2>&1 | tee -a "$F"

# ---- the ampkit binary ----
BIN=${DEKR_STEP_BIN:-}
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  B=${GPU_BUILD:-/tmp/ampkit-build}
  t0=$SECONDS
  cmake -S . -B "$B/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMPKIT_CUDA_ARCHITECTURES=90 \
        -DCMAKE_BUILD_RPATH="$rpath" > "$OUT/dekr_step_build.log" 2>&1 &&
    cmake --build "$B/cmake" --target ampkit_dekr_step >> "$OUT/dekr_step_build.log" 2>&1 ||
    { tail -40 "$OUT/dekr_step_build.log" | sed 's/^/# build: /' | tee -a "$F"; exit 1; }
  rm -f "$OUT/dekr_step_build.log"
  BIN=$B/cmake/bench/ampkit_dekr_step
  note "built $BIN in $((SECONDS - t0)) s"
fi
# The same cuDNN as PyTorch (the pip copy, 9.19 on the H200 image) when it is there.
alib=
[ -d "$SP/nvidia/cudnn/lib" ] && alib=$SP/nvidia/cudnn/lib:$SP/nvidia/cu13/lib:
CUPTI=$(ls "$SP"/nvidia/cu13/lib/libcupti.so* "$SP"/nvidia/cuda_cupti/lib/libcupti.so* /usr/local/cuda/lib64/libcupti.so* \
           /usr/local/cuda/extras/CUPTI/lib64/libcupti.so* /usr/local/cuda/targets/x86_64-linux/lib/libcupti.so* 2>/dev/null | head -1)
note "ampkit: $BIN; cupti: ${CUPTI:-none found}"

# ---- ampkit: one process per configuration (clean cudaMemGetInfo baseline, an OOM stays local) ----
start=$SECONDS
limit=$((BUDGET_S * 55 / 100))
IFS=, read -ra AV <<< "$AMPKIT_VARIANTS"
for v in "${AV[@]}"; do
  if [ $((SECONDS - start)) -ge "$limit" ]; then note "ampkit: budget spent, skipped $v"; continue; fi
  args=(--variants "$v" --steps "$STEPS")
  [ "$GRAPH" = 1 ] && args+=(--graph)
  case ",$PROFILE_VARIANTS," in *",$v,"*) args+=(--profile) ;; esac
  left=$((limit - (SECONDS - start))); [ "$left" -lt 60 ] && left=60
  note "ampkit ${args[*]}"
  LD_LIBRARY_PATH="$alib${LD_LIBRARY_PATH:-}" AMPKIT_CUPTI="$CUPTI" timeout "$left" "$BIN" "${args[@]}" >> "$F" 2>&1
  rc=$?; [ $rc -ne 0 ] && note "ampkit $v: exit $rc"
done

# ---- PyTorch, same GPU, right after ----
left=$((BUDGET_S - (SECONDS - start) - 15)); [ "$left" -lt 60 ] && left=60
note "pytorch --variants $TORCH_VARIANTS --steps $STEPS (timeout ${left} s)"
timeout "$left" python3 bench/torch_dekr_step.py --variants "$TORCH_VARIANTS" --steps "$STEPS" >> "$F" 2>&1
rc=$?; [ $rc -ne 0 ] && note "pytorch: exit $rc (rows printed before the end are kept)"

# ---- the table ----
echo >> "$F"
python3 bench/compare_dekr_step.py "$F" > "$OUT/table.md.tmp" 2>&1
cat "$OUT/table.md.tmp" >> "$F"
rm -f "$OUT/table.md.tmp"
note "done in $((SECONDS - start)) s"
exit 0

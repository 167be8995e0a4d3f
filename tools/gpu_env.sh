# Sourced (from the repository root) by the scripts that build and run on the GPU machine:
# tools/gpu_check.sh, tools/gpu_integration.sh, tools/gpu_pending.sh, bench/run_dekr_step.sh,
# bench/torch_reference/run_compare_w32.sh. One place for what docs/development.md's recipe needs:
#   - nvcc on PATH; NCCL_NVLS_ENABLE=0 (NVLink multicast stays off on the lent machines);
#   - cuDNN / NCCL from the Python environment's pip wheels (nvidia-cudnn-cu13, nvidia-nccl-cu13)
#     when present, matching the headers the Debian machines build against: CUDNN_ROOT / NCCL_ROOT
#     for the build, and `rpath` (a CMake list) so the binaries find them at run time;
#   - the header-only dependencies the GPU image lacks, carried in .deps/include.
# Sets: SP (that site-packages, or empty), rpath (possibly empty).
export PATH=/usr/local/cuda/bin:$PATH NCCL_NVLS_ENABLE=0
SP=
for _py in ${TORCH_PY:-} python3 /opt/torch/.venv/bin/python; do
  command -v "$_py" > /dev/null 2>&1 || continue
  _sp=$("$_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || continue
  if [ -d "$_sp/nvidia/cudnn/lib" ]; then SP=$_sp; break; fi
done
unset _py _sp
rpath=
if [ -n "$SP" ]; then
  export CUDNN_ROOT=$SP/nvidia/cudnn NCCL_ROOT=$SP/nvidia/nccl
  rpath="$SP/nvidia/cudnn/lib;$SP/nvidia/nccl/lib;$SP/nvidia/cu13/lib"
fi
if [ -d .deps/include ]; then export AMPKIT_EXTRA_INCLUDE=$PWD/.deps/include; fi

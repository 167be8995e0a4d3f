#!/usr/bin/env python3
"""tools/sanitizer_report.py on logs shaped like compute-sanitizer's (CUDA 13.0; the report layouts
are those of the H200 runs in bench/results/sanitize_h200_20261130_1916.md): library-internal
reports pass, ampkit's fail, a print limit or a missing summary leaves nothing proven."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "sanitizer_report.py")

BANNER = "========= COMPUTE-SANITIZER\n"


def initcheck_block(kernel, launcher, addr):
    """An uninitialised-read report with the saved host backtrace below the driver."""
    return (
        "========= Uninitialized __global__ memory read of size 2 bytes\n"
        f"=========     at {kernel}+0x440\n"
        "=========     by thread (32,0,0) in block (0,0,0)\n"
        f"=========     Address 0x{addr:x}\n"
        "=========     Saved host backtrace up to driver entry point at kernel launch time\n"
        "=========         Host Frame: cuLaunchKernel [0x39fb94] in libcuda.so.1\n"
        f"=========         Host Frame:  [0x35cee13] in {launcher}\n"
        "=========         Host Frame: main [0x8a254] in test_gpu_models\n"
        "========= \n")


def race_block(kernel):
    """A racecheck analysis-mode report (no host backtrace)."""
    return (f"========= Error: Race reported between Write access at {kernel}+0x2950\n"
            f"=========     and Read access at {kernel}+0xac0 [16 hazards]\n"
            "========= \n")


CUDNN_PAD = ("void nhwcAddPaddingKernel<__half, __half, float, (bool)0, (cudnnKernelDataType_t)0>"
             "(int, int, const T1 *, T2 *, cudnn::reduced_divisor)")
OUR_KERNEL = "void ampkit::cuda::detail::bn_stats_partial<__half, (int)8>(const T1 *, long, int, int, float *)"


def run(text, *extra):
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        p = subprocess.run([sys.executable, TOOL, path, *extra], capture_output=True, text=True)
        return p.returncode, p.stdout + p.stderr
    finally:
        os.unlink(path)


def main():
    fails = []

    def check(name, cond, out):
        print(("PASS: " if cond else "FAIL: ") + name)
        if not cond:
            fails.append(name)
            print(out)

    # ampkit's AMPKIT_SANITIZER_TRACE lines: the conv's tensors, then the workspace cuDNN gets.
    trace = ("ampkit-trace: conv2d_backward_filter x=0x1000+512 dy=0x2000+256 dw=0x3000+64\n"
             "ampkit-trace: workspace ws=0x7f00+4096\n")
    lib = BANNER + trace + "".join(initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x7f00 + 2 * i)
                                   for i in range(3)) + "========= ERROR SUMMARY: 3 errors\n"
    rc, out = run(lib)
    check("cuDNN reading its own workspace: passes, listed as library-internal", rc == 0
          and "library-internal 3" in out and "libcudnn_engines_precompiled" in out
          and "nhwcAddPaddingKernel" in out and "workspace 3" in out, out)

    on_x = BANNER + trace + initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x1000 + 6) + \
        "========= ERROR SUMMARY: 1 error\n"
    rc, out = run(on_x)
    check("cuDNN reading a tensor ampkit passed in fails, named by call and tensor", rc == 1
          and "library on ampkit data or unknown memory 1" in out and "conv2d_backward_filter:x 1" in out, out)

    untraced = BANNER + initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x7f00) + \
        "========= ERROR SUMMARY: 1 error\n"
    rc, out = run(untraced)
    check("a library read without trace lines (owner unknown) fails", rc == 1
          and "untraced address 1" in out, out)

    # The newest range wins: the workspace's bytes handed out again as a tensor of a later call.
    reused = BANNER + trace + "ampkit-trace: conv2d_forward x=0x7f00+128 w=0x5000+64 y=0x6000+64\n" + \
        initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x7f10) + "========= ERROR SUMMARY: 1 error\n"
    rc, out = run(reused)
    check("an address is attributed to the newest traced range holding it", rc == 1
          and "conv2d_forward:x 1" in out, out)

    ours = BANNER + initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x10) + \
        initcheck_block(OUR_KERNEL, "test_gpu_models", 0x20) + "========= ERROR SUMMARY: 2 errors\n"
    rc, out = run(ours)
    check("a report from a kernel ampkit launched fails", rc == 1 and "ampkit 1" in out
          and "ampkit::cuda::detail::bn_stats_partial" in out, out)

    cudart = BANNER + initcheck_block(OUR_KERNEL, "libcudart.so.13", 0x30) + "========= ERROR SUMMARY: 1 error\n"
    rc, out = run(cudart)
    check("a launch through libcudart counts as ampkit's", rc == 1 and "ampkit 1" in out, out)

    limited = BANNER + initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x40) + \
        "========= ERROR SUMMARY: 12910 errors\n"
    rc, out = run(limited)
    check("reports beyond the print limit are unclassified and fail", rc == 1 and "unclassified 12909" in out, out)

    cut = BANNER + initcheck_block(CUDNN_PAD, "libcudnn_engines_precompiled.so.9", 0x50)
    rc, out = run(cut)
    check("a log without the tool's summary (cut off) fails", rc == 1 and "no summary" in out, out)

    races = BANNER + race_block("nvjet_sm90_hsh_32x64_64x16_1x1_h_badd_NTN") + \
        "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n"
    rc, out = run(races)
    check("racecheck: a cuBLASLt (nvjet) kernel's own race is library-internal", rc == 0 and "library-internal 1" in out,
          out)

    our_race = BANNER + race_block("void ampkit::cuda::kernels::deform_fused_backward_kernel<__half>(int)") + \
        "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n"
    rc, out = run(our_race)
    check("racecheck: a race in an ampkit kernel fails", rc == 1 and "ampkit 1" in out, out)

    capture = BANNER + (
        '========= Program hit cudaErrorStreamCaptureUnsupported (error 900) due to "operation not permitted when '
        'stream is capturing" on CUDA API call to cudaMalloc.\n'
        "=========     Saved host backtrace up to driver entry point at error\n"
        "=========         Host Frame: ampkit::CachingAllocator<ampkit::cuda::RawCudaMemory>::allocate(unsigned long, "
        "CUstream_st*) [0x1a5b8c] in test_gpu_train\n"
        "========= \n"
        '========= Program hit cudaErrorStreamCaptureInvalidated (error 901) due to "operation failed due to a '
        'previous error during capture" on CUDA API call to cudaStreamEndCapture.\n'
        "========= \n"
        "========= ERROR SUMMARY: 2 errors\n")
    rc, out = run(capture)
    check("memcheck: a global-mode capture's API errors are counted as the capture fallback and fail by default",
          rc == 1 and "capture fallback 2" in out and "cudaErrorStreamCaptureUnsupported" in out, out)
    rc, out = run(capture, "--allow-capture-fallback")
    check("--allow-capture-fallback passes a log whose only reports are the fallback's", rc == 0, out)
    rc, out = run(capture.replace("ERROR SUMMARY: 2 errors", "ERROR SUMMARY: 3 errors"), "--allow-capture-fallback")
    check("--allow-capture-fallback still fails on a report beyond those printed", rc == 1, out)

    clean = BANNER + ("========= Error: process didn't terminate successfully\n"
                      "========= Target application returned an error\n"
                      "========= ERROR SUMMARY: 0 errors\n")
    rc, out = run(clean)
    check("status lines are not reports: a clean log passes", rc == 0 and "0 printed" in out, out)

    rc, out = run("hello\n")
    check("not a compute-sanitizer log: exit 2 with a message", rc == 2 and "not a compute-sanitizer log" in out, out)

    rc, out = run(lib, "--json")
    check("--json summary", rc == 0 and '"library": 3' in out and '"ampkit": 0' in out
          and '"traced_ranges": 4' in out, out)

    print(f"test_sanitizer_report: {len(fails)} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Sort the reports of one compute-sanitizer log by who launched the kernel that made them.

    tools/sanitizer_report.py LOG [--json]

compute-sanitizer (memcheck, racecheck, initcheck) reports every hazard it sees, including those
inside the kernels of NVIDIA's own libraries (cuDNN engines, cuBLASLt, NCCL), whose device code
ampkit neither writes nor can change. Issue 12 excepts such library-internal reports (it names
NCCL); this script makes the distinction mechanical instead of a reading of the log by hand.

Each report block of the log (from a line that opens a report to the next one) is classified by
the module that launched its kernel: the first host frame of the saved backtrace below the CUDA
driver (`cuLaunchKernel ... in libcuda.so`). A module named like a CUDA library (libcudnn*,
libcublas*, libnccl*, libcufft*, libcurand*, libcusparse*, libcusolver*) makes the report
library-internal; any other module (the test binary, dekr_amp, libcudart that ampkit's own
launches go through) makes it ampkit's. A block without a host backtrace falls back to the
kernel's name: NVIDIA's library kernels carry recognisable names (cudnn::, nvjet_, cutlass,
xmma, nccl...); anything else counts as ampkit's.

Reports the tool counted but did not print (its --print-limit) cannot be classified and count as
"unclassified": run with a print limit above the error count (tools/sanitize_gpu.sh does when
SANITIZE_CLASSIFY=1).

Which reports the exception may cover is the caller's decision: a racecheck hazard lives inside
one kernel, so a library kernel's own hazard is the library's; an initcheck or memcheck report in
a library kernel may be a read of what ampkit passed in (tools/sanitize_gpu.sh excepts racecheck
only).

Exit status: 0 when the log is complete (it has the tool's summary), no report is ampkit's and
none is unclassified (library-internal ones are listed, not failed); 1 otherwise; 2 on a file
that is not a compute-sanitizer log.
"""
import argparse
import json
import re
import sys
from collections import Counter

LIBRARY_MODULE = re.compile(r"lib(cudnn|cublas|nccl|cufft|curand|cusparse|cusolver|nvjitlink)[A-Za-z0-9_]*\.so")
LIBRARY_KERNEL = re.compile(
    r"^(void\s+)?(cudnn::|cudnn_|nvjet_|cutlass|sm\d+_xmma|xmma_|ncclDevKernel|ncclKernel|nccl|cublas|"
    r"nhwcAddPaddingKernel|nhwcToNchwKernel|nchwToNhwcKernel|gemv|gemmk|splitKreduce)")
# A line that opens a report (memcheck / initcheck / racecheck; host-API errors too).
OPENS = re.compile(r"^========= (Invalid |Uninitialized |Race reported|Error: Race reported|Warning: |"
                   r"Program hit |Host API |Malloc/Free error|Cuda API error|Barrier error|Leaked )")
# Status lines that are not reports.
STATUS = re.compile(r"^========= (Error: process didn't terminate|Target application returned|"
                    r"ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|COMPUTE-SANITIZER)")
KERNEL_AT = re.compile(r"^=========\s+(?:at|in)\s+(.+?)(?:\+0x[0-9a-f]+)?$")
RACE_AT = re.compile(r"access at (?:0x[0-9a-f]+ in )?(.+?)(?:\+0x[0-9a-f]+)?(?: in \S+:\d+)?(?: \[\d+ hazards?\])?$")
HOST_FRAME = re.compile(r"Host Frame:.* in (\S+)\s*$")


def kernel_short(name):
    """`void ns::kern<T, ...>(args)` -> `ns::kern`."""
    name = re.sub(r"^void\s+", "", name.strip())
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            if depth == 0 and out:
                break
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip() or name[:80]


def classify_block(lines):
    kernel = None
    for ln in lines:
        m = KERNEL_AT.match(ln)
        if m and kernel is None:
            kernel = m.group(1)
        if kernel is None and "access at" in ln:
            m = RACE_AT.search(ln)
            if m:
                kernel = m.group(1)
    # The first host frame below the driver's launch entry point.
    module = None
    frames = [HOST_FRAME.search(ln) for ln in lines if "Host Frame:" in ln]
    frames = [f.group(1) for f in frames if f]
    for i, mod in enumerate(frames):
        if mod.startswith("libcuda.so"):
            continue
        module = mod
        break
    if module is not None:
        lib = LIBRARY_MODULE.search(module)
        origin = lib.group(0) if lib else "ampkit"
    elif kernel and LIBRARY_KERNEL.match(re.sub(r"^void\s+", "", kernel.strip())):
        origin = "library kernel (no backtrace)"
    else:
        origin = "ampkit"
    return origin, kernel_short(kernel) if kernel else "?"


def parse(text):
    if "COMPUTE-SANITIZER" not in text:
        raise ValueError("not a compute-sanitizer log (no COMPUTE-SANITIZER banner)")
    blocks, cur = [], None
    for ln in text.splitlines():
        if not ln.startswith("========="):
            continue
        if OPENS.match(ln) and not STATUS.match(ln):
            if cur:
                blocks.append(cur)
            cur = [ln]
        elif STATUS.match(ln):
            if cur:
                blocks.append(cur)
            cur = None
        elif cur is not None:
            cur.append(ln)
    if cur:
        blocks.append(cur)
    counted = 0
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    if m:
        counted = sum(int(x) for x in m)
    r = re.findall(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    if r:
        counted = max(counted, sum(int(e) + int(w) for e, w in r))
    complete = bool(m or r)  # a run cut off before its end prints no summary
    origins, kernels = Counter(), Counter()
    for b in blocks:
        origin, kern = classify_block(b)
        origins[origin] += 1
        kernels[(origin, kern)] += 1
    printed = len(blocks)
    ampkit = origins.get("ampkit", 0)
    library = printed - ampkit
    return {
        "complete": complete,
        "counted": counted,
        "printed": printed,
        "ampkit": ampkit,
        "library": library,
        "unclassified": max(0, counted - printed),
        "by_origin": dict(origins),
        "by_kernel": [{"origin": o, "kernel": k, "reports": n} for (o, k), n in kernels.most_common()],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args()
    try:
        with open(a.log, errors="replace") as f:
            s = parse(f.read())
    except (OSError, ValueError) as e:
        print(f"sanitizer_report: {a.log}: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(s, indent=1))
    else:
        counted = s["counted"] if s["complete"] else "no summary (cut off?),"
        print(f"{a.log}: {counted} counted, {s['printed']} printed: ampkit {s['ampkit']}, "
              f"library-internal {s['library']}, unclassified {s['unclassified']}")
        for row in s["by_kernel"][:10]:
            print(f"  {row['reports']:7d}  {row['origin']:32s} {row['kernel']}")
    return 0 if s["complete"] and s["ampkit"] == 0 and s["unclassified"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

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

Where a report names a device address (memcheck, initcheck), the log may also carry the lines
`ampkit-trace: WHAT name=0xADDR+BYTES ...` that ampkit prints with AMPKIT_SANITIZER_TRACE=1 (the
tensors of each conv call and every workspace; backend/cuda/sanitizer_marks.cuh). Each such
report is then attributed to the newest traced range before it that holds its address: a
library kernel's uninitialised read inside a *workspace* range reads the library's own scratch
(undefined on entry by the API's contract, so unwritten there only if the library did not write
it or the tool did not see the store), while one inside a tensor ampkit passed in is a question
about ampkit's data.

Reports the tool counted but did not print (its --print-limit) cannot be classified and count as
"unclassified": run with a print limit above the error count (tools/sanitize_gpu.sh does when
SANITIZE_CLASSIFY=1).

Which reports are library-internal: a racecheck hazard in a library kernel (a shared-memory
hazard lives inside one kernel); a memcheck or initcheck report in a library kernel only when
its address lies in a traced workspace range. A library kernel's report on an untraced address
or on a tensor ampkit passed in counts as "library kernel, ampkit data" and fails.

--allow-capture-fallback: memcheck's "Program hit cudaErrorStreamCaptureUnsupported /
cudaErrorStreamCaptureInvalidated" reports are the API errors of a global-mode CUDA graph capture
that met a call relaxed mode permits (a cudaMalloc of the caching allocator); GraphStep
(backend/cuda/graph_step.cuh) tries global mode first on purpose, to surface hidden
synchronisations, and captures again in relaxed mode. They are always counted under
"capture fallback (API error)"; with the flag they do not fail the log.

Exit status: 0 when the log is complete (it has the tool's summary), and every report is
library-internal in that sense (listed, not failed); 1 otherwise (an ampkit kernel's report, a
library report on ampkit's data or an unknown address, reports beyond the print limit); 2 on a
file that is not a compute-sanitizer log.
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
CAPTURE_API_ERROR = re.compile(r"^========= Program hit (cudaErrorStreamCaptureUnsupported|"
                               r"cudaErrorStreamCaptureInvalidated) ")
ADDRESS = re.compile(r"^=========\s+Address (0x[0-9a-f]+)", re.I)
TRACE = re.compile(r"ampkit-trace: (\S+)((?: \w+=(?:0x[0-9a-f]+|\(nil\)|0)\+\d+)+)\s*$", re.I)
TRACE_RANGE = re.compile(r" (\w+)=(0x[0-9a-f]+|\(nil\)|0)\+(\d+)", re.I)


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


def owner_of(address, ranges, upto):
    """The newest traced range among ranges[:upto] holding `address`: 'WHAT:name', or None."""
    for i in range(upto - 1, -1, -1):  # no slice: a log has tens of thousands of reports and ranges
        what, name, start, size = ranges[i]
        if start <= address < start + size:
            return what if what == "workspace" else f"{what}:{name}"
    return None


def parse(text):
    if "COMPUTE-SANITIZER" not in text:
        raise ValueError("not a compute-sanitizer log (no COMPUTE-SANITIZER banner)")
    blocks, cur = [], None
    ranges = []  # (what, name, start, bytes) in log order, from ampkit-trace lines
    for ln in text.splitlines():
        t = TRACE.search(ln)
        if t:
            for name, addr, size in TRACE_RANGE.findall(t.group(2)):
                if addr.startswith("0x") and int(size) > 0:
                    ranges.append((t.group(1), name, int(addr, 16), int(size)))
            continue
        if not ln.startswith("========="):
            continue
        if OPENS.match(ln) and not STATUS.match(ln):
            if cur:
                blocks.append(cur)
            cur = (len(ranges), [ln])
        elif STATUS.match(ln):
            if cur:
                blocks.append(cur)
            cur = None
        elif cur is not None:
            cur[1].append(ln)
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
    origins, kernels, owners = Counter(), Counter(), Counter()
    library_on_ampkit_data = 0
    capture_fallback = 0
    for upto, b in blocks:
        api = CAPTURE_API_ERROR.match(b[0])
        if api:
            capture_fallback += 1
            origins["capture fallback (API error)"] += 1
            kernels[("capture fallback (API error)", api.group(1))] += 1
            continue
        origin, kern = classify_block(b)
        race = "Race reported" in b[0]
        addr = next((int(m.group(1), 16) for m in map(ADDRESS.match, b) if m), None)
        owner = None
        if addr is not None:
            owner = owner_of(addr, ranges, upto) or "untraced address"
            owners[owner] += 1
        if origin != "ampkit" and not race and owner != "workspace":
            # a library kernel touching memory that is not its own scratch (or no address known)
            origin = "library kernel, ampkit data" if owner not in (None, "untraced address") else \
                "library kernel, address not traced"
            library_on_ampkit_data += 1
        origins[origin] += 1
        kernels[(origin, kern)] += 1
    printed = len(blocks)
    ampkit = origins.get("ampkit", 0)
    library = printed - ampkit - library_on_ampkit_data - capture_fallback
    return {
        "complete": complete,
        "counted": counted,
        "printed": printed,
        "ampkit": ampkit,
        "library": library,
        "library_on_ampkit_data": library_on_ampkit_data,
        "capture_fallback": capture_fallback,
        "unclassified": max(0, counted - printed),
        "traced_ranges": len(ranges),
        "by_origin": dict(origins),
        "by_owner": dict(owners),
        "by_kernel": [{"origin": o, "kernel": k, "reports": n} for (o, k), n in kernels.most_common()],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--allow-capture-fallback", action="store_true",
                    help="do not fail on the API errors of a global-mode graph capture that falls back")
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
              f"library-internal {s['library']}, library on ampkit data or unknown memory "
              f"{s['library_on_ampkit_data']}, capture fallback {s['capture_fallback']}, "
              f"unclassified {s['unclassified']}")
        for row in s["by_kernel"][:10]:
            print(f"  {row['reports']:7d}  {row['origin']:36s} {row['kernel']}")
        if s["by_owner"]:
            print(f"  addresses ({s['traced_ranges']} traced ranges): " +
                  ", ".join(f"{k} {v}" for k, v in sorted(s["by_owner"].items(), key=lambda kv: -kv[1])))
    ok = (s["complete"] and s["ampkit"] == 0 and s["library_on_ampkit_data"] == 0 and s["unclassified"] == 0
          and (a.allow_capture_fallback or s["capture_fallback"] == 0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

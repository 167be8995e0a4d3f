#!/usr/bin/env python3
"""PyTorch reference for bench/ops_bench.cu (area nn), run on the same GPU in the same session.

Times the same ops at the same DEKR-W32 512x512 shapes the way mmpose runs them under `--amp`:
channels_last, autocast fp16 (or bf16), fp32 parameters, BN in training mode, cudnn.benchmark on.
Each op forward, and forward+backward (input and parameter gradients), median ms over CUDA events.
Op names match ops_bench.cu exactly, so the two JSON files join on "op".

    ./build/bench/ampkit_ops_bench --dtype fp16 > /tmp/ampkit_ops.json
    python3 bench/torch_ops_bench.py --ampkit-json /tmp/ampkit_ops.json \
        --out bench/results/ops_$(date +%Y%m%d).json

With --ampkit-json the output holds both sets of numbers and speed-ups torch_ms / ampkit_ms
(> 1 means ampkit is faster).
"""

import argparse
import datetime
import json
import sys

import torch
import torch.nn as nn

# (name, kind, args): conv args = (H, C, K, R, stride, groups, bias); bn args = (H, C, epilogue);
# elementwise args = (H, C, n_inputs, relu). Keep in step with register_nn() in ops_bench.cu.
OPS = [
    ("conv3x3 s2 3->64 (stem1)", "conv", (512, 3, 64, 3, 2, 1, False)),
    ("conv3x3 s2 64->64 (stem2)", "conv", (256, 64, 64, 3, 2, 1, False)),
    ("conv1x1 256->64 (bottleneck)", "conv", (128, 256, 64, 1, 1, 1, False)),
    ("conv3x3 64->64 (bottleneck)", "conv", (128, 64, 64, 3, 1, 1, False)),
    ("conv1x1 64->256 (bottleneck)", "conv", (128, 64, 256, 1, 1, 1, False)),
    ("conv3x3 32->32 (branch1/4)", "conv", (128, 32, 32, 3, 1, 1, False)),
    ("conv3x3 64->64 (branch1/8)", "conv", (64, 64, 64, 3, 1, 1, False)),
    ("conv3x3 128->128 (branch1/16)", "conv", (32, 128, 128, 3, 1, 1, False)),
    ("conv3x3 256->256 (branch1/32)", "conv", (16, 256, 256, 3, 1, 1, False)),
    ("conv3x3 s2 32->64 (fuse down)", "conv", (128, 32, 64, 3, 2, 1, False)),
    ("conv1x1 64->32 (fuse up)", "conv", (64, 64, 32, 1, 1, 1, False)),
    ("conv1x1 480->32 (head heatmap)", "conv", (128, 480, 32, 1, 1, 1, False)),
    ("conv1x1 480->255 (head offset)", "conv", (128, 480, 255, 1, 1, 1, False)),
    ("conv3x3 g17 255->102 bias (adaptive transform)", "conv", (128, 255, 102, 3, 1, 17, True)),
    ("conv1x1 g17 255->34 bias (offset out)", "conv", (128, 255, 34, 1, 1, 17, True)),
    ("conv1x1 32->18 bias (heatmap out)", "conv", (128, 32, 18, 1, 1, 1, True)),
    ("bn_relu C64 (stem1)", "bn", (256, 64, "relu")),
    ("bn C32 (branch1/4)", "bn", (128, 32, "none")),
    ("bn_relu C32 (branch1/4)", "bn", (128, 32, "relu")),
    ("bn_add_relu C32 (branch1/4)", "bn", (128, 32, "add_relu")),
    ("bn_relu C64 (bottleneck)", "bn", (128, 64, "relu")),
    ("bn_add_relu C256 (bottleneck)", "bn", (128, 256, "add_relu")),
    ("bn_relu C255 (head offset)", "bn", (128, 255, "relu")),
    ("bn_add_relu C255 (adaptive block)", "bn", (128, 255, "add_relu")),
    ("relu C32", "ew", (128, 32, 1, True)),
    ("add C32", "ew", (128, 32, 2, False)),
    ("sum3_relu C32 (fuse)", "ew", (128, 32, 3, True)),
]


def time_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def act(shape, dtype, grad=True):
    t = (torch.rand(shape, device="cuda") * 2 - 1).to(dtype).contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def make(kind, args, batch, dtype):
    """Returns (fwd, fwd_bwd) closures for one op, as eager mmpose runs it under autocast."""
    ac = dict(device_type="cuda", dtype=dtype)
    if kind == "conv":
        h, c, k, r, stride, groups, bias = args
        conv = nn.Conv2d(c, k, r, stride, r // 2, groups=groups, bias=bias).cuda().to(memory_format=torch.channels_last)
        x = act((batch, c, h, h), dtype)
        with torch.autocast(**ac):
            dy = torch.rand_like(conv(x)) * 2 - 1

        def fwd():
            with torch.no_grad(), torch.autocast(**ac):
                conv(x)

        def fwd_bwd():
            x.grad = None  # as optimizer.zero_grad(set_to_none=True): no accumulate kernel
            conv.zero_grad(set_to_none=True)
            with torch.autocast(**ac):
                y = conv(x)
            y.backward(dy)

        return fwd, fwd_bwd
    if kind == "bn":
        h, c, epi = args
        bn = nn.BatchNorm2d(c).cuda().train()
        relu = nn.ReLU(inplace=True)
        x = act((batch, c, h, h), dtype)
        res = act((batch, c, h, h), dtype)
        dy = torch.rand_like(x) * 2 - 1

        def body():
            with torch.autocast(**ac):
                y = bn(x)
                if epi == "add_relu":
                    y = y + res  # BasicBlock: out += identity; relu(out)
                if epi != "none":
                    y = relu(y)
            return y

        def fwd():
            with torch.no_grad():
                body()

        def fwd_bwd():
            x.grad = res.grad = None
            bn.zero_grad(set_to_none=True)
            body().backward(dy)

        return fwd, fwd_bwd
    h, c, n, relu_on = args
    xs = [act((batch, c, h, h), dtype) for _ in range(n)]
    dy = torch.rand_like(xs[0]) * 2 - 1

    def body():
        y = xs[0]
        for t in xs[1:]:
            y = y + t
        return torch.relu(y) if relu_on else y

    def fwd():
        with torch.no_grad():
            body()

    def fwd_bwd():
        for t in xs:
            t.grad = None
        body().backward(dy)

    return fwd, fwd_bwd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--only", default="")
    ap.add_argument("--ampkit-json", help="output of ampkit_ops_bench to join with")
    ap.add_argument("--out", help="write the combined JSON here (else stdout)")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    dtype = torch.float16 if a.dtype == "fp16" else torch.bfloat16
    rows = []
    for name, kind, args in OPS:
        if a.only and a.only not in name:
            continue
        fwd, fwd_bwd = make(kind, args, a.batch, dtype)
        rows.append({"op": name, "ms_fwd": round(time_ms(fwd, max(20, a.iters)), 4),
                     "ms_fwd_bwd": round(time_ms(fwd_bwd, max(20, a.iters)), 4)})
        print(f"{name}: {rows[-1]['ms_fwd']:.3f} / {rows[-1]['ms_fwd_bwd']:.3f} ms", file=sys.stderr)
        torch.cuda.empty_cache()
    out = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "dtype": a.dtype,
        "batch": a.batch,
        "torch_results": rows,
    }
    if a.ampkit_json:
        with open(a.ampkit_json) as f:
            amp = json.load(f)
        out["ampkit"] = {k: v for k, v in amp.items() if k != "results"}
        by_op = {r["op"]: r for r in amp["results"]}
        joined = []
        for r in rows:
            m = by_op.get(r["op"])
            if not m:
                continue
            joined.append({"op": r["op"], "shape": m.get("shape", ""),
                           "ampkit_ms_fwd": m["ms_fwd"], "torch_ms_fwd": r["ms_fwd"],
                           "speedup_fwd": round(r["ms_fwd"] / max(m["ms_fwd"], 1e-9), 3),
                           "ampkit_ms_fwd_bwd": m["ms_fwd_bwd"], "torch_ms_fwd_bwd": r["ms_fwd_bwd"],
                           "speedup_fwd_bwd": round(r["ms_fwd_bwd"] / max(m["ms_fwd_bwd"], 1e-9), 3)})
        out["comparison"] = joined
    text = json.dumps(out, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

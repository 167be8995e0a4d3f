#!/usr/bin/env python3
"""PyTorch reference for bench/sampling_bench.cu, run on the same GPU in the same session.

Times, at DEKR-W32 512x512 shapes (batch 32), what mmpose runs under `--amp` (autocast fp16,
channels_last): torchvision deform_conv2d (autocast runs it in fp32) forward and forward+backward,
the same with mmpose's AdaptiveActivationBlock offset construction, the neck's resize+concat
forward+backward, and nearest upsampling x2/x4/x8 forward+backward. Median ms over CUDA events.

    ./build/bench/sampling_bench --dtype fp16 > /tmp/ampkit.json
    python3 bench/torch_sampling_bench.py --ampkit-json /tmp/ampkit.json \
        --out bench/results/sampling_$(date +%Y%m%d).json

With --ampkit-json the output holds both sets of numbers and the speed-up torch_ms / ampkit_ms.
"""

import argparse
import datetime
import json
import sys

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--ampkit-json")
    ap.add_argument("--out")
    args = ap.parse_args()
    dev = torch.device("cuda")
    dt = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    B, G = args.batch, 17
    cl = torch.channels_last
    res = {}

    def ac():
        return torch.autocast("cuda", dtype=dt)

    # deformable conv (the module's inputs are autocast fp16 activations; torchvision casts to fp32)
    x = torch.randn(B, 255, 128, 128, device=dev, dtype=dt).to(memory_format=cl).requires_grad_(True)
    off = (torch.rand(B, 2 * G * 9, 128, 128, device=dev, dtype=dt) * 4 - 2).to(memory_format=cl).requires_grad_(True)
    w = (torch.randn(255, 15, 3, 3, device=dev) * 0.1).requires_grad_(True)
    dy = torch.randn(B, 255, 128, 128, device=dev, dtype=dt).to(memory_format=cl)

    def dc_fwd():
        with ac():
            return deform_conv2d(x, off, w, None, padding=1)

    def dc_fwd_bwd():
        y = dc_fwd()
        y.backward(dy.to(y.dtype))

    with torch.no_grad():
        res["deform_conv2d_fwd"] = time_ms(dc_fwd, args.iters)
    res["deform_conv2d_fwd_bwd"] = time_ms(dc_fwd_bwd, args.iters)

    affine = torch.randn(B, 6 * G, 128, 128, device=dev, dtype=dt).to(memory_format=cl).requires_grad_(True)
    regular = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1],
                            [1, 1, 1, 1, 1, 1, 1, 1, 1]], device=dev).float()

    def aab_fwd_bwd():
        with ac():
            m = affine.permute(0, 2, 3, 1).contiguous().view(B, 128, 128, G, 2, 3)
            o = torch.matmul(m, regular).transpose(4, 5).reshape(B, 128, 128, G * 18).permute(0, 3, 1, 2).contiguous()
            y = deform_conv2d(x, o, w, None, padding=1)
        y.backward(dy.to(y.dtype))

    res["adaptive_offsets_deform_fwd_bwd"] = time_ms(aab_fwd_bwd, args.iters)
    del x, off, dy, affine
    torch.cuda.empty_cache()

    chans = [32, 64, 128, 256]
    xs = [torch.randn(B, c, 128 >> i, 128 >> i, device=dev, dtype=dt).to(memory_format=cl).requires_grad_(True)
          for i, c in enumerate(chans)]
    dyn = torch.randn(B, 480, 128, 128, device=dev, dtype=dt).to(memory_format=cl)

    def neck():
        with ac():
            y = torch.cat([F.interpolate(t, size=(128, 128), mode="bilinear", align_corners=False) for t in xs], 1)
        y.backward(dyn)

    res["resize_concat_fwd_bwd"] = time_ms(neck, args.iters)
    for s in (2, 4, 8):
        xu = torch.randn(B, 32, 128 // s, 128 // s, device=dev, dtype=dt).to(memory_format=cl).requires_grad_(True)
        base = torch.randn(B, 32, 128, 128, device=dev, dtype=dt).to(memory_format=cl)
        dyu = torch.randn(B, 32, 128, 128, device=dev, dtype=dt).to(memory_format=cl)

        def up():
            with ac():
                y = base + F.interpolate(xu, scale_factor=s, mode="nearest")
            y.backward(dyu)

        res[f"upsample_nearest_x{s}_fwd_bwd"] = time_ms(up, args.iters)

    out = {"command": " ".join(sys.argv), "date": datetime.datetime.utcnow().isoformat() + "Z",
           "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype, "batch": B,
           "iters": args.iters, "torch_median_ms": res}
    if args.ampkit_json:
        with open(args.ampkit_json) as f:
            amp = json.load(f)
        out["ampkit"] = amp
        out["speedup_torch_over_ampkit"] = {k: res[k] / amp["median_ms"][k] for k in res if k in amp["median_ms"]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""PyTorch peer for bench/dekr_step: the DEKR-W32 training step as mmpose runs it.

HRNet-W32 + DEKR head and the DEKR loss from bench/torch_reference/ (the repo's one PyTorch DEKR:
mmpose names and semantics, torchvision deform_conv2d with mmcv's casts), Adam, synthetic random
data on the device, cudnn.benchmark on. Variants: fp32 (TF32 allowed, as PyTorch's default for convs), AMP fp16 + GradScaler
(mmpose --amp), bf16 autocast, NCHW or channels_last, micro-batch x accumulation.
Median over >= 20 steps after warm-up, CUDA events; peak allocated memory.
Prints one JSON object per variant (command, date, GPU, versions, img/s, ms/step, peak bytes).

Usage: python3 bench/torch_dekr_step.py [--variants amp_cl:32,amp_cl:10,amp_cl:2,amp_cl:2x4] [--steps 20]
"""
import argparse
import datetime
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import DEKR, dekr_loss  # noqa: E402  (the one PyTorch DEKR of the repo)


def run(variant, batch, accum, steps, size=512):
    dtype = {'fp32': None, 'amp': torch.float16, 'amp_cl': torch.float16, 'bf16_cl': torch.bfloat16}[variant]
    channels_last = variant.endswith('_cl')
    dev = 'cuda'
    torch.manual_seed(0)
    model = DEKR('w32').to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.cuda.amp.GradScaler(enabled=dtype == torch.float16)
    hs = size // 4
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(batch, 3, size, size, device=dev, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    hm_t = torch.rand(batch, 18, hs, hs, device=dev, generator=g)
    hm_w = torch.where(hm_t > 0.5, 1.0, 0.1)
    mask = (torch.rand(batch, 1, hs, hs, device=dev, generator=g) > 0.05).float()
    disp_t = torch.randn(batch, 34, hs, hs, device=dev, generator=g) * 4
    disp_w = torch.where(torch.rand(batch, 34, hs, hs, device=dev, generator=g) > 0.9, 0.1, 0.0)

    def step():
        for _ in range(accum):
            with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
                hm, disp = model(x)
            loss = dekr_loss(hm, disp, hm_t, hm_w, mask, disp_t, disp_w)[0] / accum
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        loss = step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    ms = statistics.median(times)
    return {
        'impl': 'pytorch', 'variant': variant, 'batch': batch, 'accumulate': accum, 'input': size,
        'ms_per_step': ms, 'img_per_s': batch * accum / ms * 1000.0,
        'peak_allocated_bytes': torch.cuda.max_memory_allocated(),
        'loss': float(loss), 'params': sum(p.numel() for p in model.parameters()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--variants', default='amp_cl:32,amp_cl:10,amp_cl:2,amp_cl:2x4,fp32:32,bf16_cl:32')
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--size', type=int, default=512)
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    meta = {'command': ' '.join(sys.argv), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__,
            'cudnn': torch.backends.cudnn.version()}
    for spec in a.variants.split(','):
        variant, b = spec.split(':')
        batch, accum = (int(v) for v in b.split('x')) if 'x' in b else (int(b), 1)
        r = run(variant, batch, accum, a.steps, a.size)
        r.update(meta)
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()

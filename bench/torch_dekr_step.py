#!/usr/bin/env python3
"""PyTorch peer for bench/dekr_step: the DEKR-W32 training step as mmpose runs it.

HRNet-W32 + DEKR head (torchvision deform_conv2d, mmcv-style adaptive blocks), the DEKR loss
(heatmap MSE + soft-weight smooth-L1), Adam, synthetic random data on the device, cudnn.benchmark
on. Variants: fp32 (TF32 allowed, as PyTorch's default for convs), AMP fp16 + GradScaler
(mmpose --amp), bf16 autocast, NCHW or channels_last, micro-batch x accumulation.
Median over >= 20 steps after warm-up, CUDA events; peak allocated memory.
Prints one JSON object per variant (command, date, GPU, versions, img/s, ms/step, peak bytes).

Usage: python3 bench/torch_dekr_step.py [--variants amp_cl:32,amp_cl:10,amp_cl:2,amp_cl:2x4] [--steps 20]
"""
import argparse
import datetime
import json
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import deform_conv2d


def bn(c):
    return nn.BatchNorm2d(c, momentum=0.1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, c, stride=1, down=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = bn(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = bn(c)
        self.downsample = down

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + r)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, stride=1, down=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = bn(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = bn(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = bn(c * 4)
        self.downsample = down

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + r)


class HRModule(nn.Module):
    def __init__(self, chans, n_blocks=4):
        super().__init__()
        self.n = len(chans)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(n_blocks)]) for c in chans)
        self.fuse = nn.ModuleList()
        for i in range(self.n):
            row = nn.ModuleList()
            for j in range(self.n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(chans[j], chans[i], 1, bias=False), bn(chans[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode='nearest')))
                elif j == i:
                    row.append(None)
                else:
                    ops = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = chans[i] if last else chans[j]
                        ops += [nn.Conv2d(chans[j], cout, 3, 2, 1, bias=False), bn(cout)]
                        if not last:
                            ops.append(nn.ReLU())
                    row.append(nn.Sequential(*ops))
            self.fuse.append(row)

    def forward(self, xs):
        xs = [b(x) for b, x in zip(self.branches, xs)]
        out = []
        for i in range(self.n):
            y = xs[i]
            for j in range(self.n):
                if j != i:
                    y = y + self.fuse[i][j](xs[j])
            out.append(F.relu(y))
        return out


class HRNet(nn.Module):
    def __init__(self, w=32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = bn(64)
        down = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), bn(256))
        self.layer1 = nn.Sequential(Bottleneck(64, 64, down=down), *[Bottleneck(256, 64) for _ in range(3)])
        c2, c3, c4 = [w, 2 * w], [w, 2 * w, 4 * w], [w, 2 * w, 4 * w, 8 * w]
        self.t1 = nn.ModuleList([nn.Sequential(nn.Conv2d(256, c2[0], 3, 1, 1, bias=False), bn(c2[0]), nn.ReLU()),
                                 nn.Sequential(nn.Conv2d(256, c2[1], 3, 2, 1, bias=False), bn(c2[1]), nn.ReLU())])
        self.stage2 = nn.ModuleList([HRModule(c2)])
        self.t2 = nn.Sequential(nn.Conv2d(c2[1], c3[2], 3, 2, 1, bias=False), bn(c3[2]), nn.ReLU())
        self.stage3 = nn.ModuleList([HRModule(c3) for _ in range(4)])
        self.t3 = nn.Sequential(nn.Conv2d(c3[2], c4[3], 3, 2, 1, bias=False), bn(c4[3]), nn.ReLU())
        self.stage4 = nn.ModuleList([HRModule(c4) for _ in range(3)])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        xs = [t(x) for t in self.t1]
        for m in self.stage2:
            xs = m(xs)
        xs = xs + [self.t2(xs[-1])]
        for m in self.stage3:
            xs = m(xs)
        xs = xs + [self.t3(xs[-1])]
        for m in self.stage4:
            xs = m(xs)
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [F.interpolate(x, size=size, mode='bilinear', align_corners=False)
                                    for x in xs[1:]], 1)


class AdaptiveActivationBlock(nn.Module):
    """mmpose's block: per group a 2x3 matrix [A|t] from a grouped 3x3 conv; offsets = (I+A)R + t - R."""

    def __init__(self, c, groups=17):
        super().__init__()
        self.groups = groups
        self.transform_matrix_conv = nn.Conv2d(c, 6 * groups, 3, 1, 1, groups=groups, bias=True)
        self.adapt_conv_weight = nn.Parameter(torch.empty(c, c // groups, 3, 3))
        nn.init.kaiming_uniform_(self.adapt_conv_weight, nonlinearity='relu')
        self.bn = bn(c)
        self.register_buffer('regular_matrix', torch.tensor(
            [[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1], [1] * 9], dtype=torch.float32))

    def forward(self, x):
        b, _, h, w = x.shape
        m = self.transform_matrix_conv(x)                                   # (B, 6G, H, W)
        m = m.permute(0, 2, 3, 1).reshape(b, h, w, self.groups, 2, 3)
        offset = torch.matmul(m, self.regular_matrix.to(m.dtype))         # (B,H,W,G,2,9)
        offset = offset - self.regular_matrix[:2].to(m.dtype)
        offset = offset.transpose(4, 5).reshape(b, h, w, self.groups * 18).permute(0, 3, 1, 2)
        # mmcv's DeformConv2d casts input and weight to the offset's dtype (fp16 under autocast);
        # torchvision's kernel has no autocast rule, so cast explicitly as mmcv does.
        y = deform_conv2d(x.to(offset.dtype), offset.contiguous(), self.adapt_conv_weight.to(offset.dtype),
                          padding=1)
        return F.relu(self.bn(y) + x)


class DEKRHead(nn.Module):
    def __init__(self, cin=480, k=17, hm_filters=32, disp_per_kpt=15):
        super().__init__()
        c = k * disp_per_kpt
        self.hm = nn.Sequential(nn.Conv2d(cin, hm_filters, 1, bias=False), bn(hm_filters), nn.ReLU(),
                                BasicBlock(hm_filters, hm_filters), nn.Conv2d(hm_filters, k + 1, 1))
        self.disp = nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), bn(c), nn.ReLU(),
                                  AdaptiveActivationBlock(c, k), AdaptiveActivationBlock(c, k),
                                  nn.Conv2d(c, 2 * k, 1, groups=k))

    def forward(self, x):
        return self.hm(x), self.disp(x)


class DEKR(nn.Module):
    def __init__(self, w=32):
        super().__init__()
        self.backbone = HRNet(w)
        self.head = DEKRHead(cin=15 * w)

    def forward(self, x):
        return self.head(self.backbone(x))


def dekr_loss(hm, disp, hm_t, hm_w, mask, disp_t, disp_w, beta=1 / 9, disp_weight=0.002):
    hm = hm.float()
    disp = disp.float()
    l_hm = (mask * hm_w * (hm - hm_t) ** 2).mean()
    d = (disp - disp_t).abs()
    s = torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    n_pos = (disp_w > 0).sum().clamp(min=1)
    l_disp = disp_weight * (disp_w * s).sum() / n_pos
    return l_hm + l_disp


def run(variant, batch, accum, steps, size=512):
    dtype = {'fp32': None, 'amp': torch.float16, 'amp_cl': torch.float16, 'bf16_cl': torch.bfloat16}[variant]
    channels_last = variant.endswith('_cl')
    dev = 'cuda'
    torch.manual_seed(0)
    model = DEKR().to(dev)
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
            loss = dekr_loss(hm, disp, hm_t, hm_w, mask, disp_t, disp_w) / accum
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

"""DEKR (HRNet + concat neck + DEKR head) in plain PyTorch, with mmpose's module structure so that
`state_dict()` names are mmpose's (`backbone.stage2.0.branches.1.0.conv1.weight`,
`head.displacement_conv_layers.1.adapt_conv.weight`, ...). mmpose/mmcv are not installed; this is
our own rendering of their semantics: HRNet as mmpose/models/backbones/hrnet.py, DEKRHead and
AdaptiveActivationBlock as mmpose/models/heads/hybrid_heads/dekr_head.py (offsets = M @ R with
R = [dy; dx; 1] of the 3x3 grid, no subtraction of R), mmcv's DeformConv2d through
torchvision.ops.deform_conv2d (same offset layout: (dy, dx) per tap, tap-major per group).

Configs mirror include/ampkit/models/{hrnet,dekr}.hpp: "w32", "w48", "tiny".

Numerics. By default everything is fp32. `fp16_emulation()` (a context manager) rounds to fp16
exactly where PyTorch's CUDA autocast(fp16) holds fp16 tensors: conv inputs/weights/biases and
outputs, BN outputs (statistics in fp32), every add, the bilinear resize, the affine-offset matmul,
mmcv's deformable conv (input and weight cast to the offset's dtype) - and rounds the gradient
flowing back through each of those points to fp16 as well (autograd of an fp16 tensor). Ops are
computed in fp32 between rounding points, as cuDNN / cuBLAS accumulate fp16 products in fp32.
It is the CPU stand-in for `torch.autocast("cuda", torch.float16)`: torch 1.13's CPU autocast
supports bf16 only. On a GPU use real autocast (compare_w32.py does); the emulation is a no-op
while real autocast is active (the tensors are then already fp16).
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

_EMULATE_FP16 = [False]


@contextlib.contextmanager
def fp16_emulation(enabled=True):
    """Round at autocast's fp16 points (forward values and backward gradients) inside the block."""
    old = _EMULATE_FP16[0]
    _EMULATE_FP16[0] = enabled
    try:
        yield
    finally:
        _EMULATE_FP16[0] = old


class _RoundFp16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.half().to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g.half().to(g.dtype)


def q(x):
    """fp16 rounding point (identity unless fp16_emulation() is active on an fp32 tensor)."""
    if x is None or not _EMULATE_FP16[0] or x.dtype != torch.float32:
        return x
    return _RoundFp16.apply(x)


def hrnet_config(name):
    def width(w):
        return dict(stem=64, stage1_blocks=4, stage1_channels=64,
                    stages=[(1, [4, 4], [w, 2 * w]), (4, [4] * 3, [w, 2 * w, 4 * w]),
                            (3, [4] * 4, [w, 2 * w, 4 * w, 8 * w])])
    if name == "w32":
        return width(32)
    if name == "w48":
        return width(48)
    if name == "tiny":
        return dict(stem=8, stage1_blocks=1, stage1_channels=4,
                    stages=[(1, [2, 1], [4, 8]), (1, [1, 1, 1], [4, 8, 8]), (2, [1] * 4, [4, 8, 8, 8])])
    raise ValueError(name)


def dekr_config(name):
    """(heatmap filters, displacement filters per keypoint)."""
    return {"w32": (32, 15), "w48": (48, 15), "tiny": (4, 2)}[name]


class Conv2d(nn.Conv2d):
    """nn.Conv2d with autocast's rounding points (same parameters and state-dict names)."""

    def forward(self, x):
        return q(F.conv2d(q(x), q(self.weight), q(self.bias), self.stride, self.padding, self.dilation, self.groups))


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d; under autocast cuDNN normalises in fp32 and writes the input's dtype."""

    def forward(self, x):
        return q(super().forward(x))


def conv3x3(i, o, stride=1):
    return Conv2d(i, o, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp, out, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inp, out, stride)
        self.bn1 = BatchNorm2d(out)
        self.conv2 = conv3x3(out, out)
        self.bn2 = BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(q(self.bn2(self.conv2(y)) + r))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp, out, stride=1, downsample=None):
        super().__init__()
        mid = out // 4
        self.conv1 = Conv2d(inp, mid, 1, bias=False)
        self.bn1 = BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride)
        self.bn2 = BatchNorm2d(mid)
        self.conv3 = Conv2d(mid, out, 1, bias=False)
        self.bn3 = BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(q(self.bn3(self.conv3(y)) + r))


def make_block(block, inp, out, stride=1):
    ds = None
    if stride != 1 or inp != out:
        ds = nn.Sequential(Conv2d(inp, out, 1, stride, bias=False), BatchNorm2d(out))
    return block(inp, out, stride, ds)


class HRModule(nn.Module):
    def __init__(self, in_channels, n_blocks, channels, multiscale_output=True):
        super().__init__()
        self.nb = len(channels)
        self.branches = nn.ModuleList()
        for b in range(self.nb):
            layers, inp = [], in_channels[b]
            for _ in range(n_blocks[b]):
                layers.append(make_block(BasicBlock, inp, channels[b]))
                inp = channels[b]
            self.branches.append(nn.Sequential(*layers))
        self.fuse_layers = None
        if self.nb > 1:
            self.fuse_layers = nn.ModuleList()
            for i in range(self.nb if multiscale_output else 1):
                row = []
                for j in range(self.nb):
                    if j > i:
                        row.append(nn.Sequential(Conv2d(channels[j], channels[i], 1, bias=False),
                                                 BatchNorm2d(channels[i]),
                                                 nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                    elif j == i:
                        row.append(None)
                    else:
                        seq = []
                        for k in range(i - j):
                            if k == i - j - 1:
                                seq.append(nn.Sequential(conv3x3(channels[j], channels[i], 2),
                                                         BatchNorm2d(channels[i])))
                            else:
                                seq.append(nn.Sequential(conv3x3(channels[j], channels[j], 2),
                                                         BatchNorm2d(channels[j]), nn.ReLU()))
                        row.append(nn.Sequential(*seq))
                self.fuse_layers.append(nn.ModuleList(row))
        self.relu = nn.ReLU()

    def forward(self, xs):
        xs = [self.branches[b](xs[b]) for b in range(self.nb)]
        if self.nb == 1:
            return xs
        out = []
        for i in range(len(self.fuse_layers)):
            y = 0
            for j in range(self.nb):
                y = q(y + (xs[j] if i == j else self.fuse_layers[i][j](xs[j])))
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    def __init__(self, cfg, in_channels=3):
        super().__init__()
        st = cfg["stem"]
        self.conv1 = Conv2d(in_channels, st, 3, 2, 1, bias=False)
        self.bn1 = BatchNorm2d(st)
        self.conv2 = Conv2d(st, st, 3, 2, 1, bias=False)
        self.bn2 = BatchNorm2d(st)
        self.relu = nn.ReLU()
        l1 = cfg["stage1_channels"] * 4
        blocks, inp = [], st
        for _ in range(cfg["stage1_blocks"]):
            blocks.append(make_block(Bottleneck, inp, l1))
            inp = l1
        self.layer1 = nn.Sequential(*blocks)
        pre = [l1]
        for t, (n_modules, n_blocks, ch) in enumerate(cfg["stages"]):
            setattr(self, f"transition{t + 1}", self._transition(pre, ch))
            setattr(self, f"stage{t + 2}",
                    nn.Sequential(*[HRModule(list(ch), n_blocks, ch) for _ in range(n_modules)]))
            pre = ch

    @staticmethod
    def _transition(pre, cur):
        layers = []
        for i in range(len(cur)):
            if i < len(pre):
                layers.append(nn.Sequential(conv3x3(pre[i], cur[i]), BatchNorm2d(cur[i]), nn.ReLU())
                              if cur[i] != pre[i] else None)
            else:
                seq = []
                for j in range(i + 1 - len(pre)):
                    inp = pre[-1]
                    out = cur[i] if j == i - len(pre) else inp
                    seq.append(nn.Sequential(conv3x3(inp, out, 2), BatchNorm2d(out), nn.ReLU()))
                layers.append(nn.Sequential(*seq))
        return nn.ModuleList(layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for t in range(3):
            trans, stage = getattr(self, f"transition{t + 1}"), getattr(self, f"stage{t + 2}")
            xs = [ys[i] if trans[i] is None else trans[i](ys[-1]) for i in range(len(trans))]
            ys = stage(xs)
        return ys


class ConvModule(nn.Module):
    def __init__(self, inp, out):
        super().__init__()
        self.conv = Conv2d(inp, out, 1, bias=False)
        self.bn = BatchNorm2d(out)
        self.activate = nn.ReLU()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DeformConv2d(nn.Module):
    """mmcv.ops.DeformConv2d(c, c, 3, padding=1, groups=g, deform_groups=g, bias=False)."""

    def __init__(self, channels, groups):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x, offset):
        # mmcv casts input and weight to the offset's dtype (fp16 under autocast). torchvision's
        # autocast rule then runs the kernel in fp32 on those fp16 values and returns fp16.
        x, w = q(x).to(offset.dtype), q(self.weight).to(offset.dtype)
        return q(torchvision.ops.deform_conv2d(x, offset, w, padding=(1, 1)))


class AdaptiveActivationBlock(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.groups = groups
        self.register_buffer("regular_matrix", torch.tensor(
            [[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1], [1] * 9]).float())
        self.transform_matrix_conv = Conv2d(channels, 6 * groups, 3, 1, 1, groups=groups, bias=True)
        self.adapt_conv = DeformConv2d(channels, groups)
        self.norm = BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        B, _, H, W = x.shape
        m = self.transform_matrix_conv(x).permute(0, 2, 3, 1).contiguous().view(B, H, W, self.groups, 2, 3)
        off = q(torch.matmul(m, self.regular_matrix)).transpose(4, 5).reshape(B, H, W, self.groups * 18)
        off = off.permute(0, 3, 1, 2).contiguous()
        return self.act(q(self.norm(self.adapt_conv(x, off)) + x))


class DEKRHead(nn.Module):
    def __init__(self, inp, k=17, fh=32, fd=15):
        super().__init__()
        self.heatmap_conv_layers = nn.Sequential(ConvModule(inp, fh), make_block(BasicBlock, fh, fh),
                                                 Conv2d(fh, k + 1, 1))
        c = k * fd
        self.displacement_conv_layers = nn.Sequential(ConvModule(inp, c), AdaptiveActivationBlock(c, k),
                                                      AdaptiveActivationBlock(c, k),
                                                      Conv2d(c, 2 * k, 1, groups=k))

    def forward(self, x):
        return self.heatmap_conv_layers(x), self.displacement_conv_layers(x)


class DEKR(nn.Module):
    """forward(x (N,3,H,W)) -> (heatmaps (N,K+1,H/4,W/4), displacements (N,2K,H/4,W/4))."""

    def __init__(self, name="w32"):
        super().__init__()
        cfg = hrnet_config(name)
        fh, fd = dekr_config(name)
        self.backbone = HRNet(cfg)
        self.head = DEKRHead(sum(cfg["stages"][-1][2]), 17, fh, fd)

    def forward(self, x):
        feats = self.backbone(x)
        size = feats[0].shape[2:]
        cat = torch.cat([feats[0]] + [q(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
                                      for f in feats[1:]], dim=1)
        return self.head(cat)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def init_mmpose(model, generator=None):
    """mmpose's default init, as include/ampkit/models/dekr.hpp documents it: every Conv2d
    Normal(0, 0.001) with bias 0, BN weight 1 / bias 0 (running stats 0 / 1); the deformable conv
    keeps mmcv's kaiming_uniform_(relu), U(-b, b) with b = sqrt(6 / fan_in)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.001)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, DeformConv2d):
                fan_in = m.weight.shape[1] * 9
                b = (6.0 / fan_in) ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * b)
    return model

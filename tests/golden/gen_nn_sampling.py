#!/usr/bin/python3
"""Golden values for the nn_sampling ops (upsample nearest, bilinear resize, resize+concat,
deformable conv, DEKR adaptive offsets), outputs and gradients, from PyTorch on the CPU.

Run with Debian's interpreter (torch 1.13 + torchvision 0.14, which has torchvision.ops.deform_conv2d):

    /usr/bin/python3 tests/golden/gen_nn_sampling.py

Writes tests/golden/data/nn_sampling.safetensors. Every tensor is stored NHWC (PyTorch's NCHW
permuted (0, 2, 3, 1)); conv weights are stored KRSC, i.e. PyTorch's (K, C/g, kh, kw) permuted
(0, 2, 3, 1) too. Cases named `*_f16` are fp16-emulated: every input is rounded to fp16 and the
computation runs in fp32, which is what the fp16 storage policy does. All values are stored as F32.
Gradients are taken with autograd against a random upstream gradient `dy` (also stored).
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import deform_conv2d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_io  # noqa: E402

OUT = {}


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def put(name, t):
    OUT[name] = nhwc(t)


def rand(gen, *shape, scale=1.0, f16=False):
    t = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale
    t = t.float()
    if f16:
        t = t.half().float()
    return t.requires_grad_(True)


def upsample_case(gen, name, shape, scale):
    x = rand(gen, *shape)
    y = F.interpolate(x, scale_factor=scale, mode="nearest")
    dy = rand(gen, *y.shape)
    (dx,) = torch.autograd.grad(y, x, dy)
    for k, v in (("x", x), ("y", y), ("dy", dy), ("dx", dx)):
        put(f"{name}.{k}", v)


def resize_case(gen, name, shape, size, f16=False):
    x = rand(gen, *shape, f16=f16)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    dy = rand(gen, *y.shape, f16=f16)
    (dx,) = torch.autograd.grad(y, x, dy)
    for k, v in (("x", x), ("y", y), ("dy", dy), ("dx", dx)):
        put(f"{name}.{k}", v)


def resize_concat_case(gen, name, shapes, size):
    """mmpose FeatureMapProcessor(concat=True) / DEKR's resize_concat: resize every branch to the
    first branch's size (bilinear, align_corners=False) and concatenate along channels."""
    xs = [rand(gen, *s) for s in shapes]
    y = torch.cat([F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs], dim=1)
    dy = rand(gen, *y.shape)
    dxs = torch.autograd.grad(y, xs, dy)
    put(f"{name}.y", y)
    put(f"{name}.dy", dy)
    for i, (x, dx) in enumerate(zip(xs, dxs)):
        put(f"{name}.x{i}", x)
        put(f"{name}.dx{i}", dx)


def deform_case(gen, name, n, c, k, hw, groups, offset_groups, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                dil=(1, 1), offset_scale=1.5, f16=False):
    h, w = hw
    kh, kw = kernel
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    x = rand(gen, n, c, h, w, f16=f16)
    # Offsets up to +-offset_scale pixels: many samples land between pixels, some outside the image.
    off = rand(gen, n, 2 * offset_groups * kh * kw, ho, wo, scale=offset_scale, f16=f16)
    wt = rand(gen, k, c // groups, kh, kw, scale=0.5, f16=f16)
    y = deform_conv2d(x, off, wt, None, stride=stride, padding=pad, dilation=dil)
    dy = rand(gen, *y.shape, f16=f16)
    dx, doff, dw = torch.autograd.grad(y, (x, off, wt), dy)
    for key, v in (("x", x), ("offsets", off), ("w", wt), ("y", y), ("dy", dy), ("dx", dx), ("doffsets", doff),
                   ("dw", dw)):
        put(f"{name}.{key}", v)
    OUT[f"{name}.params"] = np.array([kh, kw, stride[0], stride[1], pad[0], pad[1], dil[0], dil[1], groups,
                                      offset_groups], dtype=np.int32)


def adaptive_case(gen, name, n, groups, c_per_group, hw, f16=False):
    """mmpose AdaptiveActivationBlock's offset construction and adapt_conv, with torch ops exactly
    as dekr_head.py writes them (transform_matrix_conv output -> matmul with the regular matrix ->
    transpose -> reshape -> permute), starting from the 6G-channel conv output `affine`."""
    h, w = hw
    c = groups * c_per_group
    x = rand(gen, n, c, h, w, f16=f16)
    # A near zero (the trained regime starts at Normal(0.001)), translations up to a pixel or two.
    a_part = rand(gen, n, groups, 2, 2, h, w, scale=0.4).detach()
    t_part = rand(gen, n, groups, 2, 1, h, w, scale=1.6).detach()
    affine = torch.cat([a_part, t_part], dim=3).reshape(n, 6 * groups, h, w)
    if f16:
        affine = affine.half().float()
    affine.requires_grad_(True)
    regular_matrix = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1],
                                   [-1, 0, 1, -1, 0, 1, -1, 0, 1],
                                   [1, 1, 1, 1, 1, 1, 1, 1, 1]]).float()
    m = affine.permute(0, 2, 3, 1).contiguous().view(n, h, w, groups, 2, 3)
    offset = torch.matmul(m, regular_matrix)
    offset = offset.transpose(4, 5).reshape(n, h, w, groups * 18)
    offset = offset.permute(0, 3, 1, 2).contiguous()
    offset.retain_grad()
    wt = rand(gen, c, c_per_group, 3, 3, scale=0.5, f16=f16)
    y = deform_conv2d(x, offset, wt, None, stride=1, padding=1)
    dy = rand(gen, *y.shape, f16=f16)
    y.backward(dy)
    for key, v in (("x", x), ("affine", affine), ("offsets", offset), ("w", wt), ("y", y), ("dy", dy),
                   ("dx", x.grad), ("daffine", affine.grad), ("doffsets", offset.grad), ("dw", wt.grad)):
        put(f"{name}.{key}", v)


def main():
    gen = torch.Generator().manual_seed(20261129)
    torch.set_num_threads(1)
    upsample_case(gen, "up2", (2, 4, 3, 5), 2)
    upsample_case(gen, "up4", (1, 3, 3, 2), 4)
    upsample_case(gen, "up8", (1, 2, 2, 3), 8)
    resize_case(gen, "resize_up", (2, 3, 5, 7), (13, 11))
    resize_case(gen, "resize_down", (1, 2, 9, 10), (4, 6))
    resize_case(gen, "resize_mixed_f16", (2, 5, 4, 4), (6, 3), f16=True)
    resize_concat_case(gen, "neck", [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 2, 2), (2, 6, 1, 1)], (8, 8))
    resize_concat_case(gen, "neck_odd", [(1, 2, 13, 17), (1, 3, 7, 9), (1, 2, 4, 5), (1, 3, 2, 3)], (13, 17))
    deform_case(gen, "dc_g17", n=2, c=34, k=34, hw=(3, 4), groups=17, offset_groups=17)
    deform_case(gen, "dc_general", n=2, c=6, k=4, hw=(7, 5), groups=2, offset_groups=3, kernel=(3, 2),
                stride=(2, 1), pad=(1, 0), dil=(1, 2), offset_scale=2.5)
    deform_case(gen, "dc_g17_f16", n=1, c=51, k=51, hw=(3, 3), groups=17, offset_groups=17, f16=True)
    adaptive_case(gen, "aab", n=2, groups=17, c_per_group=2, hw=(3, 3))
    adaptive_case(gen, "aab_f16", n=1, groups=17, c_per_group=3, hw=(3, 2), f16=True)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nn_sampling.safetensors")
    golden_io.save(path, OUT, metadata={
        "generator": "tests/golden/gen_nn_sampling.py",
        "command": "/usr/bin/python3 tests/golden/gen_nn_sampling.py",
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "layout": "NHWC; weights KRSC (K, kh, kw, C/groups)",
    })
    print(f"wrote {path}: {len(OUT)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()

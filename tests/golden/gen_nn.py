"""Golden values for area nn (conv2d, batch norm, fused BN+ReLU / BN+add+ReLU) from PyTorch.

Run from the repo root with Debian's torch (CPU):  /usr/bin/python3 tests/golden/gen_nn.py
Writes tests/golden/data/nn_conv2d.safetensors and nn_batch_norm.safetensors (read by
tests/unit/nn/layers.cpp).

Layouts match ampkit: activations NHWC, conv weights KRSC = (K, R, S, C/groups), vectors 1-D.
Each case is stored under a prefix "<case>/<dtype>/" with dtype "f32" or "f16":
  f32  inputs are random floats; PyTorch computes in fp32.
  f16  "fp16-emulated": every input, weight and incoming gradient is rounded to fp16 first, then
       PyTorch computes in fp32 (what a tensor-core fp16 conv with fp32 accumulation approximates;
       ampkit's own output is then rounded to fp16 once). Values are still stored as F32.
Metadata records every case's hyper-parameters as JSON, so the C++ test needs no duplicate table.
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# name, N, C, H, W, K, (R, S), stride, pad, dilation, groups, bias
CONV_CASES = [
    ("k3s1", 2, 5, 7, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ("k3s2_odd", 2, 3, 9, 7, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, False),
    ("g17_k1", 2, 34, 5, 3, 34, (1, 1), (1, 1), (0, 0), (1, 1), 17, True),
    ("g17_k3", 2, 34, 6, 5, 51, (3, 3), (1, 1), (1, 1), (1, 1), 17, True),
    ("dil2", 1, 4, 9, 8, 3, (3, 3), (1, 1), (2, 2), (2, 2), 1, True),
    ("asym", 3, 6, 7, 9, 4, (2, 3), (2, 1), (1, 0), (1, 2), 2, False),
    ("k1s2", 2, 8, 5, 6, 5, (1, 1), (2, 2), (0, 0), (1, 1), 1, True),
]

# name, N, C, H, W
BN_CASES = [
    ("small", 2, 5, 7, 3),
    ("c17", 3, 17, 4, 5),
    ("b1_odd", 1, 6, 5, 7),
]


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def krsc(w):
    return w.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def maybe_round(t, dtype):
    return t.half().float() if dtype == "f16" else t


def gen_conv(rng_seed=1234):
    g = torch.Generator().manual_seed(rng_seed)
    tensors, meta = {}, {}
    for (name, n, c, h, w, k, (r, s), stride, pad, dil, groups, bias) in CONV_CASES:
        meta[name] = {"stride": list(stride), "pad": list(pad), "dilation": list(dil), "groups": groups, "bias": bias}
        x0 = torch.rand(n, c, h, w, generator=g) * 2 - 1
        w0 = (torch.rand(k, c // groups, r, s, generator=g) * 2 - 1) / np.sqrt(c // groups * r * s)
        b0 = torch.rand(k, generator=g) * 2 - 1
        for dt in ("f32", "f16"):
            x = maybe_round(x0.clone(), dt).requires_grad_(True)
            wt = maybe_round(w0.clone(), dt).requires_grad_(True)
            b = maybe_round(b0.clone(), dt).requires_grad_(True) if bias else None
            y = torch.nn.functional.conv2d(x, wt, b, stride=stride, padding=pad, dilation=dil, groups=groups)
            dy = maybe_round(torch.rand(y.shape, generator=g) * 2 - 1, dt)
            y.backward(dy)
            p = f"{name}/{dt}/"
            tensors[p + "x"] = nhwc(x)
            tensors[p + "w"] = krsc(wt)
            tensors[p + "y"] = nhwc(y)
            tensors[p + "dL_dy"] = nhwc(dy)
            tensors[p + "dL_dx"] = nhwc(x.grad)
            tensors[p + "dL_dw"] = krsc(wt.grad)
            if bias:
                tensors[p + "b"] = b.detach().numpy().astype(np.float32)
                tensors[p + "dL_db"] = b.grad.numpy().astype(np.float32)
    golden_io.save(os.path.join(OUT, "nn_conv2d.safetensors"), tensors,
                   {"cases": json.dumps(meta), "generator": "tests/golden/gen_nn.py", "torch": torch.__version__})
    return tensors


def gen_bn(rng_seed=99):
    g = torch.Generator().manual_seed(rng_seed)
    tensors, meta = {}, {}
    for (name, n, c, h, w) in BN_CASES:
        meta[name] = {"momentum": 0.1, "eps": 1e-5}
        # A non-zero mean and non-unit spread per channel, so normalisation does real work.
        x0 = (torch.rand(n, c, h, w, generator=g) * 2 - 1) * (0.5 + torch.rand(1, c, 1, 1, generator=g) * 2) \
            + (torch.rand(1, c, 1, 1, generator=g) * 2 - 1)
        res0 = torch.rand(n, c, h, w, generator=g) * 2 - 1
        gamma0 = torch.rand(c, generator=g) + 0.5
        beta0 = torch.rand(c, generator=g) - 0.5
        rm0 = torch.rand(c, generator=g) - 0.5
        rv0 = torch.rand(c, generator=g) + 0.5
        dy0 = torch.rand(n, c, h, w, generator=g) * 2 - 1
        for dt in ("f32", "f16"):
            p = f"{name}/{dt}/"
            x_in = maybe_round(x0.clone(), dt)
            res_in = maybe_round(res0.clone(), dt)
            dy = maybe_round(dy0.clone(), dt)
            tensors[p + "x"] = nhwc(x_in)
            tensors[p + "residual"] = nhwc(res_in)
            tensors[p + "dL_dy"] = nhwc(dy)
            tensors[p + "gamma"] = gamma0.numpy()
            tensors[p + "beta"] = beta0.numpy()
            tensors[p + "running_mean_in"] = rm0.numpy()
            tensors[p + "running_var_in"] = rv0.numpy()
            for epi in ("none", "relu", "add_relu"):
                bn = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
                with torch.no_grad():
                    bn.weight.copy_(gamma0)
                    bn.bias.copy_(beta0)
                    bn.running_mean.copy_(rm0)
                    bn.running_var.copy_(rv0)
                bn.train()
                x = x_in.clone().requires_grad_(True)
                res = res_in.clone().requires_grad_(True)
                z = bn(x)
                if epi == "add_relu":
                    z = z + res
                y = torch.relu(z) if epi != "none" else z
                y.backward(dy)
                q = p + epi + "/"
                tensors[q + "y"] = nhwc(y)
                tensors[q + "dL_dx"] = nhwc(x.grad)
                tensors[q + "dL_dgamma"] = bn.weight.grad.numpy().copy()
                tensors[q + "dL_dbeta"] = bn.bias.grad.numpy().copy()
                if epi == "add_relu":
                    tensors[q + "dL_dresidual"] = nhwc(res.grad)
                if epi == "none":
                    xd = x_in.double()
                    mean = xd.mean(dim=(0, 2, 3))
                    var = xd.var(dim=(0, 2, 3), unbiased=False)
                    tensors[p + "save_mean"] = mean.float().numpy()
                    tensors[p + "save_invstd"] = (1.0 / torch.sqrt(var + 1e-5)).float().numpy()
                    tensors[p + "running_mean_out"] = bn.running_mean.numpy().copy()
                    tensors[p + "running_var_out"] = bn.running_var.numpy().copy()
                # eval mode with the updated running statistics
                bn.eval()
                with torch.no_grad():
                    ze = bn(x_in)
                    if epi == "add_relu":
                        ze = ze + res_in
                    ye = torch.relu(ze) if epi != "none" else ze
                tensors[q + "y_eval"] = nhwc(ye)
                if epi != "none":
                    # the eval forward must start from the same running stats as the none case
                    assert np.array_equal(bn.running_mean.numpy(), tensors[p + "running_mean_out"])
    golden_io.save(os.path.join(OUT, "nn_batch_norm.safetensors"), tensors,
                   {"cases": json.dumps(meta), "generator": "tests/golden/gen_nn.py", "torch": torch.__version__})
    return tensors


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic = True
    os.makedirs(OUT, exist_ok=True)
    a = gen_conv()
    b = gen_bn()
    for f in ("nn_conv2d.safetensors", "nn_batch_norm.safetensors"):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")
    print(len(a), "conv tensors,", len(b), "bn tensors")

"""Golden values for area models (the tiny DEKR: forward, loss, every parameter gradient) from
PyTorch, with our own torch rendering of mmpose's DEKR (tests/golden/dekr_torch.py).

Run from the repo root with Debian's torch (CPU):  /usr/bin/python3 tests/golden/gen_dekr.py
Writes tests/golden/data/models_dekr_tiny.safetensors (read by tests/unit/models/dekr.cpp).
Prints the parameter counts of W32/W48/tiny (the C++ model must print the same).

Contents (activations NHWC, conv weights KRSC = OIHW permuted (0,2,3,1), vectors 1-D, all F32):
  <param or buffer name>         random weights and BN running statistics, mmpose names (the
                                 C++ test loads them with its checkpoint reader)
  input                          (N,H,W,3) image
  target/{heatmaps,heatmap_weights,heatmap_mask,displacements,displacement_weights}
  eval/{heatmaps,displacements}  eval-mode outputs (running statistics)
  out/{heatmaps,displacements}   training-mode outputs (batch statistics)
  loss                           [total, heatmap, displacement, n_pos] with mmpose's DEKR weights
  grad/<param name>              d loss / d param after one training-mode backward
  running/<buffer name>          BN running statistics after the training-mode forward
"""

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dekr_torch  # noqa: E402
import golden_io  # noqa: E402

OUT = os.path.join(HERE, "data", "models_dekr_tiny.safetensors")
N, H, W = 2, 64, 64


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def ours(t):
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t).contiguous().numpy().astype(np.float32)


def randomize(model, g):
    """Weights far from mmpose's 0.001 init, so every path carries signal (and offsets are
    fractional, exercising the bilinear taps of the deformable convs)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                std = 0.02 if "transform_matrix_conv" in name else (2.0 / fan_in) ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("transform_matrix_conv.bias"):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.4)
                m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=g) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None and "transform_matrix_conv" not in name:
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)


def main():
    for n in ("w32", "w48", "tiny"):
        print(f"{n}: {sum(p.numel() for p in dekr_torch.DEKR(n).parameters()):,} parameters")
    g = torch.Generator().manual_seed(20240607)
    torch.manual_seed(0)
    model = dekr_torch.DEKR("tiny")
    randomize(model, g)
    x = torch.rand(N, 3, H, W, generator=g) * 2 - 1

    tensors = {}
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked") or name.endswith("regular_matrix"):
            continue
        tensors[name] = ours(t)
    tensors["input"] = nhwc(x)

    model.eval()
    with torch.no_grad():
        hm_e, d_e = model(x)
    tensors["eval/heatmaps"], tensors["eval/displacements"] = nhwc(hm_e), nhwc(d_e)

    model.train()
    hm, disp = model(x)
    h, w = hm.shape[2:]
    gt_hm = torch.rand(N, 18, h, w, generator=g)
    hm_w = torch.where(gt_hm > 0.6, torch.ones_like(gt_hm), torch.full_like(gt_hm, 0.1))
    mask = (torch.rand(N, 1, h, w, generator=g) > 0.1).float()
    gt_d = torch.randn(N, 34, h, w, generator=g) * 2
    d_w = torch.where(torch.rand(N, 34, h, w, generator=g) < 0.3, 1.0 / (4 + 20 * torch.rand(N, 34, h, w, generator=g)),
                      torch.zeros(N, 34, h, w))
    total, l_hm, l_d, n_pos = dekr_torch.dekr_loss(hm, disp, gt_hm, hm_w, mask, gt_d, d_w)
    model.zero_grad()
    total.backward()

    tensors["out/heatmaps"], tensors["out/displacements"] = nhwc(hm), nhwc(disp)
    tensors["target/heatmaps"], tensors["target/heatmap_weights"] = nhwc(gt_hm), nhwc(hm_w)
    tensors["target/heatmap_mask"] = nhwc(mask)
    tensors["target/displacements"], tensors["target/displacement_weights"] = nhwc(gt_d), nhwc(d_w)
    tensors["loss"] = np.array([total.item(), l_hm.item(), l_d.item(), n_pos], dtype=np.float32)
    for name, p in model.named_parameters():
        tensors["grad/" + name] = ours(p.grad)
    for name, t in model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("running_var"):
            tensors["running/" + name] = ours(t)
    golden_io.save(OUT, tensors, {"variant": "tiny", "n": str(N), "h": str(H), "w": str(W)})
    print(f"loss {total.item():.6g} (heatmap {l_hm.item():.6g}, displacement {l_d.item():.6g}, n_pos {n_pos})")
    print(f"wrote {OUT}: {len(tensors)} tensors, {os.path.getsize(OUT):,} bytes")


if __name__ == "__main__":
    main()

"""Golden values for area models (the tiny DEKR: forward, loss, every parameter gradient) from
PyTorch, with our own torch rendering of mmpose's DEKR (bench/torch_reference/).

Run from the repo root with Debian's torch (CPU):  /usr/bin/python3 tests/golden/gen_dekr.py
Writes (read by tests/unit/models/dekr.cpp and tests/gpu/models/dekr.cu):
  tests/golden/data/models_dekr_tiny.safetensors     2 x 64 x 64 input, fp32 PyTorch
  tests/golden/data/models_dekr_tiny256.safetensors  2 x 256 x 256 input, fp32 PyTorch and the
      fp16 autocast rendering (torch_reference.fp16_emulation, see below)
Prints the parameter counts of W32/W48/tiny (the C++ model must print the same).

Contents (activations NHWC, conv weights KRSC = OIHW permuted (0,2,3,1), vectors 1-D):
  <param or buffer name>         random weights and BN running statistics, mmpose names, F32 (the
                                 C++ test loads them with its checkpoint reader)
  input                          (N,H,W,3) image
  target/{heatmaps,heatmap_weights,heatmap_mask,displacements,displacement_weights}
  eval/{heatmaps,displacements}  eval-mode outputs (running statistics); 64 x 64 file only
  out/{heatmaps,displacements}   training-mode outputs (batch statistics)
  loss                           [total, heatmap, displacement, n_pos] with mmpose's DEKR weights
  grad/<param name>              d loss / d param after one training-mode backward
  running/<buffer name>          BN running statistics after the training-mode forward
  fp16/{out/*,loss,grad/*,running/*}   256 file only: the same step under fp16 autocast
                                 numerics, loss scale fp16/loss_scale (gradients stored unscaled)

Why a 256 x 256 file. At 64 x 64 the tiny net's lowest branch is 2 x 2: batch-statistics BN over
8 values per channel amplifies a relative perturbation of its input ~100x, so fp16 comparisons
there need tens-of-percent tolerances. At 256 x 256 the lowest branch is 8 x 8 (128 values per
channel, N = 2). The 256 file's input and targets are rounded to fp16-representable values and
stored F16 (lossless; the C++ reader converts), which halves the file.

fp16 reference. torch 1.13's CPU autocast has no fp16, so the fp16 reference is computed in fp32
with rounding to fp16 at every point where CUDA autocast holds an fp16 tensor, forward and
backward (bench/torch_reference/model.py); with the loss scaled by fp16/loss_scale (a power of
two) before backward as GradScaler does, so gradient roundings see the scaled values.
"""

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))
import golden_io  # noqa: E402
import torch_reference as tr  # noqa: E402

OUT = os.path.join(HERE, "data", "models_dekr_tiny.safetensors")
OUT256 = os.path.join(HERE, "data", "models_dekr_tiny256.safetensors")
N, H, W = 2, 64, 64
LOSS_SCALE = 1024.0


def nhwc(t):
    return tr.to_ampkit(t)


def f16(t):
    """An fp16-representable NCHW tensor -> NHWC float16 numpy (lossless)."""
    a = nhwc(t)
    assert np.array_equal(a.astype(np.float16).astype(np.float32), a)
    return a.astype(np.float16)


def train_step(model, x, targets, scale=1.0):
    """Training-mode forward, loss, backward (of loss * scale); returns outputs, loss, grads."""
    model.train()
    hm, disp = model(x)
    total, l_hm, l_d, n_pos = tr.dekr_loss(hm, disp, *targets)
    model.zero_grad()
    (total * scale).backward()
    grads = {name: tr.to_ampkit(p.grad) / np.float32(scale) for name, p in model.named_parameters()}
    loss = np.array([total.item(), l_hm.item(), l_d.item(), int(n_pos)], dtype=np.float32)
    running = {"running/" + n: tr.to_ampkit(t) for n, t in model.state_dict().items()
               if n.endswith("running_mean") or n.endswith("running_var")}
    return hm, disp, loss, grads, running


def gen_64():
    g = torch.Generator().manual_seed(20240607)
    torch.manual_seed(0)
    model = tr.DEKR("tiny")
    tr.randomize(model, g)
    x = torch.rand(N, 3, H, W, generator=g) * 2 - 1

    tensors = tr.state_to_ampkit(model)
    tensors["input"] = nhwc(x)

    model.eval()
    with torch.no_grad():
        hm_e, d_e = model(x)
    tensors["eval/heatmaps"], tensors["eval/displacements"] = nhwc(hm_e), nhwc(d_e)

    h, w = H // 4, W // 4
    targets = tr.random_targets(N, h, w, g)
    hm, disp, loss, grads, running = train_step(model, x, targets)
    gt_hm, hm_w, mask, gt_d, d_w = targets
    tensors["out/heatmaps"], tensors["out/displacements"] = nhwc(hm), nhwc(disp)
    tensors["target/heatmaps"], tensors["target/heatmap_weights"] = nhwc(gt_hm), nhwc(hm_w)
    tensors["target/heatmap_mask"] = nhwc(mask)
    tensors["target/displacements"], tensors["target/displacement_weights"] = nhwc(gt_d), nhwc(d_w)
    tensors["loss"] = loss
    tensors.update({"grad/" + n: v for n, v in grads.items()})
    tensors.update(running)
    golden_io.save(OUT, tensors, {"variant": "tiny", "n": str(N), "h": str(H), "w": str(W)})
    print(f"64x64: loss {loss[0]:.6g} (heatmap {loss[1]:.6g}, displacement {loss[2]:.6g}, n_pos {int(loss[3])})")
    print(f"wrote {OUT}: {len(tensors)} tensors, {os.path.getsize(OUT):,} bytes")


def gen_256():
    n, h_in, w_in = 2, 256, 256
    g = torch.Generator().manual_seed(20250101)
    model = tr.DEKR("tiny")
    tr.randomize(model, g)
    x = (torch.rand(n, 3, h_in, w_in, generator=g) * 2 - 1).half().float()
    targets = tuple(t.half().float() for t in tr.random_targets(n, h_in // 4, w_in // 4, g))
    start = {k: v.clone() for k, v in model.state_dict().items()}

    tensors = tr.state_to_ampkit(model)
    tensors["input"] = f16(x)
    names = ["heatmaps", "heatmap_weights", "heatmap_mask", "displacements", "displacement_weights"]
    for name, t in zip(names, targets):
        tensors["target/" + name] = f16(t)

    hm, disp, loss, grads, running = train_step(model, x, targets)
    tensors["out/heatmaps"], tensors["out/displacements"] = nhwc(hm), nhwc(disp)
    tensors["loss"] = loss
    tensors.update({"grad/" + k: v for k, v in grads.items()})
    tensors.update(running)
    print(f"256x256 fp32: loss {loss[0]:.6g} (heatmap {loss[1]:.6g}, displacement {loss[2]:.6g}, "
          f"n_pos {int(loss[3])})")

    model.load_state_dict(start)  # the same running statistics before the fp16 step
    with tr.fp16_emulation():
        hm16, disp16, loss16, grads16, running16 = train_step(model, x, targets, LOSS_SCALE)
    tensors["fp16/out/heatmaps"], tensors["fp16/out/displacements"] = f16(hm16), f16(disp16)
    tensors["fp16/loss"] = loss16
    tensors["fp16/loss_scale"] = np.array([LOSS_SCALE], dtype=np.float32)
    tensors.update({"fp16/grad/" + k: v for k, v in grads16.items()})
    tensors.update({"fp16/" + k: v for k, v in running16.items()})
    print(f"256x256 fp16 (autocast rendering): loss {loss16[0]:.6g}")

    # The spread of fp16 itself: the same step on inputs moved by one fp16 ulp in a random half of
    # their elements, 3 times. Two fp16 computations that differ only in where roundings fall
    # disagree by about this much per tensor (it measures each tensor's conditioning, e.g.
    # BN-bias gradients that are the cancellation remainder of a following BN); the C++ test
    # scales its fp16 limits by it. Stored as fp16/spread/<name>, shape [1]: the RMS over the 3
    # runs of the relative L2 distance to the unperturbed run.
    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    runs = []
    for _ in range(3):
        bits = x.half().view(torch.int16)
        step = torch.where(torch.rand(x.shape, generator=g) < 0.5, 1, 0).to(torch.int16)
        model.load_state_dict(start)
        with tr.fp16_emulation():
            hm2, disp2, loss2, grads2, running2 = train_step(model, (bits + step).view(torch.float16).float(),
                                                             targets, LOSS_SCALE)
        d = {"out/heatmaps": rel(nhwc(hm2), nhwc(hm16)), "out/displacements": rel(nhwc(disp2), nhwc(disp16))}
        d.update({"grad/" + k: rel(grads2[k], grads16[k]) for k in grads16})
        d.update({k: rel(running2[k], running16[k]) for k in running16})
        for i, k in enumerate(("loss/total", "loss/heatmap", "loss/displacement")):
            d[k] = abs(loss2[i] - loss16[i]) / abs(loss16[i])
        runs.append(d)
    spread = {k: np.float32(np.sqrt(np.mean([r[k] ** 2 for r in runs]))) for k in runs[0]}
    tensors.update({"fp16/spread/" + k: np.array([v], np.float32) for k, v in spread.items()})
    print(f"  fp16 spread: outputs {spread['out/heatmaps']:.3g} / {spread['out/displacements']:.3g}, "
          f"loss {spread['loss/total']:.3g}, gradients max {max(spread[k] for k in spread if k[:5] == 'grad/'):.3g}")
    for k in ("out/heatmaps", "out/displacements"):
        a, b = tensors["fp16/" + k].astype(np.float64), tensors[k].astype(np.float64)
        print(f"  fp16 vs fp32 {k}: rel L2 {np.linalg.norm(a - b) / np.linalg.norm(b):.3g}")
    worst = max((np.linalg.norm(grads16[k] - grads[k]) / max(np.linalg.norm(grads[k]), 1e-30), k) for k in grads)
    print(f"  fp16 vs fp32 gradients: worst rel L2 {worst[0]:.3g} ({worst[1]})")
    golden_io.save(OUT256, tensors, {"variant": "tiny", "n": str(n), "h": str(h_in), "w": str(w_in),
                                     "generator": f"tests/golden/gen_dekr.py, torch {torch.__version__}"})
    print(f"wrote {OUT256}: {len(tensors)} tensors, {os.path.getsize(OUT256):,} bytes")


def main():
    for n in ("w32", "w48", "tiny"):
        print(f"{n}: {tr.count_parameters(tr.DEKR(n)):,} parameters")
    gen_64()
    gen_256()


if __name__ == "__main__":
    main()

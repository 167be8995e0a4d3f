#!/usr/bin/env python3
"""DEKR against PyTorch with the same weights and input: one training step (forward with batch
statistics, DEKR loss, backward) in ampkit (the `ampkit_dekr_peer` binary, dekr_peer.cu/.cpp) and
in bench/torch_reference, fp32 and fp16; prints per-tensor relative errors of the outputs, the
loss, every parameter gradient and the BN running statistics, with the limits and PASS/FAIL.

  GPU (H200):  compare_w32.py --peer build/bench/ampkit_dekr_peer --device cuda              (W32, 512, batch 2)
  host check:  compare_w32.py --peer ampkit_dekr_peer_host --device cpu --size 128 --batch 2

Peers. fp32: PyTorch fp32 with TF32 off (ampkit's fp32 policy does not use TF32).
fp16: ampkit Precision<fp16, fp32_master> vs torch.autocast("cuda", float16) on a GPU, or vs
torch_reference's fp16 rendering of autocast on the CPU (torch 1.13 CPU autocast has no fp16).
Both fp16 sides scale the loss by --loss-scale before backward (as GradScaler) and unscale.

Limits (relative L2 error per tensor, ||got - want|| / ||want||):
  fp32  outputs 1e-4 and loss 1e-5 (fp32 summation-order differences through ~100 layers are
        ~1e-6); head gradients 1e-3; backbone gradients 1e-2: BN-bias gradients (and what feeds
        them) are the cancellation remainder of the following BN's mean subtraction, and two
        correct fp32 implementations measured 4e-3 apart on the tiny net at 256 x 256.
  fp16  4 x the fp16 spread of that tensor: the RMS distance between the autocast step and the
        same step on inputs moved by one fp16 ulp in a random half of their elements (4 runs).
        Two correct fp16 computations that round in different places disagree by about that
        much; on the tiny net ampkit measured <= 1.4x of it on the golden case and <= 3.5x (one
        8-element BN tensor, spread from 2 runs) on this script's tiny 256 x 256 case; the spread
        of a small tensor is a noisy estimate, hence 4 runs and 4x. A floor of 1e-4 (0.2 fp16 ulp)
        covers tensors whose spread is ~0.
Also printed per tensor: max relative error (max|d| / max|want|) and mean relative error
(mean|d| / mean|want|). Exit status 0 when every tensor passes.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "golden"))
import golden_io  # noqa: E402
import torch_reference as tr  # noqa: E402

TARGETS = ["heatmaps", "heatmap_weights", "heatmap_mask", "displacements", "displacement_weights"]


def make_case(config, n, size, seed, device):
    g = torch.Generator().manual_seed(seed)
    model = tr.DEKR(config)
    tr.randomize(model, g)
    # fp16-representable input and targets: both sides see exactly the same values in both policies.
    x = (torch.randn(n, 3, size, size, generator=g)).half().float()
    targets = tuple(t.half().float() for t in tr.random_targets(n, size // 4, size // 4, g))
    return model.to(device), x.to(device), tuple(t.to(device) for t in targets)


def torch_step(model, start, x, targets, policy, scale, device):
    """One training step in PyTorch; returns name -> numpy in ampkit layout."""
    model.load_state_dict(start)
    model.train()
    model.zero_grad(set_to_none=True)
    if policy == "fp16" and device == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            hm, disp = model(x)
        total, l_hm, l_d, n_pos = tr.dekr_loss(hm, disp, *targets)
        (total * scale).backward()
    elif policy == "fp16":
        with tr.fp16_emulation():
            hm, disp = model(x)
            total, l_hm, l_d, n_pos = tr.dekr_loss(hm, disp, *targets)
            (total * scale).backward()
    else:
        hm, disp = model(x)
        total, l_hm, l_d, n_pos = tr.dekr_loss(hm, disp, *targets)
        total.backward()
        scale = 1.0
    r = {"out/heatmaps": tr.to_ampkit(hm), "out/displacements": tr.to_ampkit(disp),
         "loss": np.array([total.item(), l_hm.item(), l_d.item(), int(n_pos)], np.float32)}
    for name, p in model.named_parameters():
        r["grad/" + name] = tr.to_ampkit(p.grad) / np.float32(scale)
    for name, t in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            r["running/" + name] = tr.to_ampkit(t)
    return r


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def metrics(got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    d = np.abs(got - want)
    return (rel_l2(got, want), float(d.max() / max(np.abs(want).max(), 1e-300)),
            float(d.mean() / max(np.abs(want).mean(), 1e-300)))


def fp32_limit(name):
    if name.startswith("out/"):
        return 1e-4
    if name.startswith("loss"):
        return 1e-5
    if name.startswith("grad/head."):
        return 1e-3
    return 1e-2  # backbone gradients and running statistics (see the module docstring)


def compare(ours, ref, limits, log):
    """Per-tensor table; returns the number of failures."""
    names = ["out/heatmaps", "out/displacements"] + [k for k in ref if k.startswith("grad/")] + \
            [k for k in ref if k.startswith("running/")]
    bad, worst = 0, {}
    log(f"{'tensor':<72} {'rel L2':>9} {'max rel':>9} {'mean rel':>9} {'limit':>9}")
    for i, part in enumerate(("loss/total", "loss/heatmap", "loss/displacement")):
        e = abs(float(ours["loss"][i]) - float(ref["loss"][i])) / abs(float(ref["loss"][i]))
        lim = limits(part)
        ok = e <= lim
        bad += not ok
        log(f"{part:<72} {e:9.3g} {e:9.3g} {e:9.3g} {lim:9.3g} {'' if ok else 'FAIL'}")
    if float(ours["loss"][3]) != float(ref["loss"][3]):
        bad += 1
        log(f"n_pos differs: {ours['loss'][3]} vs {ref['loss'][3]} FAIL")
    for k in names:
        if k not in ours:
            bad += 1
            log(f"{k}: missing from ampkit's output FAIL")
            continue
        r, mx, mean = metrics(ours[k], ref[k])
        lim = limits(k)
        ok = r <= lim
        bad += not ok
        group = k.split("/")[0] + ("/head" if k.startswith("grad/head.") else "")
        if r / lim > worst.get(group, (0, ""))[0]:
            worst[group] = (r / lim, k, r, lim)
        log(f"{k:<72} {r:9.3g} {mx:9.3g} {mean:9.3g} {lim:9.3g} {'' if ok else 'FAIL'}")
    return bad, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", required=True, help="the ampkit_dekr_peer binary")
    ap.add_argument("--backend", default=None, help="ampkit backend: cuda (default with --device cuda) or host")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default="w32")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--policies", default="fp32,fp16")
    ap.add_argument("--loss-scale", type=float, default=1024.0)
    ap.add_argument("--seed", type=int, default=20251201)
    ap.add_argument("--work", default=os.environ.get("OUT", "/tmp/ampkit-compare-w32"))
    a = ap.parse_args()
    backend = a.backend or ("cuda" if a.device == "cuda" else "host")
    os.makedirs(a.work, exist_ok=True)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    report = open(os.path.join(a.work, "compare_w32.txt"), "w")

    def log(s, show=False):
        report.write(s + "\n")
        if show:
            print(s, flush=True)

    head = (f"DEKR-{a.config} {a.size}x{a.size} batch {a.batch}: ampkit {backend} ({a.peer}) vs torch "
            f"{torch.__version__} on {a.device}" + (f" ({torch.cuda.get_device_name()})" if a.device == "cuda" else ""))
    log(head, True)
    model, x, targets = make_case(a.config, a.batch, a.size, a.seed, a.device)
    log(f"{tr.count_parameters(model):,} parameters", True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = tr.state_to_ampkit(model)
    tensors["input"] = tr.to_ampkit(x)
    for name, t in zip(TARGETS, targets):
        tensors["target/" + name] = tr.to_ampkit(t)
    in_path = os.path.join(a.work, "peer_in.safetensors")
    golden_io.save(in_path, tensors, {"config": a.config, "loss_scale": str(a.loss_scale)})

    failures = 0
    for policy in a.policies.split(","):
        out_path = os.path.join(a.work, f"peer_out_{policy}.safetensors")
        t0 = time.time()
        subprocess.run([a.peer, in_path, out_path, "--policy", policy, "--backend", backend], check=True)
        t_peer = time.time() - t0
        ours, _ = golden_io.load(out_path)
        t0 = time.time()
        ref = torch_step(model, start, x, targets, policy, a.loss_scale, a.device)
        t_torch = time.time() - t0
        if policy == "fp32":
            limits = fp32_limit
            what = "fp32 vs PyTorch fp32 (TF32 off)"
        else:
            ref32 = torch_step(model, start, x, targets, "fp32", 1.0, a.device)
            g = torch.Generator().manual_seed(a.seed + 1)
            spreads = []
            for _ in range(4):
                bits = x.half().cpu().view(torch.int16)
                step = torch.where(torch.rand(x.shape, generator=g) < 0.5, 1, 0).to(torch.int16)
                x2 = (bits + step).view(torch.float16).float().to(a.device)
                spreads.append(torch_step(model, start, x2, targets, policy, a.loss_scale, a.device))
            spread = {}
            for k in ref:
                if k == "loss":
                    for i, part in enumerate(("loss/total", "loss/heatmap", "loss/displacement")):
                        spread[part] = float(np.sqrt(np.mean([((s["loss"][i] - ref["loss"][i]) / ref["loss"][i]) ** 2
                                                              for s in spreads])))
                else:
                    spread[k] = float(np.sqrt(np.mean([rel_l2(s[k], ref[k]) ** 2 for s in spreads])))

            def limits(name, spread=spread):
                return max(4.0 * spread[name], 1e-4)
            what = ("fp16 policy vs PyTorch " + ("autocast fp16" if a.device == "cuda" else
                                                 "autocast rendering (CPU)") + f", loss scale {a.loss_scale:g}")
            d32 = max(rel_l2(ref[k], ref32[k]) for k in ("out/heatmaps", "out/displacements"))
            log(f"(PyTorch fp16 vs PyTorch fp32 outputs: rel L2 {d32:.3g})", True)
        log(f"\n== {what}: ampkit step {t_peer:.1f} s (process), torch step {t_torch:.1f} s", True)
        log(f"loss: ampkit {ours['loss'][0]:.7g} (hm {ours['loss'][1]:.7g}, disp {ours['loss'][2]:.7g}, "
            f"n_pos {ours['loss'][3]:.0f}); torch {ref['loss'][0]:.7g} (hm {ref['loss'][1]:.7g}, "
            f"disp {ref['loss'][2]:.7g}, n_pos {ref['loss'][3]:.0f})", True)
        bad, worst = compare(ours, ref, limits, log)
        for group, (ratio, k, r, lim) in sorted(worst.items()):
            log(f"  worst {group:<14} rel L2 {r:.3g} (limit {lim:.3g}, {ratio:.2f} of it) at {k}", True)
        log(f"{policy}: {'PASS' if bad == 0 else f'FAIL ({bad} tensors over their limit)'}", True)
        failures += bad
    log(f"\nper-tensor table: {report.name}", True)
    report.close()
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

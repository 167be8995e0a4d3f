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

Limits: per tensor, relative L2 error ||got - want|| / ||want|| <= 4 x that tensor's spread
(--spread-k), floor 1e-6 (fp32) / 1e-4 (fp16). The spread is the RMS (4 runs, --spread-runs) of
the distance between PyTorch's step and the same PyTorch step on perturbed data:
  fp32  inputs and weights moved by one fp32 ulp in a random half of their elements;
  fp16  inputs moved by one fp16 ulp in a random half of their elements.
That is how far two correct computations that round in different places fall apart, tensor by
tensor: large exactly where the step is ill-conditioned (backbone BN-bias gradients are the
cancellation remainder of the next BN's mean subtraction; measured 1.7e-2 apart in fp32 between
ampkit and PyTorch on W32 at 128 x 128, where outputs agree to 5e-5) and small elsewhere. Fixed
limits would have to be the worst tensor's for every tensor. On the tiny net ampkit measured
<= 1.4x the fp16 spread (tests/unit/models/dekr.cpp); the spread of a small tensor is itself a
noisy estimate, hence 4 runs and 4x.
fp32 also has an fp64 ground truth (--fp64-reference, on by default): the same PyTorch model,
weights, input and targets in float64. Each fp32 tensor then passes when
  ||ampkit - fp64|| / ||fp64|| <= max(3 x ||PyTorch fp32 - fp64|| / ||fp64||  (--fp64-k),
                                      the spread limit above)
i.e. ampkit is about as far from the exact step as PyTorch's own fp32 is. The fp64 step gives
half the gradient at ReLU ties (class ReluTies): pre-activations within --tie-m x their channel's
fp32 rounding of 0, whose side of 0, and so the whole gradient of that element, depends on where
an implementation rounds. Without that, one flipped tie decides a tensor's error: at W32
128 x 128 ampkit flipped an element of stage4.2.branches.0.1.bn1 at -1.5e-5 channel std from 0
(its bias gradient off by 1.6e-2, 517x PyTorch fp32's error), PyTorch flipped one in
stage4.2.branches.1.2.bn1 (1.4e-2, 327x ampkit's); everything upstream inherits it. The
perturbation spread catches such flips only where a perturbed run happens to flip one too.
Also printed per tensor: max relative error (max|d| / max|want|) and mean relative error
(mean|d| / mean|want|), and with the fp64 reference ampkit vs fp64, PyTorch vs fp64 and their
ratio (for fp16 too, informational). Exit status 0 when every tensor passes.
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


class ReluTies:
    """ReLU decisions that fp32 rounding can flip. A pre-activation within rounding distance of 0
    is a tie: which side of 0 it lands on depends on where an implementation rounds, and the
    gradient of that one element (dL/dy times 0 or 1) then differs by all of dL/dy, which shows in
    the bias gradient of that BN and in every tensor upstream of it (measured at W32 128 x 128:
    one tie flipped at stage4.2.branches.0.1.bn1 moves that bias gradient by 1.6e-2). Such flips
    happen in ampkit and in PyTorch alike, at different elements.
    mode "record": keep every ReLU input of a PyTorch fp32 step (call order);
    mode "ties": the fp64 step marks as ties the elements whose fp64 pre-activation is within
    --tie-m x (RMS over the channel of fp32 - fp64) of 0 or where fp32 and fp64 disagree in sign,
    and passes HALF the gradient there: the midpoint of the two decisions, so ampkit and PyTorch
    fp32 are each one half-gradient away from it at every tie, whichever way they decided."""

    def __init__(self, m):
        self.m, self.mode, self.rec, self.i, self.ties, self.calls = m, None, [], 0, 0, 0

    def patch(self, model):
        for mod in model.modules():
            if isinstance(mod, torch.nn.ReLU):
                mod.forward = lambda y, self=self: self(y)

    def __call__(self, y):
        if self.mode == "record":
            self.rec.append(y.detach().clone())
        if self.mode != "ties" or self.i >= len(self.rec):
            return torch.relu(y)
        y32, self.i = self.rec[self.i].to(y.dtype), self.i + 1
        dims = (0, 2, 3) if y.dim() == 4 else tuple(range(y.dim()))
        rms = (y32 - y.detach()).pow(2).mean(dim=dims, keepdim=True).sqrt()
        tie = (y.detach().abs() <= self.m * rms) | ((y32 > 0) != (y.detach() > 0))
        self.ties += int(tie.sum())
        self.calls += 1
        return _MidpointRelu.apply(y, tie)


class _MidpointRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, tie):
        ctx.save_for_backward(y, tie)
        return torch.relu(y)

    @staticmethod
    def backward(ctx, g):
        y, tie = ctx.saved_tensors
        return g * torch.where(tie, torch.full_like(g, 0.5), (y > 0).to(g.dtype)), None


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
    elif policy == "fp64":
        # The same model, weights (widened exactly) and data in float64: the ground truth that
        # both fp32 sides are measured against.
        model.double()
        hm, disp = model(x.double())
        total, l_hm, l_d, n_pos = tr.dekr_loss(hm, disp, *(t.double() for t in targets))
        total.backward()
        scale = 1.0
    else:
        hm, disp = model(x)
        total, l_hm, l_d, n_pos = tr.dekr_loss(hm, disp, *targets)
        total.backward()
        scale = 1.0
    dt, ft = (torch.float64, np.float64) if policy == "fp64" else (torch.float32, np.float32)
    r = {"out/heatmaps": tr.to_ampkit(hm, dt), "out/displacements": tr.to_ampkit(disp, dt),
         "loss": np.array([total.item(), l_hm.item(), l_d.item(), int(n_pos)], ft)}
    for name, p in model.named_parameters():
        r["grad/" + name] = tr.to_ampkit(p.grad, dt) / ft(scale)
    for name, t in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            r["running/" + name] = tr.to_ampkit(t, dt)
    if policy == "fp64":
        model.float()
        model.zero_grad(set_to_none=True)
    return r


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def metrics(got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    d = np.abs(got - want)
    return (rel_l2(got, want), float(d.max() / max(np.abs(want).max(), 1e-300)),
            float(d.mean() / max(np.abs(want).mean(), 1e-300)))


def loss_err(a, b, i):
    return abs(float(a["loss"][i]) - float(b["loss"][i])) / abs(float(b["loss"][i]))


LOSS_PARTS = ("loss/total", "loss/heatmap", "loss/displacement")


def compare(ours, ref, limits, log, ref64=None, judge64=None):
    """Per-tensor table; returns the number of failures, the worst tensor per group and (with
    ref64) the fp64 rows. ref: PyTorch in ampkit's policy; limits(name): the spread limit. With
    ref64 (PyTorch fp64) three more columns: ampkit vs fp64, PyTorch (policy) vs fp64, their
    ratio; judge64(name, e_ours64, e_torch64) -> limit makes the fp64 rule the verdict (the
    spread rule is then only reported, as 'spread>')."""
    names = ["out/heatmaps", "out/displacements"] + [k for k in ref if k.startswith("grad/")] + \
            [k for k in ref if k.startswith("running/")]
    bad, worst, rows = 0, {}, []
    more = f" {'amp-fp64':>9} {'pt-fp64':>9} {'ratio':>7}" if ref64 is not None else ""
    log(f"{'tensor':<72} {'rel L2':>9} {'max rel':>9} {'mean rel':>9} {'limit':>9}{more}")

    def judge(k, r, mx, mean, e64=None):
        nonlocal bad
        lim = limits(k)
        cols, tag = "", "" if r <= lim else "FAIL"
        if e64 is not None:
            ratio = e64[0] / max(e64[1], 1e-300)
            rows.append((k, r, lim, e64[0], e64[1]))
            cols = f" {e64[0]:9.3g} {e64[1]:9.3g} {ratio:7.2f}"
            if judge64 is not None:
                lim = judge64(k, *e64)
                tag = ("" if e64[0] <= lim else "FAIL") + ("" if r <= limits(k) else " spread>")
                r = e64[0]  # the verdict's error, for the worst-case summary
        ok = not tag.startswith("FAIL")
        bad += not ok
        group = k.split("/")[0] + ("/head" if k.startswith("grad/head.") else "")
        if r / lim > worst.get(group, (0, ""))[0]:
            worst[group] = (r / lim, k, r, lim)
        return cols, tag

    for i, part in enumerate(LOSS_PARTS):
        e = loss_err(ours, ref, i)
        cols, tag = judge(part, e, e, e, None if ref64 is None else (loss_err(ours, ref64, i), loss_err(ref, ref64, i)))
        log(f"{part:<72} {e:9.3g} {e:9.3g} {e:9.3g} {limits(part):9.3g}{cols} {tag}")
    if float(ours["loss"][3]) != float(ref["loss"][3]):
        bad += 1
        log(f"n_pos differs: {ours['loss'][3]} vs {ref['loss'][3]} FAIL")
    for k in names:
        if k not in ours:
            bad += 1
            log(f"{k}: missing from ampkit's output FAIL")
            continue
        r, mx, mean = metrics(ours[k], ref[k])
        cols, tag = judge(k, r, mx, mean, None if ref64 is None else (rel_l2(ours[k], ref64[k]), rel_l2(ref[k], ref64[k])))
        log(f"{k:<72} {r:9.3g} {mx:9.3g} {mean:9.3g} {limits(k):9.3g}{cols} {tag}")
    return bad, worst, rows


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
    ap.add_argument("--spread-runs", type=int, default=4, help="perturbed PyTorch runs that measure the spread")
    ap.add_argument("--spread-k", type=float, default=4.0, help="limit = spread_k x spread per tensor")
    ap.add_argument("--fp64-reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also run PyTorch in float64 and judge fp32 against it (default on)")
    ap.add_argument("--fp64-k", type=float, default=3.0,
                    help="fp32 limit = fp64_k x (PyTorch fp32 vs fp64 error) per tensor")
    ap.add_argument("--tie-m", type=float, default=4.0,
                    help="fp64 reference: a ReLU input within tie_m x its channel's fp32 rounding of 0 is a tie (ReluTies)")
    ap.add_argument("--reuse-peer", action="store_true",
                    help="keep an existing peer_out_<policy>.safetensors in --work (same case arguments)")
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

    failures, ref64, ties = 0, None, ReluTies(a.tie_m)
    if a.fp64_reference:
        ties.patch(model)
    # fp32 first: its PyTorch step records the ReLU inputs that the fp64 reference's ties need.
    for policy in sorted(a.policies.split(","), key=lambda p: p != "fp32"):
        out_path = os.path.join(a.work, f"peer_out_{policy}.safetensors")
        t0 = time.time()
        if not (a.reuse_peer and os.path.exists(out_path)):
            subprocess.run([a.peer, in_path, out_path, "--policy", policy, "--backend", backend], check=True)
        t_peer = time.time() - t0
        ours, _ = golden_io.load(out_path)
        t0 = time.time()
        ties.mode = "record" if policy == "fp32" and a.fp64_reference and ref64 is None else None
        ref = torch_step(model, start, x, targets, policy, a.loss_scale, a.device)
        ties.mode = None
        t_torch = time.time() - t0
        # The spread: the same step on perturbed data, --spread-runs times (RMS). fp16: inputs
        # moved by one fp16 ulp in a random half of their elements; fp32: inputs and weights
        # moved by one fp32 ulp in a random half (a rounding-sized change at every layer, as two
        # summation orders give).
        g = torch.Generator().manual_seed(a.seed + 1)
        spreads = []
        for _ in range(a.spread_runs):
            if policy == "fp16":
                bits = x.half().cpu().view(torch.int16)
                step = torch.where(torch.rand(x.shape, generator=g) < 0.5, 1, 0).to(torch.int16)
                x2, start2 = (bits + step).view(torch.float16).float().to(a.device), start
            else:
                def ulp(t):
                    m = (torch.rand(t.shape, generator=g) < 0.5).to(t.device)
                    return torch.where(m, torch.nextafter(t, torch.full_like(t, float("inf"))), t)
                x2 = ulp(x)
                start2 = {k: (ulp(v) if v.is_floating_point() and "running" not in k else v) for k, v in start.items()}
            spreads.append(torch_step(model, start2, x2, targets, policy, a.loss_scale, a.device))
        spread = {}
        for k in ref:
            if k == "loss":
                for i, part in enumerate(("loss/total", "loss/heatmap", "loss/displacement")):
                    spread[part] = float(np.sqrt(np.mean([((s["loss"][i] - ref["loss"][i]) / ref["loss"][i]) ** 2
                                                          for s in spreads]))) if spreads else 0.0
            else:
                spread[k] = float(np.sqrt(np.mean([rel_l2(s[k], ref[k]) ** 2 for s in spreads]))) if spreads else 0.0
        floor = 1e-4 if policy == "fp16" else 1e-6

        def limits(name, spread=spread, floor=floor):
            return max(a.spread_k * spread[name], floor)
        if policy == "fp32":
            what = "fp32 vs PyTorch fp32 (TF32 off)"
        else:
            ref32 = torch_step(model, start, x, targets, "fp32", 1.0, a.device)
            what = ("fp16 policy vs PyTorch " + ("autocast fp16" if a.device == "cuda" else
                                                 "autocast rendering (CPU)") + f", loss scale {a.loss_scale:g}")
            d32 = max(rel_l2(ref[k], ref32[k]) for k in ("out/heatmaps", "out/displacements"))
            log(f"(PyTorch fp16 vs PyTorch fp32 outputs: rel L2 {d32:.3g})", True)
        log(f"\n== {what}: ampkit step {t_peer:.1f} s (process), torch step {t_torch:.1f} s", True)
        log(f"loss: ampkit {ours['loss'][0]:.7g} (hm {ours['loss'][1]:.7g}, disp {ours['loss'][2]:.7g}, "
            f"n_pos {ours['loss'][3]:.0f}); torch {ref['loss'][0]:.7g} (hm {ref['loss'][1]:.7g}, "
            f"disp {ref['loss'][2]:.7g}, n_pos {ref['loss'][3]:.0f})", True)
        judge64 = None
        if a.fp64_reference:
            if ref64 is None:
                t0 = time.time()
                ties.mode = "ties" if ties.rec else None
                ref64 = torch_step(model, start, x, targets, "fp64", 1.0, a.device)
                ties.mode, ties.rec = None, []
                log(f"(PyTorch fp64 reference step {time.time() - t0:.1f} s; ReLU ties (half gradient): {ties.ties} "
                    f"elements in {ties.calls} ReLU calls, tie_m {a.tie_m:g})", True)
            if policy == "fp32":
                def judge64(name, e_ours, e_torch, limits=limits):
                    return max(a.fp64_k * e_torch, limits(name))
                log(f"verdict per tensor: ampkit vs PyTorch fp64 <= max({a.fp64_k:g} x PyTorch fp32 vs fp64, "
                    f"{a.spread_k:g} x spread, {floor:g}) ('spread>': over the spread limit alone)", True)
        bad, worst, rows = compare(ours, ref, limits, log, ref64, judge64)
        for group, (ratio, k, r, lim) in sorted(worst.items()):
            log(f"  worst {group:<14} rel L2 {r:.3g} (limit {lim:.3g}, {ratio:.2f} of it) at {k}", True)
        if rows:
            # Against the exact step: is ampkit's error of the same size as PyTorch's own rounding
            # error (conditioning) or larger (a different computation)? Shown for the tensors over
            # the spread limit and for each group's largest ratio.
            log(f"  vs PyTorch fp64 (amp = ampkit {policy}, pt = PyTorch {policy}; ratio = amp / pt):", True)
            over = [row for row in rows if row[1] > row[2]]
            by_group = {}
            for row in rows:
                group = row[0].split("/")[0] + ("/head" if row[0].startswith("grad/head.") else "")
                if row[3] / max(row[4], 1e-300) > by_group.get(group, (None, 0, 0, 0, 1))[3] / \
                        max(by_group.get(group, (None, 0, 0, 0, 1))[4], 1e-300):
                    by_group[group] = row
            shown = [("over spread", row) for row in over] + [(f"max {g}", row) for g, row in sorted(by_group.items())]
            for label, (k, r, lim, e_o, e_t) in shown:
                log(f"    {label:<20} {k:<62} amp {e_o:9.3g}  pt {e_t:9.3g}  ratio {e_o / max(e_t, 1e-300):6.2f}"
                    f"  (vs pt {policy}: {r:.3g}, {r / lim:.2f} of spread limit)", True)
        log(f"{policy}: {'PASS' if bad == 0 else f'FAIL ({bad} tensors over their limit)'}", True)
        failures += bad
    log(f"\nper-tensor table: {report.name}", True)
    report.close()
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Golden values for areas optim and amp, from PyTorch (torch.optim, GradScaler, clip_grad_norm_,
lr_scheduler) and from a model of mmengine's OptimWrapper counters.

Run from the repo root with Debian's torch (CPU):  /usr/bin/python3 tests/golden/gen_amp.py
Writes tests/golden/data/amp_optim.safetensors (read by tests/unit/optim/optim.cpp and
tests/unit/amp/amp.cpp). Every case stores its settings as JSON in the metadata under its name.

Contents
  opt/<case>/{p0,grads,lrs,params}   torch.optim trajectories (fp32, one flat parameter tensor):
                                     params[s] is the parameter after step s with lr lrs[s].
  scaler/<case>/...                  torch GradScaler + Adam (+ clip_grad_norm_) as mmengine's
                                     AmpOptimWrapper.step() drives them, with fp16 gradients:
                                     the grad torch sees is fp16(true_grad * scale) widened to fp32,
                                     which is what autocast's fp16 conv weight-gradient becomes.
  clip/<case>/{grads,clipped,norm}   torch.nn.utils.clip_grad_norm_ (max_norm in metadata).
  lr/<case>/lrs                      LinearLR (stepped per iteration) + MultiStepLR (per epoch):
                                     the lr in effect during each iteration.
  accum/<case>/table                 mmengine OptimWrapper counters per iteration:
                                     [iteration, should_sync, loss_factor, should_update].

GradScaler on CPU: torch 1.13's CPU build has no kernels for the two native ops GradScaler calls
(`_amp_foreach_non_finite_check_and_unscale_`, `_amp_update_scale_`, CUDA-only until torch 2.x).
So the real GradScaler Python class runs here (its unscale_/step/update state machine, its fp64
reciprocal of the scale, its skip decision) with those two ops supplied by `_unscale_op` and
`_update_op` below, written from the semantics of aten/src/ATen/native/cuda/AmpKernels.cu:
  check: found_inf = 1 if any *scaled* value is not finite; grads *= inv_scale unless it is 1.
  update: inf -> scale *= backoff (in fp64, stored fp32), tracker = 0; else tracker + 1, and when
          it reaches growth_interval: scale *= growth if the fp32 result is finite, tracker = 0.
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import torch
from torch.cuda.amp import grad_scaler as gs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
warnings.filterwarnings("ignore")  # scheduler-before-optimizer and CUDA-unavailable warnings


# ---------------------------------------------------------------- torch.optim trajectories ----
N_PARAM = 48
N_STEPS = 100

OPT_CASES = {
    # name: (class, kwargs, base lr)
    "adam": ("Adam", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), 1e-3),
    "adam_l2": ("Adam", dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2), 3e-3),
    "adamw": ("AdamW", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2), 1e-3),
    "sgd_momentum": ("SGD", dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0), 1e-2),
    "sgd_dampening_wd": ("SGD", dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-4), 1e-2),
    "sgd_nesterov": ("SGD", dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=5e-4), 5e-3),
    "sgd_plain": ("SGD", dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0), 1e-2),
}


def random_grads(rng, steps, n):
    # Magnitudes spread over four decades, signs mixed, never zero: Adam's denominators and the
    # relative size of eps matter at the small end.
    mag = 10.0 ** rng.uniform(-4, 0, size=(steps, n))
    sign = np.where(rng.uniform(size=(steps, n)) < 0.5, -1.0, 1.0)
    return (mag * sign).astype(np.float32)


def gen_optimizers(tensors, meta):
    rng = np.random.default_rng(2024)
    for name, (cls, kw, lr) in OPT_CASES.items():
        p0 = rng.uniform(-1, 1, size=N_PARAM).astype(np.float32)
        grads = random_grads(rng, N_STEPS, N_PARAM)
        # The lr changes every 10 steps, as a scheduler would change it.
        lrs = np.array([lr * (0.5 ** (s // 10)) for s in range(N_STEPS)], dtype=np.float64)
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = getattr(torch.optim, cls)([p], lr=lr, **kw)
        out = np.zeros((N_STEPS, N_PARAM), np.float32)
        for s in range(N_STEPS):
            for g in opt.param_groups:
                g["lr"] = float(lrs[s])
            p.grad = torch.from_numpy(grads[s].copy())
            opt.step()
            out[s] = p.detach().numpy()
        pre = f"opt/{name}/"
        tensors[pre + "p0"] = p0
        tensors[pre + "grads"] = grads
        tensors[pre + "lrs"] = lrs
        tensors[pre + "params"] = out
        m = dict(type=cls, lr=lr)
        m.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()})
        meta[pre.rstrip("/")] = json.dumps(m)


# ---------------------------------------------------------------------------- GradScaler ----
def _unscale_op(grads, found_inf, inv_scale):
    inv = float(inv_scale.item())
    for g in grads:
        if not torch.isfinite(g).all():
            found_inf.fill_(1.0)
        if inv != 1.0:
            g.mul_(torch.tensor(inv, dtype=torch.float32))  # fp32 multiply, as the kernel


def _update_op(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    s = float(scale.item())
    if found_inf.item():
        scale.fill_(float(np.float32(s * backoff_factor)))
        tracker.fill_(0)
    else:
        successful = int(tracker.item()) + 1
        if successful == growth_interval:
            new = np.float32(s * growth_factor)
            if np.isfinite(new):
                scale.fill_(float(new))
            tracker.fill_(0)
        else:
            tracker.fill_(successful)
    return scale


class _CpuReplicator:
    """GradScaler's per-device cache without its `is_cuda` assertion."""

    def __init__(self, master):
        self.master = master
        self._per_device_tensors = {}

    def get(self, device):
        t = self._per_device_tensors.get(device)
        if t is None:
            t = self.master.to(device=device, copy=True)
            self._per_device_tensors[device] = t
        return t


def make_cpu_grad_scaler(**kw):
    gs.amp_definitely_not_available = lambda: False
    gs._MultiDeviceReplicator = _CpuReplicator
    torch._amp_foreach_non_finite_check_and_unscale_ = _unscale_op
    torch._amp_update_scale_ = _update_op
    scaler = gs.GradScaler(**kw)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    return scaler


SCALER_STEPS = 32
SCALER_CASES = {
    # name: (GradScaler kwargs, static scale (mmengine loss_scale=float) or None, clip max_norm or None)
    "dynamic": (dict(init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3), None, None),
    "dynamic_clip": (dict(init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3), None, 0.05),
    "static": (dict(init_scale=512.0), 512.0, None),
}
# Injected non-finite gradients: step -> (element, value); then a 2.0 gradient at a scale of 2^14
# (32768: large but representable); then a clean stretch in which the scale grows until the fp16 gradients
# overflow by themselves: with |g| in [0.01, 0.09], 0.09 * 2^20 > 65504.
INJECT = {3: (3, float("inf")), 6: (7, float("nan")), 8: (0, -float("inf"))}
BIG_STEP = 10


def gen_scaler(tensors, meta):
    rng = np.random.default_rng(77)
    for name, (kw, static, clip) in SCALER_CASES.items():
        p0 = rng.uniform(-1, 1, size=N_PARAM).astype(np.float32)
        true = (rng.uniform(0.01, 0.09, size=(SCALER_STEPS, N_PARAM)) *
                np.where(rng.uniform(size=(SCALER_STEPS, N_PARAM)) < 0.5, -1, 1)).astype(np.float32)
        for s, (i, v) in INJECT.items():
            true[s, i] = v
        true[BIG_STEP, 5] = 2.0
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = torch.optim.Adam([p], lr=1e-3)
        scaler = make_cpu_grad_scaler(**kw)
        rec = {k: np.zeros(SCALER_STEPS, np.float32) for k in ("scale_before", "found_inf", "scale_after", "grad_norm")}
        tracker = np.zeros(SCALER_STEPS, np.int32)
        params = np.zeros((SCALER_STEPS, N_PARAM), np.float32)
        for s in range(SCALER_STEPS):
            scale = float(scaler._scale.item())
            rec["scale_before"][s] = scale
            # fp16 weight gradient of the scaled loss, widened to fp32 (autocast + fp32 params)
            g16 = (torch.from_numpy(true[s]) * torch.tensor(scale, dtype=torch.float32)).half().float()
            p.grad = g16.clone()
            # mmengine AmpOptimWrapper.step(): unscale_ + clip only with clip_grad, then step, update
            if clip is not None:
                scaler.unscale_(opt)
                rec["grad_norm"][s] = float(torch.nn.utils.clip_grad_norm_([p], clip))
            else:
                # the norm mmengine would log, computed on a copy without touching the step
                rec["grad_norm"][s] = float(torch.norm(g16 * torch.tensor(1.0 / scale, dtype=torch.float32)))
            scaler.step(opt)
            st = scaler._per_optimizer_states[id(opt)]
            rec["found_inf"][s] = sum(v.item() for v in st["found_inf_per_device"].values())
            scaler.update(static)
            rec["scale_after"][s] = float(scaler._scale.item())
            tracker[s] = int(scaler._growth_tracker.item())
            params[s] = p.detach().numpy()
            opt.zero_grad()
        pre = f"scaler/{name}/"
        tensors[pre + "p0"] = p0
        tensors[pre + "true_grads"] = true
        for k, v in rec.items():
            tensors[pre + k] = v
        tensors[pre + "tracker_after"] = tracker
        tensors[pre + "params"] = params
        meta[pre.rstrip("/")] = json.dumps(dict(gradscaler=kw, static_scale=static, clip_max_norm=clip,
                                                optimizer=dict(type="Adam", lr=1e-3)))


# ------------------------------------------------------------------------- clip_grad_norm_ ----
def gen_clip(tensors, meta):
    rng = np.random.default_rng(5)
    cases = {"clipped": (2.0, 1.0), "unclipped": (1e-2, 10.0), "tiny_max": (5.0, 1e-3)}
    for name, (mag, max_norm) in cases.items():
        shapes = [(3, 4), (7,), (2, 3, 5)]
        gs_ = [torch.from_numpy((rng.standard_normal(s) * mag).astype(np.float32)) for s in shapes]
        ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, g in zip(ps, gs_):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        pre = f"clip/{name}/"
        tensors[pre + "grads"] = np.concatenate([g.numpy().ravel() for g in gs_])
        tensors[pre + "clipped"] = np.concatenate([p.grad.numpy().ravel() for p in ps])
        tensors[pre + "norm"] = np.array([float(norm)], np.float32)
        meta[pre.rstrip("/")] = json.dumps(dict(max_norm=max_norm, norm_type=2.0))


# ---------------------------------------------------------------------------- lr schedule ----
def gen_lr(tensors, meta):
    # DEKR's schedule with a short epoch: LinearLR(start 0.001, end=500 iterations, by_epoch=False)
    # + MultiStepLR([90, 120] epochs, gamma 0.1). mmengine's LinearParamScheduler with begin=0,
    # end=500 is torch's LinearLR with total_iters = end - begin - 1 = 499 (same chainable formula);
    # MultiStepParamScheduler is torch's MultiStepLR. Iteration schedulers step after every
    # iteration, epoch schedulers after every epoch (mmengine ParamSchedulerHook).
    for name, (iters_per_epoch, epochs) in {"dekr_10ipe": (10, 140), "dekr_7ipe": (7, 100)}.items():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p], lr=1e-3)
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, end_factor=1.0, total_iters=499)
        decay = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[90, 120], gamma=0.1)
        lrs = []
        for _ in range(epochs):
            for _ in range(iters_per_epoch):
                lrs.append(opt.param_groups[0]["lr"])
                warm.step()
            decay.step()
        tensors[f"lr/{name}/lrs"] = np.array(lrs, np.float64)
        meta[f"lr/{name}"] = json.dumps(dict(base_lr=1e-3, iters_per_epoch=iters_per_epoch, epochs=epochs,
                                             warmup_start_factor=0.001, warmup_end=500,
                                             milestones=[90, 120], gamma=0.1))


# ------------------------------------------------------------------- mmengine accumulation ----
class MmengineCounters:
    """mmengine OptimWrapper's accumulation counters (optimizer_wrapper.py), as read from its
    source: initialize_count_status sets inner_count = init and remainder = max % acc;
    should_sync (before forward): (inner+1) % acc == 0 or inner+1 == max; scale_loss: factor 1 if
    acc == 1, else acc while inner < max - remainder, else remainder; backward: inner += 1;
    should_update (after backward): inner % acc == 0 or inner == max."""

    def __init__(self, acc, init, max_counts):
        self.acc, self.inner, self.max = acc, init, max_counts
        self.remainder = max_counts % acc

    def should_sync(self):
        return (self.inner + 1) % self.acc == 0 or (self.inner + 1) == self.max

    def loss_factor(self):
        if self.acc == 1:
            return 1
        return self.acc if self.inner < self.max - self.remainder else self.remainder

    def backward(self):
        self.inner += 1

    def should_update(self):
        return self.inner % self.acc == 0 or self.inner == self.max


def gen_accum(tensors, meta):
    cases = {"acc4_max10": (4, 0, 10), "acc4_max12": (4, 0, 12), "acc3_resume2_max11": (3, 2, 11),
             "acc3_resume96_max100": (3, 96, 100), "acc1_max5": (1, 0, 5), "acc4_resume6_max13": (4, 6, 13),
             "acc5_max23": (5, 0, 23)}
    for name, (acc, init, mx) in cases.items():
        c = MmengineCounters(acc, init, mx)
        rows = []
        for it in range(init, mx):
            sync = c.should_sync()
            factor = c.loss_factor()
            c.backward()
            rows.append([it, int(sync), factor, int(c.should_update())])
        tensors[f"accum/{name}/table"] = np.array(rows, np.int64)
        meta[f"accum/{name}"] = json.dumps(dict(accumulative_counts=acc, init_counts=init, max_counts=mx))


def main():
    torch.manual_seed(0)
    tensors, meta = {}, {}
    gen_optimizers(tensors, meta)
    gen_scaler(tensors, meta)
    gen_clip(tensors, meta)
    gen_lr(tensors, meta)
    gen_accum(tensors, meta)
    meta["generator"] = f"tests/golden/gen_amp.py, torch {torch.__version__}"
    path = os.path.join(OUT, "amp_optim.safetensors")
    golden_io.save(path, tensors, meta)
    print(f"wrote {path}: {len(tensors)} tensors")
    for name in SCALER_CASES:
        pre = f"scaler/{name}/"
        print(name, "scale_before", tensors[pre + "scale_before"].astype(np.int64).tolist())
        print(name, "found_inf   ", tensors[pre + "found_inf"].astype(np.int64).tolist())
        print(name, "tracker     ", tensors[pre + "tracker_after"].tolist())


if __name__ == "__main__":
    main()

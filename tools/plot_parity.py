#!/usr/bin/env python3
r"""Accuracy parity of the precision policies: DEKR trained under fp32, fp16 and bf16.

Trains (with --run) or reads three `dekr_amp train` work dirs that differ only in --precision
(same config, seed, data order and iteration count), reads the per-iteration losses from each
WORK_DIR/scalars.jsonl, checks that the curves agree and that none diverges, and writes

    docs/parity/parity_host_tiny.json   curves, command lines, date, machine, the checks
    docs/parity/parity_host_tiny.png    total / heatmap / displacement loss (log scale) and the
                                        relative difference of the moving averages vs fp32

(--out-json/--out-png; the defaults are the tiny DEKR on the host backend, --device host with
configs/parity_host_tiny.toml; --device cuda --config configs/demo_gpu.toml is DEKR-W32 at 512x512).

The checks (exit status 1 if one fails):
  * every loss is finite, and no precision diverges: the mean of the last W iterations is below
    the mean of the first W (W = --window, 20);
  * agreement: |MA_W(p) - MA_W(fp32)| / MA_W(fp32) < X at every iteration, for p = fp16, bf16,
    on the total loss, where MA_W is the trailing moving average over W iterations.
    X is not a free choice: the host backend is deterministic (a repeated fp32 run, --repeat,
    must reproduce the losses bit for bit), so the only source of difference is the storage
    rounding of fp16/bf16; a difference in the moving average matters only if it is larger than
    the moving average's own resolution. X = 2 x the median relative standard error of the fp32
    moving average (std of the W losses in a window / sqrt(W) / their mean), i.e. the fp16/bf16
    curve must stay inside the fp32 curve's two-standard-error band. It is computed from the
    fp32 run alone, before the other curves are looked at.
  * at iteration 1 (identical weights, identical batch) the loss differs only by the forward
    pass's rounding: |rel diff| < 16 eps of the storage type (eps = 2^-10 fp16, 2^-7 bf16). Each
    stored activation is rounded once (relative error <= eps/2); the longest path of the tiny DEKR
    has ~30 convolutions, each followed by BatchNorm and ReLU, so ~90 roundings that add up
    roughly like a random walk: sqrt(90) x eps/2 ~ 5 eps; 16 eps leaves a 3x margin (heuristic:
    it assumes the loss's squared error does not cancel the prediction error, true at init).
    DEKR-W32 is deeper (stem 2 + stage 1 12 + stages 2-4 ~70 with their fuse layers + heads:
    ~90 convolutions, ~270 roundings, sqrt(270) x eps/2 ~ 8 eps), so 16 eps leaves 2x there.
    The measured value is far smaller, because the loss is a mean over ~10^5 terms whose rounding
    errors largely cancel; the check catches a broken conversion or layout (an O(1) error), not
    a small excess of rounding. Per-iteration losses after a few steps are NOT compared: Adam's
    normalised updates amplify tiny gradient differences, so single iterations differ by up to
    ~15 % while the moving averages agree.

On the GPU (--device cuda) the fp32 repeat is not bit-identical: deformable convolution's input
gradient adds with float atomicAdd (as torchvision's does) and cuDNN's backward algorithms may use
atomics, so two fp32 runs differ by the order of their additions and Adam amplifies that as it
amplifies fp16/bf16 rounding. Part of the fp16/bf16 difference is then plain run-to-run spread,
which the repeat measures. So when the repeat is not bit-identical (the default --repeat-iters is
the whole run on cuda), with D = the maximum over iterations W..K of |MA_W(fp32 repeat) -
MA_W(fp32)| / MA_W(fp32) (K = the repeat's length):
  * X = max(2 x the median relative standard error (as above), 2 x D): a policy passes if its
    curve stays as close to fp32 as two standard errors, or as twice the distance between two
    fp32 runs that differ only in the order of float additions. Both terms come from fp32 runs
    alone, before fp16/bf16 are looked at;
  * the check "repeat bit-identical" becomes "fp32 repeat's MA_W within X of fp32's" (it records
    D; X >= 2 D, so it fails only if D is not finite), plus one that can fail:
    the repeat's iteration-1 loss (same weights, same batch: only the forward pass, whose
    additions are at most reordered) within 16 eps(fp32) of fp32's, by the iteration-1 argument;
  * on the host backend a repeat that is not bit-identical still fails "repeat bit-identical"
    (the host backend is deterministic by design; a difference there is a bug), with X widened as
    on the GPU so that the other checks stay informative.
When the repeat is bit-identical everything is as described above for the host.

Usage (from the repository root; the PNG needs matplotlib: `python3 -m pip install matplotlib`):

    python3 tools/plot_parity.py --run --binary build-parity/examples/dekr_amp/dekr_amp \
        --iters 300 --work-root /tmp/parity
    python3 tools/plot_parity.py --work-root /tmp/parity      # plot existing runs only

DEKR-W32 at 512x512 on an H200 (configs/demo_gpu.toml; B = a CUDA build dir). The GPU machine may
lack matplotlib: --no-plot writes the JSON (with the curves) and prints the checks, then
--from-json makes the PNG from that JSON on any machine without touching the JSON:

    python3 tools/plot_parity.py --run --device cuda --binary $B/examples/dekr_amp/dekr_amp \
        --config configs/demo_gpu.toml --iters 300 --work-root /tmp/parity_w32 \
        --out-json docs/parity/parity_h200_w32.json --out-png docs/parity/parity_h200_w32.png --no-plot
    python3 tools/plot_parity.py --from-json docs/parity/parity_h200_w32.json \
        --out-png docs/parity/parity_h200_w32.png

(Re-analysing copied work dirs also works: `--work-root DIR --out-json .. --out-png ..` reads the
device, config and seed from the recorded command lines and the machine from DIR/parity_machine.json;
each run dir needs scalars.jsonl, and for the description parity_command.txt, config.toml and
train_stdout.txt.)
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time

try:
    import tomllib  # Python >= 3.11; only for the description (model, input size, data root)
except ImportError:
    tomllib = None

PRECISIONS = ("fp32", "fp16", "bf16")
EPS = {"fp32": 2.0 ** -23, "fp16": 2.0 ** -10, "bf16": 2.0 ** -7}
SERIES = (("loss", "total"), ("loss/heatmap", "heatmap"), ("loss/displacement", "displacement"))
COLORS = {"fp32": "#1f77b4", "fp16": "#d62728", "bf16": "#2ca02c"}
# Overlapping curves stay visible: fp32 wide and solid underneath, the others narrower and dashed.
STYLES = {"fp32": ("-", 3.0), "fp16": ("--", 1.6), "bf16": (":", 1.8)}


def train_options(iters, threads, seed, device="host", extra=()):
    """The --cfg-options of every run: only max_iters stops the run (no validation, no epoch
    checkpoints before the end), the loss is logged every iteration, and the LR decay milestone is
    moved past the run so the whole run trains at lr 1e-3 after the 10-iteration warmup (the
    demo's milestone at epoch 9 would leave lr 1e-4 for most of the run and hide differences).
    runtime.host_threads only on the host (the CUDA backend ignores it); --cfg-options last, so
    they can override these."""
    return ([f"train_cfg.max_iters={iters}", "train_cfg.max_epochs=1000", "train_cfg.val_interval=0",
             "default_hooks.logger.interval=1", "default_hooks.logger.tensorboard=false",
             "default_hooks.checkpoint.interval=1000", "param_scheduler.milestones=[1000]"]
            + ([f"runtime.host_threads={threads}"] if device == "host" else [])
            + [f"randomness.seed={seed}"] + list(extra))


def train_command(binary, config, work_dir, precision, iters, threads, seed, device="host", extra=()):
    # nice on the shared 2-core host; a GPU run has its machine to itself and niceness would only
    # slow the thread that feeds the GPU.
    prefix = ["nice", "-n", "19"] if device == "host" else []
    return (prefix + [binary, "train", config, "--work-dir", work_dir, "--precision", precision,
                      "--device", device, "--cfg-options"] + train_options(iters, threads, seed, device, extra))


def run_one(cmd, work_dir):
    """Trains into a fresh work dir and keeps the command line next to the logs."""
    if os.path.isdir(work_dir) and os.listdir(work_dir):
        sys.exit(f"plot_parity: work dir {work_dir} is not empty (remove it or choose another --work-root)")
    os.makedirs(work_dir, exist_ok=True)
    print("+", shlex.join(cmd), flush=True)
    t0 = time.time()
    with open(os.path.join(work_dir, "train_stdout.txt"), "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"plot_parity: training failed (exit {rc}); see {work_dir}/train_stdout.txt")
    with open(os.path.join(work_dir, "parity_command.txt"), "w") as f:
        f.write(shlex.join(cmd) + "\n")
        f.write(f"wall_seconds {time.time() - t0:.1f}\n")
        f.write(f"source_commit {git_commit()}\n")  # the tree the binary is assumed to be built from


def read_command(work_dir):
    path = os.path.join(work_dir, "parity_command.txt")
    if not os.path.exists(path):
        return None
    lines = open(path).read().splitlines()
    info = {"command": lines[0]}
    for line in lines[1:]:
        if line.startswith("wall_seconds "):
            info["wall_seconds"] = float(line.split()[1])
        elif line.startswith("source_commit "):
            info["source_commit"] = line.split()[1]
    return info


def recorded_run(info):
    """Device, config and --cfg-options (key -> value) of a recorded command line, or None."""
    if info is None:
        return None
    argv = shlex.split(info["command"])
    if "train" not in argv:
        return None
    i = argv.index("train")
    rec = {"config": argv[i + 1] if i + 1 < len(argv) else None, "device": None, "options": {}}
    for j, arg in enumerate(argv):
        if arg == "--device" and j + 1 < len(argv):
            rec["device"] = argv[j + 1]
    if "--cfg-options" in argv:
        for kv in argv[argv.index("--cfg-options") + 1:]:
            if kv.startswith("--"):
                break
            k, _, v = kv.partition("=")
            rec["options"][k] = v  # a later duplicate wins, as in dekr_amp
    return rec


def read_config(work_dir):
    """The resolved config dekr_amp wrote into the work dir (config.toml), or None."""
    path = os.path.join(work_dir, "config.toml")
    if tomllib is None or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None


def read_gpu_name(work_dir):
    """The GPU dekr_amp reported (`GPU 0: NAME, compute capability ..`) in the run's output, or None."""
    path = os.path.join(work_dir, "train_stdout.txt")
    if not os.path.exists(path):
        return None
    for line in open(path, errors="replace"):
        m = re.search(r"GPU \d+: (.+?), compute capability", line)
        if m:
            return m.group(1)
    return None


def describe(cfg, config_path, device, gpu):
    """(model, data, backend) in words: `tiny DEKR`, `data/coco_sample`, `host backend` for the
    host default; `DEKR-W32 512x512`, .., `CUDA backend (NVIDIA H200)` for the W32 GPU run."""
    model, data = "DEKR", "data/coco_sample"
    if cfg is not None:
        variant = cfg.get("model", {}).get("variant", "")
        size = cfg.get("codec", {}).get("input_size")
        if variant == "tiny":
            model = "tiny DEKR"
        else:
            model = f"DEKR-{variant.upper()}" + (f" {size[0]}x{size[1]}" if size else "")
        data = cfg.get("data", {}).get("data_root", data).rstrip("/") or data
    elif "tiny" in os.path.basename(config_path) or "demo_host" in os.path.basename(config_path):
        model = "tiny DEKR"
    backend = "host backend" if device == "host" else "CUDA backend" + (f" ({gpu})" if gpu else "")
    return model, data, backend


def read_scalars(work_dir):
    """Per-iteration training scalars, by step; a resumed or re-logged step keeps its last record."""
    by_step = {}
    with open(os.path.join(work_dir, "scalars.jsonl")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("mode") == "train":
                by_step[int(r["step"])] = r
    steps = sorted(by_step)
    if not steps:
        sys.exit(f"plot_parity: {work_dir}/scalars.jsonl has no training records")
    if steps != list(range(1, len(steps) + 1)):
        sys.exit(f"plot_parity: {work_dir}: the loss must be logged every iteration (logger.interval=1)")
    cols = {"step": steps}
    for key in ("loss", "loss/heatmap", "loss/displacement", "lr", "grad_norm", "loss_scale", "skipped_steps"):
        cols[key] = [by_step[s].get(key) for s in steps]
    return cols


def moving_average(x, w):
    """Trailing mean over w values; the first w-1 entries (incomplete windows) are None."""
    out, acc = [], 0.0
    for i, v in enumerate(x):
        acc += v
        if i >= w:
            acc -= x[i - w]
        out.append(acc / w if i >= w - 1 else None)
    return out


def mean(x):
    return sum(x) / len(x)


def std(x):
    m = mean(x)
    return math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))


def median(x):
    s = sorted(x)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def gpu_names():
    """The GPUs nvidia-smi lists, or None (no nvidia-smi)."""
    try:
        out = subprocess.check_output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True,
                                      stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()] or None


def machine():
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"system": f"{platform.system()} {platform.release()}", "machine": platform.machine(), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version()}


def git_commit():
    """The source commit. AMPKIT_SOURCE_COMMIT wins: a tree exported with `git archive` (how the GPU
    calls send a commit while the checkout is being edited) has no .git of its own, and git would
    answer for whatever checkout encloses it (the parity_h200_w32 runs recorded a wrong commit so)."""
    env = os.environ.get("AMPKIT_SOURCE_COMMIT")
    if env:
        return env
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def analyse(curves, window, repeat, device="host"):
    ref = curves["fp32"]["loss"]
    n = len(ref)
    for p in PRECISIONS:
        if len(curves[p]["loss"]) != n:
            sys.exit(f"plot_parity: {p} has {len(curves[p]['loss'])} iterations, fp32 has {n}")
    if n < 2 * window:
        sys.exit(f"plot_parity: {n} iterations are too few for two windows of {window}")

    # The tolerance, from the fp32 run alone: two standard errors of its moving average.
    rel_se = [std(ref[i - window + 1:i + 1]) / math.sqrt(window) / mean(ref[i - window + 1:i + 1])
              for i in range(window - 1, n)]
    tol = 2.0 * median(rel_se)

    # The fp32 repeat, also before fp16/bf16 are looked at: bit-identical (the host), or the
    # run-to-run spread D of a backend that adds with atomics (the GPU), which widens X to 2 D.
    same, spread = True, None
    if repeat is not None:
        k = len(repeat["loss"])
        if k > n:
            sys.exit(f"plot_parity: the fp32 repeat has {k} iterations, fp32 has {n}")
        same = all(repeat[key][:k] == curves["fp32"][key][:k] for key, _ in SERIES)
        if not same:
            if k < window:
                sys.exit(f"plot_parity: the fp32 repeat is not bit-identical and its {k} iterations are too few "
                         f"for a window of {window}: the run-to-run spread cannot be measured (--repeat-iters)")
            ma_rep = moving_average(repeat["loss"], window)
            ma_ref = moving_average(ref[:k], window)
            rd = [abs(a - b) / b for a, b in zip(ma_rep[window - 1:], ma_ref[window - 1:])]
            i = max(range(len(rd)), key=rd.__getitem__)
            spread = {"D": rd[i], "at_step": i + window, "iterations": k,
                      "rel_diff_iteration1": abs(repeat["loss"][0] - ref[0]) / ref[0]}
            tol = max(tol, 2.0 * spread["D"])

    checks, metrics = [], {}
    ma = {p: {name: moving_average(curves[p][key], window) for key, name in SERIES} for p in PRECISIONS}
    for p in PRECISIONS:
        m = {}
        finite = all(math.isfinite(v) for key, _ in SERIES for v in curves[p][key])
        first, last = mean(curves[p]["loss"][:window]), mean(curves[p]["loss"][-window:])
        m["all_finite"] = finite
        m["first_window_mean"] = first
        m["last_window_mean"] = last
        m["last_over_first"] = last / first
        checks.append({"name": f"{p}: all losses finite", "pass": finite})
        checks.append({"name": f"{p}: last-window mean < first-window mean ({last:.4e} < {first:.4e})",
                       "pass": last < first})
        if curves[p]["skipped_steps"][-1] is not None:
            m["skipped_steps"] = curves[p]["skipped_steps"][-1]
            m["final_loss_scale"] = curves[p]["loss_scale"][-1]
        if p != "fp32":
            for key, name in SERIES:
                rd = [abs(a - b) / b for a, b in zip(ma[p][name][window - 1:], ma["fp32"][name][window - 1:])]
                i = max(range(len(rd)), key=rd.__getitem__)
                m[f"max_rel_diff_ma_{name}"] = rd[i]
                m[f"max_rel_diff_ma_{name}_at_step"] = i + window
                m[f"mean_rel_diff_ma_{name}"] = mean(rd)
            rd_iter = [abs(a - b) / b for a, b in zip(curves[p]["loss"], ref)]
            m["max_rel_diff_per_iteration_total"] = max(rd_iter)
            m["rel_diff_iteration1_total"] = rd_iter[0]
            checks.append({"name": f"{p}: max relative difference of MA{window}(total) vs fp32 "
                                   f"{m['max_rel_diff_ma_total']:.4f} < X = {tol:.4f}",
                           "pass": m["max_rel_diff_ma_total"] < tol})
            bound = 16 * EPS[p]
            checks.append({"name": f"{p}: iteration-1 relative difference {rd_iter[0]:.2e} < 16 eps = {bound:.2e}",
                           "pass": rd_iter[0] < bound})
        metrics[p] = m
    if repeat is not None:
        k = len(repeat["loss"])
        metrics["fp32"]["repeat_bit_identical_iterations"] = k if same else 0
        if same or device == "host":  # the host backend is deterministic: a difference is a bug
            checks.append({"name": f"fp32 repeated run: first {k} iterations bit-identical", "pass": same})
        if not same:
            metrics["fp32"]["repeat_max_rel_diff_ma_total"] = spread["D"]
            metrics["fp32"]["repeat_max_rel_diff_ma_total_at_step"] = spread["at_step"]
            metrics["fp32"]["repeat_rel_diff_iteration1_total"] = spread["rel_diff_iteration1"]
            checks.append({"name": f"fp32 repeated run ({k} iterations, not bit-identical): max relative difference "
                                   f"of MA{window}(total) vs fp32 {spread['D']:.4f} < X = {tol:.4f}",
                           "pass": spread["D"] < tol})
            bound = 16 * EPS["fp32"]
            checks.append({"name": f"fp32 repeated run: iteration-1 relative difference "
                                   f"{spread['rel_diff_iteration1']:.2e} < 16 eps = {bound:.2e}",
                           "pass": spread["rel_diff_iteration1"] < bound})
    tolerance = {
        "quantity": f"max over iterations {window}..{n} of |MA{window}(p) - MA{window}(fp32)| / MA{window}(fp32), "
                    "total loss, p in {fp16, bf16}",
        "X": tol,
        "window": window,
        "median_rel_standard_error_fp32_ma": median(rel_se),
        "why": "The host backend is deterministic (repeated fp32 run bit-identical), so all of the difference "
               "comes from fp16/bf16 storage rounding; it is accepted while the fp16/bf16 moving average stays "
               "within two standard errors of the fp32 moving average (X = 2 x median over windows of "
               "std(window)/sqrt(W)/mean(window), from the fp32 run alone).",
        "iteration1_bound": "16 eps of the storage type (fp16 2^-10, bf16 2^-7): same weights and batch, "
                            "so only the forward pass's rounding differs",
    }
    if spread is not None:
        tolerance["fp32_repeat_max_rel_diff_ma"] = spread["D"]
        tolerance["fp32_repeat_iterations"] = spread["iterations"]
        tolerance["why"] = (
            f"The fp32 repeat is not bit-identical ({'host' if device == 'host' else 'GPU'} backend: "
            "deformable convolution's input gradient adds with float atomicAdd as torchvision's does, and "
            "cuDNN's backward algorithms may use atomics), so two fp32 runs already differ by the order of "
            "their float additions, which Adam amplifies like the fp16/bf16 rounding. X = max(2 x median over "
            "windows of std(window)/sqrt(W)/mean(window) of the fp32 run, 2 x D), D = the maximum relative "
            f"difference of MA{window}(total) between the fp32 run and its repeat over iterations "
            f"{window}..{spread['iterations']}: fp16/bf16 pass while they stay within two standard errors of "
            "fp32, or within twice the fp32 run-to-run spread. Both terms come from the fp32 runs alone, before "
            "fp16/bf16 are looked at. The repeat's iteration-1 loss (same weights and batch, forward only) must "
            "agree within 16 eps(fp32).")
        tolerance["iteration1_bound_fp32_repeat"] = "16 eps(fp32) = 16 x 2^-23, as iteration1_bound"
    elif repeat is not None and device != "host":
        tolerance["why"] = (f"The fp32 repeat on the {device} backend reproduced the fp32 run's first {len(repeat['loss'])} "
                            "losses bit for bit, so (as on the host) all of the difference comes from fp16/bf16 "
                            "storage rounding; it is accepted while the fp16/bf16 moving average stays within two "
                            "standard errors of the fp32 moving average (X = 2 x median over windows of "
                            "std(window)/sqrt(W)/mean(window), from the fp32 run alone).")
    elif repeat is None and device != "host":
        tolerance["why"] = ("No fp32 repeat was run, so the run-to-run spread of this backend is unknown and X is "
                            "2 x the median relative standard error of the fp32 run's moving average alone.")
    return ma, metrics, checks, tolerance


def plot(curves, ma, tolerance, window, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for ax, (key, name) in zip(axes.flat, SERIES):
        for p in PRECISIONS:
            st = curves[p]["step"]
            ax.plot(st, curves[p][key], color=COLORS[p], alpha=0.18, linewidth=0.8)
            ax.plot(st[window - 1:], ma[p][name][window - 1:], color=COLORS[p], linestyle=STYLES[p][0],
                    linewidth=STYLES[p][1], label=f"{p} (MA{window})")
        ax.set_yscale("log")
        ax.set_title(f"{name} loss (thin: per iteration)")
        ax.set_xlabel("iteration")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[3]
    ref = ma["fp32"]["total"]
    for p in ("fp16", "bf16"):
        st = curves[p]["step"][window - 1:]
        rd = [abs(a - b) / b for a, b in zip(ma[p]["total"][window - 1:], ref[window - 1:])]
        ax.plot(st, rd, color=COLORS[p], linewidth=1.5, label=f"{p} vs fp32 (max {max(rd):.2e})")
    ax.axhline(tolerance["X"], color="k", linestyle="--", linewidth=1, label=f"tolerance X = {tolerance['X']:.4f}")
    ax.set_yscale("log")
    ax.set_title(f"|MA{window}(p) - MA{window}(fp32)| / MA{window}(fp32), total loss")
    ax.set_xlabel("iteration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_from_json(doc):
    """The curves as read_scalars gives them, from a JSON this script wrote."""
    return {p: {"step": c["step"], "loss": c["total"], "loss/heatmap": c["heatmap"],
                "loss/displacement": c["displacement"]} for p, c in doc["curves"].items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="train the three runs (and the fp32 repeat) first")
    ap.add_argument("--binary", default="build-parity/examples/dekr_amp/dekr_amp")
    ap.add_argument("--config", default="configs/parity_host_tiny.toml")
    ap.add_argument("--device", choices=("host", "cuda"), default=None,
                    help="backend of the runs (default host; without --run: what the recorded runs used)")
    ap.add_argument("--cfg-options", nargs="+", action="extend", default=[], metavar="K=V",
                    help="more config overrides for every run, after the built-in ones")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--repeat-iters", type=int, default=None,
                    help="length of the fp32 repeat (0: none; default 40 on the host, --iters on cuda)")
    ap.add_argument("--threads", type=int, default=2, help="runtime.host_threads (host only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-root", default="/tmp/parity",
                    help="holds run_fp32, run_fp16, run_bf16 (and run_fp32_rep)")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--out-json", default="docs/parity/parity_host_tiny.json")
    ap.add_argument("--out-png", default="docs/parity/parity_host_tiny.png")
    ap.add_argument("--title", default=None, help="the plot's title (default: model, backend, iterations, seed)")
    ap.add_argument("--no-plot", action="store_true",
                    help="write the JSON and print the checks only (no matplotlib needed)")
    ap.add_argument("--from-json", default=None, metavar="JSON",
                    help="only draw --out-png from a JSON this script wrote (the JSON is not rewritten)")
    a = ap.parse_args()

    if a.from_json:
        with open(a.from_json) as f:
            doc = json.load(f)
        curves = curves_from_json(doc)
        window = doc["tolerance"]["window"]
        ma = {p: {name: moving_average(curves[p][key], window) for key, name in SERIES} for p in PRECISIONS}
        os.makedirs(os.path.dirname(a.out_png) or ".", exist_ok=True)
        plot(curves, ma, doc["tolerance"], window, a.out_png, a.title or doc.get("title", doc["what"]))
        print(f"wrote {a.out_png} from {a.from_json}")
        return 0 if doc["all_pass"] else 1

    dirs = {p: os.path.join(a.work_root, f"run_{p}") for p in PRECISIONS}
    rep_dir = os.path.join(a.work_root, "run_fp32_rep")
    machine_path = os.path.join(a.work_root, "parity_machine.json")
    if a.run:
        device = a.device or "host"
        repeat_iters = a.repeat_iters if a.repeat_iters is not None else (40 if device == "host" else a.iters)
        host = machine()
        if device == "cuda":
            host["gpus"] = gpu_names()
        for p in PRECISIONS:
            run_one(train_command(a.binary, a.config, dirs[p], p, a.iters, a.threads, a.seed, device,
                                  a.cfg_options), dirs[p])
        if repeat_iters > 0:
            run_one(train_command(a.binary, a.config, rep_dir, "fp32", repeat_iters, a.threads, a.seed, device,
                                  a.cfg_options), rep_dir)
        with open(machine_path, "w") as f:  # where the runs ran, for a re-analysis elsewhere
            json.dump(host, f, indent=1)
            f.write("\n")

    curves = {p: read_scalars(dirs[p]) for p in PRECISIONS}
    repeat = read_scalars(rep_dir) if os.path.exists(os.path.join(rep_dir, "scalars.jsonl")) else None
    runs = {name: read_command(d)
            for name, d in list(dirs.items()) + ([("fp32_repeat", rep_dir)] if repeat is not None else [])}

    # Device, config and seed as the runs recorded them (a re-analysis need not repeat the flags).
    rec = recorded_run(runs["fp32"]) or {"config": None, "device": None, "options": {}}
    device = rec["device"] or a.device or "host"
    if a.device is not None and rec["device"] is not None and a.device != rec["device"]:
        sys.exit(f"plot_parity: --device {a.device}, but the runs under {a.work_root} used --device {rec['device']}")
    config = rec["config"] or a.config
    seed = rec["options"].get("randomness.seed", a.seed)
    ma, metrics, checks, tolerance = analyse(curves, a.window, repeat, device)

    model, data, backend = describe(read_config(dirs["fp32"]), config, device, read_gpu_name(dirs["fp32"]))
    n = len(curves["fp32"]["loss"])
    title = a.title or (f"{model}, {backend}, {n} iterations, seed {seed}: fp32 vs fp16 (fp32 master, dynamic "
                        f"scale) vs bf16 (fp32 master)")
    run_machine = None
    if os.path.exists(machine_path):
        with open(machine_path) as f:
            run_machine = json.load(f)
    doc = {
        "what": f"{model} ({config}) on {data}, {backend}, {n} iterations per precision, "
                "same seed, data order and augmentation; per-iteration training losses from scalars.jsonl",
        "title": title,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": run_machine or machine(),
        **({"plotted_on": machine()} if run_machine is not None and run_machine != machine() else {}),
        "git_commit_at_plot": git_commit(),
        "runs": runs,
        "tolerance": tolerance,
        "checks": checks,
        "all_pass": all(c["pass"] for c in checks),
        "metrics": metrics,
        "curves": {p: {"step": curves[p]["step"], "total": curves[p]["loss"], "heatmap": curves[p]["loss/heatmap"],
                       "displacement": curves[p]["loss/displacement"], "lr": curves[p]["lr"],
                       "grad_norm": curves[p]["grad_norm"],
                       **({"loss_scale": curves[p]["loss_scale"], "skipped_steps": curves[p]["skipped_steps"]}
                          if curves[p]["loss_scale"][-1] is not None else {})}
                   for p in PRECISIONS},
    }
    os.makedirs(os.path.dirname(a.out_json) or ".", exist_ok=True)
    with open(a.out_json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    for c in checks:
        print(("PASS " if c["pass"] else "FAIL ") + c["name"])
    if not a.no_plot:
        os.makedirs(os.path.dirname(a.out_png) or ".", exist_ok=True)
        try:
            plot(curves, ma, tolerance, a.window, a.out_png, title)
        except ImportError as e:
            sys.exit(f"plot_parity: wrote {a.out_json} but no plot ({e}): install matplotlib, or draw it elsewhere "
                     f"with --from-json {a.out_json} --out-png {a.out_png}")
    print(f"wrote {a.out_json}" + ("" if a.no_plot else f" and {a.out_png}"))
    return 0 if doc["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

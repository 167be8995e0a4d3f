#!/usr/bin/env python3
"""Compare two dekr_amp training runs by the size of their weight difference relative to the size
of the training updates: tests/gpu/dist/ddp_train.sh's check 1 (2 GPUs vs 1 GPU + accumulation).

Standard library only (it runs on whatever python3 the GPU machine has).

Metric. For run A, reference run B and the common start weights w0 (the initialisation), over
the trained parameters (names ending in .weight / .bias; BN running statistics are left out: the
2-GPU run averages them once per epoch, the 1-GPU run updates them per micro-batch, by design):

    global ratio   r   = ||w_A - w_B|| / ||w_B - w0||          (all parameters as one vector)
    tensor ratio   r_t = ||w_A,t - w_B,t|| / ||w_B,t - w0,t||  (one parameter tensor)

at every epoch both runs saved (epoch_N.safetensors), epochs 1..--judge-epoch judged (default:
all). The ratio scales with the updates, so it reads the same whatever the learning rate, and it
separates the two causes of a difference:
  * a semantic difference changes the update itself: gradients summed instead of averaged over
    the 2 ranks (A's steps twice B's: r ~ 1), a missing all-reduce (rank 0 steps on its own
    gradient: r ~ |g0 - g1| / |g0 + g1| ~ 0.5-1 for different images), another image pairing, BN
    batch or schedule (r ~ 1, see the host numbers below), already at the first epoch;
  * rounding noise (another summation order, atomics) starts at ~1e-7 of the update and grows
    only as far as the training dynamics amplify it. With SGD that amplification is modest (the
    host numbers below: a 1e-6 relative perturbation of the loss gives r <= 3.5e-5 in 6 steps);
    with Adam, m / sqrt(v) turns the sign flip of a noise-level gradient element into a full
    lr-sized step, so Adam runs are compared for information only.

Decision (exit 0 pass, 1 fail, 2 bad input), over the judged epochs: max r <= --bound AND
max r <= --noise-multiple * max(max noise floor, --noise-min), and every tensor with a real update
(see --tensor-floor) has r_t <= --tensor-bound; both runs must have taken the same number of
optimizer steps by every epoch. The noise floor is the same metric for two identical commands of the
reference run (--noise DIR: B repeated). --noise-min stands in for a floor of 0 (a deterministic
device): in fp32 the 2-GPU run should then be bit-identical, since (g0 + g1) / 2 (NCCL avg) and
g0/2 + g1/2 (the loss divided by the accumulation count) are the same number exactly (halving is
exact barring subnormals), but a kernel may still differ in the last bit between the two
processes' code paths. With a floor of 0 the limit is 10 x --noise-min: fp32 1e-3, 30x the host's
response to a 1e-6 relative seed (3.5e-5); AMP (epoch 1) 1e-2, 5.5x it (1.8e-3).
With --info the verdict is printed but the exit status is 0 (unless the input is bad).

Host validation (host backend, deterministic: two identical commands give identical files).
Tiny DEKR of configs/demo_host.toml at 256x256 (the GPU test's size), the 4 sample images, batch 1,
3 epochs = 6 optimizer steps. SGD is optimizer.type=Adam with betas=[0, 0.999], eps=100, lr=0.01,
i.e. p -= 1e-4 * g / (1 + |g|/100), because dekr_amp's trainer then dispatched Adam/AdamW only
(ddp_train.sh now uses optimizer.type=SGD with lr 1e-4: the same update to 8e-5 relative).
Commands (from the repo root; build-ddp2 = the host-only build of dekr_amp):
    H=(--device host --cfg-options "codec.input_size=[256, 256]" "codec.heatmap_size=[64, 64]"
       train_cfg.num_workers=1 train_cfg.val_interval=0 param_scheduler.warmup_iters=0
       default_hooks.checkpoint.interval=1 default_hooks.checkpoint.max_keep_ckpts=-1)
    SGD=(optimizer.type=Adam "optimizer.betas=[0.0, 0.999]" optimizer.eps=100.0 optimizer.lr=0.01)
    run() { d=$1; shift; build-ddp2/examples/dekr_amp/dekr_amp train configs/demo_host.toml \
            --work-dir /tmp/h/$d "${H[@]}" "$@"; }
    run start train_cfg.batch_size=1 train_cfg.max_iters=1 optimizer.lr=1e-30
    E=(train_cfg.max_epochs=3 train_cfg.batch_size=1 optim_wrapper.accumulative_counts=2)
    run b "${SGD[@]}" "${E[@]}";  run b_again "${SGD[@]}" "${E[@]}"          # B and B repeated
    run pert "${SGD[@]}" "${E[@]}" loss.heatmap_weight=1.000001   # rounding-level seed (1e-6)
    run lr2 "${SGD[@]}" "${E[@]}" optimizer.lr=0.02                # like a sum instead of a mean
    run acc1 "${SGD[@]}" train_cfg.max_epochs=3 train_cfg.batch_size=1 optim_wrapper.accumulative_counts=1
    run batch2 "${SGD[@]}" train_cfg.max_epochs=3 train_cfg.batch_size=2 optim_wrapper.accumulative_counts=1
    compare_checkpoints.py --start /tmp/h/start/epoch_1.safetensors --noise /tmp/h/b_again /tmp/h/X /tmp/h/b
  (the same with --amp, and with the config's Adam instead of SGD and lr 2e-3 for lr2).

  ratio ||A-B||/||B-w0|| at epochs 1, 2, 3 (A = X, B = b):
    fp32 SGD  b_again (identical command)     0, 0, 0            (all 263 tensors bit-identical; exit 0)
    fp32 SGD  pert (1e-6 of the heatmap loss) 3.5e-5, 2.5e-5, 2.1e-5   (worst judged tensor 3.6e-4; exit 0)
    fp32 SGD  lr2 (lr x 2)                    1.04, 1.04, 1.00   (exit 1)
    fp32 SGD  acc1 (accumulation 1 vs 2)      1.02 at epoch 1, then exit 1: optimizer steps differ (4 vs 2)
    fp32 SGD  batch2 (BN batch 2 vs 2 x 1)    1.23, 1.13, 0.93   (exit 1)
    AMP  SGD  b_again                         0, 0, 0
    AMP  SGD  pert                            1.8e-3, 0.106, 0.097  (hence AMP is judged at epoch 1)
    AMP  SGD  lr2                             1.01, 1.06, 1.02
    fp32 Adam b_again                         0, 0, 0
    fp32 Adam pert                            0.024, 0.25, 0.45  (Adam amplifies the same seed 10^4 x:
                                                                 last session's 2-GPU failure)
    fp32 Adam lr2                             1.27, 1.57, 1.72
  Choice of lr_sgd = 1e-4: with 1e-3 (optimizer.lr=0.1) the 6 steps leave the linear regime
  (fp32 pert 1.1e-5, 9.7e-5, 5.9e-3; lr x 2 gives 1.0, 1.16, 1.14), with 1e-2 they are chaotic
  (pert 7e-6, 0.032, 0.30). eps = 100 vs 1e6 at the same lr/eps: one step differs by 8e-5
  relative (max |g| = 6e-3), so eps = 100 is SGD.
  At 64x64 (stage-4 maps of 2x2) everything is less linear: lr_sgd 1e-3 gives pert 5.9e-6,
  1.3e-5, 1.6e-5 but lr x 2 already 1.38, 1.74, 1.84.
"""
import argparse
import json
import math
import os
import re
import struct
import sys
from array import array

TRAINED_SUFFIXES = ('.weight', '.bias')


def load(path):
    """(tensors {name: array('f')} of the F32 tensors, metadata dict) of a .safetensors file."""
    with open(path, 'rb') as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f'{path}: not a safetensors file (shorter than 8 bytes)')
        n = struct.unpack('<Q', raw)[0]
        head = json.loads(f.read(n))
        data = f.read()
    meta = head.pop('__metadata__', {}) or {}
    out = {}
    for name, v in head.items():
        if v.get('dtype') != 'F32':
            continue
        b, e = v['data_offsets']
        a = array('f')
        a.frombytes(data[b:e])
        if sys.byteorder != 'little':
            a.byteswap()
        out[name] = a
    return out, meta


def config_value(meta, section, key, default=None):
    """A value of the resolved config (TOML text in metadata 'ampkit.config'), as a string."""
    cur = ''
    for line in meta.get('ampkit.config', '').splitlines():
        s = line.split('#', 1)[0].strip()
        m = re.match(r'^\[([^\]]+)\]$', s)
        if m:
            cur = m.group(1).strip()
            continue
        if '=' in s and cur == section:
            k, v = s.split('=', 1)
            if k.strip() == key:
                return v.strip().strip('"\'')
    return default


def epochs_of(d):
    """{N: path} of the epoch_N.safetensors files in directory d."""
    out = {}
    for name in os.listdir(d):
        m = re.fullmatch(r'epoch_(\d+)\.safetensors', name)
        if m:
            out[int(m.group(1))] = os.path.join(d, name)
    return out


def optimizer_steps(meta):
    """Optimizer steps a checkpoint has taken: completed iterations / accumulative_counts."""
    it = int(meta.get('ampkit.iter', '0'))
    acc = int(config_value(meta, 'optim_wrapper', 'accumulative_counts', '1'))
    return it // acc


def sqdist(x, y):
    return math.fsum((u - v) * (u - v) for u, v in zip(x, y))


def compare(a, b, w0, names):
    """(global ratio, ||A-B||, ||B-w0||, [(tensor ratio, name, n, ||A-B||_t, ||B-w0||_t)])."""
    rows = []
    dd = uu = 0.0
    for k in names:
        d2 = sqdist(a[k], b[k])
        u2 = sqdist(b[k], w0[k])
        dd += d2
        uu += u2
        d, u = math.sqrt(d2), math.sqrt(u2)
        rows.append((d / u if u > 0 else (0.0 if d == 0 else math.inf), k, len(b[k]), d, u))
    D, U = math.sqrt(dd), math.sqrt(uu)
    return (D / U if U > 0 else (0.0 if D == 0 else math.inf)), D, U, rows


def judged(rows, U, n_total, floor):
    """The tensors whose update is a real one: RMS update per element >= floor * the global RMS.
    A tensor that barely trained (a gradient at noise level) has a ratio of noise over ~0."""
    rms = U / math.sqrt(n_total) if n_total else 0.0
    return [r for r in rows if r[4] > 0 and r[4] / math.sqrt(r[2]) >= floor * rms]


def main(argv=None):
    p = argparse.ArgumentParser(
        description='Compare the weights of two dekr_amp runs (work dirs with epoch_N.safetensors '
                    'checkpoints, checkpoint interval 1) relative to the size of the training '
                    'updates; optionally against a noise floor (two identical runs). See the '
                    'module docstring for the metric and the host validation.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example (what ddp_train.sh runs):\n'
               '  compare_checkpoints.py --label fp32 --start START/epoch_1.safetensors \\\n'
               '      --noise 1GPU_AGAIN 2GPU 1GPU\n'
               'exit status: 0 pass (or --info), 1 fail, 2 bad input')
    p.add_argument('a', help='work dir of the run under test (e.g. 2 GPUs x batch 1)')
    p.add_argument('b', help='work dir of the reference run (e.g. 1 GPU x batch 1 x accumulation 2)')
    p.add_argument('--start', required=True,
                   help='checkpoint holding the common initial weights w0 (e.g. a 1-iteration run '
                        'with lr 1e-30: the initialisation to ~1e-30)')
    p.add_argument('--noise', metavar='DIR',
                   help='work dir of the reference command run once more: the noise floor')
    p.add_argument('--bound', type=float, default=1e-2,
                   help='absolute bound on the global ratio at every judged epoch (default 1e-2)')
    p.add_argument('--tensor-bound', type=float, default=0.1,
                   help='bound on every judged tensor ratio at every judged epoch (default 0.1)')
    p.add_argument('--tensor-floor', type=float, default=1e-2,
                   help='judge a tensor only if its RMS update per element is at least this '
                        'fraction of the global RMS update per element (default 1e-2)')
    p.add_argument('--noise-multiple', type=float, default=10.0,
                   help='the ratio must be <= this multiple of max(noise floor, --noise-min) (default 10)')
    p.add_argument('--noise-min', type=float, default=1e-4,
                   help='the smallest noise floor assumed (default 1e-4)')
    p.add_argument('--judge-epoch', type=int, default=0,
                   help='judge epochs 1..N (the maxima of their ratios), print the later ones only '
                        '(default 0: every epoch both runs saved)')
    p.add_argument('--label', default='', help='prefix of the printed lines')
    p.add_argument('--info', action='store_true', help='informational: print the verdict, exit 0')
    p.add_argument('--worst', type=int, default=3, help='tensors listed at the last judged epoch (default 3)')
    args = p.parse_args(argv)
    tag = f'  {args.label}: ' if args.label else '  '

    try:
        ea, eb = epochs_of(args.a), epochs_of(args.b)
        en = epochs_of(args.noise) if args.noise else None
        common = sorted(set(ea) & set(eb) & (set(en) if en is not None else set(eb)))
        if not common:
            print(f'{tag}no epoch checkpoint common to {args.a} and {args.b}'
                  + (f' and {args.noise}' if args.noise else ''))
            return 2
        w0, _ = load(args.start)
        judge = common[-1] if args.judge_epoch in (None, 0) else args.judge_epoch
        if judge not in common:
            print(f'{tag}--judge-epoch {judge}: not an epoch both runs saved (have {common})')
            return 2
        verdict_r = worst_t = 0.0
        noise_r = None
        worst_name = ''
        for ep in common:
            a, ma = load(ea[ep])
            b, mb = load(eb[ep])
            names = sorted(k for k in b if k.endswith(TRAINED_SUFFIXES) and k in a and k in w0)
            if not names:
                print(f'{tag}no trained parameters common to the checkpoints of epoch {ep}')
                return 2
            for k in names:
                if not (len(a[k]) == len(b[k]) == len(w0[k])):
                    print(f'{tag}{k}: sizes differ ({len(a[k])}, {len(b[k])}, start {len(w0[k])})')
                    return 2
            missing = sorted(k for k in b if k.endswith(TRAINED_SUFFIXES) and k not in a)
            if missing:
                print(f'{tag}epoch {ep}: {len(missing)} trained tensors of B missing in A (first {missing[0]})')
                return 1
            sa, sb = optimizer_steps(ma), optimizer_steps(mb)
            r, D, U, rows = compare(a, b, w0, names)
            judged_ep = ep <= judge
            line = (f'{tag}epoch {ep}: ratio ||A-B||/||B-w0|| = {r:.3g} '
                    f'(||A-B|| {D:.3g}, ||B-w0|| {U:.3g}; optimizer steps A {sa}, B {sb})')
            if en is not None:
                n, _ = load(en[ep])
                rn, _, _, _ = compare(n, b, w0, names)
                line += f'; noise floor (B repeated) {rn:.3g}'
                if judged_ep:
                    noise_r = max(noise_r or 0.0, rn)
            print(line + ('' if judged_ep else ' [not judged]'))
            if sa != sb:
                print(f'{tag}FAIL: the runs took different numbers of optimizer steps by epoch {ep}')
                return 1
            n_total = sum(len(b[k]) for k in names)
            jr = judged(rows, U, n_total, args.tensor_floor)
            if judged_ep:
                verdict_r = max(verdict_r, r)
                if jr and max(jr)[0] >= worst_t:
                    worst_t, worst_name = max(jr)[0], f'{max(jr)[1]} (epoch {ep})'
            if ep == judge:
                for t in sorted(jr, reverse=True)[:max(args.worst, 0)]:
                    print(f'{tag}  tensor {t[1]} ({t[2]} values): ratio {t[0]:.3g} (||A-B|| {t[3]:.3g}, ||B-w0|| {t[4]:.3g})')
                print(f'{tag}  {len(names)} tensors, {n_total} values; {len(jr)} tensors judged '
                      f'(RMS update >= {args.tensor_floor:g} x the global RMS), '
                      f'{sum(1 for k in names if a[k] == b[k])} bit-identical tensors')
    except (OSError, ValueError, KeyError) as e:
        print(f'{tag}cannot compare: {e}')
        return 2

    floor = max(noise_r if noise_r is not None else 0.0, args.noise_min)
    ok_abs = verdict_r <= args.bound
    ok_noise = verdict_r <= args.noise_multiple * floor
    ok_tensor = worst_t <= args.tensor_bound
    why = []
    if not ok_abs:
        why.append(f'ratio {verdict_r:.3g} > bound {args.bound:g}')
    if not ok_noise:
        why.append(f'ratio {verdict_r:.3g} > {args.noise_multiple:g} x max(noise floor '
                   f'{noise_r if noise_r is not None else float("nan"):.3g}, {args.noise_min:g})')
    if not ok_tensor:
        why.append(f'a tensor ratio {worst_t:.3g} > {args.tensor_bound:g}')
    ok = ok_abs and ok_noise and ok_tensor
    nf = f'{noise_r:.3g}' if noise_r is not None else 'not measured'
    print(f'{tag}verdict over epochs 1-{judge}: max ratio {verdict_r:.3g}, max noise floor {nf}, worst judged tensor '
          f'{worst_t:.3g}{" " + worst_name if worst_name else ""}: {"within" if ok else "OUTSIDE"} the bounds (ratio <= {args.bound:g} and <= '
          f'{args.noise_multiple:g} x max(noise, {args.noise_min:g}); tensors <= {args.tensor_bound:g})'
          + ('' if ok else ': ' + '; '.join(why)) + (' [informational]' if args.info else ''))
    return 0 if (ok or args.info) else 1


if __name__ == '__main__':
    sys.exit(main())

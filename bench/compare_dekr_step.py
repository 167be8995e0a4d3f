#!/usr/bin/env python3
"""Join ampkit (bench/dekr_step.cu) and PyTorch (bench/torch_dekr_step.py) JSON lines into a
markdown table for docs/amp_guide.md: img/s, ms/step, peak GiB, speed-up and memory ratio.

Rows are matched on (policy, batch, accumulate, input). Policy of a PyTorch variant: amp / amp_cl
-> fp16, bf16_cl -> bf16, fp32 -> fp32; the PyTorch reference row of a policy is its channels_last
variant when present (the faster one), else NCHW. Every ampkit row (eager and "_graph") is
compared with that eager PyTorch row. Lines that are not JSON objects (notes, logs) are skipped,
so the whole output file of bench/run_dekr_step.sh can be passed as is.

Usage: python3 bench/compare_dekr_step.py FILE [FILE...] [--json OUT.json]
"""
import argparse
import json
import sys

GIB = 1024 ** 3
TORCH_POLICY = {'amp': 'fp16', 'amp_cl': 'fp16', 'bf16_cl': 'bf16', 'bf16': 'bf16', 'fp32': 'fp32', 'fp32_cl': 'fp32'}


def read_rows(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if not line.startswith('{'):
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def key(r, policy):
    return (policy, r['batch'], r.get('accumulate', 1), r.get('input', 512))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('files', nargs='+')
    ap.add_argument('--json', help='also write the joined rows here')
    a = ap.parse_args()
    rows = read_rows(a.files)
    torch_ref, ampkit, failed = {}, [], []
    for r in rows:
        if 'error' in r:
            failed.append(r)
            continue
        if r.get('impl') == 'pytorch':
            pol = TORCH_POLICY.get(r['variant'])
            if pol is None:
                continue
            k = key(r, pol)
            old = torch_ref.get(k)
            if old is None or (r['variant'].endswith('_cl') and not old['variant'].endswith('_cl')):
                torch_ref[k] = r
        elif r.get('impl') == 'ampkit':
            ampkit.append(r)
    order = {'fp16': 0, 'bf16': 1, 'fp32': 2}
    ampkit.sort(key=lambda r: (order.get(r.get('policy', r['variant'].split('_')[0]), 9), r['batch'],
                               r.get('accumulate', 1), r['variant']))

    def gib(b):
        return f'{b / GIB:.2f}' if b else '–'

    def fmt_batch(r):
        acc = r.get('accumulate', 1)
        return f"{r['batch']} × {acc}" if acc > 1 else str(r['batch'])

    out = ['| policy | batch | ampkit variant | img/s | ms/step | peak GiB (alloc / MemGetInfo) | skipped | '
           'PyTorch variant | img/s | ms/step | peak GiB | speed-up | memory ratio |',
           '|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|']
    joined = []
    for r in ampkit:
        pol = r.get('policy', r['variant'].split('_')[0])
        t = torch_ref.get(key(r, pol))
        graph = r['variant'].endswith('_graph')
        cells = [pol, fmt_batch(r), 'graph' if graph else 'eager', f"{r['img_per_s']:.1f}", f"{r['ms_per_step']:.1f}",
                 f"{gib(r['peak_allocated_bytes'])} / {gib(r.get('mem_get_info_delta_bytes', 0))}",
                 str(r.get('skipped_steps', '–'))]
        j = {'ampkit': r, 'pytorch': t}
        if t:
            speed = r['img_per_s'] / t['img_per_s']
            mem = r['peak_allocated_bytes'] / t['peak_allocated_bytes'] if t['peak_allocated_bytes'] else float('nan')
            cells += [t['variant'], f"{t['img_per_s']:.1f}", f"{t['ms_per_step']:.1f}", gib(t['peak_allocated_bytes']),
                      f'**{speed:.2f}×**', f'{mem:.2f}']
            j.update(speedup=speed, memory_ratio=mem)
        else:
            cells += ['–'] * 6
        out.append('| ' + ' | '.join(cells) + ' |')
        joined.append(j)
    # ampkit's own memory target: fp16 peak <= 0.55 x fp32 peak at the same batch
    own = []
    eager = {(r.get('policy'), r['batch'], r.get('accumulate', 1), r.get('input', 512)): r
             for r in ampkit if not r['variant'].endswith('_graph')}
    for (pol, b, acc, inp), r in sorted(eager.items(), key=lambda kv: str(kv[0])):
        f32 = eager.get(('fp32', b, acc, inp))
        if pol != 'fp32' and f32:
            own.append(f"- {pol} / fp32 peak allocated at batch {b}{f' × {acc}' if acc > 1 else ''}: "
                       f"{r['peak_allocated_bytes'] / f32['peak_allocated_bytes']:.2f}")
    meta = next((r for r in rows if r.get('impl') == 'ampkit' and 'gpu' in r), {})
    tmeta = next((r for r in rows if r.get('impl') == 'pytorch'), {})
    print(f"DEKR-W32 {meta.get('input', 512)}×{meta.get('input', 512)} training step on {meta.get('gpu', '?')} "
          f"({meta.get('date', '?')}); ampkit cuDNN {meta.get('cudnn', '?')}, driver {meta.get('driver', '?')}; "
          f"PyTorch {tmeta.get('torch', '?')} cuDNN {tmeta.get('cudnn', '?')}. Median of ≥ 20 steps after warm-up "
          '(CUDA events); img/s counts every micro-batch image; speed-up and memory ratio are ampkit / PyTorch '
          '(eager PyTorch, channels_last where measured).\n')
    print('\n'.join(out))
    if own:
        print('\n' + '\n'.join(own))
    if failed:
        print('\nFailed configurations:')
        for r in failed:
            print(f"- {r.get('impl')} {r.get('variant')} batch {r.get('batch')} × {r.get('accumulate', 1)}: "
                  f"{r['error'][:200]}")
    cmds = sorted({r['command'] for r in rows if 'command' in r})
    if cmds:
        print('\nCommands:\n' + '\n'.join(f'- `{c}`' for c in cmds))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(joined, f, indent=1)
    return 0 if ampkit else 1


if __name__ == '__main__':
    sys.exit(main())

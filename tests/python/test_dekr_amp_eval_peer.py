#!/usr/bin/env python3
"""`dekr_amp test`'s numbers against pycocotools on the same predictions.

Runs the C++ case "dekr_amp demo flow on the host: ..." of test_train with AMPKIT_EVAL_OUT=DIR: a
short host training on the bundled sample, validation, `test` of the last checkpoint. The case
itself checks that the test stats equal `cocoeval` on the written results file and the in-training
validation; here the same results file goes through pycocotools' COCOeval(iouType='keypoints'),
and its 10 stats must equal the C++ ones to 1e-12 (the tolerance of test_cocoeval_peer.py: numpy's
vectorised exp may differ from libm's in the last bit of an OKS).

usage: test_dekr_amp_eval_peer.py --test-binary PATH/test_train
Exit 77 (skipped) only when pycocotools cannot be imported.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile

try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as e:  # the only reason to skip
    print(f'SKIPPED: pycocotools cannot be imported ({e}); install with `python3 -m pip install pycocotools`')
    sys.exit(77)

# doctest's -tc splits its argument at commas: select the case by the prefix of its name.
CASE = 'dekr_amp demo flow on the host:*'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--test-binary', required=True, help='path of test_train')
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, AMPKIT_EVAL_OUT=d)
        r = subprocess.run([args.test_binary, f'-tc={CASE}'], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-4000:])
            sys.exit(1)
        if not os.path.exists(os.path.join(d, 'stats.json')):
            print(f'the C++ case "{CASE}" did not run (renamed?)\n', r.stdout[-2000:])
            sys.exit(1)
        ours = json.load(open(os.path.join(d, 'stats.json')))
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(ours['gt'])
            dt = gt.loadRes(os.path.join(d, 'results.json'))
            ev = COCOeval(gt, dt, 'keypoints')
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        theirs = [float(x) for x in ev.stats]
        names = ['AP', 'AP .5', 'AP .75', 'AP (M)', 'AP (L)', 'AR', 'AR .5', 'AR .75', 'AR (M)', 'AR (L)']
        bad = [(n, a, b) for n, a, b in zip(names, ours['stats'], theirs) if abs(a - b) > 1e-12]
        for n, a, b in zip(names, ours['stats'], theirs):
            print(f'{n:8s} ampkit {a:.15f}  pycocotools {b:.15f}')
        if bad:
            print('MISMATCH:', bad)
            sys.exit(1)
        print(f'ok: {len(dt.anns)} predicted poses on {len(gt.imgs)} images, 10 stats equal to 1e-12')


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""ampkit's COCO keypoint evaluator against the real pycocotools, on many random cases.

Each case starts from the bundled sample (data/coco_sample: 4 real COCO images, 14 GTs, 73 real
detections) and perturbs it: jittered keypoints at several scales, dropped and duplicated people,
exact GT copies (OKS 1), score ties and zero scores, integer scores, more than 20 detections per
image, false positives, detections on images without GT, crowd GTs with RLE or polygon
segmentations (with and without labelled keypoints), GTs with num_keypoints 0, GT areas on the
inclusive area-range bounds, empty images, replicated images (ties across images), a second
category, results carrying a bbox (loadRes' bbox branch), a GT with id 0 and duplicated GT ids.

For every case the 10 stats, the precision (T,R,K,A) and recall (T,K,A) arrays from
`ampkit_cocoeval --json --arrays` must equal pycocotools' to 1e-12. (They are expected to be
bit-identical: matching is discrete and the sums follow numpy's pairwise order; the tolerance only
allows for numpy's vectorised exp differing from libm's in the last bit of an OKS.)

usage: test_cocoeval_peer.py --tool PATH/ampkit_cocoeval [--cases N] [--seed S]
Exit 77 (skipped) only when pycocotools cannot be imported.
"""
import argparse
import contextlib
import copy
import io
import json
import os
import random
import subprocess
import sys
import tempfile

SKIP = 77
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, 'data', 'coco_sample')

try:
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as e:  # the only reason to skip
    print(f'SKIPPED: pycocotools/numpy cannot be imported ({e}); '
          'install with `python3 -m pip install pycocotools numpy`')
    sys.exit(SKIP)


def jitter_keypoints(rng, kpts, scale, unlabelled_box):
    out = []
    x0, y0, w, h = unlabelled_box
    for k in range(17):
        x, y, v = kpts[3 * k:3 * k + 3]
        if v > 0:
            x += rng.gauss(0, scale)
            y += rng.gauss(0, scale)
        else:  # the model still predicts something for unlabelled joints
            x = x0 + rng.uniform(-0.2, 1.2) * w
            y = y0 + rng.uniform(-0.2, 1.2) * h
        out += [x, y, rng.random()]
    return out


def make_case(rng, base_gt, base_res):
    gt = {'info': {}, 'images': [], 'annotations': [],
          'categories': copy.deepcopy(base_gt['categories'])}
    copies = rng.choice([1, 1, 1, 2, 3, 6])
    img_size = {}
    next_ann = 1
    for c in range(copies):
        for img in base_gt['images']:
            im = dict(img)
            im['id'] = img['id'] + 1000000 * c
            gt['images'].append(im)
            img_size[im['id']] = (im['width'], im['height'])
        for a in base_gt['annotations']:
            a = copy.deepcopy(a)
            a['image_id'] += 1000000 * c
            a['id'] = next_ann
            next_ann += 1
            if rng.random() < 0.1:  # drop the person from the GT
                continue
            r = rng.random()
            if r < 0.06:
                a['num_keypoints'] = 0
            elif r < 0.12:
                a['iscrowd'] = 1
            elif r < 0.2:  # on the inclusive area bounds, or just off them
                a['area'] = rng.choice([1024, 9216, 1023.9999999, 9216.000001, 32.0 ** 2])
            gt['annotations'].append(a)
    # synthetic crowd regions (RLE or polygon), mostly without keypoints
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        img = rng.choice(gt['images'])
        W, H = img_size[img['id']]
        bw, bh = rng.uniform(20, W / 2), rng.uniform(20, H / 2)
        bx, by = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
        if rng.random() < 0.5:
            seg = {'size': [H, W], 'counts': [int(H * bx), int(bh), int(H - bh), int(bh)]}
        else:
            seg = [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]]
        kp = [0] * 51
        nk = 0
        if rng.random() < 0.3:
            for k in range(17):
                if rng.random() < 0.5:
                    kp[3 * k:3 * k + 3] = [bx + rng.random() * bw, by + rng.random() * bh, 2]
                    nk += 1
        gt['annotations'].append({
            'id': next_ann, 'image_id': img['id'], 'category_id': 1, 'iscrowd': 1,
            'segmentation': seg, 'area': bw * bh * rng.uniform(0.5, 1.0),
            'bbox': [bx, by, bw, bh], 'keypoints': kp, 'num_keypoints': nk})
        next_ann += 1
    # empty images
    for e in range(rng.choice([0, 1, 3])):
        iid = 5000000 + e
        gt['images'].append({'id': iid, 'width': 640, 'height': 480, 'file_name': f'{iid}.jpg'})
        img_size[iid] = (640, 480)
    # a second category (same keypoint layout)
    two_cats = rng.random() < 0.1
    if two_cats:
        cat = copy.deepcopy(gt['categories'][0])
        cat['id'], cat['name'] = 2, 'other'
        gt['categories'].append(cat)
        for a in list(gt['annotations']):
            if rng.random() < 0.3:
                b = copy.deepcopy(a)
                b['id'], b['category_id'] = next_ann, 2
                next_ann += 1
                gt['annotations'].append(b)
    # id quirks: a GT with id 0 (pycocotools reads a match to it as "unmatched"), duplicate ids
    if rng.random() < 0.05 and gt['annotations']:
        rng.choice(gt['annotations'])['id'] = 0
    if rng.random() < 0.05 and len(gt['annotations']) > 2:
        a, b = rng.sample(gt['annotations'], 2)
        b['id'] = a['id']

    # ---- results
    tie_scores = [0.0, 0.0, 0.25, 0.5, 0.5, 0.9, 1.0]
    res = []

    def score():
        r = rng.random()
        if r < 0.4:
            return rng.choice(tie_scores)
        if r < 0.45:
            return rng.choice([0, 1])  # JSON integers
        return rng.random()

    if rng.random() < 0.5:  # the real detections, on every copy
        for c in range(copies):
            for d in base_res:
                d = copy.deepcopy(d)
                d['image_id'] += 1000000 * c
                if rng.random() < 0.1:
                    continue
                if rng.random() < 0.2:
                    d['score'] = score()
                res.append(d)
    for a in gt['annotations']:
        if a['iscrowd'] and rng.random() < 0.5:
            continue
        bx, by, bw, bh = a.get('bbox', [0, 0, 10, 10])
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            scale = rng.choice([0.0, 0.5, 2.0, 5.0, 15.0, 40.0]) * (1 if rng.random() < 0.8 else 3)
            res.append({'image_id': a['image_id'], 'category_id': a['category_id'],
                        'keypoints': jitter_keypoints(rng, a['keypoints'], scale, (bx, by, bw, bh)),
                        'score': score()})
    for img in gt['images']:
        W, H = img_size[img['id']]
        n_fp = rng.choice([0, 0, 1, 3, 25]) if img['id'] < 5000000 else rng.choice([0, 2])
        for _ in range(n_fp):
            cx, cy, s = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(5, 150)
            kp = []
            for _ in range(17):
                kp += [cx + rng.gauss(0, s), cy + rng.gauss(0, s), rng.random()]
            res.append({'image_id': img['id'], 'category_id': rng.choice([1, 1, 1, 2]) if two_cats else 1,
                        'keypoints': kp, 'score': score()})
        for _ in range(rng.choice([0, 0, 1, 2])):  # extent exactly on an area bound (32² or 96²)
            side = rng.choice([32, 96])
            x0, y0 = float(rng.randrange(0, W - side)), float(rng.randrange(0, H - side))
            kp = []
            for k in range(17):
                kp += [x0 + rng.random() * side, y0 + rng.random() * side, rng.random()]
            kp[0:2], kp[3:5] = [x0, y0], [x0 + side, y0 + side]
            res.append({'image_id': img['id'], 'category_id': 1, 'keypoints': kp, 'score': score()})
    for d in list(res):  # exact duplicates: identical scores, OKS ties
        if rng.random() < 0.05:
            res.append(copy.deepcopy(d))
    rng.shuffle(res)
    if not res:  # pycocotools' loadRes cannot read an empty list
        a = gt['annotations'][0]
        res.append({'image_id': a['image_id'], 'category_id': 1, 'keypoints': list(a['keypoints']),
                    'score': 0.5})
    if rng.random() < 0.15:  # loadRes' bbox branch: area = w*h of each result's own bbox
        for d in res:
            xs, ys = d['keypoints'][0::3], d['keypoints'][1::3]
            w, h = max(xs) - min(xs), max(ys) - min(ys)
            f = rng.choice([1.0, 1.0, 0.5, 2.0])
            d['bbox'] = [min(xs), min(ys), w * f, h]
    else:
        for d in res:
            d.pop('bbox', None)
    return gt, res


def pycocotools_eval(gt_file, res_file):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_file)
        dets = coco.loadRes(res_file)
        ev = COCOeval(coco, dets, 'keypoints')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.array(ev.stats), ev.eval['precision'][..., 0], ev.eval['recall'][..., 0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tool', required=True)
    ap.add_argument('--cases', type=int, default=int(os.environ.get('AMPKIT_COCOEVAL_CASES', 100)))
    ap.add_argument('--seed', type=int, default=20240607)
    args = ap.parse_args()
    if not os.path.exists(args.tool):
        print(f'FAILED: evaluator binary {args.tool} does not exist (build target ampkit_cocoeval)')
        return 1
    with open(os.path.join(SAMPLE, 'annotations', 'person_keypoints_sample.json')) as f:
        base_gt = json.load(f)
    with open(os.path.join(SAMPLE, 'results', 'keypoint_results_sample.json')) as f:
        base_res = json.load(f)

    worst = 0.0
    failures = 0
    n_dets = 0
    with tempfile.TemporaryDirectory() as tmp:
        gt_file, res_file = os.path.join(tmp, 'gt.json'), os.path.join(tmp, 'res.json')
        for case in range(args.cases + 1):
            rng = random.Random(args.seed * 1000003 + case)
            if case == 0:  # the sample itself
                gt, res = base_gt, base_res
            else:
                gt, res = make_case(rng, base_gt, base_res)
            n_dets += len(res)
            with open(gt_file, 'w') as f:
                json.dump(gt, f)
            with open(res_file, 'w') as f:
                json.dump(res, f)
            want_stats, want_p, want_r = pycocotools_eval(gt_file, res_file)
            run = subprocess.run([args.tool, gt_file, res_file, '--json', '--arrays'],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(f'case {case}: ampkit_cocoeval failed ({run.returncode}): {run.stderr.strip()}')
                failures += 1
                continue
            got = json.loads(run.stdout)
            got_stats = np.array(got['stats'])
            got_p, got_r = np.array(got['precision']), np.array(got['recall'])
            if got_p.shape != want_p.shape or got_r.shape != want_r.shape:
                print(f'case {case}: shapes {got_p.shape}/{got_r.shape} vs {want_p.shape}/{want_r.shape}')
                failures += 1
                continue
            err = max(np.max(np.abs(got_stats - want_stats)), np.max(np.abs(got_p - want_p)),
                      np.max(np.abs(got_r - want_r)))
            worst = max(worst, err)
            if not err < 1e-12:
                failures += 1
                print(f'case {case}: max |diff| {err:.3g}')
                print('  pycocotools:', want_stats.tolist())
                print('  ampkit     :', got_stats.tolist())
                for name, g, w in (('precision', got_p, want_p), ('recall', got_r, want_r)):
                    bad = np.argwhere(np.abs(g - w) >= 1e-12)
                    for idx in bad[:5]:
                        print(f'  {name}{tuple(idx)}: got {g[tuple(idx)]!r} want {w[tuple(idx)]!r}')
                if failures == 1:
                    keep = os.path.join(tempfile.gettempdir(), 'ampkit_cocoeval_failure')
                    os.makedirs(keep, exist_ok=True)
                    for src in (gt_file, res_file):
                        with open(src) as f, open(os.path.join(keep, os.path.basename(src)), 'w') as o:
                            o.write(f.read())
                    print(f'  inputs kept in {keep}')
    print(f'{args.cases + 1} cases ({n_dets} detections): {failures} failed, '
          f'max |ampkit - pycocotools| over stats/precision/recall = {worst:.3g}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())

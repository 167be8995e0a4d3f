#!/usr/bin/env python3
"""Synthetic COCO-val-sized keypoint evaluation input: 5000 images, ~3 GTs and 30 detections each
(150,000 results, ~160 MB). Writes big_gt.json and big_res.json in the current folder.
Then: time ampkit_cocoeval big_gt.json big_res.json --json, and pycocotools on the same files."""
import json, random
rng = random.Random(5)
imgs, anns, res = [], [], []
aid = 1
for i in range(5000):
    imgs.append({'id': i + 1, 'width': 640, 'height': 480})
    for g in range(rng.choice([0, 1, 2, 3, 5, 8])):
        cx, cy, s = rng.uniform(50, 590), rng.uniform(50, 430), rng.uniform(10, 80)
        kp = []
        for k in range(17):
            kp += [cx + rng.gauss(0, s), cy + rng.gauss(0, s), rng.choice([0, 1, 2, 2])]
        anns.append({'id': aid, 'image_id': i + 1, 'category_id': 1, 'iscrowd': 0, 'area': (2 * s) ** 2 * 2,
                     'bbox': [cx - s, cy - s, 2 * s, 2 * s], 'keypoints': kp, 'num_keypoints': sum(1 for v in kp[2::3] if v)})
        aid += 1
    gts = [a for a in anns[-8:] if a['image_id'] == i + 1]
    for d in range(30):
        if gts and rng.random() < 0.3:
            a = rng.choice(gts)
            kp = [v + rng.gauss(0, 3) if j % 3 < 2 else rng.random() for j, v in enumerate(a['keypoints'])]
        else:
            cx, cy = rng.uniform(0, 640), rng.uniform(0, 480)
            kp = []
            for k in range(17):
                kp += [cx + rng.gauss(0, 40), cy + rng.gauss(0, 40), rng.random()]
        res.append({'image_id': i + 1, 'category_id': 1, 'keypoints': kp, 'score': rng.random()})
json.dump({'images': imgs, 'annotations': anns, 'categories': [{'id': 1, 'name': 'person'}]}, open('big_gt.json', 'w'))
json.dump(res, open('big_res.json', 'w'))
print(len(anns), len(res))

#!/usr/bin/env python3
"""Write a synthetic COCO person-keypoints JSON shaped like person_keypoints_train2017.json.

The real file is 238,884,731 bytes: 118,287 images and 262,465 person annotations (about 1% crowd
RLEs, about 40% with num_keypoints == 0), each with a polygon outline, 51 keypoint values, a bbox
and an area. This writes the same structure with random values, so the C++ reader can be timed
on a file of the real size without shipping COCO. Deterministic for a given --seed.

    python3 tools/make_synthetic_coco.py OUT.json [--images 118287] [--annotations 262465]
"""
import argparse
import json
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=118287)
    ap.add_argument("--annotations", type=int, default=262465)
    ap.add_argument("--poly-points", type=int, default=28,
                    help="mean polygon vertices; 28 gives about the real file size (~240 MB)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)

    with open(a.out, "w") as f:
        f.write('{"info": {"description": "synthetic COCO-shaped person keypoints", "version": "1.0"},')
        f.write('"licenses": [{"url": "none", "id": 1, "name": "synthetic"}],')
        f.write('"images": [')
        sizes = []
        for i in range(a.images):
            w, h = rng.choice([(640, 480), (640, 427), (480, 640), (500, 375), (640, 360)])
            sizes.append((w, h))
            if i:
                f.write(",")
            f.write(json.dumps({
                "license": 1, "file_name": "%012d.jpg" % (i + 1),
                "coco_url": "http://example.invalid/%012d.jpg" % (i + 1),
                "height": h, "width": w, "date_captured": "2013-11-14 17:02:52",
                "flickr_url": "http://example.invalid/f/%d.jpg" % (i + 1), "id": i + 1}))
        f.write('],"annotations": [')
        for j in range(a.annotations):
            img = rng.randrange(a.images)
            w, h = sizes[img]
            bx, by = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
            bw, bh = rng.uniform(5, w - bx), rng.uniform(5, h - by)
            crowd = rng.random() < 0.01
            if crowd:
                n = rng.randrange(20, 400) * 2
                counts = [rng.randrange(1, 50) for _ in range(n - 1)]
                counts.append(max(0, w * h - sum(counts)))
                seg = {"counts": counts, "size": [h, w]}
            else:
                npts = max(3, int(rng.gauss(a.poly_points, a.poly_points / 3)))
                seg = [[round(rng.uniform(bx, bx + bw) if k % 2 == 0 else rng.uniform(by, by + bh), 2)
                        for k in range(2 * npts)]]
            nk = 0 if (crowd or rng.random() < 0.4) else rng.randrange(1, 18)
            kp = [0] * 51
            for k in rng.sample(range(17), nk):
                kp[3 * k] = int(rng.uniform(bx, bx + bw))
                kp[3 * k + 1] = int(rng.uniform(by, by + bh))
                kp[3 * k + 2] = rng.choice((1, 2))
            if j:
                f.write(",")
            f.write(json.dumps({
                "segmentation": seg, "num_keypoints": nk, "area": round(bw * bh * 0.6, 5),
                "iscrowd": int(crowd), "keypoints": kp, "image_id": img + 1,
                "bbox": [round(bx, 2), round(by, 2), round(bw, 2), round(bh, 2)],
                "category_id": 1, "id": 1000000 + j}))
        f.write('],"categories": [{"supercategory": "person", "id": 1, "name": "person", '
                '"keypoints": ["nose","left_eye","right_eye","left_ear","right_ear",'
                '"left_shoulder","right_shoulder","left_elbow","right_elbow","left_wrist",'
                '"right_wrist","left_hip","right_hip","left_knee","right_knee","left_ankle",'
                '"right_ankle"], "skeleton": [[16,14],[14,12],[17,15],[15,13],[12,13],[6,12],'
                '[7,13],[6,7],[6,8],[7,9],[8,10],[9,11],[2,3],[1,2],[1,3],[2,4],[3,5],[4,6],[5,7]]}]}')


if __name__ == "__main__":
    main()

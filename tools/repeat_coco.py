#!/usr/bin/env python3
"""Write a COCO keypoints file that lists every image of another one REPEAT times.

    python3 tools/repeat_coco.py IN.json OUT.json REPEAT

Each copy gets a new image id (r * 1000000 + the original id) and its annotations new ids, so a
loader sees REPEAT x as many distinct samples of the same files: an epoch long enough for
multi-GPU runs and throughput measurements on the bundled 4-image sample (decoding and the
config's random augmentation still run for every sample, as for real data). Used by
bench/run_ddp_scaling.sh and tools/seed_run.sh.
"""
import json
import sys


def main():
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
        print("usage: repeat_coco.py IN.json OUT.json REPEAT (REPEAT >= 1)", file=sys.stderr)
        return 2
    src_path, out, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(src_path) as f:
        src = json.load(f)
    if max((im["id"] for im in src["images"]), default=0) >= 1000000:
        print(f"repeat_coco.py: {src_path}: image ids must be below 1000000 (copies are numbered r * 1000000 + id)",
              file=sys.stderr)
        return 2
    images, anns = [], []
    for r in range(repeat):
        for im in src["images"]:
            new_id = r * 1000000 + im["id"]
            images.append(dict(im, id=new_id))
            anns += [dict(a, id=len(anns) + 1, image_id=new_id) for a in src["annotations"] if a["image_id"] == im["id"]]
    with open(out, "w") as f:
        json.dump(dict(src, images=images, annotations=anns), f)
    print(f"dataset: {len(images)} images ({len(src['images'])} x {repeat}), {len(anns)} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())

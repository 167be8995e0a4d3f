#!/usr/bin/env python3
"""Write the small seed corpora of tests/fuzz/corpus/<target>/ (committed; rerun to regenerate).

Seeds are valid inputs cut down from data/coco_sample plus a few hand-made hostile ones that
reach the checks a random mutation rarely reaches (RLE strings, offsets, overrides). Needs numpy,
Pillow and pycocotools (the pyenv python3 of the dev machine).
"""
import io, json, os, struct, sys
import numpy as np
from PIL import Image

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
rng = np.random.default_rng(12)


def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ---- COCO annotations: one sample image with two persons, a crowd RLE (counts + string) -----
src = json.load(open(os.path.join(os.path.dirname(root), "..", "..", "data", "coco_sample", "annotations",
                                  "person_keypoints_sample.json")))
img = next(i for i in src["images"] if i["id"] == 40083)
anns = [a for a in src["annotations"] if a["image_id"] == 40083][:2]
for a in anns:
    a["segmentation"] = [[round(v, 1) for v in p[:16]] for p in a["segmentation"]]
small = {"images": [{k: img[k] for k in ("id", "file_name", "width", "height")}],
         "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
put("coco_annotations", "sample_two_persons.json", json.dumps(small, separators=(",", ":")))
try:
    from pycocotools import mask as mu
    m = np.zeros((img["height"], img["width"]), np.uint8, order="F")
    m[40:90, 100:180] = 1
    rle = mu.encode(np.asfortranarray(m))
    rle_string = rle["counts"].decode()
except ImportError:
    rle_string = "0?0"
crowd = dict(anns[0], id=9001, iscrowd=1, num_keypoints=0, keypoints=[0] * 51,
             segmentation={"size": [img["height"], img["width"]], "counts": rle_string})
crowd2 = dict(anns[0], id=9002, iscrowd=1, num_keypoints=0, keypoints=[0] * 51,
              segmentation={"size": [img["height"], img["width"]],
                            "counts": [img["height"] * 100, 50, img["height"] * (img["width"] - 100) - 50]})
put("coco_annotations", "crowd_rle.json", json.dumps(dict(small, annotations=[crowd, crowd2] + anns[:1]),
                                                     separators=(",", ":")))
put("coco_annotations", "annotations_first.json",
    json.dumps({"annotations": anns[:1], "images": small["images"]}, separators=(",", ":")))

# ---- COCO results (array) and ground truth (object) for the evaluator's readers --------------
res = json.load(open(os.path.join(os.path.dirname(root), "..", "..", "data", "coco_sample", "results",
                                  "keypoint_results_sample.json")))
r = [dict(x, image_id=785, keypoints=[round(v, 2) for v in x["keypoints"]]) for x in res[:2]]
put("coco_results", "results_two.json", json.dumps(r, separators=(",", ":")))
put("coco_results", "results_bbox.json", json.dumps([dict(r[0], bbox=[1, 2, 30, 40])], separators=(",", ":")))
gt = {"images": [{"id": 785}], "categories": [{"id": 1}],
      "annotations": [{k: anns[0][k] for k in ("id", "image_id", "category_id", "area", "iscrowd",
                                                "num_keypoints", "keypoints", "bbox")}]}
put("coco_results", "gt_one.json", json.dumps(gt, separators=(",", ":")))

# ---- images: tiny JPEG (baseline, progressive, grey), PNG (RGB, RGBA, palette, 16-bit), BMP ---
px = (rng.random((12, 10, 3)) * 255).astype(np.uint8)
def enc(im, fmt, **kw):
    b = io.BytesIO(); im.save(b, fmt, **kw); return b.getvalue()
put("image", "rgb.jpg", enc(Image.fromarray(px), "JPEG", quality=60))
put("image", "progressive.jpg", enc(Image.fromarray(px), "JPEG", quality=60, progressive=True))
put("image", "grey.jpg", enc(Image.fromarray(px[..., 0]), "JPEG", quality=60))
put("image", "subsampled.jpg", enc(Image.fromarray(px), "JPEG", quality=40, subsampling=2))
put("image", "rgb.png", enc(Image.fromarray(px), "PNG"))
put("image", "rgba_interlaced.png", enc(Image.fromarray(np.dstack([px, px[..., :1]])), "PNG"))
put("image", "palette.png", enc(Image.fromarray(px).convert("P"), "PNG"))
put("image", "grey16.png", enc(Image.fromarray((px[..., 0].astype(np.uint16) * 257)), "PNG"))
put("image", "rgb.bmp", enc(Image.fromarray(px), "BMP"))

# ---- masks: header bytes h, w, kind (0 string, 1 counts, 2 polygons), scale ------------------
put("mask", "rle_string", bytes([10, 8, 0, 0]) + b"52203")
put("mask", "rle_counts", bytes([10, 8, 1, 0]) + struct.pack("<4H", 20, 15, 30, 15))
put("mask", "polygon", bytes([40, 40, 2, 1]) + struct.pack("<8h", 16, 16, 400, 32, 300, 500, 20, 380))
put("mask", "polygon_far", bytes([40, 40, 2, 255]) + struct.pack("<6h", -3, 0, 3, 1, 2, -2))

# ---- safetensors: a tiny checkpoint of the fuzz model, mixed dtypes, hostile tables ----------
def st(entries, meta=None, pad=True):
    hdr, blob = {}, b""
    if meta:
        hdr["__metadata__"] = meta
    for name, dt, shape, data in entries:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob
f32 = lambda n: rng.standard_normal(n).astype("<f4").tobytes()
model = [("conv.weight", "F32", [4, 3, 3, 2], f32(72)), ("bn.weight", "F32", [4], f32(4)),
         ("bn.bias", "F16", [4], np.ones(4, "<f2").tobytes()), ("bn.running_mean", "BF16", [4], b"\x80\x3f" * 4),
         ("bn.running_var", "F64", [4], np.ones(4, "<f8").tobytes())]
put("safetensors_file", "tiny_model.safetensors", st(model, {"ampkit.format": "ampkit-dekr-1"}))
put("safetensors_file", "mixed.safetensors", st([("i", "I64", [2], struct.pack("<2q", 1, -1)),
                                                  ("b", "BOOL", [3], b"\x01\x00\x01"),
                                                  ("e", "F32", [0, 5], b""), ("s", "U8", [], b"\x07")]))
good = st(model[:2])
put("safetensors_file", "truncated.safetensors", good[:-7])
hostile = json.dumps({"w": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 16]}}).encode()
put("safetensors_file", "overflow_shape.safetensors", struct.pack("<Q", len(hostile)) + hostile + b"\0" * 16)
hostile = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 2**64 - 1]}}).encode()
put("safetensors_file", "offset_past_end.safetensors", struct.pack("<Q", len(hostile)) + hostile + b"\0" * 16)
hostile = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}).encode()
put("safetensors_file", "overlap.safetensors", struct.pack("<Q", len(hostile)) + hostile + b"\0" * 16)
put("safetensors_file", "wrong_shape_for_model.safetensors",
    st([("conv.weight", "F32", [4, 2, 3, 3], f32(72))] + model[1:]))

# ---- configs: the demo config, and a config + overrides -------------------------------------
cfg_dir = os.path.join(os.path.dirname(root), "..", "..", "configs")
put("config", "w32.toml", open(os.path.join(cfg_dir, "dekr_hrnet-w32_coco-512x512.toml")).read())
demo = open(os.path.join(cfg_dir, "demo_host.toml")).read()
put("config", "demo_host.toml", "\n".join(l for l in demo.splitlines() if not l.startswith("_base_")) + "\n")
put("config", "overrides.toml", "[optimizer]\nlr = 0.002\n[train_cfg]\nmax_epochs = 3\n#--cfg-options\n"
    "randomness.seed=42\ntrain_cfg.max_epochs=7\nparam_scheduler.milestones=[90, 120]\namp.loss_scale=\"dynamic\"\n"
    "data.data_root=/x/\n")
print("seeds written under", root)

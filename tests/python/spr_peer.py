#!/usr/bin/env python3
"""numpy peer of mmpose's DEKR target pipeline, and the generator of the data-area golden files.

What it reproduces, and from where (open-mmlab/mmpose, 1.x; read, not copied):
  * SPR.encode                       mmpose/codecs/spr.py
      keypoints / scale_factor (float32), roots + diagonals, roots with diagonal < sqrt(32)
      invisible, Gaussian heatmaps for keypoints (sigma 2) and roots (sigma 4, last channel),
      weights 1 where heatmap > 0 else background_weight 0.1, displacement fields.
  * get_instance_root('kpt_center'), get_diagonal_lengths
                                     mmpose/codecs/utils/instance_property.py
  * generate_gaussian_heatmaps       mmpose/codecs/utils/gaussian_heatmap.py
      mu = int(kpt + 0.5); a (6 sigma + 1)^2 float32 Gaussian, exp(-d^2 / (2 sigma^2)), combined
      by max; a square that misses the map is skipped.
  * generate_displacement_heatmap    mmpose/codecs/utils/offset_heatmap.py
      for each root inside the map and each labelled in-map keypoint, pixels [int(r-4), int(r+4))
      get kpt - pixel and weight 1/diagonal; an already-set pixel is kept if it belongs to a
      smaller instance (size map shared over keypoints).
  * BottomupRandomAffine geometry, get_warp_matrix, flip_keypoints, BottomupGetHeatmapMask
                                     mmpose/datasets/transforms/bottomup_transforms.py,
                                     mmpose/structures/bbox/transforms.py,
                                     mmpose/structures/keypoint/transforms.py
  * COCO masks                       pycocotools.mask (frPyObjects, merge, decode): the reference
  * warps                            cv2.warpAffine / cv2.resize (INTER_LINEAR): the reference
  * BottomupResize (test time)       mmpose/datasets/transforms/bottomup_transforms.py
      resize_mode='expand', size_factor 32: the input size ceiled to x32, then
      actual = max(padded, padded_other * aspect) per side, ceiled to x32 again;
      input_center = (w/2, h/2), input_scale = (w, h) * padded / actual (float32);
      get_warp_matrix(center, scale, 0, padded) + cv2.warpAffine; then the data preprocessor's
      (x - mean) / std in float32 (mmpose/models/data_preprocessors, ImageNet mean/std, RGB)

Run from the repository root (needs numpy, pycocotools, opencv-python-headless):
    python3 tests/python/spr_peer.py            # rewrites tests/unit/data/golden/*
    python3 tests/python/spr_peer.py resize     # only golden/resize.bin.z
The C++ tests (tests/unit/data/) read the golden files; they never run this script.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "unit", "data", "golden")
SAMPLE = os.path.join(ROOT, "data", "coco_sample")
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


# ----------------------------------------------------------------------------------------------
# SPR encode (the peer)

def instance_roots(kpts, vis):
    """get_instance_root(root_type='kpt_center') and get_diagonal_lengths."""
    n = kpts.shape[0]
    roots = np.zeros((n, 2), np.float32)
    roots_vis = np.ones(n, np.float32) * 2
    diag = np.zeros(n, np.float32)
    for i in range(n):
        v = kpts[i][vis[i] > 0]
        if v.size == 0:
            roots_vis[i] = 0
            continue
        roots[i] = v.mean(axis=0)
        roots_vis[i] = 1
        d = v.max(axis=0) - v.min(axis=0)
        diag[i] = np.sqrt(np.power(d, 2).sum())
    return roots, roots_vis, diag


def gaussian_heatmaps(W, H, kpts, vis, sigma):
    """generate_gaussian_heatmaps: (K, H, W) float32."""
    N, K, _ = kpts.shape
    hm = np.zeros((K, H, W), np.float32)
    radius = sigma * 3
    size = 2 * radius + 1
    x = np.arange(0, size, 1, dtype=np.float32)
    y = x[:, None]
    x0 = y0 = size // 2
    g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
    for n in range(N):
        for k in range(K):
            if vis[n, k] < 0.5:
                continue
            mu = (kpts[n, k] + 0.5).astype(np.int64)
            left, top = (mu - radius).astype(np.int64)
            right, bottom = (mu + radius + 1).astype(np.int64)
            if left >= W or top >= H or right < 0 or bottom < 0:
                continue
            gx1, gx2 = max(0, -left), min(W, right) - left
            gy1, gy2 = max(0, -top), min(H, bottom) - top
            hx1, hx2, hy1, hy2 = max(0, left), min(W, right), max(0, top), min(H, bottom)
            region = hm[k, hy1:hy2, hx1:hx2]
            np.maximum(region, g[gy1:gy2, gx1:gx2], out=region)
    return hm


def displacement_fields(W, H, kpts, vis, roots, roots_vis, diag, radius):
    """generate_displacement_heatmap: (2K, H, W) displacements and weights."""
    N, K, _ = kpts.shape
    disp = np.zeros((K * 2, H, W), np.float32)
    wgt = np.zeros((K * 2, H, W), np.float32)
    size_map = np.zeros((H, W), np.float32)
    for n in range(N):
        if roots_vis[n] < 1 or roots[n, 0] < 0 or roots[n, 1] < 0 or roots[n, 0] >= W or roots[n, 1] >= H:
            continue
        d = diag[n]
        for k in range(K):
            if vis[n, k] < 1 or kpts[n, k, 0] < 0 or kpts[n, k, 1] < 0 or kpts[n, k, 0] >= W or kpts[n, k, 1] >= H:
                continue
            sx, sy = max(int(roots[n, 0] - radius), 0), max(int(roots[n, 1] - radius), 0)
            ex, ey = min(int(roots[n, 0] + radius), W), min(int(roots[n, 1] + radius), H)
            for x in range(sx, ex):
                for y in range(sy, ey):
                    if disp[2 * k, y, x] != 0 or disp[2 * k + 1, y, x] != 0:
                        if d > size_map[y, x]:
                            continue
                    wgt[2 * k:2 * k + 2, y, x] = np.float32(1) / d
                    disp[2 * k:2 * k + 2, y, x] = kpts[n, k] - [x, y]
                    size_map[y, x] = d
    return disp, wgt


def spr_encode(kpts_in, vis, input_size, heatmap_size, sigma=(4, 2), min_diag=32 ** 0.5, bg=0.1):
    """SPR.encode with generate_keypoint_heatmaps=True. Inputs in input pixels.
    Returns NHWC-ready arrays: heatmaps (K+1,H,W), weights, displacements (2K,H,W), weights."""
    W, H = heatmap_size
    scale = (np.array(input_size) / heatmap_size).astype(np.float32)
    k = (kpts_in / scale).astype(np.float32)
    roots, roots_vis, diag = instance_roots(k, vis)
    roots_vis[diag < np.float32(min_diag)] = 0
    root_hm = gaussian_heatmaps(W, H, roots[:, None], roots_vis[:, None], sigma[0])
    kpt_hm = gaussian_heatmaps(W, H, k, vis, sigma[1])
    hm = np.concatenate((kpt_hm, root_hm), axis=0)
    hw = np.where(hm > 0, np.float32(1), np.float32(bg)).astype(np.float32)
    disp, dw = displacement_fields(W, H, k, vis, roots, roots_vis, diag, sigma[0])
    return hm, hw, disp, dw


# ----------------------------------------------------------------------------------------------
# geometry (BottomupRandomAffine with fixed parameters)

def get_warp_matrix(center, src_w, rot, out_w, out_h):
    import cv2
    rr = np.deg2rad(rot)
    sn, cs = np.sin(rr), np.cos(rr)
    src_dir = np.array([[cs, -sn], [sn, cs]]) @ np.array([0., src_w * -0.5])
    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + src_dir
    d = src[0] - src[1]
    src[2] = src[1] + np.r_[-d[1], d[0]]
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = np.array([out_w * 0.5, out_h * 0.5]) + np.array([0., out_w * -0.5])
    d = dst[0] - dst[1]
    dst[2] = dst[1] + np.r_[-d[1], d[0]]
    return cv2.getAffineTransform(src, dst)


def bottomup_affine(img_w, img_h, off, scale_rate, rot, in_w, in_h):
    offset = np.asarray(off, np.float32) * [img_w, img_h]
    scale = np.asarray([scale_rate], np.float32) * [img_w, img_h]
    w, h = scale
    aspect = in_w / in_h
    if w > h * aspect:
        w, h = h * aspect, h
    else:
        w, h = w, w / aspect
    center = np.array([img_w / 2, img_h / 2], np.float32) + offset
    # rot: mmpose's float32 draw times the Python float 30.0 is float64 under numpy 1.x (the
    # numpy mmcv/mmpose run with), so sin/cos are taken in float64.
    return get_warp_matrix(center, w, float(rot), in_w, in_h)


def transform_points(M, pts):
    """cv2.transform on float32 points: float32 matrix, float32 arithmetic."""
    m = M.astype(np.float32)
    x, y = pts[..., 0], pts[..., 1]
    out = np.empty_like(pts)
    out[..., 0] = m[0, 0] * x + m[0, 1] * y + m[0, 2]
    out[..., 1] = m[1, 0] * x + m[1, 1] * y + m[1, 2]
    return out


# ----------------------------------------------------------------------------------------------
# golden container: zlib( [name_len u32][name][dtype u32][ndim u32][dims u32...][data] ... )

DTYPES = {np.dtype(np.float32): 0, np.dtype(np.uint8): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3}


def write_golden(path, arrays):
    buf = bytearray()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        nb = name.encode()
        buf += struct.pack("<I", len(nb)) + nb
        buf += struct.pack("<II", DTYPES[a.dtype], a.ndim) + struct.pack("<%dI" % a.ndim, *a.shape)
        buf += a.tobytes()
    with open(path, "wb") as f:
        f.write(zlib.compress(bytes(buf), 9))
    print("wrote", os.path.relpath(path, ROOT), os.path.getsize(path), "bytes")


def nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (1, 2, 0)))


# ----------------------------------------------------------------------------------------------

def spr_cases():
    """Fixed keypoint sets exercising each rule of the encoder."""
    rng = np.random.default_rng(20240601)
    cases = []
    # 1: two overlapping people of different size + one tiny one (root dropped, heatmaps kept).
    k = np.zeros((3, 17, 2), np.float32)
    v = np.ones((3, 17), np.float32)
    k[0] = np.stack([rng.uniform(20, 60, 17), rng.uniform(10, 70, 17)], -1)
    k[1] = np.stack([rng.uniform(30, 50, 17), rng.uniform(30, 55, 17)], -1)
    k[2] = np.stack([rng.uniform(80, 84, 17), rng.uniform(20, 23, 17)], -1)
    v[0, [3, 4]] = 0
    cases.append(("overlap", k, v, (512, 512), (128, 128)))
    # 2: borders: keypoints off the map, negative, exactly on the last pixel; root near corners.
    k = np.zeros((3, 17, 2), np.float32)
    v = np.ones((3, 17), np.float32)
    k[0] = np.stack([rng.uniform(-20, 30, 17), rng.uniform(-10, 25, 17)], -1)
    k[1] = np.stack([rng.uniform(100, 140, 17), rng.uniform(70, 100, 17)], -1)
    k[2] = np.stack([rng.uniform(-30, 20, 17), rng.uniform(60, 98, 17)], -1)
    k[1, 0] = [127.99, 95.99]
    k[1, 1] = [128.0, 40.0]
    v[2, ::2] = 0
    cases.append(("borders", k * 4, v, (512, 384), (128, 96)))
    # 3: many random people with random visibility, non-square map, fractional coordinates.
    n = 12
    c = np.stack([rng.uniform(0, 160, n), rng.uniform(0, 120, n)], -1)
    s = rng.uniform(2, 30, n)
    k = (c[:, None, :] + rng.normal(size=(n, 17, 2)) * s[:, None, None]).astype(np.float32)
    v = (rng.random((n, 17)) < 0.7).astype(np.float32)
    v[0] = 0
    cases.append(("crowd", k * 4, v, (640, 480), (160, 120)))
    return cases


def sample_cases():
    """The bundled COCO sample after fixed BottomupRandomAffine + flip parameters."""
    from pycocotools import mask as cocomask
    import cv2
    ann = json.load(open(os.path.join(SAMPLE, "annotations", "person_keypoints_sample.json")))
    params = [  # offset x, y, scale, rotation, flip
        (0.05, -0.1, 1.0, 12.5, False),
        (-0.12, 0.08, 0.8, -25.0, True),
        (0.0, 0.0, 1.4, 3.0, True),
        (0.15, 0.02, 1.1, -7.0, False),
    ]
    out = []
    for i, img in enumerate(ann["images"]):
        anns = [a for a in ann["annotations"] if a["image_id"] == img["id"]]
        valid = [a for a in anns if not a["iscrowd"] and a["num_keypoints"] > 0 and max(a["keypoints"]) > 0]
        invalid = [a for a in anns if a not in valid]
        W, H = img["width"], img["height"]
        ox, oy, sc, rot, flip = params[i]
        M = bottomup_affine(W, H, (ox, oy), sc, rot, 512, 512)
        kp = np.array([a["keypoints"] for a in valid], np.float32).reshape(-1, 17, 3)
        pts, vis = kp[..., :2].copy(), np.minimum(1, kp[..., 2])
        pts = transform_points(M, pts)
        if flip:
            pts, vis = pts[:, COCO_FLIP], vis[:, COCO_FLIP]
            pts[..., 0] = 512 - 1 - pts[..., 0]
        hm, hw, dp, dw = spr_encode(pts, vis, (512, 512), (128, 128))
        rles = []
        for a in invalid:
            r = cocomask.frPyObjects(a["segmentation"], H, W)
            rles.extend(r if isinstance(r, list) else [r])
        m = cocomask.decode(cocomask.merge(rles)) if rles else np.zeros((H, W), np.uint8)
        mask = (1 - m).astype(np.float32)
        mask = cv2.warpAffine(mask, M, (512, 512), flags=cv2.INTER_LINEAR)
        if flip:
            mask = mask[:, ::-1]
        mask = cv2.resize(np.ascontiguousarray(mask), (128, 128), interpolation=cv2.INTER_LINEAR) > 0.5
        out.append((i, np.array([ox, oy, sc, rot, float(flip)], np.float64), M, pts, hm, hw, dp, dw,
                    mask.astype(np.uint8)))
    return out


def warp_golden():
    """cv2.warpAffine / cv2.resize on a seeded random image, for the OpenCV-exact warps."""
    import cv2
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    mask = (rng.random((61, 83)) < 0.7).astype(np.float32)
    arrays = [("src", img), ("src_mask", mask)]
    params = []
    for j in range(6):
        c = np.array([83 / 2, 61 / 2], np.float32) + rng.uniform(-15, 15, 2).astype(np.float32)
        sw, rot = 83 * rng.uniform(0.6, 1.5), rng.uniform(-30, 30)
        M = get_warp_matrix(c, sw, rot, 48, 40)
        params.append([c[0], c[1], sw, rot])
        arrays += [("M%d" % j, M),
                   ("img%d" % j, cv2.warpAffine(img, M, (48, 40), flags=cv2.INTER_LINEAR)),
                   ("mask%d" % j, cv2.warpAffine(mask, M, (48, 40), flags=cv2.INTER_LINEAR))]
        arrays.append(("mask%d_small" % j, cv2.resize(arrays[-1][1], (12, 10), interpolation=cv2.INTER_LINEAR)))
    arrays.insert(2, ("params", np.array(params, np.float64)))
    # BottomupResize geometry of the sample images (expand, 512, multiple of 32).
    return arrays


def ceil_to(size, base):
    return tuple(int(np.ceil(v / base) * base) for v in size)


def bottomup_resize(img, input_size, size_factor=32):
    """BottomupResize(resize_mode='expand', use_udp=False) on an (H, W, 3) uint8 RGB image, then
    normalisation. Returns (normalised (H, W, 3) float32, padded (w, h), center, scale, M)."""
    import cv2
    img_h, img_w = img.shape[:2]
    ratio = img_w / img_h
    pw, ph = ceil_to(input_size, size_factor)
    actual = (max(pw, ph * ratio), max(ph, pw / ratio))
    padded = ceil_to(actual, size_factor)
    center = np.array([img_w / 2, img_h / 2], np.float32)
    scale = np.array([img_w * padded[0] / actual[0], img_h * padded[1] / actual[1]], np.float32)
    M = get_warp_matrix(center, scale[0], 0, padded[0], padded[1])
    warped = cv2.warpAffine(img, M, padded, flags=cv2.INTER_LINEAR)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    norm = ((warped.astype(np.float32) - mean) / std).astype(np.float32)
    return norm, padded, center, scale, M


def resize_golden():
    """Test-time inputs of seeded random images of several shapes (input size 32 keeps it small)."""
    rng = np.random.default_rng(13)
    arrays = []
    for j, (w, h) in enumerate([(50, 37), (23, 41), (40, 40), (70, 21), (31, 64)]):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        norm, padded, center, scale, M = bottomup_resize(img, (32, 32))
        p = "case%d/" % j
        arrays += [(p + "src", img), (p + "input_size", np.array(padded, np.int32)),
                   (p + "center", center), (p + "scale", scale), (p + "warp", M), (p + "input", norm)]
    return arrays


def mask_golden():
    """Polygons and RLEs decoded by pycocotools, as column-major run lengths."""
    from pycocotools import mask as cocomask
    rng = np.random.default_rng(11)

    def counts_of(m):
        flat = np.asarray(m, np.uint8).flatten(order="F")
        counts, cur, run = [], 0, 0
        for b in flat:
            if b != cur:
                counts.append(run)
                run, cur = 0, b
            run += 1
        counts.append(run)
        return counts

    cases = []
    ann = json.load(open(os.path.join(SAMPLE, "annotations", "person_keypoints_sample.json")))
    size = {im["id"]: (im["height"], im["width"]) for im in ann["images"]}
    for a in ann["annotations"]:
        h, w = size[a["image_id"]]
        m = cocomask.decode(cocomask.merge(cocomask.frPyObjects(a["segmentation"], h, w)))
        cases.append({"what": "sample ann %d" % a["id"], "h": h, "w": w,
                      "segmentation": a["segmentation"], "counts": counts_of(m)})
    for j in range(40):  # random polygons, partly outside, with duplicate and collinear points
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        segs = []
        for _ in range(int(rng.integers(1, 3))):
            npt = int(rng.integers(3, 12))
            p = np.stack([rng.uniform(-5, w + 5, npt), rng.uniform(-5, h + 5, npt)], -1)
            if j % 5 == 0:
                p = np.round(p * 2) / 2  # on half pixels
            if j % 7 == 0:
                p[1] = p[0]
            segs.append([round(float(x), 2) for x in p.flatten()])
        m = cocomask.decode(cocomask.merge(cocomask.frPyObjects(segs, h, w)))
        cases.append({"what": "random polygon %d" % j, "h": h, "w": w, "segmentation": segs,
                      "counts": counts_of(m)})
    for j in range(12):  # crowd RLEs: uncompressed counts and compressed strings
        h, w = int(rng.integers(8, 70)), int(rng.integers(8, 70))
        m = np.zeros((h, w), np.uint8)
        for _ in range(3):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0:y0 + rng.integers(1, h), x0:x0 + rng.integers(1, w)] = 1
        m ^= (rng.random((h, w)) < 0.05).astype(np.uint8)
        counts = counts_of(m)
        enc = cocomask.encode(np.asfortranarray(m))
        seg = {"counts": enc["counts"].decode(), "size": [h, w]} if j % 2 else {"counts": counts, "size": [h, w]}
        dec = cocomask.decode(cocomask.frPyObjects(seg, h, w) if j % 2 == 0 else enc)
        assert (dec == m).all()
        cases.append({"what": "crowd rle %d" % j, "h": h, "w": w, "segmentation": seg, "counts": counts})
    return cases


def main():
    os.makedirs(GOLDEN, exist_ok=True)
    write_golden(os.path.join(GOLDEN, "resize.bin.z"), resize_golden())
    if sys.argv[1:] == ["resize"]:
        return 0
    arrays = []
    for name, k, v, insz, hmsz in spr_cases():
        hm, hw, dp, dw = spr_encode(k, v, insz, hmsz)
        arrays += [(name + "/keypoints", k), (name + "/visible", v),
                   (name + "/sizes", np.array([insz[0], insz[1], hmsz[0], hmsz[1]], np.int32)),
                   (name + "/heatmaps", nhwc(hm)), (name + "/heatmap_weights", nhwc(hw)),
                   (name + "/displacements", nhwc(dp)), (name + "/displacement_weights", nhwc(dw))]
    for i, params, M, pts, hm, hw, dp, dw, mask in sample_cases():
        p = "sample%d/" % i
        arrays += [(p + "params", params), (p + "warp", M), (p + "keypoints", pts),
                   (p + "heatmaps", nhwc(hm)), (p + "displacements", nhwc(dp)),
                   (p + "displacement_weights", nhwc(dw)), (p + "heatmap_mask", mask)]
    write_golden(os.path.join(GOLDEN, "spr.bin.z"), arrays)
    write_golden(os.path.join(GOLDEN, "warp.bin.z"), warp_golden())
    with open(os.path.join(GOLDEN, "masks.json"), "w") as f:
        json.dump(mask_golden(), f, separators=(",", ":"))
    print("wrote tests/unit/data/golden/masks.json", os.path.getsize(os.path.join(GOLDEN, "masks.json")), "bytes")


if __name__ == "__main__":
    sys.exit(main())

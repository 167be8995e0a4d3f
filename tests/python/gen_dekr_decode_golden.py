#!/usr/bin/python3
"""Golden results for ampkit's DEKR decoding (tests/unit/eval/dekr_decode.cpp), computed with
PyTorch the way mmpose 1.x decodes DEKR outputs:

  DEKRHead.predict (flip test: flip back, flip_indices + root, shift_heatmap, displacement x
  negated + (s-1)/s amendment, average) -> SPR.decode (max_pool2d equality NMS, topk 30, > 0.01,
  pose map = grid + displacement, grid_sample keypoint scores, x scale_factor) -> RescoreNet
  (optional) -> nearby_joints_nms(score = mean heat score, dist 0.05, joints K//2, max 30)
  -> keypoints / input_size * input_scale + input_center - 0.5 * input_scale.

This is an independent re-implementation of those semantics with torch ops (max_pool2d, topk,
grid_sample, Linear), not mmpose's code. The maps are generated from a splitmix64 stream with
values on a 1/4096 grid, so the C++ test rebuilds bit-identical inputs without storing them.

Run with Debian's python (torch 1.13):  /usr/bin/python3 tests/python/gen_dekr_decode_golden.py
Writes data/eval/dekr_decode_golden.json.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, 'data', 'eval', 'dekr_decode_golden.json')
M64 = (1 << 64) - 1
K = 17
FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
LINKS = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
         (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]


class Rng:
    """splitmix64; u12() is a multiple of 1/4096 in [0, 1). Mirrored in the C++ test."""

    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def u12(self):
        return (self.next() >> 52) / 4096.0


def make_people(rng, H, W, P):
    people = []
    for _ in range(P):
        rx, ry = 2 + rng.next() % (W - 4), 2 + rng.next() % (H - 4)
        kp = [(rx + (rng.u12() - 0.5) * 16, ry + (rng.u12() - 0.5) * 16) for _ in range(K)]
        people.append({'root': (rx, ry), 'kp': kp})
    return people


def mirror(people, W):
    out = []
    for p in people:
        rx, ry = p['root']
        out.append({'root': (W - 1 - rx, ry),
                    'kp': [((W - 0.25) - p['kp'][FLIP[k]][0], p['kp'][FLIP[k]][1]) for k in range(K)]})
    return out


def make_maps(rng, people, H, W):
    """heatmaps (K+1,H,W) root last, displacements (2K,H,W), float32, NCHW."""
    hm = np.zeros((K + 1, H, W), np.float32)
    disp = np.zeros((2 * K, H, W), np.float32)
    for y in range(H):
        for x in range(W):
            hm[K, y, x] = rng.u12() * 0.0078125  # background below the 0.01 threshold
    for i, p in enumerate(people):
        rx, ry = p['root']
        hm[K, ry, rx] = 0.25 + rng.u12() * 0.5
        if i == 0 and rx + 3 < W:  # a second peak 3 px away: a near-duplicate pose for the NMS
            hm[K, ry, rx + 3] = 0.2 + rng.u12() * 0.5
    for _ in range(3):  # weak isolated peaks just above the threshold
        x, y = rng.next() % W, rng.next() % H
        hm[K, y, x] = max(hm[K, y, x], 0.01 + rng.u12() * 0.02)
    for y in range(H):
        for x in range(W):
            for k in range(K):
                hm[k, y, x] = rng.u12() * 0.5
    for y in range(H):
        for x in range(W):
            d = [(x - p['root'][0]) ** 2 + (y - p['root'][1]) ** 2 for p in people]
            o = people[int(np.argmin(d))]  # nearest root, first on ties
            for k in range(K):
                disp[2 * k, y, x] = o['kp'][k][0] - x + (rng.u12() - 0.5) * 0.25
                disp[2 * k + 1, y, x] = o['kp'][k][1] - y + (rng.u12() - 0.5) * 0.25
    return hm, disp


def make_rescore(rng):
    def mat(n):
        return np.array([(rng.u12() - 0.5) * 0.125 for _ in range(n)], np.float32)
    l1 = torch.nn.Linear(74, 256)
    l2 = torch.nn.Linear(256, 256)
    l3 = torch.nn.Linear(256, 1)
    with torch.no_grad():
        l1.weight.copy_(torch.from_numpy(mat(256 * 74).reshape(256, 74)))
        l1.bias.copy_(torch.from_numpy(mat(256)))
        l2.weight.copy_(torch.from_numpy(mat(256 * 256).reshape(256, 256)))
        l2.bias.copy_(torch.from_numpy(mat(256)))
        l3.weight.copy_(torch.from_numpy(mat(256).reshape(1, 256)))
        l3.bias.copy_(torch.from_numpy(mat(1)))
    return l1, l2, l3


def rescore(net, kpts, scores):
    l1, l2, l3 = net
    j1 = [a for a, _ in LINKS]
    j2 = [b for _, b in LINKS]
    rel = kpts[:, j1] - kpts[:, j2]
    length = rel.norm(dim=2)
    norm = ((length[:, 5] + length[:, 6]) / 2).unsqueeze(1).expand(-1, len(LINKS)).clamp(min=1)
    feat = torch.cat(((rel / norm.unsqueeze(-1)).flatten(1), length / norm, scores), dim=1)
    out = l3(torch.relu(l2(torch.relu(l1(feat))))).squeeze(1)
    out[torch.isnan(out)] = 0
    return out


def nearby_joints_nms(kpts, scores, dist_thr=0.05, max_dets=30):
    n, k, _ = kpts.shape
    thr_joints = k // 2
    diag = np.sqrt(np.power(kpts.max(axis=1) - kpts.min(axis=1), 2).sum(axis=1))
    thr = np.tile(diag.reshape(n, 1, 1), (n, k)) * dist_thr
    dist = np.sqrt(np.power(kpts[:, None] - kpts, 2).sum(axis=3))
    close = (dist < thr).sum(2) > thr_joints
    order = np.argsort(scores, kind='stable')[::-1]  # ties: higher index first (ampkit's choice)
    ignored, keep = set(), []
    for i in order:
        if i in ignored:
            continue
        members = close[i].nonzero()[0]
        best = members[np.argmax(scores[members])]
        if best not in ignored:
            keep.append(int(best))
            ignored |= set(members.tolist())
    if max_dets > 0 and len(keep) > max_dets:
        sub = np.argsort(scores[keep], kind='stable')[-1:-max_dets - 1:-1]
        keep = [keep[i] for i in sub]
    return keep


def decode(hm, disp, hm_f, disp_f, tf, net):
    H, W = hm.shape[1:]
    hm, disp = torch.from_numpy(hm)[None], torch.from_numpy(disp)[None]
    if hm_f is not None:
        hf = torch.from_numpy(hm_f)[None].flip(-1)[:, FLIP + [K]]
        hf[..., 1:] = hf[..., :-1].clone()
        hm = (hm + hf) / 2.0
        df = torch.from_numpy(disp_f)[None].view(1, K, 2, H, W).flip(-1)[:, FLIP]
        df[:, :, 0] = -df[:, :, 0]
        df = df.reshape(1, 2 * K, H, W)
        s = tf['input_w'] / W
        df[:, ::2] += (s - 1) / s
        disp = (disp + df) / 2.0
    hm, disp = hm[0], disp[0]
    # SPR.decode
    d = disp.view(K, 2, H, W)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    posemaps = (torch.stack([xx, yy], 0).to(d)[None] + d).flatten(2)
    root = hm[None, -1:]
    peaks = root * torch.eq(root, F.max_pool2d(root, 5, stride=1, padding=2)).float()
    scores, idx = peaks.flatten().topk(30)
    keepm = scores > 0.01
    scores, idx = scores[keepm], idx[keepm]
    kpts = posemaps[:, :, idx].permute(2, 0, 1).contiguous()  # (N,K,2) heatmap coords
    grid = torch.stack((kpts[..., 0] / (W - 1) * 2 - 1, kpts[..., 1] / (H - 1) * 2 - 1), -1)
    heat = F.grid_sample(hm[:K].unsqueeze(1), grid.transpose(0, 1).unsqueeze(1).contiguous(),
                         padding_mode='border', align_corners=False).view(K, -1).transpose(0, 1)
    sf = (np.array([tf['input_w'], tf['input_h']]) / np.array([W, H])).astype(np.float32)
    kpts = torch.cat([kpts[..., i:i + 1] * sf[i] for i in range(2)], -1)
    root_scores = scores.clone()
    if net is not None and len(kpts) > 0:
        root_scores = root_scores * rescore(net, kpts, heat)
    kn, hn, rn = kpts.numpy(), heat.numpy(), root_scores.detach().numpy()
    keep = list(range(len(kn)))
    if len(kn) > 0:
        keep = nearby_joints_nms(kn, np.array([h.mean() for h in hn], np.float32))
    poses = []
    for n in keep:
        ks = rn[n] * hn[n]
        img = kn[n] / np.array([tf['input_w'], tf['input_h']]) * np.array([tf['scale_w'], tf['scale_h']]) \
            + np.array([tf['center_x'], tf['center_y']]) - 0.5 * np.array([tf['scale_w'], tf['scale_h']])
        poses.append({'keypoints': img.flatten().tolist(), 'keypoint_scores': ks.tolist(),
                      'root_score': float(rn[n]), 'score': float(np.mean(ks))})
    return {'peaks': [[int(i), float(s)] for i, s in zip(idx, scores)], 'keep': keep, 'poses': poses}


def main():
    cases = []
    for seed, H, W, P, flip, use_rescore in [(11, 24, 32, 4, False, False), (12, 24, 32, 4, True, False),
                                             (13, 32, 24, 7, True, False), (14, 20, 20, 3, False, True),
                                             (15, 28, 36, 6, True, True)]:
        rng = Rng(seed)
        people = make_people(rng, H, W, P)
        hm, disp = make_maps(rng, people, H, W)
        hm_f = disp_f = None
        if flip:
            hm_f, disp_f = make_maps(rng, mirror(people, W), H, W)
        net = make_rescore(rng) if use_rescore else None
        tf = {'input_w': 4.0 * W, 'input_h': 4.0 * H, 'center_x': 2.0 * W + 10.5, 'center_y': 2.0 * H - 3.25,
              'scale_w': 5.0 * W, 'scale_h': 5.0 * H}
        out = decode(hm, disp, hm_f, disp_f, tf, net)
        cases.append({'seed': seed, 'H': H, 'W': W, 'people': P, 'flip': flip, 'rescore': use_rescore,
                      'transform': tf, **out})
        print(f'seed {seed}: {len(out["peaks"])} roots, {len(out["poses"])} poses after NMS')
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, 'w') as f:
        json.dump({'generator': 'tests/python/gen_dekr_decode_golden.py', 'torch': torch.__version__,
                   'cases': cases}, f)
    print('wrote', OUT)


if __name__ == '__main__':
    main()

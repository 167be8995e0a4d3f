#!/usr/bin/env python3
"""Emulates the PTX fragment layouts that deform_mma_backward_kernel relies on
(include/ampkit/backend/cuda/deform_conv2d.cuh), for one warp and one 16-pixel tile.

It checks the kernel's index arithmetic, not the kernel itself: the per-lane registers are built
the way the kernel builds them (dL_dy as an m16n8k16 A fragment, W_t as B fragments, dcol staged
[pixel][channel] from the D fragments, the samples staged [channel][pixel] and read back as
32-bit B words, dL_dy transposed by movmatrix), and the products are compared with numpy's.
Layouts: PTX ISA, "Matrix fragments for mma.m16n8k16" and "movmatrix". Run it after changing the
kernel's fragment code; the GPU tests (test_gpu_nn_sampling) remain the proof.
"""
import numpy as np

LANES = [(lane // 4, lane % 4) for lane in range(32)]  # (gid, tig) of each lane


def a_fragment(a):
    """A (16 x 16, row-major) as the four registers (value pairs) of each lane."""
    return [[(a[g, 2 * t], a[g, 2 * t + 1]), (a[g + 8, 2 * t], a[g + 8, 2 * t + 1]),
             (a[g, 2 * t + 8], a[g, 2 * t + 9]), (a[g + 8, 2 * t + 8], a[g + 8, 2 * t + 9])] for g, t in LANES]


def mma(d, a, b0, b1):
    """d += A B with A, B rebuilt from the lanes' registers; returns the lanes' four D values."""
    am, bm = np.zeros((16, 16)), np.zeros((16, 8))
    for lane, (g, t) in enumerate(LANES):
        am[g, 2 * t:2 * t + 2], am[g + 8, 2 * t:2 * t + 2] = a[lane][0], a[lane][1]
        am[g, 2 * t + 8:2 * t + 10], am[g + 8, 2 * t + 8:2 * t + 10] = a[lane][2], a[lane][3]
        bm[2 * t:2 * t + 2, g], bm[2 * t + 8:2 * t + 10, g] = b0[lane], b1[lane]
    p = am @ bm
    return [[d[lane][0] + p[g, 2 * t], d[lane][1] + p[g, 2 * t + 1], d[lane][2] + p[g + 8, 2 * t],
             d[lane][3] + p[g + 8, 2 * t + 1]] for lane, (g, t) in enumerate(LANES)]


def movmatrix_trans(regs):
    """movmatrix .trans of one 8 x 8 block: lane 4r + q holds row r, columns 2q and 2q + 1."""
    m = np.zeros((8, 8))
    for lane in range(32):
        m[lane // 4, 2 * (lane % 4):2 * (lane % 4) + 2] = regs[lane]
    return [(m.T[lane // 4, 2 * (lane % 4)], m.T[lane // 4, 2 * (lane % 4) + 1]) for lane in range(32)]


def check(cg, kg, pixels, rng):
    dy = np.zeros((16, 16))
    dy[:pixels, :kg] = rng.standard_normal((pixels, kg))
    w = np.zeros((16, 16))  # W_t[filter][channel]
    w[:kg, :cg] = rng.standard_normal((kg, cg))
    col = np.zeros((16, 16))  # the samples [pixel][channel]
    col[:pixels, :cg] = rng.standard_normal((pixels, cg))
    ad = a_fragment(dy)
    # bw[j][r]: filters 2 tig + 8 r and + 1, channel 8 j + gid
    bw = [[[(w[2 * t + 8 * r, 8 * j + g], w[2 * t + 8 * r + 1, 8 * j + g]) for g, t in LANES] for r in range(2)]
          for j in range(2)]
    dcol = [mma([[0.0] * 4] * 32, ad, bw[j][0], bw[j][1]) for j in range(2)]
    dcs = np.full((16, 24), np.nan)  # float2 stores: (pixel gid + 8 h, channels 8 j + 2 tig, + 1)
    for lane, (g, t) in enumerate(LANES):
        for j in range(2):
            for h in range(2):
                dcs[g + 8 * h, 8 * j + 2 * t:8 * j + 2 * t + 2] = dcol[j][lane][2 * h:2 * h + 2]
    assert np.allclose(dcs[:, :16], dy @ w), "dcol"
    # Sampling layout: lane = 16 u + c handles pixel 2 pass + u, channel c; writes cst[c][pixel].
    cst = np.full((16, 24), np.nan)
    for step in range(8):
        for lane in range(32):
            u, c = lane // 16, lane % 16
            r = 2 * step + u
            cst[c, r] = col[r, c] if r < pixels and c < cg else 0.0
    adt = list(zip(*(movmatrix_trans([ad[lane][i] for lane in range(32)]) for i in (0, 2, 1, 3))))
    red = np.zeros((16, 16))
    for j in range(2):
        # B words tig and tig + 4 of channel row 8 j + gid: pixels 2 tig, + 1 and 2 tig + 8, + 9
        b0 = [(cst[8 * j + g, 2 * t], cst[8 * j + g, 2 * t + 1]) for g, t in LANES]
        b1 = [(cst[8 * j + g, 2 * t + 8], cst[8 * j + g, 2 * t + 9]) for g, t in LANES]
        dw = mma([[0.0] * 4] * 32, adt, b0, b1)
        for lane, (g, t) in enumerate(LANES):
            for h in range(2):
                red[g + 8 * h, 8 * j + 2 * t:8 * j + 2 * t + 2] = dw[lane][2 * h:2 * h + 2]
    assert np.allclose(red, dy.T @ col), "dW"


if __name__ == "__main__":
    rng = np.random.default_rng(1)
    for cg, kg, pixels in [(15, 15, 16), (16, 16, 16), (5, 9, 7), (16, 3, 11)]:
        check(cg, kg, pixels, rng)
        print(f"ok: {cg} channels, {kg} filters per group, {pixels} live pixels")

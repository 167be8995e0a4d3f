"""DEKR's training loss as mmpose computes it (dekr_hrnet-w32 config):
KeypointMSELoss(use_target_weight=True, loss_weight=1) on the heatmaps, times the heatmap mask,
plus SoftWeightSmoothL1Loss(use_target_weight=True, supervise_empty=False, beta=1/9,
loss_weight=0.002) on the displacements: sum(w * smoothL1) / number of positive weights.
Predictions are widened to fp32 first (autocast runs mse_loss in fp32; the smooth-L1 promotes);
fp64 predictions (compare_w32.py's fp64 reference) stay fp64.
"""

import torch
import torch.nn.functional as F


def _wide(t):
    return t if t.dtype == torch.float64 else t.float()


def dekr_loss(hm, disp, gt_hm, hm_w, mask, gt_d, d_w, w_hm=1.0, w_d=0.002, beta=1.0 / 9):
    """Returns (total, heatmap, displacement, n_pos); n_pos is a tensor (no host synchronisation)."""
    l_hm = (F.mse_loss(_wide(hm), gt_hm, reduction="none") * (hm_w * mask)).mean() * w_hm
    delta = _wide(disp) - gt_d
    ad = delta.abs()
    s = torch.where(ad < beta, delta * delta / (2 * beta), ad - beta / 2)
    n_pos = (d_w > 0).sum()
    l_d = (s * d_w).sum() / n_pos.clamp(min=1) * w_d
    return l_hm + l_d, l_hm, l_d, n_pos


def random_targets(n, h, w, generator, k=17, device="cpu"):
    """Seeded targets in DEKR's value ranges at the output size (h, w): heatmaps U[0,1), weight 1
    where the heatmap > 0.6 else 0.1, mask 1 on ~90 % of pixels, displacements N(0, 2), positive
    displacement weights 1/(4..24) on ~30 % of entries. Order of draws is fixed (golden files)."""
    def rand(*s):
        return torch.rand(*s, generator=generator, device=device)
    gt_hm = rand(n, k + 1, h, w)
    hm_w = torch.where(gt_hm > 0.6, torch.ones_like(gt_hm), torch.full_like(gt_hm, 0.1))
    mask = (rand(n, 1, h, w) > 0.1).float()
    gt_d = torch.randn(n, 2 * k, h, w, generator=generator, device=device) * 2
    d_w = torch.where(rand(n, 2 * k, h, w) < 0.3, 1.0 / (4 + 20 * rand(n, 2 * k, h, w)),
                      torch.zeros(n, 2 * k, h, w, device=device))
    return gt_hm, hm_w, mask, gt_d, d_w

"""Weights and tensors between the PyTorch reference and ampkit's safetensors layout.

ampkit stores activations NHWC and conv weights KRSC (= OIHW permuted (0,2,3,1)), everything
else as is, F32, with mmpose's names; `num_batches_tracked` and the AdaptiveActivationBlock
`regular_matrix` (a constant) are not stored.
"""

import torch


def to_ampkit(t, dtype=torch.float32):
    """A 4-D tensor NCHW/OIHW -> NHWC/KRSC numpy float32 (always a copy: a view of a BN buffer
    would change with the next training forward); other ranks unchanged. dtype=torch.float64
    keeps an fp64 reference's digits."""
    t = t.detach().to(dtype).cpu()
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t).contiguous().numpy().copy()


def from_ampkit(a):
    """Inverse of to_ampkit (numpy -> torch float32)."""
    t = torch.from_numpy(a.copy()).float()
    return t.permute(0, 3, 1, 2).contiguous() if t.dim() == 4 else t


def skipped(name):
    return name.endswith("num_batches_tracked") or name.endswith("regular_matrix")


def state_to_ampkit(model):
    """Parameters and BN running statistics, mmpose names, ampkit layout."""
    return {n: to_ampkit(t) for n, t in model.state_dict().items() if not skipped(n)}


def load_ampkit_state(model, tensors):
    """Load a name -> numpy (ampkit layout) dict into `model`; every model tensor must be there."""
    sd = model.state_dict()
    missing = [n for n in sd if not skipped(n) and n not in tensors]
    if missing:
        raise KeyError(f"{len(missing)} model tensors missing, first: {missing[:3]}")
    with torch.no_grad():
        for n, t in sd.items():
            if not skipped(n):
                src = from_ampkit(tensors[n])
                if src.shape != t.shape:
                    raise ValueError(f"{n}: shape {tuple(src.shape)} != model {tuple(t.shape)}")
                t.copy_(src)


def randomize(model, g):
    """Weights far from mmpose's 0.001 init, so every path carries signal (and offsets are
    fractional, exercising the bilinear taps of the deformable convs). Draw order is fixed by the
    module order (golden files depend on it)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                std = 0.02 if "transform_matrix_conv" in name else (2.0 / fan_in) ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("transform_matrix_conv.bias"):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.4)
                m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=g) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None and "transform_matrix_conv" not in name:
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)

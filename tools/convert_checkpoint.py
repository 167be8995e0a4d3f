#!/usr/bin/env python3
"""Convert DEKR checkpoints between mmpose/PyTorch `.pth` state dicts and ampkit safetensors.

  to-ampkit   IN.pth OUT.safetensors [--add-prefix backbone.]
  to-pytorch  IN.safetensors OUT.pth

Names are mmpose's state-dict names on both sides. ampkit stores conv weights KRSC
(OIHW permuted (0,2,3,1)) and everything as F32; it keeps no `num_batches_tracked` counters and no
AdaptiveActivationBlock `regular_matrix` (a constant), which to-pytorch adds back so
`model.load_state_dict(strict=True)` works in mmpose. mmpose checkpoints (`{'state_dict': ...,
'meta': ...}`) and bare state dicts are both accepted.

ImageNet HRNet backbones (`hrnet_w32-36af842e.pth`, mmpose's `init_cfg` Pretrained) carry no
`backbone.` prefix and have classification layers (incre_modules, downsamp_modules, final_layer,
classifier): use `--add-prefix backbone.`; the C++ loader ignores names the model does not have
(load with strict = false, since the head is not in the file).

Needs torch (Debian's /usr/bin/python3 has it); safetensors I/O is done with numpy.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
import golden_io  # noqa: E402

REGULAR_MATRIX = np.array([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1], [1] * 9], dtype=np.float32)


def to_ampkit(src, dst, add_prefix=""):
    import torch
    ckpt = torch.load(src, map_location="cpu")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    out = {}
    for name, t in sd.items():
        if name.endswith("num_batches_tracked") or name.endswith("regular_matrix"):
            continue
        if name.startswith("module."):  # DDP-wrapped checkpoints
            name = name[len("module."):]
        a = t.detach().float().cpu()
        if a.dim() == 4:
            a = a.permute(0, 2, 3, 1)
        out[add_prefix + name] = a.contiguous().numpy()
    golden_io.save(dst, out, {"ampkit.layout": "KRSC", "ampkit.format": "ampkit-dekr-1", "source": os.path.basename(src)})
    print(f"{src}: {len(out)} tensors -> {dst}")


def to_pytorch(src, dst):
    import torch
    tensors, meta = golden_io.load(src)
    sd = {}
    for name, a in tensors.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or "." not in name or name.startswith(("state.", "scaler.", "optimizer.")):
            continue
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if t.dim() == 4:
            t = t.permute(0, 3, 1, 2).contiguous()
        sd[name] = t
        if name.endswith(".running_var"):
            sd[name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        if name.endswith(".transform_matrix_conv.weight"):
            sd[name[: -len("transform_matrix_conv.weight")] + "regular_matrix"] = torch.from_numpy(REGULAR_MATRIX.copy())
    torch.save({"state_dict": sd, "meta": {"ampkit": dict(meta)}}, dst)
    print(f"{src}: {len(sd)} tensors -> {dst}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-ampkit")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--add-prefix", default="")
    b = sub.add_parser("to-pytorch")
    b.add_argument("src")
    b.add_argument("dst")
    args = ap.parse_args()
    if args.cmd == "to-ampkit":
        to_ampkit(args.src, args.dst, args.add_prefix)
    else:
        to_pytorch(args.src, args.dst)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Convert DEKR's pose rescoring net (mmpose's `kpt_rescore_coco-33d58c5c.pth`) to safetensors.

mmpose's DEKR config loads it as the head's RescoreNet (`rescore_cfg`, in_channels 74,
norm_indexes (5, 6)): an MLP 74 -> 256 -> 256 -> 1 with tensors l1.weight (256, 74), l1.bias,
l2.weight (256, 256), l2.bias, l3.weight (1, 256), l3.bias. This script writes them under the
names a DEKR state dict uses, `head.rescore_net.l1.weight` ..., as float32, which
`ampkit::eval::RescoreNet::from_safetensors` reads (it also accepts `rescore_net.` and bare names).

The input may be the bare rescore checkpoint, a `{"state_dict": ...}` wrapper, or a whole
mmpose DEKR checkpoint (any prefix before `l1.weight` is accepted, as long as it is unique).

Usage (needs PyTorch; Debian's /usr/bin/python3 has it):
    /usr/bin/python3 tools/convert_rescore.py kpt_rescore_coco-33d58c5c.pth kpt_rescore_coco.safetensors
    # then in the config:  [test_cfg] rescore_checkpoint = "kpt_rescore_coco.safetensors"

The safetensors file is written by hand (8-byte little-endian header length, JSON header,
raw little-endian data), so the `safetensors` package is not needed.
"""
import argparse
import json
import struct
import sys

NAMES = ["l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight", "l3.bias"]
OUT_PREFIX = "head.rescore_net."


def find_prefix(keys):
    prefixes = sorted({k[: -len("l1.weight")] for k in keys if k.endswith("l1.weight")})
    # A whole DEKR checkpoint has other *.l1.weight tensors only if its layout changed; prefer
    # the one naming the rescore net.
    named = [p for p in prefixes if "rescore" in p]
    if len(named) == 1:
        return named[0]
    if len(prefixes) == 1:
        return prefixes[0]
    sys.exit(f"convert_rescore: cannot tell which l1.weight is the rescore net's: {prefixes or 'none found'}")


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in tensors:
        data = arr.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="kpt_rescore_coco-33d58c5c.pth (or a DEKR checkpoint with the rescore net)")
    ap.add_argument("output", help="output .safetensors")
    args = ap.parse_args()

    import torch

    sd = torch.load(args.checkpoint, map_location="cpu")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        sys.exit(f"convert_rescore: {args.checkpoint} holds a {type(sd).__name__}, not a state dict")
    prefix = find_prefix(list(sd.keys()))
    tensors = []
    for n in NAMES:
        key = prefix + n
        if key not in sd:
            sys.exit(f"convert_rescore: {args.checkpoint} has no '{key}'")
        arr = sd[key].detach().cpu().float().numpy()
        tensors.append((OUT_PREFIX + n, arr))
        print(f"{key:40s} -> {OUT_PREFIX + n:32s} {tuple(arr.shape)}")
    in_features = tensors[0][1].shape[1]
    if tensors[0][1].shape[0] != 256 or tensors[4][1].shape != (1, 256):
        sys.exit(f"convert_rescore: unexpected shapes (l1 {tensors[0][1].shape}, l3 {tensors[4][1].shape})")
    write_safetensors(args.output, tensors, {"source": args.checkpoint, "in_features": str(in_features)})
    print(f"wrote {args.output} ({in_features} input features)")


if __name__ == "__main__":
    main()

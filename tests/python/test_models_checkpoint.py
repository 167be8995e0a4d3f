#!/usr/bin/env python3
"""A DEKR checkpoint written by ampkit loads in Python, and converts to an mmpose .pth and back.

1. Runs `test_models -tc="DEKR checkpoint for Python"` with AMPKIT_CHECKPOINT_OUT set: the C++
   side loads the tiny golden weights into a Precision<fp16, fp32_master> model and saves them.
2. Loads the file with the `safetensors` package (numpy API): every model tensor must equal the
   golden file's tensor bit for bit (fp32 masters), metadata and extras must be present.
3. With a torch interpreter (Debian's /usr/bin/python3), converts it to .pth with
   tools/convert_checkpoint.py, loads that into bench/torch_reference's DEKR('tiny') with
   strict=True, converts back, and checks the round trip is exact.

usage: test_models_checkpoint.py --test-binary PATH/test_models
Exit 77 (skipped) only when the `safetensors` package cannot be imported.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden", "data", "models_dekr_tiny.safetensors")
TORCH_PY = "/usr/bin/python3"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-binary", required=True)
    args = ap.parse_args()
    try:
        from safetensors.numpy import load_file
        from safetensors import safe_open
    except ImportError:
        print("skipped: the safetensors package is not installed")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "dekr_tiny.safetensors")
        env = dict(os.environ, AMPKIT_CHECKPOINT_OUT=ckpt)
        subprocess.run([args.test_binary, "-tc=DEKR checkpoint for Python"], check=True, env=env, cwd=ROOT)
        ours = load_file(ckpt)
        with safe_open(ckpt, framework="numpy") as f:
            meta = f.metadata()
        golden = load_file(GOLDEN)
        model_names = [n for n in golden if "/" not in n and n not in ("input", "loss")]
        bad = [n for n in model_names if n not in ours or ours[n].dtype != np.float32 or not np.array_equal(ours[n], golden[n])]
        assert not bad, f"{len(bad)} tensors differ or are missing, e.g. {bad[:3]}"
        assert ours["state.step"].tolist() == [4242] and ours["scaler.scale"].tolist() == [32768.0]
        assert meta["ampkit.layout"] == "KRSC" and meta["ampkit.policy"] == "fp16" and meta["config"] == "tiny", meta
        print(f"safetensors: {len(model_names)} model tensors equal the golden weights; extras and metadata present")

        if not os.path.exists(TORCH_PY) or subprocess.run([TORCH_PY, "-c", "import torch, torchvision"]).returncode:
            print("converter round trip skipped: no torch interpreter at", TORCH_PY)
            return 0
        conv = os.path.join(ROOT, "tools", "convert_checkpoint.py")
        pth, back = os.path.join(tmp, "dekr_tiny.pth"), os.path.join(tmp, "back.safetensors")
        subprocess.run([TORCH_PY, conv, "to-pytorch", ckpt, pth], check=True)
        check = (
            "import sys, torch; sys.path.insert(0, %r); import torch_reference;"
            "m = torch_reference.DEKR('tiny'); sd = torch.load(%r)['state_dict'];"
            "print(m.load_state_dict(sd, strict=True))" % (os.path.join(ROOT, "bench"), pth))
        subprocess.run([TORCH_PY, "-c", check], check=True)
        subprocess.run([TORCH_PY, conv, "to-ampkit", pth, back], check=True)
        again = load_file(back)
        bad = [n for n in model_names if not np.array_equal(again[n], golden[n])]
        assert not bad and set(again) == set(model_names), f"round trip differs: {bad[:3]}"
        print("converter: ampkit -> .pth (loads strict into the PyTorch DEKR) -> ampkit is exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())

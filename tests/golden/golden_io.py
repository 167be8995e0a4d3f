"""Read and write safetensors files with numpy alone, for golden-value generators.

The golden generators run under Debian's /usr/bin/python3 (torch 1.13, numpy), which has no
`safetensors` package, so this module implements the format itself:

    8 bytes   little-endian u64 N = length of the JSON header
    N bytes   JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
                     "__metadata__": {"key": "string", ...}}   (padded with spaces)
    rest      the tensor bytes; offsets are relative to the start of this buffer

Tensors are written back to back in the order given, without holes, as the reference library
does, so files written here load with `safetensors.numpy.load_file` and with ampkit's C++ reader
(include/ampkit/core/safetensors.hpp).

bfloat16 has no numpy dtype: pass `Bf16(uint16_bits_array)` or use `to_bf16_bits(float_array)`.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass

import numpy as np

_NP_TO_ST = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint16): "U16",
    np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint32): "U32",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint64): "U64",
}
_ST_TO_NP = {v: k for k, v in _NP_TO_ST.items()}


@dataclass
class Bf16:
    """A bfloat16 tensor given as its raw uint16 bit patterns."""

    bits: np.ndarray


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even, NaN -> 0x7fff as CUDA) and return the bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    rounded[nan] = 0x7FFF
    return rounded


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def save(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write `tensors` (name -> numpy array or Bf16) to `path` atomically (temp file + rename)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, value in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved")
        if isinstance(value, Bf16):
            arr = np.ascontiguousarray(value.bits, dtype=np.uint16)
            dtype = "BF16"
        else:
            arr = np.ascontiguousarray(value)
            if arr.dtype not in _NP_TO_ST:
                raise TypeError(f"{name}: unsupported dtype {arr.dtype}")
            dtype = _NP_TO_ST[arr.dtype]
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)  # keep the data buffer 8-byte aligned
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str) -> tuple[dict, dict]:
    """Read a safetensors file: returns (name -> numpy array, metadata). BF16 comes back as Bf16."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({len(raw)} bytes)")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        if not (0 <= b <= e <= len(data)):
            raise ValueError(f"{path}: tensor {name} has offsets [{b}, {e}) outside the {len(data)}-byte buffer")
        dtype = info["dtype"]
        np_dtype = np.dtype(np.uint16) if dtype == "BF16" else _ST_TO_NP[dtype]
        arr = np.frombuffer(data[b:e], dtype=np_dtype.newbyteorder("<")).reshape(info["shape"])
        out[name] = Bf16(arr.copy()) if dtype == "BF16" else arr.copy()
    return out, meta

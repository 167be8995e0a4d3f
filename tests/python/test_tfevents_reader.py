#!/usr/bin/env python3
"""ampkit's TensorBoard event writer against TensorBoard's own reader (PyPI `tensorboard`).

Runs the C++ test case that writes an event file (test_train -tc="tfevents: file for the python
reader" with AMPKIT_TFEVENTS_OUT=DIR), then reads the file three ways: TensorBoard's
EventFileLoader, its EventAccumulator (what the TensorBoard UI uses), and a record-by-record check of
the framing with TensorBoard's masked CRC32C and its Event protobuf class. Every (step, tag, value)
must equal what the C++ side wrote (expected.json), bit for bit in float32.
Exit 77 (skipped) when tensorboard cannot be imported.
"""
import argparse
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
except Exception as e:  # noqa: BLE001 - any import problem means "peer unavailable"
    print(f"skipped: tensorboard is not importable ({e}); pip install tensorboard")
    sys.exit(77)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-binary", required=True, help="path of test_train")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, AMPKIT_TFEVENTS_OUT=d)
        r = subprocess.run([args.test_binary, "-tc=tfevents: file for the python reader"], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            sys.exit(1)
        files = glob.glob(os.path.join(d, "events.out.tfevents.*"))
        assert len(files) == 1, files
        expected = json.load(open(os.path.join(d, "expected.json")))
        want = {(e["step"], e["tag"]): f32(e["value"]) for e in expected}

        # 1. Framing: length, masked CRC of the length, data, masked CRC of the data.
        raw = open(files[0], "rb").read()
        i, n_records = 0, 0
        while i < len(raw):
            (length,) = struct.unpack_from("<Q", raw, i)
            (len_crc,) = struct.unpack_from("<I", raw, i + 8)
            assert len_crc == masked_crc32c(raw[i:i + 8]), f"length CRC at {i}"
            data = raw[i + 12:i + 12 + length]
            (data_crc,) = struct.unpack_from("<I", raw, i + 12 + length)
            assert data_crc == masked_crc32c(data), f"data CRC at {i}"
            ev = event_pb2.Event()
            ev.ParseFromString(data)
            if n_records == 0:
                assert ev.file_version == "brain.Event:2", ev
            i += 12 + length + 4
            n_records += 1
        assert n_records == 1 + len({s for s, _ in want}), n_records

        # 2. TensorBoard's loader (migrates simple_value to tensors, as the UI does).
        got = {}
        for ev in EventFileLoader(files[0]).Load():
            for v in ev.summary.value:
                val = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
                got[(ev.step, v.tag)] = f32(val)
        assert got == want, (len(got), len(want))

        # 3. The accumulator behind the scalar dashboard.
        acc = event_accumulator.EventAccumulator(d)
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert sorted(tags) == sorted({t for _, t in want}), tags
        n = 0
        for t in tags:
            for s in acc.Scalars(t):
                assert f32(s.value) == want[(s.step, t)], (t, s)
                n += 1
        assert n == len(want)
    print(f"ok: {n_records} records, {len(want)} scalars read back by tensorboard")


if __name__ == "__main__":
    main()

"""Write tests/golden/data/interop_reference.safetensors with the reference `safetensors` package
(PyPI; run with the pyenv `python3`), so the C++ reader is tested on a file it did not write.
Also checks that golden_io.save() output loads with the reference package."""
import os
import numpy as np
from safetensors.numpy import save_file, load_file
import golden_io

here = os.path.dirname(os.path.abspath(__file__))
tensors = {
    "f32": (np.arange(24, dtype=np.float32) * 0.25 - 3).reshape(2, 3, 4),
    "f16": (np.arange(6, dtype=np.float16) / 3).reshape(6),
    "i64": np.array([[-5, 7], [1 << 40, 0]], dtype=np.int64),
    "u8": np.arange(5, dtype=np.uint8),
    "empty": np.zeros((0, 3), dtype=np.float32),
}
save_file(tensors, os.path.join(here, "data", "interop_reference.safetensors"), metadata={"writer": "safetensors-py"})
# golden_io -> reference reader
tmp = os.path.join(here, "data", ".interop_check.safetensors")
golden_io.save(tmp, tensors, {"writer": "golden_io"})
back = load_file(tmp)
for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
mine, meta = golden_io.load(os.path.join(here, "data", "interop_reference.safetensors"))
for k, v in tensors.items():
    assert np.array_equal(mine[k], v), k
assert meta == {"writer": "safetensors-py"}
os.unlink(tmp)
print("interop ok")

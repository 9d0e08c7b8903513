"""The streaming safetensors reader: same tensors as the safetensors package, bfloat16
widened exactly, and malformed or truncated files refused with the reason."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from attndsl.safetensors_io import SafetensorsFormatError, read_header, read_tensor


def test_reads_what_safetensors_writes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32),
               "b": rng.standard_normal(7), "c": np.arange(6, dtype=np.int64).reshape(2, 3),
               "d": np.zeros((0, 4), np.float16)}
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"k": "v"})
    entries, meta = read_header(tmp_path / "t.safetensors")
    assert meta == {"k": "v"}
    with open(tmp_path / "t.safetensors", "rb") as f:
        for name, want in tensors.items():
            got = read_tensor(f, entries[name])
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_bfloat16_is_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch
    x = torch.randn(4, 3).to(torch.bfloat16)
    save_torch({"x": x}, str(tmp_path / "bf.safetensors"))
    entries, _ = read_header(tmp_path / "bf.safetensors")
    assert entries["x"].dtype == "BF16"
    with open(tmp_path / "bf.safetensors", "rb") as f:
        got = read_tensor(f, entries["x"])
    np.testing.assert_array_equal(got, x.float().numpy())


def _raw(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("content, reason", [
    (b"", "shorter than"),
    (struct.pack("<Q", 1 << 40), "does not fit"),
    (struct.pack("<Q", 3) + b"\xff\xfe{", "not JSON"),
    (_raw([1, 2], b""), "not a JSON object"),
    (_raw({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
     "outside the file"),
    (_raw({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16),
     "16 bytes for shape"),
    (_raw({"x": {"dtype": "Q8", "shape": [3], "data_offsets": [0, 3]}}, b"\0" * 3),
     "malformed"),
    (_raw({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""), "malformed"),
])
def test_malformed_files_are_refused(tmp_path, content, reason):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SafetensorsFormatError, match=reason):
        read_header(path)

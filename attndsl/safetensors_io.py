"""Reading safetensors files one tensor at a time, with plain reads instead of a memory map.

`safetensors.safe_open` maps the whole file, so while a model loads, its resident memory holds
the mapped file *and* the copied weights (GPT-2 small: 1.4 GB peak for 0.5 GB of weights). The
format is a little-endian u64 header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the data; here the header is read and checked against the file size,
then each tensor is read into its own array when asked for. Writing stays with the
`safetensors` package.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# safetensors dtype -> (NumPy dtype as stored, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),                       # widened to float32 on read
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
MAX_HEADER = 100 * 2**20


class SafetensorsFormatError(ValueError):
    """The file is not a well-formed safetensors file (the message says why)."""


@dataclass(frozen=True)
class Entry:
    dtype: str                       # the safetensors name: F32, BF16, I64, ...
    shape: tuple[int, ...]
    start: int                       # absolute byte offsets in the file
    end: int


def read_header(path: str | Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """(name -> Entry, metadata), every entry checked to lie inside the file."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsFormatError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER, size - 8):
            raise SafetensorsFormatError(f"header length {n} does not fit the file ({size} B)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsFormatError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    entries: dict[str, Entry] = {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = (dtype in DTYPES and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(start, int) and isinstance(end, int))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise SafetensorsFormatError(f"tensor '{name}' has a malformed header entry")
        if not 0 <= start <= end or base + end > size:
            raise SafetensorsFormatError(f"tensor '{name}' lies outside the file (truncated?)")
        if end - start != math.prod(shape) * DTYPES[dtype].itemsize:
            raise SafetensorsFormatError(f"tensor '{name}' has {end - start} bytes for shape "
                                         f"{list(shape)} of {dtype}")
        entries[name] = Entry(dtype, shape, base + start, base + end)
    return entries, {str(k): str(v) for k, v in meta.items()}


def read_tensor(f: BinaryIO, entry: Entry) -> np.ndarray:
    """One tensor from an open file (bfloat16 comes back as float32, exactly)."""
    f.seek(entry.start)
    stored = DTYPES[entry.dtype]
    a = np.fromfile(f, dtype=stored, count=math.prod(entry.shape)).reshape(entry.shape)
    if entry.dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a

"""A reader of the safetensors format (an 8-byte little-endian header length, a JSON header of
name -> dtype, shape and byte offsets, then the raw little-endian data), so pretrained weights load
without the safetensors package. The tests compare it with ``safetensors.torch.load_file``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str | Path) -> dict:
    """Every tensor of the file, by name (CPU, owning their memory)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        if end == begin:  # frombuffer refuses an empty buffer
            out[name] = torch.empty(entry["shape"], dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype).reshape(entry["shape"])
    return out

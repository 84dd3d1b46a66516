"""Content fingerprints of weights: the identity of a model in cache keys and result rows."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # a weights file is fingerprinted without torch (file_fingerprint: zoo list, zoo verify)
    import torch


def state_dict_fingerprint(module: torch.nn.Module, length: int = 16) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor in ``module``'s state dict.

    Two loads of the same weights (from .bin or .safetensors, on any device) give the same fingerprint.
    """
    return tensors_fingerprint(module.state_dict(), length)


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """:func:`state_dict_fingerprint` of a state dict already in hand (e.g. read from a weights file)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            # the buffer itself, no copy of the bytes (numpy types the buffer protocol only for Python 3.12+)
            h.update(cast(Any, t.view(torch.uint8).numpy()))
    return h.hexdigest()[:length]


# safetensors dtype codes -> the names torch prints (str(torch.float32) == "torch.float32")
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def file_fingerprint(path: str | Path, length: int = 16) -> str:
    """:func:`tensors_fingerprint` of the tensors in safetensors file ``path``, read from the file's header and raw
    bytes without torch (the same hash: names, torch's dtype names, flattened shapes, little-endian bytes).

    A truncated or garbled file raises (``ValueError``, ``KeyError``, ``struct.error``, ``OSError``).
    """
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    h = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"{path}: tensor {name} lies outside the file")
        numel = 1
        for dim in info["shape"]:
            numel *= dim
        h.update(name.encode())
        h.update(f"torch.{_DTYPES[info['dtype']]}".encode())
        h.update(str((numel,)).encode())
        h.update(body[start:end])
    return h.hexdigest()[:length]

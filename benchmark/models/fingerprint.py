"""Content fingerprints of weights: the identity of a model in cache keys and result rows."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def state_dict_fingerprint(module: torch.nn.Module, length: int = 16) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor in ``module``'s state dict.

    Two loads of the same weights (from .bin or .safetensors, on any device) give the same fingerprint.
    """
    return tensors_fingerprint(module.state_dict(), length)


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """:func:`state_dict_fingerprint` of a state dict already in hand (e.g. read from a weights file)."""
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return h.hexdigest()[:length]

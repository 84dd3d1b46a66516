"""Content hashes of stored artefacts, and the housekeeping of files left by killed writes.

Every artefact records a hash of its content when written and is checked when read:

* safetensors files (modules, feature-cache files) carry :func:`tensors_digest` of their tensors in their
  metadata under ``DIGEST_KEY`` (a file cannot hold the hash of its own bytes, so the hash covers what is
  read back: names, dtypes, shapes and bytes of the tensors, plus the other metadata);
* JSON files (module.json, few-shot samples) carry :func:`json_digest` of their other keys under ``DIGEST_KEY``;
* toy models are checked against the weights fingerprint their build recorded (``world/zoo.py``);
* result rows carry a per-row hash column (``results.py``).

A damaged cache is rebuilt with a warning; anything else is reported with its path and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch

DIGEST_KEY = "sha256"
STALE_AFTER_S = 24 * 3600
"""A temporary file older than this is stale even when its writer cannot be checked (another host)."""


def tensors_digest(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and bytes of ``tensors`` and the items of ``meta``."""
    import torch  # here, so that atomic writes of JSON do not import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        if t.numel():
            # the buffer itself, no copy of the bytes (numpy types the buffer protocol only for Python 3.12+)
            h.update(cast(Any, t.view(torch.uint8).numpy()))
    h.update(json.dumps(dict(sorted((meta or {}).items()))).encode())
    return h.hexdigest()


def json_digest(obj: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``obj`` without its ``DIGEST_KEY``."""
    body = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_digest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with its :func:`json_digest` added under ``DIGEST_KEY``."""
    return {**obj, DIGEST_KEY: json_digest(obj)}


def json_intact(obj: Mapping[str, Any]) -> bool | None:
    """Whether ``obj`` matches its recorded digest; None when it records none (written before digests)."""
    if DIGEST_KEY not in obj:
        return None
    return obj[DIGEST_KEY] == json_digest(obj)


# ---- temporary files ------------------------------------------------------------------------------------------
def tmp_prefix(target: Path) -> str:
    """Prefix of the temporary files of ``target``: hidden, and naming the host and process that write it."""
    return f".{target.name}.{_host()}-{os.getpid()}."


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _writer_alive(name: str) -> bool | None:
    """Whether the process named in a temporary file's name still runs; None when that cannot be told."""
    try:
        host, pid = name.rsplit(".", 2)[0].rsplit(".", 1)[1].rsplit("-", 1)
        pid_n = int(pid)
    except ValueError:
        return None
    if host != _host():
        return None
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def stale_tmp_files(folder: Path, recursive: bool = False) -> Iterator[Path]:
    """Temporary files under ``folder`` left by killed writes: their writer is gone, or they are very old."""
    if not folder.is_dir():
        return
    now = time.time()
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        try:
            old = now - path.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue  # renamed into place or removed meanwhile
        if old or _writer_alive(path.name) is False:
            yield path


def clean_stale_tmp(folder: Path, recursive: bool = False) -> int:
    """Remove :func:`stale_tmp_files` (files and folders); returns how many were removed."""
    import shutil

    removed = 0
    for path in list(stale_tmp_files(folder, recursive)):
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed += 1
        except OSError:
            pass  # its writer or another cleaner got there first
    return removed


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) across processes; a no-op without ``fcntl``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: writes stay atomic, only not serialised
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Atomic file writes: write a temporary file next to the target, then rename it into place.

A reader (or a kill mid-write) sees the old file or the new one, never a part. The temporary file is created
with mode 0666 less the umask, as ``open()`` would create the target itself (``tempfile.mkstemp`` would give
0600, and the rename would keep it).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .integrity import tmp_prefix


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it is renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_tmp(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_tmp(target: Path) -> Path:
    """Create an empty, unique temporary file beside ``target`` with the umask's mode."""
    while True:
        # the name says which process writes it, so that a killed write's leftover can be told from a live one
        tmp = target.parent / f"{tmp_prefix(target)}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def write_atomic(target: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))

"""Versions and identity recorded with every result row."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def git_sha() -> str:
    """The git commit of the upgradebench source tree, when it is a checkout (editable install), else ``""``."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """upgradebench, torch and open_clip versions."""
    import open_clip
    import torch

    from . import __version__

    return {"upgradebench_version": __version__, "torch_version": torch.__version__,
            "open_clip_version": open_clip.__version__, "git_sha": git_sha()}


def now() -> str:
    """UTC now, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stable_hash(obj: Any, length: int = 12) -> str:
    """SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]

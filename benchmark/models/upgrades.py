"""Upgrade kinds: what a target model inherits from its source, as data (``upgrades.json``).

A module fitted on a source meets a different model depending on how the target was made: the same text tower
drifted (EVA-CLIP from CLIP), a model trained further (ViT-L/14@336px), an independent model of the same
architecture (OpenCLIP on LAION-2B), another width (ViT-L/14 for ViT-B/16) or the source's image tower under a
new text tower (NLLB-CLIP). Each known pair carries its kind, what is inherited, the text widths and
tokenizers, and where its lineage is documented; a pair the table does not know has no kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Upgrade:
    """One known source -> target pair: its ``kind`` (a key of :func:`upgrade_kinds`) and lineage."""

    source: str
    target: str
    kind: str
    inherited: str
    text_width: tuple[int, int]
    tokenizer: tuple[str, str]
    sources: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ``--json``), with the kind's title and what a module meets."""
        return {**asdict(self), **{k: v for k, v in upgrade_kinds()[self.kind].items()}}


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("upgrades.json").read_text(encoding="utf-8"))


def upgrade_kinds() -> dict[str, dict[str, str]]:
    """Every upgrade kind: ``{kind: {"title": ..., "meets": ...}}``."""
    return dict(_table()["kinds"])


@lru_cache(maxsize=1)
def known_upgrades() -> tuple[Upgrade, ...]:
    """Every pair of ``upgrades.json``, in its order."""
    return tuple(Upgrade(p["source"], p["target"], p["kind"], p["inherited"], tuple(p["text_width"]),
                         tuple(p["tokenizer"]), tuple(p["sources"])) for p in _table()["pairs"])


def upgrade_of(source: str, target: str) -> Upgrade | None:
    """The known pair ``source`` -> ``target`` (model aliases), or None when the table does not know it."""
    return next((u for u in known_upgrades() if (u.source, u.target) == (source, target)), None)

"""Bookkeeping shared by the figure and table writers: what was written, what was skipped and why."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


class MissingInput(Exception):
    """A figure or table cannot be made from the given inputs; the message says what is missing."""


@dataclass
class Outputs:
    """Files written, and the items skipped (name -> reason), in the order they were attempted."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def attempt(self, name: str, make: Callable[[], Iterable[Path]]) -> None:
        """Run ``make`` (which returns the paths it wrote); a :class:`MissingInput` skips only this item."""
        try:
            self.written.extend(make())
        except MissingInput as exc:
            self.skipped[name] = str(exc)

    def extend(self, other: Outputs) -> None:
        """Add another writer's outputs."""
        self.written.extend(other.written)
        self.skipped.update(other.skipped)

    def as_dict(self) -> dict:
        """JSON-able form (``--json``)."""
        return {"written": [str(p) for p in self.written], "skipped": dict(self.skipped)}

"""Is a CoOp-format dataset complete? What exactly is missing or broken, and what to do about it.

:func:`check_coop_dataset` looks at a :class:`CoopDataset` in three steps, stopping at the first that
fails: the folders and split/class files exist; the split files parse; every image of every split
exists and decodes. With ``skip_corrupt`` the images that exist but do not decode are recorded in the
dataset's ``skipped_images.json`` and left out of its splits from then on.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from ..atomic import write_json
from ..errors import UserError
from .coop import SKIP_FILE, CoopDataset
from .coop_spec import DATASETS_MD
from .images import image_problem

T = TypeVar("T")
Track = Callable[[Iterable[T], int, str], Iterable[T]]
"""``track(results, total, description)`` re-yields ``results`` while showing progress (a rich bar in the CLI)."""

EXAMPLES = 20
"""How many paths a report lists per kind of problem (the counts are always complete)."""


@dataclass
class SplitCheck:
    """The images of one split: how many, which are absent or unreadable, which classes have none."""

    split: str
    images: int
    absent: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Counts plus the first few examples of each problem."""
        return {"split": self.split, "images": self.images,
                "absent": len(self.absent), "absent_examples": self.absent[:EXAMPLES],
                "unreadable": len(self.unreadable),
                "unreadable_examples": dict(islice(self.unreadable.items(), EXAMPLES)),
                "empty_classes": self.empty_classes}


@dataclass
class DatasetCheck:
    """Everything found about one dataset; ``problems`` are (what is wrong, what to do) pairs."""

    name: str
    path: str
    expected_classes: int
    num_classes: int | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    splits: list[SplitCheck] = field(default_factory=list)
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the dataset can be used as it is."""
        return not self.problems

    def add(self, error: UserError) -> None:
        """Record a problem described by a :class:`UserError`."""
        self.problems.append((error.message, error.fix or ""))

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return {"name": self.name, "path": self.path, "complete": self.complete,
                "num_classes": self.num_classes, "expected_classes": self.expected_classes,
                "problems": [{"problem": p, "fix": f} for p, f in self.problems],
                "splits": [s.to_json() for s in self.splits], "skipped_images": self.skipped, "notes": self.notes}


def _no_track(results: Iterable[T], total: int, description: str) -> Iterable[T]:
    return results


def _bounded_map(fn: Callable[[Path], T], items: list[Path], workers: int) -> Iterator[T]:
    """``map`` over a thread pool with a bounded queue (ImageNet has 1.3M images; decoders release the GIL)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        it = iter(items)
        pending = deque(pool.submit(fn, x) for x in islice(it, 4 * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, x) for x in islice(it, 1))
            yield result


def _exists(path: Path) -> str | None:
    return None if path.is_file() else "absent"


def _examples(paths: Iterable[str]) -> str:
    paths = list(paths)
    return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")


def check_coop_dataset(ds: CoopDataset, *, decode: bool = True, skip_corrupt: bool = False,
                       workers: int = min(8, os.cpu_count() or 1), track: Track = _no_track) -> DatasetCheck:
    """Check ``ds`` for missing folders and files, malformed split files, absent and unreadable images.

    ``decode=False`` only checks that image files exist (fast). With ``skip_corrupt`` (needs
    ``decode``), unreadable images are added to ``skipped_images.json`` instead of being problems.
    """
    report = DatasetCheck(ds.name, str(ds.root), ds.spec.num_classes)
    for error in ds.missing():
        report.add(error)
    if report.problems:
        return report
    try:
        layout = ds.layout
    except UserError as error:
        report.add(error)
        return report
    report.num_classes = len(layout.classnames)
    if report.num_classes != ds.spec.num_classes:
        report.notes.append(f"{report.num_classes} classes, where the full {ds.spec.title} has {ds.spec.num_classes}")
    report.skipped = len(ds.skipped_images())

    probe = image_problem if decode else _exists
    for split in ds.spec.splits:
        items = layout.splits[split]
        refs = list(dict.fromkeys(ref for ref, _ in items))
        results = _bounded_map(probe, [ds.image_root / r for r in refs], workers)
        found = SplitCheck(split, len(refs))
        for ref, problem in zip(refs, track(results, len(refs), f"{ds.name} {split}")):
            if problem == "absent":
                found.absent.append(ref)
            elif problem is not None:
                found.unreadable[ref] = problem
        per_class = Counter(label for _, label in items)
        found.empty_classes = [c for y, c in enumerate(layout.classnames) if not per_class[y]]
        report.splits.append(found)

    if skip_corrupt:
        _skip_unreadable(ds, report)
    _describe_split_problems(ds, report)
    return report


def _skip_unreadable(ds: CoopDataset, report: DatasetCheck) -> None:
    unreadable = {ref: why for s in report.splits for ref, why in s.unreadable.items()}
    if not unreadable:
        return
    skipped = {**ds.skipped_images(), **unreadable}
    write_json(ds.root / SKIP_FILE, {"images": skipped})
    ds.__dict__.pop("layout", None)  # the splits change: re-read them on next use
    for s in report.splits:
        s.unreadable.clear()
    report.skipped = len(skipped)
    report.notes.append(f"{len(unreadable)} unreadable images are now left out (listed in {ds.root / SKIP_FILE}; "
                        "delete that file to use them again)")


def _describe_split_problems(ds: CoopDataset, report: DatasetCheck) -> None:
    for s in report.splits:
        if s.absent:
            report.problems.append((
                f"{s.split}: {len(s.absent)} of {s.images} images are absent under {ds.image_root}: "
                f"{_examples(s.absent)}",
                f"the copy is incomplete: extract the {ds.spec.title} images again, "
                f"as described in {DATASETS_MD}"))
        if s.unreadable:
            first_error = next(iter(s.unreadable.values()))
            report.problems.append((
                f"{s.split}: {len(s.unreadable)} of {s.images} images are unreadable: {_examples(s.unreadable)} "
                f"(first error: {first_error})",
                f"replace them, or run `upgradebench datasets check {ds.name} --skip-corrupt` to leave them out"))
        if s.empty_classes:
            report.problems.append((
                f"{s.split}: {len(s.empty_classes)} classes have no image: {_examples(s.empty_classes)}",
                f"extract the complete {ds.spec.title}, as described in {DATASETS_MD}"))


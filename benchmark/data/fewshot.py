"""Few-shot sampling: a pure function of (dataset, K, seed), written down as JSON and reused.

K items per class are drawn from ``train`` and ``min(K, 4)`` per class from ``val`` (CoOp's rule).
Samples are stored as JSON under the dataset's ``fewshot_dir`` (``shot_{K}-seed_{seed}.json``); a
stored file is reused only when the key it records (dataset, dataset fingerprint, K, seed) is the key it is read
for and it matches its content hash (otherwise it is drawn again, with a warning). Nothing is unpickled.

A class with fewer than K items gives all of them, without replacement, as Dassl's ``generate_fewshot_dataset``
does; when every class is that short, K itself is lowered to the largest class (:func:`effective_shots`), so
``--shots 1000`` on a 32-per-class pool is the run ``--shots 32`` and its rows record 32.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import cast

from ..atomic import write_json
from ..errors import UserError
from ..integrity import json_intact, with_digest
from .dataset import Dataset, Item

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FewShotSplit:
    """The sampled training and validation items of one (dataset, K, seed)."""

    dataset: str
    shots: int
    seed: int
    train: list[Item]
    val: list[Item]


def _by_class(items: list[Item]) -> dict[int, list[Item]]:
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_class[item[1]].append(item)
    return by_class


def effective_shots(dataset: Dataset, shots: int) -> int:
    """K as it can be honoured: ``shots``, or the size of the largest class of ``train`` when that is smaller."""
    if shots < 1:
        raise UserError(f"--shots must be at least 1, got {shots}.")
    largest = max((len(pool) for pool in _by_class(dataset.split("train")).values()), default=0)
    if 0 < largest < shots:
        log.warning("--shots %d: no class of %s has that many training images (%d at most); every image of each "
                    "class is used, without replacement, and the rows record shots=%d", shots, dataset.name, largest,
                    largest)
        return largest
    return shots


def _per_class(items: list[Item], num_classes: int, k: int, rng: random.Random, what: str) -> list[Item]:
    by_class = _by_class(items)
    out: list[Item] = []
    short: list[str] = []
    for label in range(num_classes):
        pool = by_class.get(label, [])
        if not pool:
            raise UserError(f"{what}: class {label} has no items to sample from.",
                            "check the dataset's split files; every class needs training images")
        if len(pool) < k:
            short.append(f"{label} ({len(pool)})")
            out += pool  # Dassl: all of them, without replacement
        else:
            out += rng.sample(pool, k)
    if short:
        log.warning("%s: %d classes have fewer than %d items and give all they have: %s", what, len(short), k,
                    ", ".join(short[:10]) + (" ..." if len(short) > 10 else ""))
    return out


def sample_fewshot(dataset: Dataset, shots: int, seed: int) -> FewShotSplit:
    """Draw K per class from train and ``min(K, 4)`` per class from val, deterministically.

    ``shots`` must already be :func:`effective_shots`; a class with fewer items gives all of them.
    """
    if shots < 1:
        raise UserError(f"--shots must be at least 1, got {shots}.")
    rng = random.Random(f"{dataset.name}|{shots}|{seed}")
    train = _per_class(dataset.split("train"), dataset.num_classes, shots, rng, f"{dataset.name} train")
    val_items = dataset.split("val") if dataset.has_split("val") else []
    val = _per_class(val_items, dataset.num_classes, min(shots, 4), rng, f"{dataset.name} val") if val_items else []
    # tuple() keeps each (ref, label) pair, whatever sequence the dataset gave it as
    return FewShotSplit(dataset.name, shots, seed, [cast(Item, tuple(i)) for i in train],
                        [cast(Item, tuple(i)) for i in val])


def _key_mismatch(data: dict, dataset: Dataset, shots: int, seed: int) -> str | None:
    """What of the key a stored sample records differs from the key it is read for (None: all agree).

    A file copied over another seed's or another dataset's would otherwise be used under the wrong name.
    """
    expected = {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "shots": shots, "seed": seed}
    wrong = [f"{key} {data.get(key)!r} (not {value!r})" for key, value in expected.items() if data.get(key) != value]
    return ", ".join(wrong) if wrong else None


def load_fewshot(dataset: Dataset, shots: int, seed: int) -> FewShotSplit:
    """The few-shot sample of (dataset, K, seed): read from its JSON file, or drawn and written.

    K is first lowered to :func:`effective_shots` (the split's ``shots`` says what was drawn). A file that does
    not match its content hash is a damaged cache: it is drawn again (the sample is a pure function of its
    inputs), with a warning.
    """
    shots = effective_shots(dataset, shots)
    path = dataset.fewshot_dir / f"shot_{shots}-seed_{seed}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            intact = json_intact(data)
            if not intact:
                log.warning("few-shot file %s %s: it is sampled again", path,
                            "has no content hash" if intact is None else "does not match its content hash")
            elif (mismatch := _key_mismatch(data, dataset, shots, seed)) is not None:
                log.warning("few-shot file %s was drawn for %s: it is sampled again", path, mismatch)
            else:
                return FewShotSplit(
                    dataset.name, shots, seed,
                    [(str(r), int(y)) for r, y in data["train"]],
                    [(str(r), int(y)) for r, y in data["val"]],
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("few-shot file %s is unreadable (%s): it is sampled again", path, type(exc).__name__)
    split = sample_fewshot(dataset, shots, seed)
    try:
        write_json(path, with_digest({
            "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "shots": shots, "seed": seed,
            "train": [list(i) for i in split.train], "val": [list(i) for i in split.val],
        }))
    except OSError:
        pass  # a read-only dataset folder: the sample is a pure function, so it can be drawn again
    return split

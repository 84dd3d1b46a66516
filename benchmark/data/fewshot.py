"""Few-shot sampling: a pure function of (dataset, K, seed), written down as JSON and reused.

K items per class are drawn from ``train`` and ``min(K, 4)`` per class from ``val`` (CoOp's rule).
Samples are stored as JSON under the dataset's ``fewshot_dir`` (``shot_{K}-seed_{seed}.json``); a
stored file is reused only when it was drawn from the same dataset fingerprint. Nothing is unpickled.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass

from ..atomic import write_json
from ..errors import UserError
from .dataset import Dataset, Item


@dataclass(frozen=True)
class FewShotSplit:
    """The sampled training and validation items of one (dataset, K, seed)."""

    dataset: str
    shots: int
    seed: int
    train: list[Item]
    val: list[Item]


def _per_class(items: list[Item], num_classes: int, k: int, rng: random.Random, what: str) -> list[Item]:
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_class[item[1]].append(item)
    out: list[Item] = []
    for label in range(num_classes):
        pool = by_class.get(label, [])
        if len(pool) < k:
            # CoOp samples with replacement when a class is short; say so rather than hide it.
            if not pool:
                raise UserError(f"{what}: class {label} has no items to sample from.")
            out += [pool[rng.randrange(len(pool))] for _ in range(k)]
        else:
            out += rng.sample(pool, k)
    return out


def sample_fewshot(dataset: Dataset, shots: int, seed: int) -> FewShotSplit:
    """Draw K per class from train and ``min(K, 4)`` per class from val, deterministically."""
    if shots < 1:
        raise UserError(f"--shots must be at least 1, got {shots}.")
    rng = random.Random(f"{dataset.name}|{shots}|{seed}")
    train = _per_class(dataset.split("train"), dataset.num_classes, shots, rng, f"{dataset.name} train")
    val_items = dataset.split("val") if dataset.has_split("val") else []
    val = _per_class(val_items, dataset.num_classes, min(shots, 4), rng, f"{dataset.name} val") if val_items else []
    return FewShotSplit(dataset.name, shots, seed, [tuple(i) for i in train], [tuple(i) for i in val])


def load_fewshot(dataset: Dataset, shots: int, seed: int) -> FewShotSplit:
    """The few-shot sample of (dataset, K, seed): read from its JSON file, or drawn and written."""
    path = dataset.fewshot_dir / f"shot_{shots}-seed_{seed}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("dataset_fingerprint") == dataset.fingerprint:
                return FewShotSplit(
                    dataset.name, shots, seed,
                    [(str(r), int(y)) for r, y in data["train"]],
                    [(str(r), int(y)) for r, y in data["val"]],
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"Few-shot file {path} is malformed ({exc}).", "delete it; it will be sampled again") from None
    split = sample_fewshot(dataset, shots, seed)
    try:
        write_json(path, {
            "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "shots": shots, "seed": seed,
            "train": split.train, "val": split.val,
        })
    except OSError:
        pass  # a read-only dataset folder: the sample is a pure function, so it can be drawn again
    return split

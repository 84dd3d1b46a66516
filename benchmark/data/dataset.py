"""The dataset contract every loader implements (real CoOp-format folders and the embedded world)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

from PIL import Image

from ..errors import UserError

SPLITS = ("train", "val", "test")

Item = tuple[str, int]
"""One sample: an image reference (a path relative to ``image_root``, or a world reference) and a label."""


def class_columns(train_classes: list[str], test: Dataset, trained_on: str) -> list[int] | None:
    """Which of a module's classes (``train_classes``, those of dataset ``trained_on``) each class of ``test`` is.

    None when ``test`` has the same classes in the same order (the module's logits are used as they are).
    An OOD subset that records its classes' labels in the parent dataset (``parent_labels``: ImageNet-A/-R
    hold 200 of ImageNet's 1000) gets those columns: the module scores all its classes and the subset's
    columns are kept, as CoOp scores these sets. Any other class set is a user error: scoring a module on
    classes it was not fitted for gives chance-level rows that look like results.
    """
    if list(test.classnames) == list(train_classes):
        return None
    parents = getattr(test, "parent_labels", None)
    if parents is not None and all(0 <= p < len(train_classes) for p in parents) \
            and [train_classes[p] for p in parents] == list(test.classnames):
        return list(parents)
    raise UserError(f"Dataset {test.name} has other classes than {trained_on}, the dataset the module was fitted on "
                    f"({test.num_classes} vs {len(train_classes)} classes"
                    f"{'' if test.num_classes != len(train_classes) else ', or another order'}).",
                    f"evaluate on {trained_on} or on one of its OOD variants (same classes, or a subset that "
                    f"maps to them: `upgradebench datasets list` shows them in its 'ood of' column)")


class Dataset(ABC):
    """A classification dataset: class names, a zero-shot template, and train/val/test splits.

    Subclasses set ``name``, ``classnames`` and ``template`` and implement :meth:`split` and
    :meth:`load_image`. ``fewshot_dir`` is where sampled few-shot lists are written as JSON.
    """

    name: str
    classnames: list[str]
    template: str

    @abstractmethod
    def split(self, name: str) -> list[Item]:
        """The items of split ``name`` (``train``, ``val`` or ``test``), in a stable order."""

    @abstractmethod
    def load_image(self, ref: str) -> Image.Image:
        """The RGB image of reference ``ref``."""

    @property
    @abstractmethod
    def fewshot_dir(self) -> Path:
        """Folder for the JSON few-shot samples (``split_fewshot/`` next to a real dataset)."""

    def has_split(self, name: str) -> bool:
        """Whether the split exists (OOD variants have only ``test``)."""
        return name in SPLITS

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)

    def prompts(self, template: str | None = None) -> list[str]:
        """The class names written into the template (``_`` already replaced by spaces)."""
        template = template or self.template
        return [template.format(c) for c in self.classnames]

    def fingerprint_payload(self) -> dict:
        """What the fingerprint hashes: identity, class names, template and every split's items."""
        return {
            "name": self.name,
            "classnames": self.classnames,
            "template": self.template,
            "splits": {s: self.split(s) for s in SPLITS if self.has_split(s)},
        }

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the dataset's definition (class names, template, split lists)."""
        blob = json.dumps(self.fingerprint_payload(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.num_classes} classes)"

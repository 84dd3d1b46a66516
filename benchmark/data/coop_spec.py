"""The table of CoOp-format datasets (``coop_datasets.json``) and CoOp's class-name rules.

Each row says where a dataset lives under the data root, how its splits are stored (its *layout*),
its zero-shot template, its number of classes and, for the ImageNet OOD variants, its parent dataset.
Adding a dataset in an existing layout means adding a row, not code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from .dataset import SPLITS

LAYOUTS = ("split_json", "fgvc_variants", "class_folders")
"""How splits are stored: CoOp's ``split_zhou_*.json``; FGVC's ``variants.txt`` + ``images_variant_*.txt``;
one folder per class named by ImageNet wnid or ``classnames.txt`` line index."""

DATASETS_MD = "CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"


@dataclass(frozen=True)
class CoopSpec:
    """One row of the table: where a CoOp-format dataset lives and how to read it.

    ``images`` is the image folder relative to ``folder``; item references are relative to it.
    ``split_file`` is the split JSON, or for FGVC a pattern with ``{split}``. ``classes_file`` is FGVC's
    ``variants.txt`` or ImageNet's ``classnames.txt``. ``split_dirs`` maps a split to its folder under
    ``images`` (class-folder layout). ``val_one_in`` holds out one in that many train images of each
    class as the val split (ImageNet, which has none). ``folder_names`` says whether class folders are
    named by wnid or by line index (ImageNet-V2). ``present_classes_only`` restricts the classes to the
    folders on disk (ImageNet-A/-R). ``ignore``, ``rename`` and ``split_camel_case`` are CoOp's
    class-name rules (see :func:`coop_classname`). ``num_test`` is the size of the test split as the paper's
    Table 1 (and CoOp) give it, for cost estimates before the data is on disk.
    """

    name: str
    title: str
    folder: str
    images: str
    layout: str
    template: str
    num_classes: int
    description: str
    num_test: int = 0
    split_file: str | None = None
    classes_file: str | None = None
    split_dirs: dict[str, str] = field(default_factory=dict)
    val_one_in: int | None = None
    folder_names: str = "wnid"
    present_classes_only: bool = False
    ignore: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    split_camel_case: bool = False
    ood_of: str | None = None

    def __post_init__(self) -> None:
        # The table ships with the package; a bad row is a bug, so fail loudly at import.
        if self.layout not in LAYOUTS:
            raise ValueError(f"coop_datasets.json: {self.name}: unknown layout {self.layout!r}")
        if self.layout == "class_folders" and not self.split_dirs:
            raise ValueError(f"coop_datasets.json: {self.name}: class_folders needs split_dirs")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this dataset has (OOD variants: only ``test``)."""
        if self.layout != "class_folders":
            return SPLITS
        have = set(self.split_dirs) | ({"val"} if self.val_one_in else set())
        return tuple(s for s in SPLITS if s in have)

    def split_file_of(self, split: str) -> str:
        """The split file of ``split`` (the same JSON for all splits, or FGVC's per-split text file)."""
        assert self.split_file is not None
        return self.split_file.format(split=split)


@cache
def coop_specs() -> dict[str, CoopSpec]:
    """All rows of ``coop_datasets.json``, by registry name."""
    table = json.loads(resources.files(__package__).joinpath("coop_datasets.json").read_text(encoding="utf-8"))
    return {name: CoopSpec(name=name, **row) for name, row in table.items()}


_CAMEL_WORD = re.compile(r"[A-Z][^A-Z]*|^[^A-Z]+")


def coop_classname(raw: str, spec: CoopSpec) -> str:
    """CoOp's class name of a raw (folder or split-file) name, ready for the template.

    The dataset's ``rename`` table is applied first (Caltech101 ``airplanes`` -> ``airplane``,
    EuroSAT ``AnnualCrop`` -> ``Annual Crop Land``); UCF101 folder names are split at capitals
    (``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``) unless they are split already, as in CoOp's JSON;
    finally ``_`` becomes a space, as CoOp's trainers do before tokenising.
    """
    name = spec.rename.get(raw, raw)
    if spec.split_camel_case and "_" not in name and " " not in name:
        name = "_".join(_CAMEL_WORD.findall(name))
    return name.replace("_", " ")

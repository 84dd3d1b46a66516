"""The real datasets of the paper, read from the CoOp layout under the data root.

Every row of ``coop_datasets.json`` (11 benchmark datasets and the 4 ImageNet OOD variants) is a registered
dataset (``families.json`` names :meth:`CoopDataset.from_catalogue` as their factory). Reading is lazy: building a
dataset touches no file; the split files are parsed on first use of ``classnames`` or ``split``.

Decisions where CoOp is silent or unsafe:

- **ImageNet val.** CoOp uses the test set (the official val images) as ImageNet's validation set,
  which would let model selection (the linear probe's C, Tip-Adapter's alpha/beta) see test labels.
  We hold out the last ``ceil(n / 50)`` images (sorted by file name) of every train class as ``val``
  (~2%, 25.6k images); ``train`` is the rest; ``test`` is ``images/val``. Few-shot val shots are drawn
  from this held-out part, so they never overlap the train shots.
- **Unreadable images** make ``load_image`` raise a :class:`UserError` naming the file. They are left
  out of the splits only when listed in ``<dataset folder>/skipped_images.json``, which
  ``upgradebench datasets check NAME --skip-corrupt`` writes after decoding every image; the
  fingerprint then changes with the splits, so caches and few-shot samples follow.
- Few-shot samples are JSON files in ``<dataset folder>/split_fewshot/`` (CoOp's folder; never pickles).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from PIL import Image

from ..errors import UserError
from .coop_layouts import READERS, LayoutData
from .coop_spec import DATASETS_MD, CoopSpec, coop_specs
from .dataset import Dataset, Item
from .images import is_safe_ref, open_rgb

SKIP_FILE = "skipped_images.json"
"""Per dataset folder: ``{"images": {relative path: reason}}`` of unreadable images to leave out."""


class CoopDataset(Dataset):
    """One CoOp-format dataset rooted at ``data_root / spec.folder``; see the module docstring."""

    def __init__(self, spec: CoopSpec, data_root: str | os.PathLike[str]) -> None:
        self.spec = spec
        self.name = spec.name
        self.template = spec.template
        self.root = Path(data_root) / spec.folder
        self.image_root = self.root / spec.images

    @classmethod
    def from_catalogue(cls, name: str, data_root: str | os.PathLike[str]) -> CoopDataset:
        """Dataset ``name`` of ``coop_datasets.json`` under ``data_root`` (the family's registry factory)."""
        return cls(coop_specs()[name], data_root)

    def missing(self) -> list[UserError]:
        """What is absent on disk (dataset folder, image folder, split and class files), each with its fix.

        Cheap (a few ``stat`` calls); images and file contents are not looked at.
        """
        spec, root = self.spec, self.root
        if not root.is_dir():
            return [UserError(
                f"{spec.title} folder {root} is missing.",
                f"download {spec.title} as described in {DATASETS_MD} so that it is at {root}, "
                f"or point --data-root / UPGRADEBENCH_DATA at the folder that holds {spec.folder}/")]
        problems = []
        if not self.image_root.is_dir():
            problems.append(UserError(
                f"{spec.title} image folder {self.image_root} is missing.",
                f"extract the {spec.title} images into {self.image_root}, as described in {DATASETS_MD}"))
        files = [spec.classes_file] if spec.classes_file else []
        if spec.layout == "split_json":
            assert spec.split_file is not None  # a split_json dataset names its split file (read_split_json asserts it)
            files.append(spec.split_file)
        elif spec.layout == "fgvc_variants":
            files += [spec.split_file_of(s) for s in spec.splits]
        for name in files:
            if not (root / name).is_file():
                problems.append(UserError(f"{spec.title} file {root / name} is missing.",
                                          f"download {name} into {root} as described in {DATASETS_MD}"))
        if self.image_root.is_dir():
            for split, sub in spec.split_dirs.items():
                if not (self.image_root / sub).is_dir():
                    problems.append(UserError(f"{spec.title} {split} folder {self.image_root / sub} is missing.",
                                              f"extract the {spec.title} {split} images into {self.image_root / sub}"))
        return problems

    @cached_property
    def layout(self) -> LayoutData:
        """Class names and split items as read from disk, minus the images listed in ``skipped_images.json``."""
        problems = self.missing()
        if problems:
            raise problems[0]
        data = READERS[self.spec.layout](self.spec, self.root)
        skipped = self.skipped_images()
        if not skipped:
            return data
        return replace(data, splits={s: [i for i in items if i[0] not in skipped] for s, items in data.splits.items()})

    def skipped_images(self) -> dict[str, str]:
        """The images ``datasets check --skip-corrupt`` marked as unreadable (path -> reason)."""
        path = self.root / SKIP_FILE
        if not path.is_file():
            return {}
        try:
            images = json.loads(path.read_text(encoding="utf-8"))["images"]
            if not (isinstance(images, dict) and all(isinstance(v, str) for v in images.values())):
                raise TypeError("'images' must map paths to reasons")
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is malformed ({exc}).",
                            f"delete it and run `upgradebench datasets check {self.name} --skip-corrupt`") from None
        return images

    @property
    def classnames(self) -> list[str]:  # type: ignore[override]
        """Class names in label order, after CoOp's rules (``_`` already a space)."""
        return self.layout.classnames

    @property
    def parent_labels(self) -> list[int] | None:
        """For an OOD variant, the ImageNet label of each class (ImageNet-A/-R: 200 of 1000); else ``None``."""
        return self.layout.parent_labels

    def has_split(self, name: str) -> bool:
        """Whether the split exists (the OOD variants have only ``test``); reads nothing."""
        return name in self.spec.splits

    def split(self, name: str) -> list[Item]:
        """The items of split ``name``: (path relative to ``image_root``, label), in a stable order."""
        if not self.has_split(name):
            hint = f"it is an evaluation set: train on {self.spec.ood_of}" if self.spec.ood_of else "use one of those"
            raise UserError(f"Dataset {self.name} has no {name!r} split (it has {', '.join(self.spec.splits)}).", hint)
        return list(self.layout.splits[name])

    def load_image(self, ref: str) -> Image.Image:
        """The RGB image at ``image_root / ref``; a missing or unreadable file is a :class:`UserError`."""
        if not is_safe_ref(ref):
            raise UserError(f"Image reference {ref!r} of {self.name} escapes {self.image_root}.",
                            f"delete the few-shot files in {self.fewshot_dir} that contain it")
        return open_rgb(self.image_root / ref,
                        f"replace the file, or run `upgradebench datasets check {self.name} --skip-corrupt` "
                        "to leave unreadable images out")

    @property
    def fewshot_dir(self) -> Path:
        """``<dataset folder>/split_fewshot`` (CoOp's place; we write JSON there, never pickles)."""
        return self.root / "split_fewshot"


"""Readers of the three on-disk layouts of CoOp-format datasets.

Each reader turns a dataset folder into :class:`LayoutData` (class names after CoOp's rules, and the
items of every split as ``(path relative to the image folder, label)``), or raises a
:class:`UserError` naming the file, the entry and the problem. Image references are checked to stay
inside the image folder (no absolute paths, no ``..``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .coop_spec import DATASETS_MD, CoopSpec, coop_classname
from .dataset import SPLITS, Item
from .images import is_safe_ref


@dataclass(frozen=True)
class LayoutData:
    """What a layout reader found: class names (label order) and the items of each split.

    ``parent_labels[i]`` is the label of class ``i`` in the parent dataset (ImageNet) for the OOD
    variants, so that a module trained on ImageNet can be scored on a 200-class subset; else ``None``.
    """

    classnames: list[str]
    splits: dict[str, list[Item]]
    parent_labels: list[int] | None = None


def _redownload(spec: CoopSpec, filename: str) -> str:
    return f"download {filename} for {spec.title} again as described in {DATASETS_MD}"


def _escapes(where: str, ref: str, spec: CoopSpec, filename: str) -> UserError:
    return UserError(f"{where}: image path {ref!r} escapes the image folder (absolute or '..').",
                     f"fix the entry, or {_redownload(spec, filename)}")


def _entry(path: Path, split: str, i: int, row: object) -> str:
    """How an error names a split-file entry (built only on error: Food101 has ~100k entries)."""
    return f"{path}: {split}[{i}] = {json.dumps(row)[:200]}"


def _read_lines(path: Path, spec: CoopSpec) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{spec.title}: {path} is missing.", _redownload(spec, path.name)) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc}).", _redownload(spec, path.name)) from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_split_json(spec: CoopSpec, root: Path) -> LayoutData:
    """CoOp's ``split_zhou_*.json``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

    Labels must be 0..C-1 with one class name each. Entries of ``spec.ignore`` classes are dropped and
    the remaining labels renumbered in order (CoOp's released Caltech101 split has none of them).
    """
    assert spec.split_file is not None
    path = root / spec.split_file
    fix = _redownload(spec, spec.split_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{spec.title}: split file {path} is missing.", fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"Split file {path} is not valid JSON ({exc}).", fix) from None
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLITS):
        raise UserError(f"Split file {path} must be an object with lists \"train\", \"val\" and \"test\".", fix)

    raw_names: dict[int, str] = {}
    rows: dict[str, list[Item]] = {}
    for split in SPLITS:
        rows[split] = []
        for i, row in enumerate(data[split]):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                    and type(row[1]) is int and row[1] >= 0 and isinstance(row[2], str)):
                raise UserError(f"{_entry(path, split, i, row)}: expected [relative_path, label >= 0, classname].", fix)
            ref, label, name = row
            previous = raw_names.setdefault(label, name)
            if previous != name:
                raise UserError(f"{_entry(path, split, i, row)}: label {label} is {name!r} here "
                                f"but {previous!r} elsewhere.", fix)
            if not is_safe_ref(ref):
                raise _escapes(_entry(path, split, i, row), ref, spec, spec.split_file)
            rows[split].append((ref, label))

    if not raw_names:
        raise UserError(f"Split file {path} has no entries.", fix)
    absent = sorted(set(range(max(raw_names) + 1)) - set(raw_names))
    if absent:
        raise UserError(f"Split file {path}: labels must be 0..C-1, but label {absent[0]} has no entry.", fix)
    kept = [label for label in sorted(raw_names) if raw_names[label] not in spec.ignore]
    relabel = {old: new for new, old in enumerate(kept)}
    splits = {s: [(ref, relabel[y]) for ref, y in items if y in relabel] for s, items in rows.items()}
    return LayoutData([coop_classname(raw_names[y], spec) for y in kept], splits)


def read_fgvc_variants(spec: CoopSpec, root: Path) -> LayoutData:
    """FGVC-Aircraft: classes are the lines of ``variants.txt``; ``images_variant_{split}.txt`` lines are
    ``<image id> <variant>`` and name ``images/<image id>.jpg``."""
    assert spec.classes_file is not None
    variants = [line for _, line in _read_lines(root / spec.classes_file, spec)]
    if not variants:
        raise UserError(f"{root / spec.classes_file} lists no variants.", _redownload(spec, spec.classes_file))
    label_of = {v: i for i, v in enumerate(variants)}
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        filename = spec.split_file_of(split)
        items: list[Item] = []
        for n, line in _read_lines(root / filename, spec):
            where = f"{root / filename}:{n}: {line[:200]!r}"
            image_id, _, variant = line.partition(" ")
            if variant.strip() not in label_of:
                raise UserError(f"{where}: expected '<image id> <variant>' with a variant of {spec.classes_file}.",
                                _redownload(spec, filename))
            if not is_safe_ref(f"{image_id}.jpg"):
                raise _escapes(where, f"{image_id}.jpg", spec, filename)
            items.append((f"{image_id}.jpg", label_of[variant.strip()]))
        splits[split] = items
    return LayoutData([coop_classname(v, spec) for v in variants], splits)


def read_classnames_txt(path: Path, spec: CoopSpec) -> tuple[list[str], list[str]]:
    """ImageNet's ``classnames.txt`` (``wnid name words`` per line): the wnids and the raw names."""
    wnids: list[str] = []
    names: list[str] = []
    for n, line in _read_lines(path, spec):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise UserError(f"{path}:{n}: expected '<wnid> <class name>', got {line[:200]!r}.",
                            _redownload(spec, path.name))
        wnids.append(wnid)
        names.append(name.strip())
    twice = [w for w, count in Counter(wnids).items() if count > 1]
    if not wnids or twice:
        problem = f"lists wnid {twice[0]} twice" if twice else "lists no classes"
        raise UserError(f"{path} {problem}.", _redownload(spec, path.name))
    return wnids, names


def _visible(folder: Path, dirs: bool) -> list[str]:
    """Sorted names of the non-hidden sub-folders (or files) of ``folder``."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and (e.is_dir() if dirs else e.is_file()))


def read_class_folders(spec: CoopSpec, root: Path) -> LayoutData:
    """One folder per class under each split folder (ImageNet and its OOD variants).

    Classes are the lines of ``classnames.txt`` (sorted by wnid, so labels equal CoOp's sorted-folder
    labels on a complete copy) and every class must have its folder: a missing one is an error rather
    than a silent shift of labels. ImageNet-V2 names folders by line index. ImageNet-A/-R keep only the
    classes whose folders are present (their 200), labelled 0..199 in sorted folder order. Files in a
    class folder are taken in sorted order, hidden ones skipped. With ``val_one_in`` the last
    ``ceil(n / val_one_in)`` train images of each class (never all of them) form the val split.
    """
    assert spec.classes_file is not None
    wnids, names = read_classnames_txt(root / spec.classes_file, spec)
    image_root = root / spec.images
    if spec.present_classes_only:
        first_dir = image_root / next(iter(spec.split_dirs.values()))
        try:
            present = _visible(first_dir, dirs=True)
        except (FileNotFoundError, NotADirectoryError):
            raise UserError(f"{spec.title}: image folder {first_dir} is missing.",
                            f"extract {spec.title} as described in {DATASETS_MD}") from None
        index = {w: i for i, w in enumerate(wnids)}
        unknown = [f for f in present if f not in index]
        if unknown:
            raise UserError(f"{first_dir}: class folder {unknown[0]!r} is not a wnid of {root / spec.classes_file}.",
                            f"remove it, or {_redownload(spec, spec.classes_file)}")
        classes = [index[f] for f in present]
    else:
        classes = list(range(len(wnids)))

    splits: dict[str, list[Item]] = {}
    for split, sub in spec.split_dirs.items():
        split_dir = image_root / sub
        items: list[Item] = []
        missing: list[str] = []
        for label, c in enumerate(classes):
            folder = str(c) if spec.folder_names == "index" else wnids[c]
            try:
                files = _visible(split_dir / folder, dirs=False)
            except (FileNotFoundError, NotADirectoryError):
                missing.append(folder)
                continue
            # Plain string joins: ImageNet's train split has 1.28M items.
            prefix = f"{folder}/" if sub == "." else f"{sub}/{folder}/"
            items += [(prefix + f, label) for f in files]
        if missing:
            raise UserError(f"{spec.title}: {len(missing)} of {len(classes)} class folders are missing under "
                            f"{split_dir}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}.",
                            f"extract the complete {spec.title} {split} images as described in {DATASETS_MD}")
        splits[split] = items
    if spec.val_one_in:
        splits["train"], splits["val"] = _hold_out(splits["train"], spec.val_one_in)
    parents = classes if spec.ood_of else None
    return LayoutData([coop_classname(names[c], spec) for c in classes], splits, parents)


def _hold_out(items: list[Item], one_in: int) -> tuple[list[Item], list[Item]]:
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    train, val = [], []
    for group in by_class.values():
        n_val = min(-(-len(group) // one_in), len(group) - 1)
        train += group[:len(group) - n_val]
        val += group[len(group) - n_val:]
    return train, val


READERS: dict[str, Callable[[CoopSpec, Path], LayoutData]] = {
    "split_json": read_split_json,
    "fgvc_variants": read_fgvc_variants,
    "class_folders": read_class_folders,
}
"""Layout name (the table's ``layout``) -> reader."""

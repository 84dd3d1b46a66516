"""The one guard between upgradebench and the names, paths and text that users, files and plugins hand it.

* **Run ids are names, never paths** (:func:`check_run_id`): a run id read from a row is joined onto folders
  (``RESULTS/<run_id>/module``, ``RESCORED/<run_id>/...``), so one that is empty, absolute, holds a path
  separator, ``..`` or a control character would reach outside the folder it names.
* **Every output a user names** goes through :func:`output_folder` (a folder of a command's own files),
  :func:`output_file` (one file) or :func:`results_folder` (a folder runs are added to); the home
  (``UPGRADEBENCH_HOME``) through :func:`home_folder`. None accepts ``''`` (the current folder) or the
  filesystem root, and an existing file that upgradebench did not write is replaced only with ``--force``.
* **Input folders are read only inside themselves** (:func:`input_files`): a symbolic link that points out of
  the folder it was found in is refused by name; links that stay inside are followed.
* **Published images are images** (:func:`check_png`), and **text shown on a terminal or a page** carries no
  control characters or escape sequences (:func:`clean_text`, :func:`clean_data`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

from .errors import UserError

# ---- text shown to people ---------------------------------------------------------------------------------------
_ESCAPE_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"          # CSI: colours, cursor moves, clear screen
    r"|\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC: window title, clipboard, hyperlinks
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]?"                 # every other escape (two or three characters)
    r"|\x9b[0-?]*[ -/]*[@-~]?"           # 8-bit CSI
    r"|[\x90\x98\x9d\x9e\x9f][^\x07\x9c]*(?:\x07|\x9c)?"  # 8-bit DCS, SOS, OSC, PM, APC strings
)
_KEPT = frozenset("\n\t")  # tables built by upgradebench itself put line breaks in cells


def _is_control(char: str) -> bool:
    """Control characters (C0, DEL, C1), format characters (bidirectional overrides reorder what is shown)
    and the Unicode line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def clean_text(text: Any) -> str:
    """``text`` as ``str`` without escape sequences (ANSI, OSC, ...) or control characters, for a terminal or
    a page; line breaks and tabs are kept. Used wherever text that a file or a plugin chose is shown."""
    text = _ESCAPE_SEQUENCES.sub("", str(text))
    return "".join(c for c in text if c in _KEPT or not _is_control(c))


def clean_data(obj: Any) -> Any:
    """``obj`` with :func:`clean_text` applied to every string inside it (dict keys and values, lists, tuples);
    other values unchanged. For a template's context, which holds rows' text in nested structures."""
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, dict):
        return {clean_data(k): clean_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clean_data(v) for v in obj)
    return obj


# ---- run ids ----------------------------------------------------------------------------------------------------
def _run_id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or value.strip() == ".":
        return "it is empty"
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive:
        return "it is an absolute path"
    if any(sep in value for sep in ("/", "\\", os.sep, os.altsep or "/")):
        return "it holds a path separator"
    if ".." in value:
        return "it holds '..'"
    if any(_is_control(c) for c in value):
        return "it holds a control character"
    return None


def safe_name(name: str) -> str:
    """A model or dataset name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def is_run_id(value: Any) -> bool:
    """Whether ``value`` is a valid run id: a folder name directly inside a results folder, never a path."""
    return _run_id_problem(value) is None


def check_run_id(value: Any, where: str | os.PathLike[str]) -> str:
    """``value`` if it is a valid run id (a folder name: not empty, not absolute, no path separator, no ``..``,
    no control character), else a :class:`UserError` naming ``where`` (the file it was read from) and the value."""
    problem = _run_id_problem(value)
    if problem is not None:
        raise UserError(f"{where}: run id {value!r} is not a run name ({problem}); a run id names a folder and "
                        "is never a path.",
                        "remove that file (its rows were not written by `upgradebench run`), or restore it from "
                        "the run that wrote it")
    return value


def check_run_ids(run_ids: Sequence[Any], files: Sequence[Any]) -> None:
    """:func:`check_run_id` for every row: ``run_ids[i]`` was read from ``files[i]`` (each id checked once)."""
    bad = {v for v in set(run_ids) if _run_id_problem(v) is not None}
    for value, where in zip(run_ids, files):
        if value in bad:
            check_run_id(value, where)


# ---- outputs ----------------------------------------------------------------------------------------------------
OUTPUT_MARKER = ".upgradebench-output"
"""Left in every folder a command wrote its files into: that folder may be written again without ``--force``."""


def _named(value: str | os.PathLike[str] | None, option: str, fix: str) -> Path:
    """The path ``value`` names; refused when empty (the current folder) or the filesystem root."""
    text = "" if value is None else os.fspath(value)
    if not text.strip():
        raise UserError(f"{option} is empty.", fix)
    path = Path(text).expanduser()
    real = path.resolve()
    if real == Path(real.anchor):
        raise UserError(f"{option} {text!r} is the filesystem root.", fix)
    return path


def _writable(path: Path, option: str, value: str, how: str = "pass {option} with") -> None:
    """Refuse ``path`` when it, or the nearest folder above it that exists, cannot be written (a file on the
    way, or no permission); ``how`` starts the fix (an option is passed, a variable set)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    how = how.format(option=option)
    if not existing.is_dir():
        raise UserError(f"{option} {value!r} is not writable: {existing} is a file, not a folder.",
                        f"{how} a path under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {value!r} is not writable ({existing}: permission denied).",
                        f"{how} a folder you can write to")


def _is_run_folder(folder: Path) -> bool:
    """A run's folder, as ``upgradebench run`` writes it: a saved module, or prediction ledgers."""
    return (folder / "module" / "module.json").is_file() or any((folder / "ledger").glob("*.parquet"))


def results_folder_around(path: str | os.PathLike[str]) -> Path | None:
    """The results folder ``path`` would land in, or None: the nearest folder above it that is a run's folder,
    else its own folder when that holds a run's folder. A file written there would be read with the results.
    (Folders further up are not searched: any large folder holds some project's run.)"""
    parents = Path(path).resolve().parents
    for folder in parents:
        if _is_run_folder(folder):
            return folder
    try:
        if any(child.is_dir() and _is_run_folder(child) for child in parents[0].iterdir()):
            return parents[0]
    except OSError:  # a folder that cannot be listed (or is not one) holds no results to protect
        pass
    return None


def output_folder(value: str | os.PathLike[str] | None, option: str = "--out", force: bool = False) -> Path:
    """The folder a command writes its files into, created and marked as the command's own.

    Refused when it is empty or the filesystem root (an empty string would mean the current folder, the root
    every folder of the machine), a file, or a non-empty folder that no upgradebench command wrote (its files
    could be overwritten) unless ``force``.
    """
    path = _named(value, option, f"pass {option} DIR, a folder of its own for this command's files")
    text = os.fspath(value or "")
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {text!r} is a file, not a folder.", f"pass {option} DIR, a new or empty folder")
    if path.is_dir() and not force and not (path / OUTPUT_MARKER).is_file() and any(path.iterdir()):
        raise UserError(f"{option} {text!r} is a folder with other files in it (no upgradebench command wrote it).",
                        f"pass {option} with a new or empty folder, or add --force to write into it anyway")
    _writable(path, option, text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / OUTPUT_MARKER).write_text("written by upgradebench\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{option} {text!r} cannot be written ({exc.strerror or exc}).",
                        f"pass {option} with a folder you can write to") from None
    return path


def output_file(value: str | os.PathLike[str] | None, option: str = "--out", force: bool = False,
                ours: Callable[[Path], bool] | None = None) -> Path:
    """The one file a command writes, checked before anything heavy runs.

    Refused when empty, the filesystem root, an existing folder, inside a results folder
    (:func:`results_folder_around`: it would be read as rows), not writable, or an existing file that
    ``ours`` (is it a file this command wrote?) does not recognise, unless ``force``.
    """
    path = _named(value, option, f"pass {option} FILE, a file path")
    text = os.fspath(value or "")
    if path.is_dir():
        raise UserError(f"{option} {text!r} is a folder.", f"pass {option} with a file path, e.g. {path}/out.parquet")
    inside = results_folder_around(path)
    if inside is not None:
        raise UserError(f"{option} {text!r} is inside the results folder {inside}, where it would be read as "
                        "result rows.", f"pass {option} with a path outside every results folder")
    if path.exists() and not force and not (ours is not None and ours(path)):
        raise UserError(f"{option} {text!r} exists and upgradebench did not write it.",
                        f"pass {option} with a new file, or add --force to replace it")
    _writable(path.parent, option, text)
    return path


def results_folder(value: str | os.PathLike[str] | None, option: str = "--results") -> Path | None:
    """A folder runs are added to (``--results``, ``--rescored``); None (the option not given) stays None.

    Refused when empty, the filesystem root, a file, or not writable. Runs only add folders of their own
    names, so a folder that holds other files is accepted. Usable as a typer ``parser``: it sees the text as
    typed, before ``''`` became ``.``.
    """
    if value is None:
        return None
    path = _named(value, option, f"pass {option} DIR, a results folder of its own")
    text = os.fspath(value)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {text!r} is a file, not a folder.", f"pass {option} with a folder")
    _writable(path, option, text)
    return path


def apart_from(path: Path, inputs: Iterable[str | os.PathLike[str]], option: str) -> Path:
    """``path``, refused when it is one of the ``inputs`` folders, inside one, or holds one (outputs never
    mix with what they are read from)."""
    real = path.resolve()
    for folder in inputs:
        other = Path(folder).resolve()
        if real == other or other in real.parents or real in other.parents:
            raise UserError(f"{option} {path} overlaps the input folder {folder}.",
                            f"pass {option} with a folder apart from every --results folder")
    return path


def home_folder(value: str) -> Path:
    """``UPGRADEBENCH_HOME`` checked: not empty (the current folder), not the root, not a file, writable."""
    option = "UPGRADEBENCH_HOME"
    fix = f"set {option} to a folder of its own, or unset it (the default is ~/.cache/upgradebench)"
    path = _named(value, option, fix)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {value!r} is a file, not a folder.", fix)
    _writable(path, option, value, how="set {option} to")
    return path


# ---- inputs -----------------------------------------------------------------------------------------------------
def input_files(root: str | os.PathLike[str], pattern: str, recursive: bool = True,
                what: str = "input folder") -> list[Path]:
    """The files under ``root`` whose name matches ``pattern`` (``rglob`` order; ``recursive=False``: only
    those directly in ``root``), each real file once. A ``root`` that is a file is returned as it is (the user
    named it); one that does not exist holds no files.

    Symbolic links are followed while they stay inside ``root``; one that points out of it (or to nothing) is
    a :class:`UserError` naming the link and its target, so a folder of linked runs is never silently read as
    empty or as someone else's files.
    """
    root = Path(root)
    if not root.exists():
        return []  # the caller says whether a missing folder is an error
    if root.is_file():
        return [root]
    real_root = root.resolve()
    found: list[Path] = []
    visited = {real_root}  # folders entered through a link: a link back to one of them is not read again
    linked = False

    def walk(folder: Path) -> None:
        nonlocal linked
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"{folder} cannot be read ({exc.strerror or exc}).",
                            f"check the permissions of the {what} {root}") from None
        for entry in entries:
            path = folder / entry.name
            if entry.is_symlink():
                target = path.resolve()
                if not target.exists() or (target != real_root and real_root not in target.parents):
                    where = "nothing" if not target.exists() else str(target)
                    raise UserError(f"{path} is a symbolic link to {where}, outside the {what} {root}; upgradebench "
                                    "reads only what lies inside the folder it is given.",
                                    f"copy what it points to into {root} (cp -rL), or pass the folder it lives in")
                linked = True
                if entry.is_dir():
                    if recursive and target not in visited:
                        visited.add(target)
                        walk(path)
                    continue
            if entry.is_dir():
                if recursive:
                    walk(path)
            elif fnmatch.fnmatchcase(entry.name, pattern):
                found.append(path)

    walk(root)
    if not linked:  # without links every path is a file of its own
        return sorted(found)
    # a file reached both directly and through a link inside the folder is read once, by its shortest path
    shortest: dict[Path, Path] = {}
    for path in found:
        real = path.resolve()
        if real not in shortest or (len(path.parts), str(path)) < (len(shortest[real].parts), str(shortest[real])):
            shortest[real] = path
    return sorted(shortest.values())


def check_png(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a complete PNG image (checked with Pillow: chunks, then a full decode), else a
    :class:`UserError` naming it."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} file")
            image.verify()
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path} is not a complete PNG image ({exc}).", "rewrite it with `upgradebench figures "
                        "--out DIR`, or remove it from the figures folder") from None
    return path

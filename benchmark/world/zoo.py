"""The toy model zoo: installs the embedded world's models on first use, or builds them from their recipes.

Models live under ``UPGRADEBENCH_HOME/world/<size>/models/<name>`` in open_clip's ``local-dir:`` format.
A model counts as present when its folder exists and records the same *build key* as its recipe now has
(a hash of the resolved recipe, the world size's settings, the generator's code version and vocabulary,
and the parent's key). Where the package ships the model's weights for that key (:mod:`.shipped`: the
default world), first use installs them in seconds, the same bits on every machine; otherwise (the micro
test world, or a recipe edited since the weights were packed) the model is trained from its recipe.
Training is deterministic on one machine (fixed seeds, deterministic algorithms, a fixed thread count) but
not across CPUs, which is why the default world ships its weights; :func:`rebuild_and_compare` retrains
shipped models and says whether this machine reproduces them. Installs and builds are atomic (a finished
folder is renamed into place) and serialised across processes by a lock file. A model's weights are checked
against the fingerprint its record holds whenever it is loaded (and by ``zoo list`` / ``zoo verify``): a
damaged installed copy of a shipped model is installed again; anything else damaged is reported with the
fix, never used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import UnknownNameError, UserError
from .modelio import read_config
from .recipes import recipe_table
from .shipped import install, shipped_record, shipped_tensors
from .worlds import world_config, world_name, world_root

if TYPE_CHECKING:  # torch is imported where models are built or compared: listing them needs none
    import torch

BUILD_THREADS = 1
"""Threads used while building. Fixed, because the weights depend on it (reductions split differently), and
one: two threads on a 2-core machine that is doing anything else run ten times slower, not faster."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else copy.deepcopy(value)
    return out


def recipe(name: str) -> dict[str, Any]:
    """The recipe of toy model ``name`` for the selected world size (its ``sizes`` override merged in)."""
    table = recipe_table()
    if name not in table:
        raise UnknownNameError("toy model", name, table, fix="see `upgradebench zoo list`")
    entry = table[name]
    return _merge({k: v for k, v in entry.items() if k != "sizes"}, entry.get("sizes", {}).get(world_name(), {}))


def default_models() -> list[str]:
    """The toy models of the default build (``zoo build`` with no names): every recipe not marked ``on_demand``
    (held-out targets are built when first used, so the default world's build time does not grow)."""
    return [name for name, r in recipe_table().items() if not r.get("on_demand")]


def parent_of(name: str) -> str | None:
    """The model whose weights ``name`` starts from, if any."""
    return recipe(name).get("init", {}).get("from")


def build_order(names: Iterable[str]) -> list[str]:
    """``names`` and their ancestors, parents first."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise UserError(f"Toy model recipes inherit in a cycle: {' -> '.join((*path, name))}.", "fix recipes.json")
        parent = parent_of(name)
        if parent is not None:
            visit(parent, (*path, name))
        if name not in order:
            order.append(name)

    for name in names:
        visit(name, ())
    return order


def build_key(name: str) -> str:
    """Hash of everything that determines the weights of ``name`` (changes -> rebuild)."""
    from .generator import generator_key  # numpy and PIL: not needed to locate a model (models list)

    parent = parent_of(name)
    payload = {"recipe": recipe(name), "world": world_config(), "generator": generator_key(),
               "parent": build_key(parent) if parent else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def model_dir(name: str) -> Path:
    """The local-dir folder of toy model ``name``."""
    return world_root() / "models" / name


def build_record(name: str) -> dict[str, Any] | None:
    """What the build of ``name`` recorded (its ``upgradebench`` config entry), if it is built and current."""
    folder = model_dir(name)
    if not (folder / "open_clip_config.json").is_file():
        return None
    try:
        record = read_config(folder).get("upgradebench", {})
    except (ValueError, AttributeError):  # a config cut short, or not an object: a damaged copy, installed again
        return None
    return record if record.get("build_key") == build_key(name) else None


def is_built(name: str) -> bool:
    """Whether ``name`` is built with its current recipe."""
    return build_record(name) is not None


def weights_problem(name: str) -> str | None:
    """Why the built weights of ``name`` cannot be used (unreadable, or not the weights its build recorded),
    or None when they are intact. ``name`` must be built."""
    from ..models.fingerprint import file_fingerprint

    path = model_dir(name) / "open_clip_model.safetensors"
    try:
        found = file_fingerprint(path)
    except Exception as exc:  # a missing, truncated or garbled file: safetensors raises several types
        return f"{path} is unreadable ({type(exc).__name__})"
    recorded = cast(dict[str, Any], build_record(name))["fingerprint"]  # name is built (see above)
    return None if found == recorded else f"{path} holds weights {found}, not the {recorded} its build recorded"


def ships(name: str) -> bool:
    """Whether the package ships the weights of ``name`` for its current recipe in the selected world."""
    record = shipped_record(world_name(), name)
    return record is not None and record["open_clip_config"]["upgradebench"]["build_key"] == build_key(name)


def ensure_model(name: str) -> Path:
    """The folder of toy model ``name``: installed from the shipped weights, or built (with anything it inherits
    from) where none ship, if missing or stale. Its weights are checked against the fingerprint its record holds;
    a damaged installed copy of a shipped model is installed again."""
    if not is_built(name) or (ships(name) and weights_problem(name)):
        if ships(name):
            install_models([name], force=True)
        else:
            build_models([name])
    problem = weights_problem(name)
    if problem:
        raise UserError(f"Toy model {name!r} is damaged: {problem}.",
                        f"rebuild it: upgradebench zoo build {name} --force")
    return model_dir(name)


def install_models(names: Iterable[str] | None = None, force: bool = False) -> list[Path]:
    """Install the shipped weights of ``names`` (default: :func:`default_models`) where missing or stale (``force``:
    even when present). Shipped models are complete: nothing they inherit from is needed."""
    names = list(names) if names else default_models()
    for name in names:
        if not ships(name):
            raise UserError(f"Toy model {name!r} does not ship with the {world_name()} world for its current recipe.",
                            f"build it from its recipe: upgradebench zoo build {name}")
    with _build_lock():
        for name in names:
            if force or not is_built(name):
                folder = model_dir(name)
                folder.parent.mkdir(parents=True, exist_ok=True)
                tmp = folder.parent / f".{name}.{os.getpid()}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    install(world_name(), name, tmp)
                    _install(tmp, folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return [model_dir(n) for n in names]


def rebuilt_dir(name: str) -> Path:
    """Where :func:`rebuild_and_compare` trains ``name`` (beside, never over, the installed model)."""
    return world_root() / "rebuilt" / name


def compare_weights(ours: dict[str, torch.Tensor], shipped: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How far ``ours`` is from ``shipped``: ``identical`` (bit for bit), else the largest absolute difference and
    the tensor holding it."""
    import torch

    if set(ours) != set(shipped) or any(ours[k].shape != shipped[k].shape for k in ours):
        return {"identical": False, "max_abs_diff": None, "tensor": "the tensor names or shapes differ"}
    diffs = {k: float((ours[k].double() - shipped[k].double()).abs().max()) if ours[k].numel() else 0.0 for k in ours}
    worst = max(diffs, key=lambda k: diffs[k])
    identical = all(torch.equal(ours[k], shipped[k]) for k in ours)
    return {"identical": identical, "max_abs_diff": diffs[worst], "tensor": worst}


def rebuild_and_compare(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Train shipped models ``names`` (default: every shipped model of the world) again from their recipes into
    :func:`rebuilt_dir`, each from the shipped weights of its parent (so each comparison measures one recipe),
    and compare with the shipped weights. The installed (shipped) models stay in use."""
    from safetensors.torch import load_file

    names = list(names) if names else [n for n in recipe_table() if ships(n)]
    report = []
    for name in names:
        parent = parent_of(name)
        if parent:
            ensure_model(parent)
        build_models([name], force=True, into=rebuilt_dir(name))
        ours = load_file(str(rebuilt_dir(name) / "open_clip_model.safetensors"))
        report.append({"name": name, "path": str(rebuilt_dir(name)),
                       **compare_weights(ours, shipped_tensors(world_name(), name))})
    return report


def model_status(name: str) -> dict[str, Any]:
    """What ``zoo list`` shows of one model: recipe summary, whether it is built, fingerprint, folder, and
    ``damaged`` (why its weights cannot be used, or None)."""
    r = recipe(name)
    record = build_record(name)
    folder = model_dir(name)
    problem = weights_problem(name) if record is not None else None
    return {
        "name": name,
        "description": r.get("description", ""),
        "recipe": recipe_summary(r),
        "world": world_name(),
        "built": record is not None,
        "ships": ships(name),
        "on_demand": bool(r.get("on_demand")),
        "stale": record is None and (folder / "open_clip_config.json").is_file(),
        "fingerprint": record.get("fingerprint") if record else None,
        "damaged": problem,
        "path": str(folder),
    }


def recipe_summary(r: dict[str, Any]) -> str:
    """A one-line description of a resolved recipe (architecture, inheritance, training)."""
    model = r.get("model", {})
    vision = model.get("vision_cfg", {})
    if "timm_model_name" in vision:
        tower = f"timm {vision['timm_model_name']}"
    elif isinstance(vision.get("layers"), list):
        tower = f"ModifiedResNet{vision['layers']} w{vision.get('width')}"
    else:
        tower = "vision from parent" if vision == {} else "ViT"
    parts = ["CustomTextCLIP" if model.get("custom_text") else "CLIP", tower]
    text = model.get("text_cfg")
    if text:
        parts.append(f"text {text['width']}x{text['layers']}")
    init = r.get("init")
    if init:
        parts.append(f"{'+'.join(init['copy'])} from {init['from']}")
    t = r["train"]
    # each stage's steps as training_stages() resolves them (a stage's keys over the shared ones; steps is
    # required), read from the table so that describing a recipe imports no torch
    stages = [{**{k: v for k, v in t.items() if k != "stages"}, **stage}["steps"] for stage in t.get("stages", [{}])]
    lr_notes = []
    if t.get("text_lr_scale", 1.0) != 1.0:
        lr_notes.append(f"text lr x{t['text_lr_scale']:g}")
    if t.get("text_layer_decay", 1.0) != 1.0:
        lr_notes.append(f"layer decay {t['text_layer_decay']:g}")
    if t.get("freeze_text_embeddings"):
        lr_notes.append("embeddings frozen")
    steps = "+".join(str(n) for n in stages)
    parts.append(f"{steps} steps" + (f" ({', '.join(lr_notes)})" if lr_notes else ""))
    return ", ".join(parts)


@contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds of one world across processes (a no-op where ``fcntl`` is missing)."""
    root = world_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: builds are still atomic, only not serialised
        yield
        return
    with open(root / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count for the duration of a build; restored after."""
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)


def _install(tmp: Path, final: Path) -> None:
    """Move a finished build folder into place, replacing a stale one."""
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, trash / final.name)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)


def build_models(names: Iterable[str] | None = None, force: bool = False, into: Path | None = None) -> list[Path]:
    """Train ``names`` (default: :func:`default_models`) from their recipes, and their ancestors, where missing or
    stale; an ancestor whose weights ship is installed instead of trained.

    ``force`` rebuilds the named models even when current. ``into`` (one name only) trains into that folder
    instead of the model's own, from its parent as installed. Shows a rich progress bar on stderr.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from .builder import TrainingPool, build_model, training_stages

    names = list(names) if names else default_models()
    if into is not None and len(names) != 1:
        raise ValueError("build_models(into=...) builds one model")
    shipped_ancestors = [n for n in build_order(names) if n not in names and not is_built(n) and ships(n)]
    if shipped_ancestors:
        install_models(shipped_ancestors)
    order = build_order(names)
    cfg = world_config()
    with _build_lock():  # another process may have built them meanwhile: decide under the lock
        # builds hold the lock, so any build folder or replaced folder still there was left by a killed build
        for leftover in [*world_root().glob("models/.*.tmp"), *world_root().glob("models/.*.old.*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        todo = [n for n in order if (force and n in names) or not is_built(n)]
        if not todo:
            return [into] if into is not None else [model_dir(n) for n in names]
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[note]}"))
        with Progress(*columns, console=Console(stderr=True)) as progress, _deterministic():
            render = progress.add_task(f"rendering the {world_name()} world", total=cfg["pool_images"], note="")
            if not progress.console.is_terminal:
                progress.console.print(f"building toy models {', '.join(todo)} in {world_root()} (first use; "
                                       f"minutes on a CPU)", markup=False, highlight=False)
            pool = TrainingPool.render(cfg["seed"], cfg["pool_images"], lambda k: progress.advance(render, k))
            progress.update(render, completed=cfg["pool_images"])
            for name in todo:
                r = recipe(name)
                steps = sum(stage.steps for stage in training_stages(r["train"]))
                task = progress.add_task(f"training {name}", total=steps, note="")

                def advance(step: int, loss: float, task: TaskID = task) -> None:  # binds this model's bar
                    progress.update(task, advance=1, note=f"loss {loss:.3f}")

                if not progress.console.is_terminal:  # a log file sees the bars only at the end: say what runs
                    progress.console.print(f"training {name} ({steps} steps)", markup=False, highlight=False)
                parent = parent_of(name)
                if parent and parent not in todo and weights_problem(parent):  # never inherit damaged weights
                    raise UserError(f"Toy model {parent!r}, the parent of {name!r}, is damaged: "
                                    f"{weights_problem(parent)}.",
                                    f"rebuild it: upgradebench zoo build {parent} --force")
                folder = into if into is not None and name in names else model_dir(name)
                folder.parent.mkdir(parents=True, exist_ok=True)
                tmp = folder.parent / f".{name}.{os.getpid()}.tmp"  # unique: builds hold the lock
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    extra = {"model": name, "world": world_name(), "build_key": build_key(name),
                             "seed": cfg["seed"] + r.get("seed", 0),
                             "parent": ({"name": parent,
                                         # the parent is built: earlier in this build order, or before it
                                         "fingerprint": cast(dict[str, Any], build_record(parent))["fingerprint"]}
                                        if parent else None)}
                    build_model(r, pool, extra["seed"], tmp, model_dir(parent) if parent else None, advance, extra)
                    _install(tmp, folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return [into] if into is not None else [model_dir(n) for n in names]

"""The Method / Module contracts, and method discovery through the ``upgradebench.methods`` entry points.

A :class:`Method` is what a plugin implements: a typed config (a dataclass whose defaults are the
reference values) and ``fit(source, task, config, seed) -> Module``. A :class:`Module` is the plug-in
artifact: ``logits(vlm, image_features, class_names)`` for *any* compatible VLM, saved as safetensors
plus JSON (never a pickle). Built-in methods are registered through the same entry-point group as
third-party ones; built-ins win a name clash, and a plugin that fails to import is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import types
import typing
from abc import ABC, abstractmethod
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, write_json
from .errors import UnknownNameError, UserError
from .integrity import json_intact, tensors_digest, with_digest
from .models.vlm import VLM
from .registry import Entry, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "upgradebench.methods"
MODULE_WEIGHTS = "module.safetensors"
MODULE_CONFIG = "module.json"


class Module(ABC):
    """A trained plug-in artifact, applicable unchanged to any compatible VLM.

    A module is a dataclass whose fields are its whole state, and its saved form is derived from them (as
    open_clip pairs a JSON config with the weights): a field holding a tensor is saved under its name, one
    holding an ``nn.Module`` as that module's ``state_dict`` under ``<field>.``, and every other field (but
    a :func:`transient` one) as JSON. An ``nn.Module`` field is rebuilt by its class's
    ``from_weights(weights, state)`` (``state``: the module's other saved values), or is None when nothing was
    saved under it. ``logits`` receives all the images of an evaluation at once, so class text features are
    computed once per call; a module whose cost is per image (CoCoOp) batches internally. A field with
    ``init=False`` (derived from the others in ``__post_init__``) is saved for readers of ``module.json`` and
    ``from_weights``, and not passed back to the constructor.
    """

    @abstractmethod
    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """Class logits ``[N, C]`` of ``image_features`` (``[N, D]``, not normalised) with model ``vlm``."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The module's learned tensors, by name: its tensor fields, and its ``nn.Module`` fields' state dicts."""
        out: dict[str, torch.Tensor] = {}
        for name, value in _saved_fields(self):
            if isinstance(value, torch.Tensor):
                out[name] = value
            elif isinstance(value, torch.nn.Module):
                out.update({f"{name}.{k}": v for k, v in value.state_dict().items()})
        return out

    def meta(self) -> dict[str, Any]:
        """The module's JSON-able state: every saved field not annotated as a tensor or an ``nn.Module``."""
        hints = typing.get_type_hints(type(self))
        return {name: value for name, value in _saved_fields(self) if not _holds_weights(hints[name])}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Module:
        """Rebuild a module from :meth:`tensors` and :meth:`meta` (its fields, see the class docstring)."""
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get(TRANSIENT)}
        unknown = set(meta) - set(fields)
        stray = {k for k in tensors if k not in fields and k.split(".", 1)[0] not in fields}
        if unknown or stray:
            raise KeyError(f"not state of {cls.__name__}: {sorted(unknown | stray)}")
        state: dict[str, Any] = {k: v for k, v in meta.items() if k in fields}
        state.update({k: v for k, v in tensors.items() if k in fields})
        hints = typing.get_type_hints(cls)
        for name in fields:
            weights = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
            if weights:
                state[name] = _module_type(hints[name]).from_weights(weights, state).requires_grad_(False)
            elif name not in state and type(None) in typing.get_args(hints[name]):
                state[name] = None  # an optional part that was absent (ContCoOp without attention)
        return cls(**{k: v for k, v in state.items() if fields[k].init})

    def save(self, folder: str | Path, method: str, provenance: dict[str, Any] | None = None) -> Path:
        """Write ``module.safetensors`` and ``module.json`` into ``folder``; ``method`` is the one that fitted it.

        ``module.json`` records the content hash of the tensors and its own (``integrity.py``); the weights
        are written first, so a kill between the two leaves no ``module.json`` and the module counts as absent.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
        if tensors:
            with atomic_path(folder / MODULE_WEIGHTS) as tmp:
                save_file(tensors, str(tmp))
        write_json(folder / MODULE_CONFIG, with_digest({
            "method": method, "meta": self.meta(), "tensors": sorted(tensors),
            "tensors_sha256": tensors_digest(tensors), "provenance": provenance or {}}))
        return folder


TRANSIENT = "upgradebench.transient"


def transient(default: Any) -> Any:
    """A module field that is not state (a runtime knob, e.g. a chunk size): never saved, its default on load."""
    return dataclasses.field(default=default, metadata={TRANSIENT: True})


def _saved_fields(module: Module) -> list[tuple[str, Any]]:
    return [(f.name, getattr(module, f.name)) for f in dataclasses.fields(module) if not f.metadata.get(TRANSIENT)]


def _holds_weights(hint: Any) -> bool:
    """Whether a field annotated ``hint`` holds a tensor or an ``nn.Module`` (possibly ``| None``)."""
    return any(isinstance(arg, type) and issubclass(arg, (torch.Tensor, torch.nn.Module))
               for arg in (hint, *typing.get_args(hint)))


def _module_type(hint: Any) -> type:
    """The ``nn.Module`` class of a field annotated ``SomeModule`` or ``SomeModule | None``."""
    for arg in (hint, *typing.get_args(hint)):
        if isinstance(arg, type) and issubclass(arg, torch.nn.Module):
            return arg
    raise TypeError(f"{hint} is not an nn.Module type")


def load_module(folder: str | Path, device: str | torch.device = "cpu") -> Module:
    """Load a saved module: the JSON names its method, whose Module class rebuilds it. Never unpickles.

    The module is checked before use: ``module.json`` and the tensors against their content hashes (modules
    saved before hashes existed have none to check), and the method named in ``module.json`` against the one
    that fitted it (its provenance) and against what its Module class can rebuild.
    """
    folder = Path(folder)
    config_path = folder / MODULE_CONFIG
    if not config_path.is_file():
        raise UserError(f"{folder} is not a saved module ({MODULE_CONFIG} is missing).",
                        "pass the module/ folder of a run, e.g. RESULTS/<run_id>/module")
    refit = (f"restore {folder} from a copy, or delete its run folder {folder.parent} and re-run the run "
             "to fit it again")
    try:
        config = json.loads(config_path.read_text())
        name = config["method"]
        fitted_by = (config.get("provenance") or {}).get("run_identity", {}).get("method", name)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{config_path} is malformed ({exc}).", refit) from None
    if fitted_by != name:
        raise UserError(f"{config_path} names method {name!r}, but the module was fitted by {fitted_by!r} "
                        "(relabelled).", refit)
    if json_intact(config) is False:
        raise UserError(f"{config_path} does not match its content hash (damaged or edited).", refit)
    method = get_method(name)
    weights = folder / MODULE_WEIGHTS
    try:
        tensors = load_file(str(weights), device="cpu") if config.get("tensors") else {}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise UserError(f"{weights} is unreadable ({type(exc).__name__}: {exc}).", refit) from None
    if "tensors_sha256" in config and tensors_digest(tensors) != config["tensors_sha256"]:
        raise UserError(f"{weights} does not match the content hash recorded in {config_path} (damaged or "
                        "replaced).", refit)
    try:
        module = method.module_class.from_state({k: v.to(device) for k, v in tensors.items()}, config["meta"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise UserError(f"{folder} does not hold a {name!r} module ({type(exc).__name__}: {exc}).", refit) from None
    return module


class Method(ABC):
    """A fine-tuning method: fitted once on the source model, producing a :class:`Module`.

    Class attributes: ``name`` (the registry name: its entry point's, set by :func:`get_method`), ``version``
    (bump when results would change), ``Config`` (a dataclass with the reference defaults), ``module_class``,
    ``description``, and ``uses_train_views`` (False for methods that need no training images, e.g. zero-shot), and
    ``needs_image_encoder`` (True for a method whose ``fit`` encodes pixels itself through
    ``task.load_images()`` instead of using only cached features; a cost column of the result rows).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Config: ClassVar[type] = object
    module_class: ClassVar[type[Module]]
    uses_train_views: ClassVar[bool] = True
    needs_image_encoder: ClassVar[bool] = False

    @abstractmethod
    def fit(self, source: VLM, task: Any, config: Any, seed: int) -> Module:
        """Train on ``task`` (a :class:`upgradebench.task.FewShotTask`) with the frozen ``source`` model."""

    @classmethod
    def epochs(cls, config: Any, dataset: str, shots: int) -> int | None:
        """How many epochs ``fit`` runs with ``config`` on ``dataset`` with ``shots`` (for cost estimates);
        None for a method without an epoch loop. The default reads ``config.epochs``, and follows CoOp's
        epochs-by-shots rule when it is None on a config of CoOp's recipe (``upgradebench.training.SGDRecipe``)."""
        from .training import SGDRecipe, coop_epochs  # training imports the task, which needs this module

        value = getattr(config, "epochs", None)
        if value:
            return int(value)
        return coop_epochs(shots, dataset) if isinstance(config, SGDRecipe) else None

    @classmethod
    def steps(cls, config: Any, dataset: str, classes: int, shots: int) -> int | None:
        """How many optimisation steps ``fit`` takes (for cost estimates): by default :meth:`epochs` x
        ``ceil(classes * shots / config.batch_size)``; None for a method without an epoch loop. A method that
        counts iterations instead of epochs overrides this."""
        epochs = cls.epochs(config, dataset, shots)
        if epochs is None:
            return None
        return epochs * math.ceil(classes * shots / (getattr(config, "batch_size", None) or 1))

    # ---- configs ---------------------------------------------------------------------------------------------
    @classmethod
    def default_config(cls) -> Any:
        """The reference defaults."""
        return cls.Config()

    @classmethod
    def make_config(cls, overrides: dict[str, str] | None = None, **values: Any) -> Any:
        """Config with ``--config key=value`` overrides, parsed to each field's type; unknown keys are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        hints = typing.get_type_hints(cls.Config)
        parsed: dict[str, Any] = dict(values)
        for key, raw in (overrides or {}).items():
            if key not in fields:
                raise UnknownNameError(f"config key of method {cls.name!r}", key, fields,
                                       fix=f"valid keys: {', '.join(sorted(fields))}")
            parsed[key] = _parse_value(raw, hints[key], f"{cls.name}.{key}")
        config = cls.Config(**parsed)
        _check_ranges(cls.name, config)
        return config

    @classmethod
    def config_dict(cls, config: Any) -> dict[str, Any]:
        """A config as a JSON-able dict."""
        return dataclasses.asdict(config)


@functools.cache
def config_ranges() -> dict[str, dict[str, float]]:
    """The valid range of each method config field, by field name (``config_ranges.json``)."""
    table = json.loads(resources.files(__package__).joinpath("config_ranges.json").read_text(encoding="utf-8"))
    return {k: v for k, v in table.items() if not k.startswith("_")}


_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"), "le": (lambda v, b: v <= b, "<=")}


def _check_ranges(method: str, config: Any) -> None:
    """Refuse a numeric config value outside its field's range (``n_ctx=-3``) before any model loads."""
    ranges = config_ranges()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name not in ranges or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        bounds = ranges[f.name]
        if not math.isfinite(value) or not all(_BOUNDS[op][0](value, b) for op, b in bounds.items()):
            valid = " and ".join(f"{_BOUNDS[op][1]} {b}" for op, b in bounds.items())
            raise UserError(f"{method}.{f.name}={value!r} is out of range (it must be {valid}).",
                            f"pass --config {f.name}=VALUE with a value {valid}")


def _value_fix(what: str, hint: Any) -> str:
    key = what.rpartition(".")[2]
    return f"pass --config {key}=VALUE, a value of type {getattr(hint, '__name__', hint)} (a grid variant: {key}: VALUE)"


def _typed_value(value: Any, hint: Any, what: str) -> Any:
    """A value that arrives typed (a grid's YAML) as the field's type, without a round trip through text: an int
    is a float where a float is expected, a list a tuple where a tuple is; anything else of the wrong type is
    refused."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for arg in (a for a in typing.get_args(hint) if a is not type(None)):
            try:
                return _typed_value(value, arg, what)
            except UserError:
                continue
    elif origin is typing.Literal:
        for choice in typing.get_args(hint):
            if str(choice) == str(value):
                return choice
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is str and isinstance(value, (int, float)):
        return str(value)
    elif origin in (tuple, list) and isinstance(value, (tuple, list)):
        return origin(value)
    raise UserError(f"{what}: {value!r} is not of type {getattr(hint, '__name__', hint)}.", _value_fix(what, hint))


def _parse_value(raw: Any, hint: Any, what: str) -> Any:
    if not isinstance(raw, str):
        return _typed_value(raw, hint, what)
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null"):
            return None
        for arg in args:
            try:
                return _parse_value(raw, arg, what)
            except UserError:
                continue
        raise UserError(f"{what}: cannot read {raw!r} as {hint}.", _value_fix(what, hint))
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if str(choice) == raw:
                return choice
        raise UserError(f"{what}: {raw!r} is not one of {', '.join(map(str, choices))}.", _value_fix(what, hint))
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw)
        if origin in (tuple, list):
            return hint.__origin__(json.loads(raw)) if raw.startswith("[") else origin(raw.split(","))
    except ValueError:
        raise UserError(f"{what}: cannot read {raw!r} as {getattr(hint, '__name__', hint)}.",
                        _value_fix(what, hint)) from None
    return raw


# ---- discovery -------------------------------------------------------------------------------------------------
METHODS: Registry[type[Method]] = Registry("method", base=Method)
_discovered = False
_broken: dict[str, str] = {}


def discover_methods(force: bool = False) -> Registry[type[Method]]:
    """Fill the method registry from the ``upgradebench.methods`` entry points (once).

    Built-ins (distribution ``upgradebench``) are registered first and win a name clash. Third-party
    plugins are skipped when ``UPGRADEBENCH_NO_PLUGINS=1``.
    """
    global _discovered
    if _discovered and not force:
        return METHODS
    _broken.clear()
    no_plugins = os.environ.get("UPGRADEBENCH_NO_PLUGINS", "") not in ("", "0")
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: _dist_name(ep) != "upgradebench")
    for ep in eps:
        dist, version = _dist_name(ep), _dist_version(ep)
        builtin = dist == "upgradebench"
        if not builtin and no_plugins:
            continue
        if ep.name in METHODS:
            existing = METHODS.entry(ep.name)
            if existing.origin != dist or existing.target != ep.value:
                log.warning("method %r from %s is ignored: the name is already taken by %s", ep.name, dist,
                            existing.origin)
                _broken[f"{ep.name} ({dist})"] = f"name already taken by {existing.origin}"
            continue
        METHODS.register(ep.name, ep.value, origin=dist, origin_version=version, builtin=builtin)
    _discovered = True
    return METHODS


def _dist_name(ep) -> str:
    return ep.dist.name if getattr(ep, "dist", None) is not None else "unknown"


def _dist_version(ep) -> str:
    return ep.dist.version if getattr(ep, "dist", None) is not None else ""


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; a plugin that fails to import is a clear error."""
    registry = discover_methods()
    entry = registry.entry(name)
    try:
        cls = registry.get(name)
    except UserError:
        raise
    except Exception as exc:  # a broken plugin must not look like a bug of upgradebench
        raise UserError(f"method {name!r} from {entry.origin} {entry.origin_version} failed to load: {exc!r}",
                        f"fix or uninstall the package {entry.origin}") from None
    # the entry point is the one source of the name; a class that also spells one must agree with it
    if cls.__dict__.get("name", name) != name:
        raise UserError(f"method {name!r} from {entry.origin} is {entry.target}, whose name attribute says "
                        f"{cls.__dict__['name']!r}.", f"drop the name attribute of {entry.target}: the entry point "
                        "names the method")
    cls.name = name
    return cls


def method_entry(name: str) -> Entry:
    """The registry entry of ``name`` (origin distribution and version)."""
    return discover_methods().entry(name)


def available_methods() -> tuple[list[tuple[Entry, type[Method]]], dict[str, str]]:
    """Every method that loads, with its entry, and the ones that failed (name -> reason), warned once."""
    ok: list[tuple[Entry, type[Method]]] = []
    broken = dict(_broken)
    for entry in list(discover_methods().entries()):
        try:
            ok.append((entry, get_method(entry.name)))
        except UserError as exc:
            broken[entry.name] = exc.message
            log.warning("%s (skipped)", exc.message)
    return ok, broken

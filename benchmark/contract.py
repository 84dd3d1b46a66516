"""The plugin contract: a :class:`Method` fits a :class:`Module` on the frozen source model.

A plugin implements a :class:`Method` subclass: a ``version``, a ``Config`` dataclass whose defaults are the
reference values (numeric fields declare their ranges with :func:`upgradebench.config.ranged`), a ``module_class``
(a dataclass subclass of :class:`Module`) and ``fit(source, task, config, seed) -> Module``. It registers the
class under the ``upgradebench.methods`` entry-point group; the entry point's name is the method's name, held by
the registry (``upgradebench.discovery``), which checks the contract when it first loads the class
(:func:`upgradebench.discovery.check_contract`). ``upgradebench.testing.check_method`` tests a method's behaviour.

A :class:`Module` is the plug-in artifact: ``logits(vlm, image_features, class_names)`` for *any* compatible VLM.
Its dataclass fields are its whole state, and its saved form (safetensors + JSON, never a pickle; written and
checked by ``upgradebench.module_io``) is derived from them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from abc import ABC, ABCMeta, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch

from .config import parse_config
from .models.vlm import VLM
from .task import FewShotTask
from .training import SGDRecipe, coop_epochs

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

TRANSIENT = "upgradebench.transient"
COVECTOR = "*"
"""Suffix of an axis label of :attr:`Module.spaces` for a covector (weights that take a dot product with vectors of
the space: the input side of a linear layer), e.g. ``"joint*"``."""
UNIT = "~"
"""Suffix of an axis label of :attr:`Module.spaces` for an axis that only ever meets unit-normalised vectors (a
meta-net reading normalised image or text features): a map carries it without its overall scale, e.g.
``"joint*~"``."""
REPEATED = "[]"
"""Suffix of an axis label of :attr:`Module.spaces` for an axis holding several vectors end to end, e.g.
``"token[]"`` for an ``n x D`` output flattened to one axis."""


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

    ``spaces`` tells mappers (``upgradebench.mapping``) what the tensors are: for each tensor name of
    :meth:`tensors`, one label per axis: ``"token"`` (a vector of the text tower's token-embedding space),
    ``"joint"`` (of the joint image-text embedding space), with :data:`COVECTOR` (``"joint*"``: the input side of
    a linear layer), :data:`UNIT` (``"joint*~"``: it only meets unit-normalised vectors) or :data:`REPEATED`
    (``"token[]"``) as they apply, or None (an axis in no space). Every floating
    tensor must be listed. None (the default) declares nothing: only the identity mapper carries such a module.
    """

    spaces: ClassVar[dict[str, tuple[str | None, ...]] | None] = None

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
        fields = {f.name: f for f in _fields(cls) if not f.metadata.get(TRANSIENT)}
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
                part = _module_type(hints[name]).from_weights(weights, state)  # type: ignore[attr-defined]
                state[name] = part.requires_grad_(False)
            elif name not in state and type(None) in typing.get_args(hints[name]):
                state[name] = None  # an optional part that was absent (ContCoOp without attention)
        return cls(**{k: v for k, v in state.items() if fields[k].init})

    def save(self, folder: str | Path, method: str, provenance: dict[str, Any] | None = None) -> Path:
        """Write ``module.safetensors`` and ``module.json`` into ``folder``; ``method`` is the one that fitted it
        (:func:`upgradebench.module_io.save_module`)."""
        from .module_io import save_module  # module_io loads modules through the method registry, which needs this

        return save_module(self, folder, method, provenance)


def transient(default: Any) -> Any:
    """A module field that is not state (a runtime knob, e.g. a chunk size): never saved, its default on load."""
    return dataclasses.field(default=default, metadata={TRANSIENT: True})


def _fields(obj: Any) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(typing.cast("DataclassInstance", obj))


def _saved_fields(module: Module) -> list[tuple[str, Any]]:
    return [(f.name, getattr(module, f.name)) for f in _fields(module) if not f.metadata.get(TRANSIENT)]


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


class _Named(ABCMeta):
    """Gives every method class a read-only ``name``: the name the registry holds for it (its entry point's).

    The registry, not the class, holds the name, so one class is never renamed by being loaded, and a name
    attribute spelled in a class body is never what the harness reads (the registry refuses one that disagrees).
    """

    @property
    def name(cls) -> str:
        """The name ``cls`` is registered under."""
        from .discovery import registered_name  # the registry imports this module

        return registered_name(cls)


ConfigT = TypeVar("ConfigT")


class Method(Generic[ConfigT], metaclass=_Named):
    """A fine-tuning method: fitted once on the source model, producing a :class:`Module`.

    Generic in its config type (``class CoOp(Method[CoOpConfig])``), so ``fit`` and the other hooks are typed with
    the method's own config. Class attributes: ``version`` (required; bump it when results would change),
    ``Config`` (required: a dataclass whose defaults are the reference values, every field with a default),
    ``module_class`` (required: a dataclass subclass of :class:`Module`), ``description``, ``uses_train_views``
    (False for methods that need no training images, e.g. zero-shot) and ``needs_image_encoder`` (True for a method
    whose ``fit`` encodes pixels itself through ``task.load_images()`` instead of using only cached features; a cost
    column of the result rows). ``name`` is a read-only class attribute (``type(self).name`` from an instance): the
    registry's name of the class (its entry point's).
    """

    version: ClassVar[str]
    Config: ClassVar[type]
    module_class: ClassVar[type[Module]]
    description: ClassVar[str] = ""
    uses_train_views: ClassVar[bool] = True
    needs_image_encoder: ClassVar[bool] = False

    @abstractmethod
    def fit(self, source: VLM, task: FewShotTask, config: ConfigT, seed: int) -> Module:
        """Train on ``task`` with the frozen ``source`` model; the same ``seed`` gives the same module."""

    @classmethod
    def epochs(cls, config: ConfigT, dataset: str, shots: int) -> int | None:
        """How many epochs ``fit`` runs with ``config`` on ``dataset`` with ``shots`` (for cost estimates);
        None for a method without an epoch loop. The default reads ``config.epochs``, and follows CoOp's
        epochs-by-shots rule when it is None on a config of CoOp's recipe (``upgradebench.training.SGDRecipe``)."""
        value = getattr(config, "epochs", None)
        if value:
            return int(value)
        return coop_epochs(shots, dataset) if isinstance(config, SGDRecipe) else None

    @classmethod
    def steps(cls, config: ConfigT, dataset: str, classes: int, shots: int) -> int | None:
        """How many optimisation steps ``fit`` takes (for cost estimates): by default :meth:`epochs` x
        ``ceil(classes * shots / config.batch_size)``; None for a method without an epoch loop. A method that
        counts iterations instead of epochs overrides this."""
        epochs = cls.epochs(config, dataset, shots)
        if epochs is None:
            return None
        return epochs * math.ceil(classes * shots / (getattr(config, "batch_size", None) or 1))

    @classmethod
    def default_config(cls) -> ConfigT:
        """The reference defaults."""
        return cls.Config()  # type: ignore[no-any-return]

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None = None, **values: Any) -> ConfigT:
        """Config with ``--config key=value`` overrides parsed to each field's type and checked against each field's
        range (``upgradebench.config``); unknown keys are errors."""
        from .discovery import registered_name  # the registry imports this module

        what = registered_name(cls, cls.__qualname__)  # a class not (yet) registered is named by its own name
        return parse_config(cls.Config, what, overrides, **values)  # type: ignore[no-any-return]

    @classmethod
    def config_dict(cls, config: ConfigT) -> dict[str, Any]:
        """A config as a JSON-able dict."""
        return dataclasses.asdict(typing.cast("DataclassInstance", config))

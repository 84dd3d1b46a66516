"""The mapper contract: a :class:`Mapper` turns a module saved on the source into one for a target.

A module fitted on the source meets a target unchanged (the ``identity`` mapper: the paper's transplant), or
carried by a map fitted on what the target offers, by tier of target data (:data:`BUDGETS`): nothing but the two
models (a map between their token-embedding tables), unlabeled target images (a map between their image
features), or a few labeled target shots (a short re-fit). A plugin implements a :class:`Mapper` subclass (a
``version``, a ``budget``, a dataclass ``Config`` of defaults, ``supports`` and ``map``) and registers it under the
``upgradebench.mappers`` entry-point group; the entry point's name is the mapper's name.

A mapper reads a module through what its class declares (:attr:`upgradebench.contract.Module.spaces`: in which
space each axis of each tensor lives) and builds the mapped module with :func:`carry`; the target data it may read
is handed to it as :class:`TargetData`, which refuses anything beyond the mapper's budget and never reads a test
split.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch

from .config import parse_config
from .contract import COVECTOR, REPEATED, UNIT, Module
from .errors import UserError
from .spaces import JOINT, SPACES, TOKEN, LinearMap

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from .data import Dataset
    from .features import FeatureCache
    from .models.vlm import VLM

NONE, UNLABELED, LABELED = "none", "unlabeled", "labeled"
BUDGETS = (NONE, UNLABELED, LABELED)
"""Target data a mapper may use, in increasing order: none (the two models only), the task's training images of
the target without labels, ``k`` labeled shots per class of the target."""


class Refused(UserError):
    """A mapper cannot carry this module to this target (a width it cannot bridge, a space it cannot map): no row
    is written for the combination, and the reason is reported."""


class TargetData:
    """What a mapper may read of the task, by its budget: the training split's images as features of either model
    (``unlabeled`` and above) and ``k`` labeled shots per class (``labeled``). The test split is never offered."""

    def __init__(self, dataset: Dataset, seed: int, cache: FeatureCache, budget: str, mapper: str) -> None:
        self.dataset = dataset
        self.seed = seed
        self._cache = cache
        self._budget = budget
        self._mapper = mapper

    @property
    def class_names(self) -> list[str]:
        """The task's class names (what the module scores)."""
        return self.dataset.classnames

    def _allow(self, needed: str, what: str) -> None:
        if BUDGETS.index(self._budget) < BUDGETS.index(needed):
            raise UserError(f"Mapper {self._mapper!r} declares budget {self._budget!r} but asked for {what}, which "
                            f"needs budget {needed!r}.",
                            f"declare budget = {needed!r} in the mapper class, or do without {what}")

    def unlabeled_features(self, vlm: VLM) -> torch.Tensor:
        """Image features ``[n, D]`` (not normalised) of ``vlm`` on every image of the task's training split, in a
        fixed order (the same images for any model, so two models' features pair row by row), without labels."""
        self._allow(UNLABELED, "unlabeled target images")
        items = self.dataset.split("train")
        return self._cache.get(vlm, self.dataset, "train", items, vlm.test_transform_spec)

    def labeled_shots(self, vlm: VLM, shots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image features ``[k C, D]`` of ``vlm``, labels ``[k C]``) of ``shots`` training images per class, the
        few-shot sample of this seed."""
        self._allow(LABELED, "labeled target shots")
        from .data import load_fewshot

        items = load_fewshot(self.dataset, shots, self.seed).train
        feats = self._cache.get(vlm, self.dataset, "train", items, vlm.test_transform_spec)
        return feats, torch.tensor([label for _, label in items])


class _Named(ABCMeta):
    """Gives every mapper class a read-only ``name``: the name the mapper registry holds for it."""

    @property
    def name(cls) -> str:
        """The name ``cls`` is registered under."""
        from .discovery import registered_mapper_name  # the registry imports this module

        return registered_mapper_name(cls)


ConfigT = TypeVar("ConfigT")


class Mapper(Generic[ConfigT], metaclass=_Named):
    """Carries a module fitted on the source to a target, with at most its ``budget`` of target data.

    Class attributes: ``version`` (bump it when its output would change), ``budget`` (one of :data:`BUDGETS`),
    ``Config`` (a dataclass whose defaults are the reference values; :func:`upgradebench.ranged` for ranges) and
    ``description``. ``supports`` says why a combination cannot be carried (checked before any data is read);
    ``map`` returns the module for the target. :meth:`shots` is the labeled shots per class it uses (a cost).
    """

    version: ClassVar[str]
    budget: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""

    @abstractmethod
    def supports(self, module: Module, source: VLM, target: VLM, config: ConfigT) -> str | None:
        """Why ``module`` (fitted on ``source``) cannot be carried to ``target`` (a sentence), or None."""

    @abstractmethod
    def map(self, module: Module, source: VLM, target: VLM, data: TargetData, config: ConfigT, seed: int) -> Module:
        """The module for ``target``; may raise :class:`Refused`. The same ``seed`` gives the same module."""

    @classmethod
    def shots(cls, config: ConfigT) -> int:
        """Labeled target shots per class used (0 unless the budget is labeled)."""
        return 0

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None = None) -> ConfigT:
        """Config from ``key=value`` strings or typed values, each checked against its field's type and range."""
        return parse_config(cls.Config, f"mapper {cls.name}", overrides)  # type: ignore[no-any-return]

    @classmethod
    def config_dict(cls, config: ConfigT) -> dict[str, Any]:
        """A config as a JSON-able dict."""
        return dataclasses.asdict(typing.cast("DataclassInstance", config))


# ---- reading and carrying a module's spaces --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Axis:
    """An axis label of :attr:`Module.spaces` read: its space (None: in no space), and whether it is a covector,
    only meets unit-normalised vectors, or holds several vectors end to end."""

    space: str | None
    covector: bool = False
    unit: bool = False
    repeated: bool = False


def axis_space(label: str | None) -> Axis:
    """The :class:`Axis` of a label of :attr:`Module.spaces` (e.g. ``"token"``, ``"joint*"``, ``"joint*~"``,
    ``"token[]"``)."""
    if label is None:
        return Axis(None)
    repeated = label.endswith(REPEATED)
    base = label[: -len(REPEATED)] if repeated else label
    unit = base.endswith(UNIT)
    base = base[: -len(UNIT)] if unit else base
    covector = base.endswith(COVECTOR)
    return Axis(base[:-1] if covector else base, covector, unit, repeated)


def declared_spaces(module: Module, who: str) -> dict[str, tuple[str | None, ...]]:
    """``module``'s :attr:`~Module.spaces`, checked to cover every floating tensor with one label per axis; a
    :class:`Refused` naming ``who`` (the mapper) otherwise."""
    spaces = type(module).spaces
    kind = type(module).__name__
    if spaces is None:
        raise Refused(f"{kind} declares no spaces (Module.spaces), so {who} cannot tell what its tensors are.",
                      "only the identity mapper carries it; its authors can declare Module.spaces")
    for name, tensor in module.tensors().items():
        if not tensor.is_floating_point():
            continue
        axes = spaces.get(name)
        if axes is None or len(axes) != tensor.dim():
            raise Refused(f"{kind} declares no spaces for its tensor {name!r} of shape {list(tensor.shape)}.",
                          f"declare it in {kind}.spaces (one label per axis)")
    return spaces


def spaces_problem(module: Module, who: str) -> str | None:
    """Why ``who`` (a mapper) cannot read ``module``'s tensors (:func:`declared_spaces` refuses it), or None."""
    try:
        declared_spaces(module, who)
    except Refused as exc:
        return exc.message
    return None


def space_axes(module: Module) -> dict[str, int]:
    """How many axes of ``module``'s tensors lie in each space (empty when it declares no spaces)."""
    counts: dict[str, int] = {}
    for axes in (type(module).spaces or {}).values():
        for label in axes:
            space = axis_space(label).space
            if space is not None:
                counts[space] = counts.get(space, 0) + 1
    return counts


def acting_inside(module: Module, space: str) -> list[str]:
    """Tensors of ``module`` with two or more axes in ``space`` (linear maps acting inside it, e.g. an attention):
    only an orthogonal map carries them."""
    return [name for name, axes in (type(module).spaces or {}).items()
            if sum(axis_space(label).space == space for label in axes) > 1]


def width_of(vlm: VLM, space: str) -> int:
    """The width of ``space`` in ``vlm``."""
    return vlm.text_width if space == TOKEN else vlm.embed_dim


def width_problem(module: Module, target: VLM, unchanged: tuple[str, ...] = SPACES) -> str | None:
    """Why ``module``'s axes in the ``unchanged`` spaces (carried as they are) do not fit ``target``, or None."""
    spaces = type(module).spaces or {}
    for name, tensor in module.tensors().items():
        for axis, label in enumerate(spaces.get(name, ())):
            read = axis_space(label)
            space = read.space
            if space is None or space not in unchanged:
                continue
            width = width_of(target, space)
            size = tensor.shape[axis]
            fits = size % width == 0 if read.repeated else size == width
            if not fits:
                what = "text width" if space == TOKEN else "image-text embedding width"
                return (f"{type(module).__name__}'s tensor {name!r} has {size} entries along an axis in the {space} "
                        f"space, but {target.name}'s {what} is {width}")
    return None


def carry(module: Module, maps: dict[str, LinearMap], target: VLM, who: str) -> Module:
    """``module`` with every axis in a space of ``maps`` carried by its map (vectors by ``M``, covectors by
    ``pinv(M)ᵀ``), the others as they are, rebuilt as the same module class.

    Refused (:class:`Refused`, naming ``who``): a module that declares no spaces; an axis of a space without a map
    that does not fit the target; a tensor with two axes in one space (a linear map acting inside the space, e.g.
    an attention) under a map that is not orthogonal, since only an orthogonal map preserves what such a layer
    computes (dot products, head splits).
    """
    spaces = declared_spaces(module, who)
    problem = width_problem(module, target, tuple(s for s in SPACES if s not in maps))
    if problem:
        raise Refused(f"{who} cannot carry it: {problem}.", "use a mapper that maps that space (mappers list)")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.tensors().items():
        axes = spaces.get(name, ()) if tensor.is_floating_point() else ()
        mapped_spaces = [space for space in (axis_space(label).space for label in axes) if space in maps]
        for inside in set(mapped_spaces):
            if mapped_spaces.count(inside) > 1 and not maps[inside].orthogonal:
                raise Refused(f"{who} cannot carry {type(module).__name__}'s tensor {name!r}: it acts inside the "
                              f"{inside} space, and a {maps[inside].kind} map (not orthogonal) does not preserve what "
                              "it computes.", "use a mapper with an orthogonal map (kind=procrustes: equal widths) "
                                              "or re-tune on target shots")
        for axis, label in enumerate(axes):
            read = axis_space(label)
            if read.space is None or read.space not in maps:
                continue
            tensor = _carry_axis(tensor, axis, maps[read.space], read)
        out[name] = tensor
    return type(module).from_state(out, module.meta())


def _carry_axis(tensor: torch.Tensor, axis: int, linear: LinearMap, read: Axis) -> torch.Tensor:
    if read.unit:  # normalised vectors carry the map's directions, not its scale
        linear = dataclasses.replace(linear, matrix=linear.matrix / linear.scale)
    apply = linear.covectors if read.covector else linear.vectors
    if not read.repeated:
        return apply(tensor, axis)
    # an axis holding several vectors end to end (e.g. TCP's n_ctx x D output): carry each block
    width = linear.matrix.shape[1]
    moved = tensor.movedim(axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], -1, width)
    carried = apply(blocks, blocks.dim() - 1)
    return carried.reshape(*moved.shape[:-1], -1).movedim(-1, axis).contiguous()


__all__ = ["BUDGETS", "JOINT", "LABELED", "NONE", "TOKEN", "UNLABELED", "Axis", "Mapper", "Refused", "TargetData",
           "acting_inside", "axis_space", "carry", "declared_spaces", "space_axes", "spaces_problem", "width_of",
           "width_problem"]

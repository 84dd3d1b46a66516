"""``retune``: the top tier. Another mapper's module (``start``), re-fitted on ``shots`` labeled target images per
class: every floating tensor the module holds is trained for ``steps`` full-batch Adam steps on the cross-entropy of
its own logits on the target (a short re-tune, as a user with a few labeled target images would run; Su et al.'s
projector and GradFix also spend target labels). ``steps=0`` gives the start module itself. Its cost (seconds,
shots) is recorded in the row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upgradebench import LABELED, VLM, Mapper, Module, Refused, TargetData, get_mapper, ranged

STARTS = ("feature-map", "vocab-map", "identity")
"""What ``start=auto`` tries, in order: the first of these that supports the module and the pair."""


@dataclass
class RetuneConfig:
    """``shots``: labeled target images per class; ``steps`` and ``lr``: the Adam re-fit; ``start``: the mapper whose
    module is re-fitted (``auto``: the first of :data:`STARTS` that supports it)."""

    shots: int = ranged(4, ge=1)
    steps: int = ranged(50, ge=0)
    lr: float = ranged(1e-3, gt=0.0)
    start: str = "auto"


def _trainable(module: Module) -> Iterator[tuple[str | None, torch.Tensor]]:
    """What a re-fit can train: (field name, tensor) of each floating tensor field and (None, parameter) of each
    floating parameter of an ``nn.Module`` field."""
    for field in dataclasses.fields(module):  # type: ignore[arg-type]  # a Module is a dataclass (its contract)
        value = getattr(module, field.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            yield field.name, value
        elif isinstance(value, nn.Module):
            yield from ((None, p) for p in value.parameters() if p.is_floating_point())


def _reachable(module: Module) -> int:
    """Floating values a re-fit can train (:func:`_trainable`)."""
    return sum(t.numel() for _, t in _trainable(module))


def _leaves(module: Module) -> list[torch.Tensor]:
    """The module's trainable tensors as leaves: its tensor fields replaced by trainable copies, the parameters of
    its ``nn.Module`` fields set to require gradients."""
    leaves: list[torch.Tensor] = []
    for name, tensor in list(_trainable(module)):
        if name is None:
            leaves.append(tensor.requires_grad_(True))
        else:
            leaf = tensor.detach().clone().requires_grad_(True)
            setattr(module, name, leaf)
            leaves.append(leaf)
    return leaves


def _floating_values(module: Module) -> int:
    return sum(t.numel() for t in module.tensors().values() if t.is_floating_point())


class Retune(Mapper[RetuneConfig]):
    """A short re-fit on labeled target shots, starting from another mapper's module."""

    version = "1"
    budget = LABELED
    Config = RetuneConfig
    description = "Another mapper's module re-fitted for a few steps on k labeled target shots per class."

    @classmethod
    def shots(cls, config: RetuneConfig) -> int:
        return config.shots

    def _start(self, module: Module, source: VLM, target: VLM, config: RetuneConfig) -> tuple[Mapper[Any], Any]:
        """The start mapper and its default config, or :class:`Refused` naming why none applies."""
        names = STARTS if config.start == "auto" else (config.start,)
        reasons = []
        for name in names:
            if name == "retune":
                raise Refused("retune cannot start from itself.", "pass --mapper-config start=feature-map")
            cls = get_mapper(name)
            mapper, start_config = cls(), cls.make_config({})
            reason = mapper.supports(module, source, target, start_config)
            if reason is None:
                return mapper, start_config
            reasons.append(reason)
        raise Refused(f"retune has no start: {'; '.join(reasons)}.", "pass --mapper-config start=NAME of a mapper "
                      "that supports the module (upgradebench mappers list)")

    def supports(self, module: Module, source: VLM, target: VLM, config: RetuneConfig) -> str | None:
        if _reachable(module) != _floating_values(module):
            return (f"retune cannot reach every tensor of {type(module).__name__} (some are neither tensor fields nor "
                    "nn.Module parameters); re-fit it with its own method on the target instead")
        try:
            self._start(module, source, target, config)
        except Refused as exc:
            return exc.message
        return None

    def start_name(self, module: Module, source: VLM, target: VLM, config: RetuneConfig) -> str:
        """The name of the mapper ``config.start`` resolves to for this module and pair (recorded in the row)."""
        return type(self._start(module, source, target, config)[0]).name

    def map(self, module: Module, source: VLM, target: VLM, data: TargetData, config: RetuneConfig,
            seed: int) -> Module:
        mapper, start_config = self._start(module, source, target, config)
        started = mapper.map(module, source, target, data, start_config, seed)
        tuned = type(started).from_state({k: v.detach().clone() for k, v in started.tensors().items()},
                                         started.meta())
        leaves = _leaves(tuned)
        if config.steps and leaves:
            feats, labels = data.labeled_shots(target, config.shots)
            torch.manual_seed(seed)
            optimizer = torch.optim.Adam(leaves, lr=config.lr)
            for _ in range(config.steps):
                optimizer.zero_grad()
                logits = tuned.logits(target, feats, data.class_names)
                F.cross_entropy(logits.float(), labels.to(logits.device)).backward()
                optimizer.step()
        return type(tuned).from_state({k: v.detach().clone() for k, v in tuned.tensors().items()}, tuned.meta())

"""The method test kit: :func:`check_method` asserts the behaviour every method owes the harness.

A plugin's own test suite calls it (``examples/upgradebench-example-method/tests``), and upgradebench's suite runs it
over every registered method (``tests/test_methods.py``). It fits the method on a tiny task and asserts that

- the fit is deterministic: two fits with the same seed give equal tensors and equal JSON state;
- the saved module loads back (``module.safetensors`` + ``module.json``) and gives equal logits;
- its logits are ``[N, C]`` and finite on the source and after a transplant onto another model of the same width;
- ``fit`` never reads the test split (hyper-parameters come from the validation shots).

The default task is the embedded world's (``toy-clip`` -> ``toy-eva``, ``toy-pattern``); with
``UPGRADEBENCH_WORLD=micro`` and a temporary ``UPGRADEBENCH_HOME`` it builds in seconds, as upgradebench's tests do.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .contract import Method, Module
from .data import DATASETS, Dataset, Item, dataset_names, get_dataset, load_fewshot
from .discovery import get_method
from .features import FeatureCache
from .models import VLM, load_vlm
from .module_io import load_module
from .task import FewShotTask

# config fields set small so a check fits in seconds, wherever a method's config has them
TINY_CONFIG: dict[str, Any] = {"epochs": 2, "iters_per_shot": 2}


class GuardedDataset(Dataset):
    """``inner`` with its test split's reads counted while :attr:`armed` (every other call passes through)."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner
        self.name, self.classnames, self.template = inner.name, list(inner.classnames), inner.template
        self.armed = False
        self.test_reads = 0

    def split(self, name: str) -> list[Item]:
        """The inner dataset's split ``name``, counted when it is the test split and the guard is armed."""
        if name == "test" and self.armed:
            self.test_reads += 1
        return self.inner.split(name)

    def load_image(self, ref: str) -> Image.Image:
        """The inner dataset's image."""
        return self.inner.load_image(ref)

    @property
    def fewshot_dir(self) -> Path:
        """The inner dataset's few-shot folder."""
        return self.inner.fewshot_dir


@contextmanager
def _served(dataset: GuardedDataset) -> Iterator[None]:
    """Make the dataset registry hand out ``dataset`` under its name, so that ``fit`` cannot sidestep the guard."""
    dataset_names()  # the built-ins are registered first, so the saved entry is the real one
    saved = DATASETS.entry(dataset.name) if dataset.name in DATASETS else None
    DATASETS.register(dataset.name, lambda root: dataset, replace=True, **(saved.meta if saved else {}))
    try:
        yield
    finally:
        if saved is None:
            DATASETS.unregister(dataset.name)
        else:
            DATASETS.register(saved.name, saved.target, origin=saved.origin, origin_version=saved.origin_version,
                              builtin=saved.builtin, replace=True, **saved.meta)


def tiny_config(method: type[Method], overrides: dict[str, Any] | None = None) -> Any:
    """``method``'s config with :data:`TINY_CONFIG` where it has those fields, then ``overrides``."""
    fields = {f.name for f in dataclasses.fields(method.Config)}
    values = {k: v for k, v in TINY_CONFIG.items() if k in fields}
    return method.make_config({**values, **(overrides or {})})


def _fit(method: type[Method], task: FewShotTask, config: Any, seed: int) -> Module:
    torch.manual_seed(seed)  # as the runner does before fit
    return method().fit(task.source, task, config, seed)


def check_method(name: str, source: VLM | str = "toy-clip", target: VLM | str = "toy-eva",
                 dataset: Dataset | str = "toy-pattern", config: dict[str, Any] | None = None, shots: int = 2,
                 seed: int = 1, views: int = 2, items: int = 12) -> Module:
    """Assert the contract of method ``name`` (see the module docstring) on a ``shots``-shot task of ``dataset``,
    fitted on ``source`` and transplanted onto ``target`` (models of the same widths); ``config``: overrides of
    the method's tiny config (:func:`tiny_config`). Returns the fitted module."""
    method = get_method(name)
    source = load_vlm(source, device="cpu") if isinstance(source, str) else source
    target = load_vlm(target, device="cpu") if isinstance(target, str) else target
    guarded = GuardedDataset(get_dataset(dataset) if isinstance(dataset, str) else dataset)
    settings = tiny_config(method, config)
    with _served(guarded):
        assert guarded.fingerprint  # hashes every split's list, so it is computed before the guard is armed
        task = FewShotTask(guarded, load_fewshot(guarded, shots, seed), source, FeatureCache(), views=views)
        guarded.armed = True
        module = _fit(method, task, settings, seed)
        again = _fit(method, task, settings, seed)
        guarded.armed = False
    assert guarded.test_reads == 0, f"{name} read the test split while it was fitted"
    assert isinstance(module, method.module_class), f"{name}.fit returned {type(module).__name__}, not its module_class"
    first, second = module.tensors(), again.tensors()
    assert first.keys() == second.keys() and all(torch.equal(v, second[k]) for k, v in first.items()), \
        f"{name}: two fits with seed {seed} gave different tensors"
    assert module.meta() == again.meta(), f"{name}: two fits with seed {seed} gave different module state"

    test = guarded.split("test")[:items]
    with tempfile.TemporaryDirectory() as folder:
        loaded = load_module(module.save(folder, name))
    assert type(loaded) is type(module) and loaded.meta() == module.meta(), \
        f"{name}: the saved module loads differently"
    classes = len(guarded.classnames)
    for role, vlm in (("source", source), ("transplant", target)):
        feats = FeatureCache().get(vlm, guarded, "test", test, vlm.test_transform_spec)
        logits = module.logits(vlm, feats, guarded.classnames)
        assert tuple(logits.shape) == (len(test), classes), \
            f"{name}: logits on the {role} are {tuple(logits.shape)}, not {(len(test), classes)}"
        assert torch.isfinite(logits).all(), f"{name}: logits on the {role} are not finite"
        assert torch.equal(loaded.logits(vlm, feats, guarded.classnames), logits), \
            f"{name}: the saved and loaded module gives other logits on the {role}"
    return module

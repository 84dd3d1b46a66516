"""No built-in method may look at the test split while it is fitted: hyper-parameters come from validation shots."""

from __future__ import annotations

import dataclasses

import pytest

from upgradebench.data import DATASETS, dataset_names, load_fewshot
from upgradebench.discovery import available_methods
from upgradebench.features import FeatureCache
from upgradebench.models import load_vlm
from upgradebench.task import FewShotTask

from .tiny_data import TinyColours


class GuardedColours(TinyColours):
    """TinyColours that records every read of its test split once ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.test_reads = 0

    def split(self, name: str) -> list[tuple[str, int]]:
        if name == "test" and self.armed:
            self.test_reads += 1
        return super().split(name)


def _builtin_methods() -> list:
    return sorted(((entry.name, cls) for entry, cls in available_methods()[0] if entry.builtin), key=lambda m: m[0])


@pytest.fixture
def guarded():
    """One guarded instance, also what the dataset registry hands out, so a method cannot sidestep it."""
    dataset = GuardedColours()
    dataset_names()
    DATASETS.register(dataset.name, lambda root: dataset, num_classes=4, kind="test", replace=True)
    yield dataset
    DATASETS.unregister(dataset.name)


@pytest.mark.parametrize("name,method", _builtin_methods(), ids=[n for n, _ in _builtin_methods()])
def test_fit_never_reads_the_test_split(name, method, guarded, micro_dirs):
    source = load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu")
    task = FewShotTask(guarded, load_fewshot(guarded, 2, 1), source, FeatureCache(), views=2)
    assert guarded.fingerprint  # the fingerprint hashes every split's list; it is computed before fitting
    fields = {f.name for f in dataclasses.fields(method.Config)}
    config = method.make_config({"epochs": "1"} if "epochs" in fields else {})
    guarded.armed = True
    method().fit(source, task, config, seed=1)
    assert guarded.test_reads == 0, f"{name} read the test split during fit"
    guarded.split("test")
    assert guarded.test_reads == 1  # the guard itself works

"""A module's saved form is derived from its fields; committed modules of every built-in method still load."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from upgradebench.contract import Method, Module
from upgradebench.discovery import METHODS, get_method
from upgradebench.errors import UserError
from upgradebench.integrity import tensors_digest
from upgradebench.module_io import load_module

RUNS = Path(__file__).resolve().parents[1] / "results" / "runs"
SOURCE_RUN = re.compile(r".*-toy-clip-[0-9a-f]{10}")  # fitted on toy-clip (not an oracle fit on toy-clip-cont, ...)
BUILTINS = sorted(ep.name for ep in entry_points(group="upgradebench.methods") if ep.dist.name == "upgradebench")


def committed_module(method: str) -> Path:
    """The module of the committed run of ``method`` on toy-background, 16 shots, seed 1, fitted on toy-clip."""
    (run,) = [p for p in RUNS.glob(f"{method}-toy-background-k16-s1-toy-clip-*") if SOURCE_RUN.fullmatch(p.name)]
    return run / "module"


@pytest.mark.parametrize("method", BUILTINS)
def test_a_committed_module_loads_and_saves_back_to_the_same_form(method, tmp_path):
    folder = committed_module(method)
    committed = json.loads((folder / "module.json").read_text())
    saved = json.loads((load_module(folder).save(tmp_path, method) / "module.json").read_text())
    assert saved["method"] == committed["method"] == method
    assert saved["meta"] == committed["meta"]
    assert saved["tensors"] == committed["tensors"]
    weights = folder / "module.safetensors"
    stored = load_file(str(weights)) if weights.is_file() else {}
    assert saved["tensors_sha256"] == tensors_digest(stored)  # the same names, dtypes, shapes and bytes


class _Linear(torch.nn.Linear):
    @classmethod
    def from_weights(cls, weights, state):
        layer = cls(*weights["weight"].shape[::-1])
        layer.load_state_dict(weights)
        return layer


@dataclass
class _Probe(Module):
    weight: torch.Tensor
    head: _Linear | None
    scale: float

    def logits(self, vlm, image_features, class_names):
        return self.scale * image_features @ self.weight.T


def test_tensors_modules_and_json_fields_round_trip():
    module = _Probe(torch.randn(3, 4), _Linear(4, 2), 2.5)
    assert sorted(module.tensors()) == ["head.bias", "head.weight", "weight"] and module.meta() == {"scale": 2.5}
    back = _Probe.from_state(module.tensors(), module.meta())
    assert torch.equal(back.weight, module.weight) and torch.equal(back.head.weight, module.head.weight)
    assert back.scale == 2.5 and not back.head.weight.requires_grad
    without = _Probe.from_state({"weight": module.weight}, {"scale": 1.0})
    assert without.head is None  # an optional part saved as nothing comes back as None


def test_state_the_module_does_not_hold_is_refused():
    module = _Probe(torch.randn(3, 4), None, 1.0)
    with pytest.raises(KeyError, match="extra"):
        _Probe.from_state({**module.tensors(), "extra": torch.zeros(1)}, module.meta())
    with pytest.raises(KeyError, match="typo"):
        _Probe.from_state(module.tensors(), {**module.meta(), "typo": 1})


class _Named(Method):
    name = "spelled-here"

    def fit(self, source, task, config, seed):
        raise NotImplementedError


def test_the_entry_point_names_a_method_and_a_class_attribute_must_agree():
    METHODS.register("spelled-elsewhere", _Named, origin="tests", replace=True)
    try:
        with pytest.raises(UserError, match="spelled-here"):
            get_method("spelled-elsewhere")
    finally:
        METHODS.unregister("spelled-elsewhere")
    assert get_method("kgcoop").name == "kgcoop"  # no name attribute: the entry point's

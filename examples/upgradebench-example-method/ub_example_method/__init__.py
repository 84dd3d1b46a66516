"""Nearest class prototype: a complete third-party upgradebench method in one file.

The module stores the mean normalised source image feature of each class and classifies by cosine
similarity. It uses only upgradebench's public API (``from upgradebench import ...``), like any plugin; its test
(``tests/test_prototype.py``) runs upgradebench's method test kit on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from upgradebench import VLM, FewShotTask, Method, Module, ranged


@dataclass
class PrototypeConfig:
    """``scale`` multiplies the cosine similarities."""

    scale: float = ranged(100.0, gt=0)


@dataclass
class PrototypeModule(Module):
    """Class prototypes ``[C, D]`` in the source's image-feature space (saved as safetensors), and the scale
    (saved as JSON): a module's fields are its saved form."""

    prototypes: torch.Tensor
    scale: float

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        f = F.normalize(image_features.float().cpu(), dim=-1)
        return self.scale * f @ self.prototypes.T


class Prototype(Method[PrototypeConfig]):
    """Nearest class mean of the source's image features (a deep-layer method: it cannot follow an upgrade)."""

    version = "0.1.0"
    description = "Nearest class prototype of source image features (example plugin)."
    Config = PrototypeConfig
    module_class = PrototypeModule

    def fit(self, source: VLM, task: FewShotTask, config: PrototypeConfig, seed: int) -> PrototypeModule:
        feats = F.normalize(task.train_view_features().mean(0), dim=-1)  # [N, D], averaged over cached views
        labels = task.train_labels
        protos = torch.stack([feats[labels == c].mean(0) for c in range(len(task.class_names))])
        return PrototypeModule(F.normalize(protos, dim=-1), config.scale)

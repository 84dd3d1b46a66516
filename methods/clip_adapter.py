"""CLIP-Adapter (Gao et al., IJCV 2023; gaopengcuhk/CLIP-Adapter 08d07f8, ``trainers/clip_adapter.py``).

A visual adapter ``Linear(D, D/4, bias=False) -> ReLU -> Linear(D/4, D, bias=False) -> ReLU`` on the
(unnormalised) image feature, mixed residually: ``f' = ratio * adapter(f) + (1 - ratio) * f`` with
ratio 0.2. The classifier is the zero-shot text features of the dataset template, recomputed with the
model in use; logits use the model's logit scale, as the reference does. Only the adapter is trained.
Transplant (the paper's deep-layer baseline): the adapter is applied to the *target's* image features, so
source and target must share the image-feature width.
Departure: the reference released no training config, so CoOp's recipe is used (docs/methods.md):
SGD 0.002, momentum 0.9, weight decay 5e-4, cosine, 1 warm-up epoch at 1e-5, batch 32, CoOp's epochs
(200 at 16 shots). The adapter's init is PyTorch's Linear default (as in the reference), seeded per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upgradebench import (
    COVECTOR,
    JOINT,
    VLM,
    FewShotTask,
    Method,
    Module,
    SGDRecipe,
    fit_recipe,
    ranged,
    zeroshot_text_features,
)
from upgradebench.compat import check_image_width


@dataclass
class CLIPAdapterConfig(SGDRecipe):
    """Residual ratio 0.2 and reduction 4 (reference); CoOp's optimiser recipe (no reference config)."""

    ratio: float = ranged(0.2, ge=0, le=1)
    reduction: int = ranged(4, ge=1)
    template: str | None = None


class VisualAdapter(nn.Module):
    """The reference's ``Adapter``: ``width -> hidden -> width`` bias-free linear layers, each followed by ReLU."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, width, bias=False)

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> VisualAdapter:
        """The adapter of saved weights (its widths read from their shapes)."""
        hidden, width = weights["fc1.weight"].shape
        adapter = cls(width, hidden)
        adapter.load_state_dict(weights)
        return adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(fc2(ReLU(fc1(x))))``."""
        return F.relu(self.fc2(F.relu(self.fc1(x))))


def adapt(adapter: VisualAdapter, features: torch.Tensor, ratio: float) -> torch.Tensor:
    """``ratio * adapter(f) + (1 - ratio) * f`` on unnormalised image features."""
    return ratio * adapter(features) + (1 - ratio) * features


@dataclass
class CLIPAdapterModule(Module):
    """The visual adapter, its residual ratio and the template of the zero-shot classifier."""

    spaces = {"adapter.fc1.weight": (None, JOINT + COVECTOR), "adapter.fc2.weight": (JOINT, None)}


    adapter: VisualAdapter
    ratio: float
    template: str

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        check_image_width(vlm, self.adapter.fc1.in_features, image_features, "CLIP-Adapter")
        self.adapter.to(vlm.device)
        feats = adapt(self.adapter, image_features.to(vlm.device).float(), self.ratio)
        return vlm.logits(feats, zeroshot_text_features(vlm, class_names, self.template))


class CLIPAdapter(Method[CLIPAdapterConfig]):
    """CLIP-Adapter (Gao et al., 2023), reference gaopengcuhk/CLIP-Adapter 08d07f8; see the module docstring."""

    version = "1"
    description = "Residual bottleneck adapter on the image features; zero-shot text classifier of the model in use."
    Config = CLIPAdapterConfig
    module_class = CLIPAdapterModule

    def fit(self, source: VLM, task: FewShotTask, config: CLIPAdapterConfig, seed: int) -> CLIPAdapterModule:
        template = config.template or task.template
        torch.manual_seed(seed)  # the adapter's default (Kaiming-uniform) init, reproducible per seed
        adapter = VisualAdapter(source.embed_dim, source.embed_dim // config.reduction).to(source.device)
        text = zeroshot_text_features(source, task.class_names, template)  # frozen classifier, computed once

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(source.logits(adapt(adapter, feats, config.ratio), text), labels)

        fit_recipe(task, list(adapter.parameters()), loss_fn, config, seed)
        return CLIPAdapterModule(adapter.requires_grad_(False).cpu(), config.ratio, template)

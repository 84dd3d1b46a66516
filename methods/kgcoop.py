"""KgCoOp (Yao et al., CVPR 2023; htyao89/KgCoOp c43ccc3, ``trainers/kgcoop.py``): CoOp with knowledge guidance.

CoOp's context (N = 4, initialised from the embeddings of "a photo of a", shared, class token at the end),
trained with ``CE + W * (1 - mean_i cos(t_i, t_zs_i))`` where ``t_i`` are the prompted text features and
``t_zs`` the zero-shot text features of the dataset template on the source model; W = 8.0. Recipe: batch 128,
100 epochs, SGD 0.002 (momentum 0.9, weight decay 5e-4), cosine, 1 constant warm-up epoch at 1e-5.
Departure: ``t_zs`` uses the harness's dataset template (docs/methods.md); KgCoOp's own table differs for DTD only
("a photo of a {}, a type of texture." instead of "{} texture."). fp32 instead of the reference's fp16.
The artifact is exactly CoOp's (a context spliced into the text encoder of the model in use), saved under
the method name ``kgcoop``; the knowledge-guidance term only shapes training (the loss hook of CoOp's
``ContextLearner``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from upgradebench.models import VLM
from upgradebench.prompting import ClassPrompts, encode_prompts, zeroshot_text_features
from upgradebench.training import SGDRecipe

from .coop import ContextLearner, Loss


@dataclass
class KgCoOpConfig(SGDRecipe):
    """KgCoOp's defaults: N = 4 from "a photo of a", W = 8.0, batch 128, 100 epochs, CoOp's optimiser."""

    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    kg_weight: float = 8.0
    epochs: int | None = 100
    batch_size: int = 128


class KgCoOp(ContextLearner):
    """Knowledge-guided Context Optimization (Yao et al., 2023), reference htyao89/KgCoOp c43ccc3."""

    version = "1"
    description = "CoOp context kept close to the zero-shot text features (W = 8)."
    Config = KgCoOpConfig

    def loss(self, source: VLM, task: Any, config: KgCoOpConfig, prompts: ClassPrompts, ctx: torch.Tensor,
             network: None) -> Loss:
        """Cross-entropy + ``W * (1 - mean_i cos(t_i, t_zs_i))``."""
        zs = F.normalize(zeroshot_text_features(source, task.class_names, task.template), dim=-1)

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            text = encode_prompts(source, prompts, ctx)
            score = 1.0 - (F.normalize(text, dim=-1) * zs).sum(-1).mean()
            return F.cross_entropy(source.logits(feats, text), labels) + config.kg_weight * score

        return loss_fn

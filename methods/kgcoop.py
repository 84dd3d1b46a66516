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

import torch
import torch.nn.functional as F

from upgradebench import SGDRecipe, encode_prompts, ranged, zeroshot_text_features
from upgradebench.prompting import MAX_N_CTX, N_CTX_WHY

from .coop import ContextLearner, FitState, Loss


@dataclass
class KgCoOpConfig(SGDRecipe):
    """KgCoOp's defaults: N = 4 from "a photo of a", W = 8.0, batch 128, 100 epochs, CoOp's optimiser."""

    n_ctx: int = ranged(4, ge=1, le=MAX_N_CTX, why=N_CTX_WHY)
    ctx_init: str | None = "a photo of a"
    init_std: float = ranged(0.02, ge=0)
    kg_weight: float = ranged(8.0, ge=0)
    epochs: int | None = ranged(100, ge=1)
    batch_size: int = ranged(128, ge=1)


class KgCoOp(ContextLearner[KgCoOpConfig, None]):
    """Knowledge-guided Context Optimization (Yao et al., 2023), reference htyao89/KgCoOp c43ccc3."""

    version = "1"
    description = "CoOp context kept close to the zero-shot text features (W = 8)."
    Config = KgCoOpConfig

    def loss(self, fit: FitState[KgCoOpConfig, None]) -> Loss:
        """Cross-entropy + ``W * (1 - mean_i cos(t_i, t_zs_i))``."""
        source, task, config, prompts, ctx = fit.source, fit.task, fit.config, fit.prompts, fit.ctx
        zs = F.normalize(zeroshot_text_features(source, task.class_names, task.template), dim=-1)

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            text = encode_prompts(source, prompts, ctx)
            score = 1.0 - (F.normalize(text, dim=-1) * zs).sum(-1).mean()
            return F.cross_entropy(source.logits(feats, text), labels) + config.kg_weight * score

        return loss_fn

"""ContCoOp (Wang et al., "Towards Compatible Fine-tuning for Vision-Language Model Updates", Sec. 3.2, 4.1).

No official code was found; this follows the paper and docs/methods.md:
- learnable context ``p`` (N = 16, N(0, 0.02)); class embedding ``c_i`` = token embeddings of class name i
  taken from the model in use, so the prompts follow the model when it is upgraded;
- ``X = [p; c_i]``, single-head attention ``O = softmax(Q K^T / sqrt(D)) V W_O`` with ``W_Q, W_K, W_V, W_O``
  (D x D, no bias as in Eq. 1; "Kaiming init" = PyTorch's Linear default, kaiming_uniform); ``p(c_i) = p + O[:N]``;
  class names of several tokens are several rows of X (padded and masked across classes);
- ``w_i = T([SOS, p(c_i), c_i, ".", EOS])``; logits ``cos(w_i, f) / tau`` with the model's logit scale
  (``1/tau = 100`` for CLIP);
- ``L = CE + lambda * (1/C) sum_i ||w_i - w_zs_i||_2`` on L2-normalised features, ``w_zs`` = zero-shot
  features of the source with the dataset template; lambda = 1;
- optimiser and epochs: CoOp's recipe (the paper gives none).
Ablation knobs (paper Tables 4-7, Fig. 4): ``attention``, ``kd``, ``kd_weight``, ``heads``, ``condition``, ``n_ctx``.
Memory: the C prompts of a step go through ``upgradebench.memory.encode_text_bounded`` (checkpointed calls
when they outgrow its budget; peak per class count at ViT-L/14 in ``docs/memory.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upgradebench import (
    COVECTOR,
    TOKEN,
    VLM,
    Module,
    SGDRecipe,
    UserError,
    assemble,
    class_prompts,
    condition_embeddings,
    ranged,
    zeroshot_text_features,
)
from upgradebench.compat import check_text_width
from upgradebench.memory import check_fits, encode_text_bounded
from upgradebench.prompting import MAX_N_CTX, N_CTX_WHY

from .coop import ContextLearner, FitInputs, FitState, Loss


@dataclass
class ContCoOpConfig(SGDRecipe):
    """Paper defaults: N = 16, one head, lambda = 1, condition on the class name alone; CoOp's optimiser."""

    n_ctx: int = ranged(16, ge=1, le=MAX_N_CTX, why=N_CTX_WHY)
    init_std: float = ranged(0.02, ge=0)
    attention: bool = True
    heads: int = ranged(1, ge=1)
    kd: bool = True
    kd_weight: float = ranged(1.0, ge=0)
    condition: str = "{}"


class ClassConditioner(nn.Module):
    """Eq. (1): attention over ``X = [p; c]`` whose first N outputs are added to the context."""

    def __init__(self, width: int, heads: int = 1) -> None:
        super().__init__()
        if width % heads:
            raise UserError(f"heads={heads} must divide the text width {width}.")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> ClassConditioner:
        """The attention of saved weights: its width from their shapes, its heads from the module's ``heads``."""
        conditioner = cls(weights["q.weight"].shape[1], state["heads"])
        conditioner.load_state_dict(weights)
        return conditioner

    def forward(self, ctx: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class-conditioned contexts ``[C, N, D]`` from ``ctx [N, D]``, ``cond [C, T, D]``, ``mask [C, T]``."""
        classes, n, width = cond.shape[0], ctx.shape[0], ctx.shape[1]
        x = torch.cat([ctx.unsqueeze(0).expand(classes, -1, -1), cond.to(ctx.dtype)], dim=1)  # [C, N+T, D]
        keep = torch.cat([mask.new_ones(classes, n), mask], dim=1)  # [C, N+T]
        h, d = self.heads, width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(classes, -1, h, d).transpose(1, 2)  # [C, h, L, d]

        q, k, v = split(self.q(x[:, :n])), split(self.k(x)), split(self.v(x))  # only the first N rows are kept
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(classes, n, width)
        return ctx.unsqueeze(0) + self.o(out)


@dataclass
class ContCoOpModule(Module):
    """Context ``p`` + the attention network ``attn`` (None without attention); class embeddings come from
    whichever model it is plugged into. ``attention`` and ``heads`` are derived from ``attn``."""

    spaces = {"ctx": (None, TOKEN), **{f"attn.{p}.weight": (TOKEN, TOKEN + COVECTOR) for p in "qkvo"}}


    ctx: torch.Tensor
    attn: ClassConditioner | None
    condition: str = "{}"
    attention: bool = field(init=False)
    heads: int = field(init=False)

    def __post_init__(self) -> None:
        self.attention = self.attn is not None
        self.heads = self.attn.heads if self.attn is not None else 0

    def prompt_context(self, vlm: VLM, class_names: list[str], ctx: torch.Tensor | None = None) -> torch.Tensor:
        """``p(c_i)`` for every class ``[C, N, D]`` (or the shared ``[N, D]`` without attention)."""
        ctx = self.ctx if ctx is None else ctx
        if self.attn is None:
            return ctx
        cond, mask = condition_embeddings(vlm, class_names, self.condition)
        return self.attn(ctx, cond, mask)

    def text_features(self, vlm: VLM, class_names: list[str]) -> torch.Tensor:
        """Class text features ``w_i`` of ``vlm``."""
        check_text_width(vlm, self.ctx, "ContCoOp context")
        prompts = class_prompts(vlm, class_names, self.ctx.shape[0])
        ctx = self.prompt_context(vlm, class_names, self.ctx.to(vlm.device))
        return vlm.encode_text_embeddings(assemble(prompts, ctx), prompts.eot)

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        if self.attn is not None:
            self.attn.to(vlm.device)
        return vlm.logits(image_features.to(vlm.device), self.text_features(vlm, class_names))


class ContCoOp(ContextLearner[ContCoOpConfig, ClassConditioner | None]):
    """Class-conditioned Context Optimization (the paper's method), see the module docstring."""

    version = "1"
    description = "CoOp context conditioned on the class embeddings of the model in use by an attention layer, with KD."
    Config = ContCoOpConfig
    module_class = ContCoOpModule

    def network(self, fit: FitInputs[ContCoOpConfig]) -> ClassConditioner | None:
        """The attention of Eq. (1) (None with ``attention=False``)."""
        source, config = fit.source, fit.config
        if not config.attention:
            return None
        torch.manual_seed(fit.seed)  # Kaiming init of W_Q, W_K, W_V, W_O, reproducible per seed
        return ClassConditioner(source.text_width, config.heads).to(source.device)

    def loss(self, fit: FitState[ContCoOpConfig, ClassConditioner | None]) -> Loss:
        """Cross-entropy + ``lambda * mean_i ||w_i - w_zs_i||_2`` on normalised features (without ``kd``: CE)."""
        source, task, config = fit.source, fit.task, fit.config
        prompts, ctx, network = fit.prompts, fit.ctx, fit.network
        names = task.class_names
        cond = condition_embeddings(source, names, config.condition) if network is not None else None
        zs = F.normalize(zeroshot_text_features(source, names, task.template), dim=-1)
        kd_weight = config.kd_weight if config.kd else 0.0
        check_fits(source, len(names), prompts.tokens.shape[1], "ContCoOp")

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            pc = network(ctx, *cond) if network is not None and cond is not None else ctx
            text = encode_text_bounded(source, assemble(prompts, pc), prompts.eot)
            loss = F.cross_entropy(source.logits(feats, text), labels)
            if kd_weight:
                loss = loss + kd_weight * (F.normalize(text, dim=-1) - zs).norm(dim=-1).mean()
            return loss

        return loss_fn

    def module(self, fit: FitState[ContCoOpConfig, ClassConditioner | None]) -> ContCoOpModule:
        """The context, the attention and the condition text."""
        return ContCoOpModule(fit.ctx, fit.network, fit.config.condition)

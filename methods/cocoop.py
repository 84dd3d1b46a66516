"""CoCoOp (Zhou et al., CVPR 2022; KaiyangZhou/CoOp ff61507, ``trainers/cocoop.py``): image-conditioned context.

4 context vectors initialised from the embeddings of "a photo of a"; a meta-net
``Linear(D_img, D_img/16) -> ReLU -> Linear(D_img/16, D_txt)`` (with biases, PyTorch's default init) maps
the L2-normalised image feature to a bias added to every context vector, so each image has its own
prompts ``[SOS, ctx + pi(f), classname, ".", EOS]``; logits ``logit_scale * cos(f, T(prompt_c(f)))``.
Recipe (``vit_b16_c4_ep10_batch1_ctxv1.yaml``): batch 1, 10 epochs, SGD 0.002 (momentum 0.9, weight decay
5e-4), cosine, 1 constant warm-up epoch at 1e-5; context and meta-net are trained with cross-entropy.
Transplant: the context and the meta-net, fed with the *target's* normalised image features, are spliced
into the target's token embeddings of the class names and run through the target's text encoder (the
image-feature widths of source and target must match, as the meta-net reads them).

Speed (CoOp issues #21, #48; ``benchmarks/cocoop_speed.py``): the reference encodes the prompts of each
image with one full-context (77 tokens) text-encoder call per image. Here the prompts of a batch of images
(images x classes rows) go through the truncated text encoder (positions ``0..max(eot)``, exact) in one call;
evaluation takes the images in chunks of at most ``max_prompts`` rows (4096) to bound memory, and training
splits a step's rows into activation-checkpointed calls when they outgrow ``upgradebench.memory``'s budget
(peak memory per batch size at ViT-L/14: ``docs/memory.md``).
Departure: fp32 instead of the reference's fp16 (``PREC: fp16``), as for every method of the harness.
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
    TOKEN,
    UNIT,
    VLM,
    ClassPrompts,
    Module,
    SGDRecipe,
    class_prompts,
    ranged,
    transient,
)
from upgradebench.compat import check_image_width, check_text_width
from upgradebench.memory import check_fits, encode_text_bounded
from upgradebench.prompting import MAX_N_CTX, N_CTX_WHY

from .coop import ContextLearner, FitInputs, FitState, Loss

MAX_PROMPTS = 4096  # prompt rows (images x classes) per text-encoder call at evaluation


@dataclass
class CoCoOpConfig(SGDRecipe):
    """CoCoOp's ``vit_b16_c4_ep10_batch1_ctxv1`` recipe; ``meta_reduction`` is the meta-net's bottleneck (16)."""

    n_ctx: int = ranged(4, ge=1, le=MAX_N_CTX, why=N_CTX_WHY)
    ctx_init: str | None = "a photo of a"
    init_std: float = ranged(0.02, ge=0)
    meta_reduction: int = ranged(16, ge=1)
    epochs: int | None = ranged(10, ge=1)
    batch_size: int = ranged(1, ge=1)


class MetaNet(nn.Module):
    """The reference's ``meta_net``: ``Linear(D_img, hidden) -> ReLU -> Linear(hidden, D_txt)``."""

    def __init__(self, image_width: int, hidden: int, text_width: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(image_width, hidden)
        self.linear2 = nn.Linear(hidden, text_width)

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> MetaNet:
        """The meta-net of saved weights (its widths read from their shapes)."""
        hidden, image_width = weights["linear1.weight"].shape
        meta_net = cls(image_width, hidden, weights["linear2.weight"].shape[0])
        meta_net.load_state_dict(weights)
        return meta_net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The context bias ``[B, D_txt]`` of normalised image features ``[B, D_img]``."""
        return self.linear2(F.relu(self.linear1(x)))


def image_contexts(ctx: torch.Tensor, meta_net: MetaNet, image_features: torch.Tensor) -> torch.Tensor:
    """Per-image contexts ``[B, N, D]``: ``ctx + meta_net(normalize(f))`` added to every context vector."""
    bias = meta_net(F.normalize(image_features.to(ctx.dtype), dim=-1))
    return ctx.unsqueeze(0) + bias.unsqueeze(1)


def conditional_logits(vlm: VLM, prompts: ClassPrompts, contexts: torch.Tensor,
                       image_features: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
    """Logits ``[B, C]`` of each image against its own prompts: the ``B x C`` prompt rows in one text-encoder call,
    or in training in memory-bounded calls of at most ``max_rows`` (``upgradebench.memory``)."""
    images, classes = contexts.shape[0], prompts.prefix.shape[0]
    rows = (images, classes, -1, -1)
    embeds = torch.cat([prompts.prefix.unsqueeze(0).expand(rows),
                        contexts.to(prompts.prefix.dtype).unsqueeze(1).expand(rows),
                        prompts.suffix.unsqueeze(0).expand(rows)], dim=2).flatten(0, 1)  # [B*C, L, D]
    text = encode_text_bounded(vlm, embeds, prompts.eot.repeat(images), max_rows).view(images, classes, -1)
    img = F.normalize(image_features.to(text.dtype), dim=-1)
    return vlm.logit_scale * torch.einsum("bd,bcd->bc", img, F.normalize(text, dim=-1))


@dataclass
class CoCoOpModule(Module):
    """Context ``[N, D_txt]`` and meta-net; ``max_prompts`` bounds the rows of one text-encoder call."""

    spaces = {"ctx": (None, TOKEN), "meta_net.linear1.weight": (None, JOINT + COVECTOR + UNIT),
              "meta_net.linear1.bias": (None,), "meta_net.linear2.weight": (TOKEN, None),
              "meta_net.linear2.bias": (TOKEN,)}


    ctx: torch.Tensor
    meta_net: MetaNet
    max_prompts: int = transient(MAX_PROMPTS)

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        check_text_width(vlm, self.ctx, "CoCoOp context")
        check_image_width(vlm, self.meta_net.linear1.in_features, image_features, "CoCoOp's meta-net")
        ctx, meta_net = self.ctx.to(vlm.device), self.meta_net.to(vlm.device)
        prompts = class_prompts(vlm, class_names, ctx.shape[0])
        chunk = max(1, self.max_prompts // len(class_names))  # images per text-encoder call
        feats = image_features.to(vlm.device).float()
        return torch.cat([conditional_logits(vlm, prompts, image_contexts(ctx, meta_net, f), f)
                          for f in feats.split(chunk)])


class CoCoOp(ContextLearner[CoCoOpConfig, MetaNet]):
    """Conditional Context Optimization (Zhou et al., 2022), reference KaiyangZhou/CoOp ff61507."""

    version = "1"
    description = "Context vectors shifted per image by a meta-net on the image feature (batched text encoding)."
    Config = CoCoOpConfig
    module_class = CoCoOpModule

    def network(self, fit: FitInputs[CoCoOpConfig]) -> MetaNet:
        """The meta-net, PyTorch's default init seeded per run."""
        source, config = fit.source, fit.config
        torch.manual_seed(fit.seed)  # the meta-net's default init, reproducible per seed
        width = source.embed_dim
        return MetaNet(width, width // config.meta_reduction, source.text_width).to(source.device)

    def loss(self, fit: FitState[CoCoOpConfig, MetaNet]) -> Loss:
        """Cross-entropy of each image's logits against its own prompts."""
        source, task, config = fit.source, fit.task, fit.config
        prompts, ctx, network = fit.prompts, fit.ctx, fit.network
        check_fits(source, config.batch_size * len(task.class_names), prompts.tokens.shape[1], "CoCoOp")

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = conditional_logits(source, prompts, image_contexts(ctx, network, feats), feats)
            return F.cross_entropy(logits, labels)

        return loss_fn

    def module(self, fit: FitState[CoCoOpConfig, MetaNet]) -> CoCoOpModule:
        """The context and the meta-net."""
        return CoCoOpModule(fit.ctx, fit.network)

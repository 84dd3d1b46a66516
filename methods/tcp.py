"""TCP (Yao et al., CVPR 2024; htyao89/Textual-based_Class-aware_prompt_tuning bd97bec, ``trainers/tcp.py`` and
``trainers/clip_text/model.py: ResidualAttentionBlock_MaPLe``): textual-based class-aware prompts.

A shared context ``p`` (N = 4, N(0, 0.02), class token at the end) enters the text encoder as in CoOp. A
Textual Knowledge Embedding ``meta_net = Linear(E, E/4) -> QuickGELU -> Linear(E/4, N*D)`` (with biases) maps
the L2-normalised zero-shot text feature ``t_zs_i`` of each class to N class-aware prompt tokens, which
*replace* the hidden states of the context positions at the input of block ``layer`` (block 8 of 12 in the
reference; weight 1.0). Logits ``logit_scale * cos(f, w_i)``; loss ``CE + 8.0 * (1 - mean_i cos(w_i, t_zs_i))``
(KgCoOp's term; the reference hard-codes 8.0 whatever ``TRAINER.COOP.W`` says). Recipe
(``configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml``): Adam lr 0.002 (Dassl: betas 0.9 / 0.999, weight decay
5e-4; eps 1e-3, which TCP's README patches into Dassl), batch 32, 50 epochs, cosine, 1 constant warm-up epoch
at 1e-5.
Transplant: ``t_zs`` is recomputed with the model in use (its own zero-shot features of the dataset
template), so the class-aware tokens follow the upgraded model as ContCoOp's class embeddings do, but deep
(inside the tower) rather than at the input. ``layer=None`` picks ``round(2 L / 3)`` for an L-block tower
(8 of 12; 3 of the toy models' 4). Departures (docs/methods.md): the harness's prompt layout
``[SOS] X.. X classname.`` and dataset template instead of the reference's per-dataset suffixes; fp32.
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
    REPEATED,
    TOKEN,
    UNIT,
    VLM,
    ClassPrompts,
    Module,
    SGDRecipe,
    UserError,
    assemble,
    class_prompts,
    ranged,
    zeroshot_text_features,
)
from upgradebench.compat import check_text_width
from upgradebench.prompting import DEPTH_WHY, MAX_DEPTH, MAX_N_CTX, N_CTX_WHY

from .coop import ContextLearner, FitInputs, FitState, Loss


@dataclass
class TCPConfig(SGDRecipe):
    """TCP's defaults: N = 4, insertion at 2/3 of the tower, W = 8.0, Adam 0.002, batch 32, 50 epochs."""

    n_ctx: int = ranged(4, ge=1, le=MAX_N_CTX, why=N_CTX_WHY)
    init_std: float = ranged(0.02, ge=0)
    layer: int | None = ranged(None, ge=1, le=MAX_DEPTH, why=DEPTH_WHY)
    kg_weight: float = ranged(8.0, ge=0)
    epochs: int | None = ranged(50, ge=1)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the reference meta-net's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise QuickGELU."""
        return x * torch.sigmoid(1.702 * x)


class KnowledgeEmbedding(nn.Module):
    """The reference's ``meta_net``: class text feature ``[C, E]`` -> class-aware tokens ``[C, N, D]``."""

    def __init__(self, embed_dim: int, n_ctx: int, text_width: int, hidden: int | None = None) -> None:
        super().__init__()
        self.n_ctx, self.text_width = n_ctx, text_width
        hidden = embed_dim // 4 if hidden is None else hidden  # the reference's; a mapped module keeps its own
        self.linear1 = nn.Linear(embed_dim, hidden)
        self.act = QuickGELU()
        self.linear2 = nn.Linear(hidden, n_ctx * text_width)

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> KnowledgeEmbedding:
        """The meta-net of saved weights; its token count and width are those of the module's context."""
        hidden, embed_dim = weights["linear1.weight"].shape
        n_ctx, text_width = state["ctx"].shape
        meta_net = cls(embed_dim, n_ctx, text_width, hidden=hidden)
        meta_net.load_state_dict(weights)
        return meta_net

    def forward(self, text_features: torch.Tensor) -> torch.Tensor:
        """Class-aware prompt tokens of normalised class text features."""
        out = self.linear2(self.act(self.linear1(text_features)))
        return out.view(text_features.shape[0], self.n_ctx, self.text_width)


def default_layer(vlm: VLM) -> int:
    """The reference inserts at block 8 of 12: two thirds of the tower."""
    return round(2 * vlm.num_text_layers / 3)


def insertion_layer(vlm: VLM, config: TCPConfig) -> int:
    """The block the class-aware tokens enter: ``config.layer``, or :func:`default_layer`; refused outside the tower."""
    layer = default_layer(vlm) if config.layer is None else config.layer
    if not 1 <= layer <= vlm.num_text_layers:
        raise UserError(f"TCP layer {layer} is outside 1..{vlm.num_text_layers} for {vlm.name}.",
                        f"pass --config layer=K with 1 <= K <= {vlm.num_text_layers}")
    return layer


def tcp_text_features(vlm: VLM, prompts: ClassPrompts, ctx: torch.Tensor, class_tokens: torch.Tensor,
                      layer: int) -> torch.Tensor:
    """Text features ``[C, E]``: context at the input, class-aware tokens replacing it at block ``layer``."""
    hidden = vlm.embeddings_to_layer(assemble(prompts, ctx), prompts.eot, layer)
    n = prompts.n_ctx
    hidden = torch.cat([hidden[:, :1], class_tokens.to(hidden.dtype), hidden[:, 1 + n:]], dim=1)
    return vlm.encode_text_embeddings(hidden, prompts.eot, start_layer=layer)


def knowledge(vlm: VLM, class_names: list[str], template: str) -> torch.Tensor:
    """Normalised zero-shot text features of ``vlm``: TCP's class-level textual knowledge."""
    return F.normalize(zeroshot_text_features(vlm, class_names, template), dim=-1)


@dataclass
class TCPModule(Module):
    """Context + knowledge embedding + insertion layer; class knowledge comes from the model in use."""

    spaces = {"ctx": (None, TOKEN), "meta_net.linear1.weight": (None, JOINT + COVECTOR + UNIT),
              "meta_net.linear1.bias": (None,), "meta_net.linear2.weight": (TOKEN + REPEATED, None),
              "meta_net.linear2.bias": (TOKEN + REPEATED,)}


    ctx: torch.Tensor
    meta_net: KnowledgeEmbedding
    layer: int
    template: str

    def text_features(self, vlm: VLM, class_names: list[str]) -> torch.Tensor:
        """Class text features of ``vlm``."""
        check_text_width(vlm, self.ctx, "TCP context")
        if vlm.embed_dim != self.meta_net.linear1.in_features or self.layer > vlm.num_text_layers:
            raise UserError(f"TCP module reads {self.meta_net.linear1.in_features}-d text features and inserts at "
                            f"block {self.layer}; {vlm.name} has {vlm.embed_dim}-d features and "
                            f"{vlm.num_text_layers} text blocks.",
                            "source and target must share the text feature width and have enough text blocks")
        self.meta_net.to(vlm.device)
        class_tokens = self.meta_net(knowledge(vlm, class_names, self.template))
        prompts = class_prompts(vlm, class_names, self.ctx.shape[0])
        return tcp_text_features(vlm, prompts, self.ctx.to(vlm.device), class_tokens, self.layer)

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        return vlm.logits(image_features.to(vlm.device), self.text_features(vlm, class_names))


class TCP(ContextLearner[TCPConfig, KnowledgeEmbedding]):
    """Textual-based Class-aware Prompt tuning (Yao et al., 2024).

    Reference: htyao89/Textual-based_Class-aware_prompt_tuning bd97bec (see the module docstring).
    """

    version = "2"  # 2: Adam eps 1e-3 (TCP's README), was torch's 1e-8
    description = ("CoOp context plus class-aware tokens from the zero-shot text features, "
                   "inserted deep in the text encoder.")
    Config = TCPConfig
    module_class = TCPModule
    optimizer = "adam"
    adam_eps = 1e-3  # TCP's README: "set the EPS in Adam as 1e-3" (patched into Dassl's optimizer.py)

    def network(self, fit: FitInputs[TCPConfig]) -> KnowledgeEmbedding:
        """The knowledge embedding, PyTorch's default Linear init seeded per run."""
        source, config = fit.source, fit.config
        insertion_layer(source, config)  # refused before anything trains
        torch.manual_seed(fit.seed)  # PyTorch's default Linear init of the meta-net, reproducible per seed
        return KnowledgeEmbedding(source.embed_dim, config.n_ctx, source.text_width).to(source.device)

    def loss(self, fit: FitState[TCPConfig, KnowledgeEmbedding]) -> Loss:
        """Cross-entropy + ``W * (1 - mean_i cos(w_i, t_zs_i))`` (KgCoOp's term)."""
        source, task, config = fit.source, fit.task, fit.config
        prompts, ctx, network = fit.prompts, fit.ctx, fit.network
        layer = insertion_layer(source, config)
        zs = knowledge(source, task.class_names, task.template)

        def loss_fn(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            text = tcp_text_features(source, prompts, ctx, network(zs), layer)
            score = 1.0 - (F.normalize(text, dim=-1) * zs).sum(-1).mean()
            return F.cross_entropy(source.logits(feats, text), labels) + config.kg_weight * score

        return loss_fn

    def module(self, fit: FitState[TCPConfig, KnowledgeEmbedding]) -> TCPModule:
        """Context, knowledge embedding, the layer it was trained at, and the template of the knowledge."""
        return TCPModule(fit.ctx, fit.network, insertion_layer(fit.source, fit.config), fit.task.template)

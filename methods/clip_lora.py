"""CLIP-LoRA on the text encoder (Zanella & Ben Ayed, CVPR-W 2024; MaxZanella/CLIP-LoRA 358f0d7, ``lora.py``,
``loralib/layers.py``, ``loralib/utils.py``, ``main.py``), in its ``--encoder text`` mode.

Every selected attention projection ``W`` (q, k, v of each text block; ``--position all``) gets a low-rank
update: ``W' = W + (alpha / sqrt(r)) B A`` with ``A [r, D_in]`` (kaiming-uniform, a = sqrt(5)) and
``B [D_out, r]`` (zeros), r = 2, alpha = 1. Classifier: the dataset template through the LoRA-adapted text
encoder; logits ``logit_scale * cos(f, t_c)`` (the reference hard-codes 100, OpenAI CLIP's scale; the harness
uses the scale of the model in use). Recipe: AdamW (lr 2e-4, weight decay 1e-2, betas 0.9 / 0.999), batch 32
with the last partial batch of each epoch kept (the reference's loader, ``drop_last=False``), ``500 * K``
iterations with a per-iteration cosine schedule down to 1e-6, cross-entropy; the text features are recomputed
every iteration. While fitting, each LoRA branch reads its input through its own dropout (p = 0.25, the
reference's ``LinearLoRA``: ``W x + b + scaling * B A dropout(x)``), with masks drawn from a generator seeded
by the fit's seed, so a fit is deterministic; evaluation has no dropout.
The module holds the factors only. Plugged into a model, the deltas are added to *that model's* attention
weights for the duration of one call (``torch.func.functional_call``: the model's own parameters are never
written), so a LoRA trained on CLIP can be dropped into EVA-CLIP, whose text tower has the same shapes. A
model whose text blocks or widths differ is refused with both shapes named.
Departures (docs/methods.md): fp32 instead of fp16 autocast; the harness's dataset template; dropout masks from
the fit's own generator rather than the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from upgradebench import VLM, FewShotTask, Method, Module, UserError, clean_name, ranged
from upgradebench.training import minibatches

PROJECTIONS = "qkvo"


@dataclass
class CLIPLoRAConfig:
    """CLIP-LoRA's defaults: r = 2, alpha = 1, q/k/v of every text block, AdamW 2e-4, 500 x K iterations, dropout
    0.25 on the LoRA branch's input while fitting."""

    rank: int = ranged(2, ge=1)
    alpha: float = ranged(1.0, ge=0)
    params: str = "qkv"
    layers: str = "all"
    iters_per_shot: int = ranged(500, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(2e-4, gt=0)
    weight_decay: float = ranged(1e-2, ge=0)
    eta_min: float = ranged(1e-6, ge=0)
    dropout: float = ranged(0.25, ge=0, le=1)


def attention_blocks(vlm: VLM) -> list[nn.MultiheadAttention]:
    """The attention module of every text block of ``vlm``."""
    blocks = [m for name, m in vlm.text_modules.items() if name.startswith("block_")]
    attns = [getattr(b, "attn", None) for b in blocks]
    found = [a for a in attns if isinstance(a, nn.MultiheadAttention)]
    if len(found) != len(attns):
        raise UserError(f"{vlm.name}'s text blocks have no nn.MultiheadAttention to adapt.",
                        "CLIP-LoRA needs a CLIP-style text tower")
    return found


def parse_layers(layers: str, num_layers: int) -> list[int]:
    """``"all"`` or comma-separated block indices."""
    if layers == "all":
        return list(range(num_layers))
    out = sorted({int(i) for i in layers.split(",")})
    if out[0] < 0 or out[-1] >= num_layers:
        raise UserError(f"CLIP-LoRA layers {layers!r} are outside 0..{num_layers - 1}.", "pass --config layers=all")
    return out


class LoRAFactors:
    """``A`` and ``B`` per (block, projection): keys ``"<block>.<p>.A"`` / ``"<block>.<p>.B"``, p in q, k, v, o."""

    def __init__(self, tensors: dict[str, torch.Tensor], rank: int, alpha: float, num_layers: int, width: int) -> None:
        self.tensors, self.rank, self.alpha = tensors, rank, alpha
        self.num_layers, self.width = num_layers, width

    @property
    def scaling(self) -> float:
        """``alpha / sqrt(r)``, the reference's scaling (not LoRA's usual ``alpha / r``)."""
        return self.alpha / math.sqrt(self.rank)

    @classmethod
    def init(cls, vlm: VLM, config: CLIPLoRAConfig, seed: int) -> LoRAFactors:
        """The reference's init: ``A`` kaiming-uniform (a = sqrt(5)), ``B`` zeros, on the selected projections."""
        if not config.params or set(config.params) - set(PROJECTIONS):
            raise UserError(f"CLIP-LoRA params {config.params!r} must be letters of {PROJECTIONS!r}.",
                            "pass --config params=qkv")
        width = vlm.text_width
        torch.manual_seed(seed)
        tensors = {}
        for i in parse_layers(config.layers, vlm.num_text_layers):
            for p in config.params:
                a = torch.empty(config.rank, width)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                tensors[f"{i}.{p}.A"], tensors[f"{i}.{p}.B"] = a, torch.zeros(width, config.rank)
        return cls(tensors, config.rank, config.alpha, vlm.num_text_layers, width)

    def delta(self, block: int, projection: str) -> torch.Tensor | None:
        """``scaling * B @ A`` of one projection, or None if it has no LoRA."""
        a = self.tensors.get(f"{block}.{projection}.A")
        return None if a is None else self.scaling * self.tensors[f"{block}.{projection}.B"] @ a

    def check_fits(self, vlm: VLM) -> None:
        """Refuse a model whose text tower has other block counts or widths than the one the factors were fitted on."""
        if (vlm.num_text_layers, vlm.text_width) != (self.num_layers, self.width):
            raise UserError(f"CLIP-LoRA module holds factors for a text tower of {self.num_layers} blocks x width "
                            f"{self.width}, but {vlm.name}'s text tower has {vlm.num_text_layers} blocks x width "
                            f"{vlm.text_width}.", "plug it into a model with the source's text architecture")

    def overrides(self, vlm: VLM) -> dict[str, torch.Tensor]:
        """``{parameter name in vlm.model: W + delta}`` for every adapted weight of ``vlm``."""
        self.check_fits(vlm)
        names = {id(p): n for n, p in vlm.model.named_parameters()}
        out = {}
        for i, attn in enumerate(attention_blocks(vlm)):
            deltas = [self.delta(i, p) for p in "qkv"]
            if any(d is not None for d in deltas):
                w: torch.Tensor = attn.in_proj_weight
                stacked = torch.cat([d.to(w.device) if d is not None else torch.zeros_like(w[:self.width])
                                     for d in deltas])
                out[names[id(w)]] = w + stacked
            d_o = self.delta(i, "o")
            if d_o is not None:
                w = attn.out_proj.weight
                out[names[id(w)]] = w + d_o.to(w.device)
        return out


class _Call(nn.Module):
    """Holds ``vlm.model`` as a submodule so that ``functional_call`` can swap its parameters during ``fn``."""

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args: Any) -> torch.Tensor:
        return self.fn(*args)


def with_lora(vlm: VLM, factors: LoRAFactors, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``fn(*args)`` with the LoRA deltas added to ``vlm``'s weights for this call only (differentiable)."""
    overrides = {f"model.{n}": w for n, w in factors.overrides(vlm).items()}
    return functional_call(_Call(vlm.model, fn), overrides, args)


def template_tokens(vlm: VLM, class_names: list[str], template: str) -> torch.Tensor:
    """Token ids of ``template.format(class)`` for every class."""
    return vlm.tokenize([template.format(clean_name(n)) for n in class_names])


def dropped(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Inverted dropout of ``x`` (zero with probability ``p``, the rest scaled by ``1 / (1 - p)``), masks drawn
    from ``generator`` (on ``x``'s device) so that a fit never touches the global RNG."""
    if p == 0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p) if p < 1 else x * 0


def dropout_attention(attn: nn.MultiheadAttention, factors: LoRAFactors, block: int, query: torch.Tensor,
                      key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None, p: float,
                      generator: torch.Generator) -> torch.Tensor:
    """The reference's LoRA attention while training (``PlainMultiheadAttentionLoRA``): separate q/k/v/o
    projections ``W x + b + scaling * B A dropout(x)``, one dropout mask per projection, then scaled dot-product
    attention with ``attn``'s heads and mask. Returns the attention output in ``attn``'s layout."""
    d, heads = attn.embed_dim, attn.num_heads
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # nn.MultiheadAttention masks out True; scaled_dot_product_attention would attend to it
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(attn_mask, float("-inf"))
    if not attn.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))

    def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, name: str) -> torch.Tensor:
        out = F.linear(x, weight, bias)
        a = factors.tensors.get(f"{block}.{name}.A")
        if a is not None:
            out = out + (dropped(x, p, generator) @ a.T) @ factors.tensors[f"{block}.{name}.B"].T * factors.scaling
        return out

    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k, v = (project(x, w[j * d:(j + 1) * d], None if b is None else b[j * d:(j + 1) * d], name)
               for j, (x, name) in enumerate(zip((query, key, value), "qkv")))
    batch, length = q.shape[:2]
    q, k, v = (t.reshape(batch, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask).transpose(1, 2).reshape(batch, length, d)
    out = project(out, attn.out_proj.weight, attn.out_proj.bias, "o")
    return out if attn.batch_first else out.transpose(0, 1)


@contextmanager
def training_dropout(vlm: VLM, factors: LoRAFactors, p: float, generator: torch.Generator) -> Iterator[None]:
    """Inside the block, every text attention of ``vlm`` runs :func:`dropout_attention` (the LoRA branches with
    dropout) instead of its own forward: an instance attribute shadows the module's ``forward`` (so its own
    attention is not computed only to be thrown away) and is deleted afterwards; no weight is modified."""
    factors.check_fits(vlm)
    blocks = attention_blocks(vlm)
    for i, attn in enumerate(blocks):
        def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                    attn_mask: torch.Tensor | None = None, module: nn.MultiheadAttention = attn, i: int = i,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
            return dropout_attention(module, factors, i, query, key, value, attn_mask, p, generator), None
        attn.forward = forward  # type: ignore[method-assign]  # shadowed on the instance while fitting, then deleted
    try:
        yield
    finally:
        for attn in blocks:
            del attn.forward


@dataclass
class CLIPLoRAModule(Module):
    """Low-rank factors of the text attention projections + the template; applied to the model in use.

    Its saved form predates the form derived from fields (factors at the top level of the safetensors file,
    their shapes in the JSON), so it keeps its own ``tensors`` / ``meta`` / ``from_state``.
    """

    factors: LoRAFactors
    template: str

    def text_features(self, vlm: VLM, class_names: list[str]) -> torch.Tensor:
        """Class text features of ``vlm`` with the LoRA deltas added to its text weights."""
        return with_lora(vlm, self.factors, vlm.encode_text, template_tokens(vlm, class_names, self.template))

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        return vlm.logits(image_features.to(vlm.device), self.text_features(vlm, class_names))

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.factors.tensors)

    def meta(self) -> dict[str, Any]:
        f = self.factors
        return {"rank": f.rank, "alpha": f.alpha, "num_layers": f.num_layers, "width": f.width,
                "template": self.template}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> CLIPLoRAModule:
        factors = LoRAFactors(dict(tensors), meta["rank"], meta["alpha"], meta["num_layers"], meta["width"])
        return cls(factors, meta["template"])


class CLIPLoRA(Method[CLIPLoRAConfig]):
    """CLIP-LoRA (Zanella & Ben Ayed, 2024) on the text encoder, reference MaxZanella/CLIP-LoRA 358f0d7."""

    version = "2"  # 2: dropout 0.25 on the LoRA branches and the last partial batch kept, as the reference
    description = ("Low-rank updates (r = 2) of the text encoder's q/k/v projections, "
                   "added to the weights of the model in use.")
    Config = CLIPLoRAConfig
    module_class = CLIPLoRAModule

    @classmethod
    def steps(cls, config: CLIPLoRAConfig, dataset: str, classes: int, shots: int) -> int:
        """The reference counts iterations, not epochs: ``iters_per_shot x K`` steps whatever the classes."""
        return config.iters_per_shot * shots

    def fit(self, source: VLM, task: FewShotTask, config: CLIPLoRAConfig, seed: int) -> CLIPLoRAModule:
        factors = LoRAFactors.init(source, config, seed)
        params = {k: nn.Parameter(v.to(source.device)) for k, v in factors.tensors.items()}
        factors.tensors = dict(params)
        optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay,
                                      betas=(0.9, 0.999))
        total = self.steps(config, task.dataset.name, len(task.class_names), task.shots)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=config.eta_min)
        tokens = template_tokens(source, task.class_names, task.template)
        labels = task.train_labels
        generator = torch.Generator().manual_seed(seed)
        # the dropout masks come from their own stream on the model's device (CPU masks would cost a copy per call)
        masks = torch.Generator(device=source.device).manual_seed(
            int(torch.randint(2**62, (1,), generator=generator)))
        step, epoch = 0, 0
        with training_dropout(source, factors, config.dropout, masks):
            while step < total:
                feats = task.epoch_features(epoch, generator)
                for idx in minibatches(len(labels), config.batch_size, generator, drop_last=False):
                    text = source.encode_text(tokens)
                    loss = F.cross_entropy(source.logits(feats[idx].to(source.device), text),
                                           labels[idx].to(source.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    if step == total:
                        break
                epoch += 1
        factors.tensors = {k: v.detach().cpu() for k, v in params.items()}
        return CLIPLoRAModule(factors, task.template)

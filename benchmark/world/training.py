"""Contrastive (CLIP) training of the toy models on a pool of rendered, captioned images.

The text tower runs on the positions ``0..max(eot)`` of each batch only: attention is causal and pooling
reads the EOT position, so this is the full 77-token forward, several times cheaper. Learning rates are
set per part of the model from the recipe (see :class:`TrainConfig`), which is how a target inherits a
text tower and decides how far it may drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .modelio import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class TrainConfig:
    """One recipe's optimisation settings (the ``train`` table of ``recipes.json``).

    AdamW with a linear warm-up and a cosine decay to zero. Weight decay follows open_clip (none on
    gains, biases and ``logit_scale``) and spares the token and positional embeddings too, so rows that no
    caption uses never change (which also lets training hold only the used rows, see
    :func:`compact_token_embedding`). The text tower's learning rate is ``lr * text_lr_scale``, times
    ``text_layer_decay ** (L + 1 - depth)`` where depth is 0 for the token and positional embeddings,
    ``i + 1`` for block ``i`` and ``L + 1`` for ``ln_final`` and the projection: a decay below 1 makes
    shallow layers move least (as the EVA-CLIP upgrade did). ``freeze_text_embeddings`` keeps the token
    and positional embeddings exactly as inherited.

    ``logit_scale``, when set, fixes the logit scale at that value (as CLIP's sits at its clamp of 100
    for most of its training) instead of learning it: every prompt method's optimisation depends on it, and
    learned here it falls below its initial 14.3 (measured 12.7 after toy-clip's training, even at a 10x
    learning rate), where CLIP's rises to 100.

    ``freeze_visual`` trains the text tower only: the vision tower keeps its inherited weights and BatchNorm
    statistics bit for bit (as LiT locks its image tower), so a target that only retrains or drifts its text
    tower ships no second copy of the vision tower.

    ``crop_scale`` (``[lo, hi]``) shows a fraction ``crop_fraction`` of the images as close-ups: a random
    crop of ``lo`` to ``hi`` of the frame's area (aspect ratio 3:4 to 4:3) taken from the pool's full-size
    rendering and resized to the model's input, as random-resized-crop augmentation shows them to few-shot
    fine-tuning. Web pre-training sees objects at every scale; a pool that never shows a zoomed or cut view
    makes every crop a shift of its own (docs/world.md, "World v3").

    ``grouped_batches`` is the fraction of batches whose images all share the value of one key of
    ``group_by`` (drawn per batch; a key is an attribute or several joined by ``+``). Contrastive training
    from scratch otherwise never learns shape here: colour and background tell almost every caption in a
    random batch apart, and neither tower has shape features to start from (measured: 17-25% on 8 shapes
    after 800 steps, with colour at 99%). In a batch of one colour, background and size, BatchNorm's batch
    statistics remove what the images share and only shape and pattern can match the captions. The random
    batches in between keep colour and background learned; a last stage of random batches settles the
    BatchNorm running statistics.
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta2: float = 0.98
    eps: float = 1e-6
    text_lr_scale: float = 1.0
    text_layer_decay: float = 1.0
    freeze_text_embeddings: bool = False
    logit_scale: float | None = None
    flip: bool = True
    grouped_batches: float = 0.0
    group_by: tuple[str, ...] = ()
    freeze_visual: bool = False
    crop_scale: tuple[float, float] | None = None
    crop_fraction: float = 0.5

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> TrainConfig:
        """Build from a recipe table, refusing keys this trainer does not know (typos would be silent)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown training keys {unknown}; known: {sorted(known)}")
        for key in ("group_by", "crop_scale"):
            if table.get(key) is not None:
                table = {**table, key: tuple(table[key])}
        return cls(**table)


def text_tower(model: nn.Module) -> Any:
    """The module that holds the text transformer (``model.text`` for CustomTextCLIP, else the model).

    Typed ``Any``: its parts (``token_embedding``, ``transformer.resblocks``, ``attn_mask``, ...) are open_clip
    attributes that nn.Module's ``__getattr__`` can only type as ``Tensor | Module``.
    """
    return model.text if hasattr(model, "text") else model


def encode_text_truncated(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` run on positions ``0..max(eot)`` only (same result, less work)."""
    tower = text_tower(model)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    x = tower.token_embedding(tokens[:, :length]) + tower.positional_embedding[:length]
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)[torch.arange(x.shape[0]), eot]
    proj = tower.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` with the CLIP mean/std the saved models declare."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


@contextmanager
def compact_token_embedding(model: nn.Module, tokens: torch.Tensor) -> Iterator[torch.Tensor]:
    """Train with a token embedding of only the rows ``tokens`` use; yields ``tokens`` renumbered.

    The captions use a few hundred of the 49408 BPE tokens; the dense gradient and AdamW update of the
    whole table cost about as much as the rest of a step. With no weight decay on embeddings the other
    rows would not move at all, so this is exact. The trained rows are written back on exit.
    """
    tower = text_tower(model)
    full = tower.token_embedding
    used = torch.unique(tokens)
    compact = nn.Embedding.from_pretrained(full.weight.detach()[used].clone(), freeze=not full.weight.requires_grad)
    renumber = torch.zeros(full.num_embeddings, dtype=torch.long)
    renumber[used] = torch.arange(len(used))
    tower.token_embedding = compact
    try:
        yield renumber[tokens]
    finally:
        with torch.no_grad():
            full.weight[used] = compact.weight
        tower.token_embedding = full


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per (learning-rate scale, weight decay) pair."""
    tower = text_tower(model)
    depth_of: dict[int, int] = {}
    blocks = tower.transformer.resblocks
    for p in (tower.token_embedding.weight, tower.positional_embedding):
        depth_of[id(p)] = 0
    for i, block in enumerate(blocks):
        for p in block.parameters():
            depth_of[id(p)] = i + 1
    for p in [*tower.ln_final.parameters(), tower.text_projection]:
        depth_of[id(p)] = len(blocks) + 1
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    visual = {id(p) for p in cast(nn.Module, model.visual).parameters()}
    for name, param in model.named_parameters():
        if cfg.freeze_visual and id(param) in visual:
            param.requires_grad_(False)
            continue
        if id(param) in depth_of:
            if depth_of[id(param)] == 0 and cfg.freeze_text_embeddings:
                param.requires_grad_(False)
                continue
            scale = cfg.text_lr_scale * cfg.text_layer_decay ** (len(blocks) + 1 - depth_of[id(param)])
        elif param is model.logit_scale and cfg.logit_scale is not None:
            param.requires_grad_(False)
            continue
        else:
            scale = 1.0  # vision tower and a learned logit_scale
        if scale == 0.0:
            param.requires_grad_(False)
            continue
        embedding = depth_of.get(id(param)) == 0
        wd = 0.0 if embedding or _no_decay(name, param) else cfg.weight_decay
        groups.setdefault((scale, wd), []).append(param)
    return [{"params": ps, "lr_scale": s, "weight_decay": wd} for (s, wd), ps in groups.items()]


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup_steps) / span))


def train_contrastive(
    model: nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
    attributes: dict[str, torch.Tensor] | None = None,
    full_size: torch.Tensor | None = None,
) -> list[float]:
    """Train ``model`` in place on the pool (uint8 images ``[N, H, W, 3]``, token ids ``[N, 77]``).

    ``attributes`` (name -> value of every pool image) is needed for grouped batches only; ``full_size`` (the
    pool at its rendered size, ``[N, S, S, 3]``) for close-up crops only (``cfg.crop_scale``).

    Each epoch visits the pool in an order drawn from a generator seeded by ``seed`` (no image twice in a
    batch), so the run is reproducible. Returns the loss of every step; ``on_step(step, loss)`` is called
    after each one (for progress bars).
    """
    if cfg.steps == 0:
        return []
    with compact_token_embedding(model, tokens) as compact_tokens:
        losses = _train(model, images, compact_tokens, cfg, seed, on_step, attributes or {}, full_size)
    model.eval()
    return losses


def _targets(tokens: torch.Tensor) -> torch.Tensor:
    """Contrastive targets: each image matches its own caption and every identical one in the batch.

    Identical captions ("a red star.") are common in grouped batches; counting them as negatives would ask
    the model to tell apart what the text does not.
    """
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()
    return same / same.sum(1, keepdim=True)


class _Batches:
    """Batch indices: epochs of a seeded permutation, and (a fraction ``grouped_batches``) batches whose
    images share one ``group_by`` key's value."""

    def __init__(self, n: int, cfg: TrainConfig, seed: int, attributes: dict[str, torch.Tensor]) -> None:
        if n < cfg.batch_size:
            raise ValueError(f"the pool ({n} images) is smaller than one batch ({cfg.batch_size})")
        if cfg.grouped_batches and not cfg.group_by:
            raise ValueError("grouped_batches needs group_by keys")
        self.n, self.cfg = n, cfg
        self.groups = [self._groups(key, attributes) for key in cfg.group_by] if cfg.grouped_batches else []
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0

    @staticmethod
    def _groups(key: str, attributes: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Pool indices by value of ``key`` (attributes joined by ``+`` combine); values too rare for a
        batch are left out."""
        names = key.split("+")
        missing = set(names) - set(attributes)
        if missing:
            raise ValueError(f"grouped batches need the pool's attributes {sorted(missing)}")
        code = torch.zeros_like(attributes[names[0]])
        for name in names:
            code = code * (int(attributes[name].max()) + 1) + attributes[name]
        return [idx for v in torch.unique(code) if len(idx := torch.nonzero(code == v).flatten()) >= 2]

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.gen))

    def next(self) -> torch.Tensor:
        """The indices of the next batch."""
        size = self.cfg.batch_size
        if self.groups and float(torch.rand(1, generator=self.gen)) < self.cfg.grouped_batches:
            groups = self.groups[self._randint(len(self.groups))]
            same = groups[self._randint(len(groups))]
            return same[torch.randperm(len(same), generator=self.gen)[:size]]
        if self.cursor + size > len(self.order):
            self.order, self.cursor = torch.randperm(self.n, generator=self.gen), 0
        self.cursor += size
        return self.order[self.cursor - size:self.cursor]


def close_ups(images: torch.Tensor, full_size: torch.Tensor, idx: torch.Tensor, cfg: TrainConfig,
              gen: torch.Generator) -> torch.Tensor:
    """The batch ``images`` (normalised, ``[B, 3, H, W]``) with a fraction ``cfg.crop_fraction`` of its images
    replaced by random crops of their full-size rendering (``full_size[idx]``), resized to ``H`` x ``W``."""
    assert cfg.crop_scale is not None
    lo, hi = cfg.crop_scale
    out = images.clone()
    size = full_size.shape[1]
    pick = torch.rand(len(idx), generator=gen) < cfg.crop_fraction
    for i in torch.nonzero(pick).flatten().tolist():
        area = lo + (hi - lo) * float(torch.rand(1, generator=gen))
        ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * float(torch.rand(1, generator=gen)))
        w = min(size, max(2, round(size * math.sqrt(area * ratio))))
        h = min(size, max(2, round(size * math.sqrt(area / ratio))))
        x0 = int(torch.randint(size - w + 1, (1,), generator=gen))
        y0 = int(torch.randint(size - h + 1, (1,), generator=gen))
        crop = normalize_images(full_size[idx[i]][None, y0:y0 + h, x0:x0 + w])
        out[i] = F.interpolate(crop, size=images.shape[-2:], mode="bilinear", antialias=True, align_corners=False)[0]
    return out


def _train(model: Any, images: torch.Tensor, tokens: torch.Tensor, cfg: TrainConfig, seed: int,
           on_step: Callable[[int, float], None] | None, attributes: dict[str, torch.Tensor],
           full_size: torch.Tensor | None) -> list[float]:
    # model: an open_clip CLIP / CustomTextCLIP, Any for the reason text_tower gives
    if cfg.logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.logit_scale))
    if cfg.crop_scale is not None and full_size is None:
        raise ValueError("crop_scale needs the pool at its full size")
    groups = parameter_groups(model, cfg)
    model.train()
    if cfg.freeze_visual:  # eval mode keeps BatchNorm's running statistics as inherited
        model.visual.eval()
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), eps=cfg.eps)
    batches = _Batches(images.shape[0], cfg, seed, attributes)
    losses = []
    for step in range(cfg.steps):
        idx = batches.next()
        x = normalize_images(images[idx])
        if cfg.flip:
            flip = torch.rand(len(idx), generator=batches.gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if cfg.crop_scale is not None:
            assert full_size is not None  # checked above: crop_scale needs it
            x = close_ups(x, full_size, idx, cfg, batches.gen)
        factor = _lr_factor(step, cfg)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * group["lr_scale"] * factor
        target = _targets(tokens[idx])
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(encode_text_truncated(model, tokens[idx]), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses

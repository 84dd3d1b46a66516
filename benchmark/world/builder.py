"""Making one toy model from its recipe: the training pool, inheritance from a parent, training, saving.

:mod:`.zoo` decides what to build, in which order, where, and under which lock; this module only builds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from . import generator
from .modelio import create_model, read_config, save_local_dir
from .shipped import seeded_token_table
from .training import TrainConfig, text_tower, train_contrastive

POOL_STREAM = "pretrain"
"""The generator stream the toy models are trained on (disjoint from every dataset's streams)."""

# Which model-config keys a copied part brings with it from the parent.
_INHERITED_KEYS = {"text": ("text_cfg", "embed_dim", "quick_gelu"), "visual": ("vision_cfg", "embed_dim"),
                   "logit_scale": ()}


@dataclass
class TrainingPool:
    """Rendered images (uint8 ``[N, H, W, 3]``), their captions and attribute values (for grouped batches);
    token ids are made per tokenizer."""

    images: torch.Tensor
    captions: list[str]
    attributes: dict[str, torch.Tensor]
    seed: int = 0
    _tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    _resized: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def render(cls, seed: int, size: int, advance: Callable[[int], None] | None = None) -> TrainingPool:
        """Render images ``0..size-1`` of the pool stream and caption them."""
        images = torch.empty((size, generator.IMAGE_SIZE, generator.IMAGE_SIZE, 3), dtype=torch.uint8)
        captions = []
        attributes = {a: torch.empty(size, dtype=torch.long) for a in generator.ATTRIBUTES}
        for i in range(size):
            scene = generator.sample_scene(seed, POOL_STREAM, i)
            images[i] = torch.from_numpy(generator.render(scene))
            captions.append(generator.caption(scene))
            for a in generator.ATTRIBUTES:
                attributes[a][i] = scene.attribute(a)
            if advance is not None and (i + 1) % 250 == 0:
                advance(250)
        return cls(images, captions, attributes, seed)

    def images_at(self, size: int) -> torch.Tensor:
        """The images at ``size`` x ``size`` pixels, resized as the saved model's test transform resizes
        (PIL bicubic), so that training sees what evaluation will."""
        if size == self.images.shape[1]:
            return self.images
        if size not in self._resized:
            resized = [Image.fromarray(image.numpy()).resize((size, size), Image.Resampling.BICUBIC)
                       for image in self.images]
            self._resized[size] = torch.from_numpy(np.stack([np.asarray(image) for image in resized]))
        return self._resized[size]

    def tokens(self, context_length: int) -> torch.Tensor:
        """The captions as token ids of open_clip's standard BPE tokenizer."""
        if context_length not in self._tokens:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokens[context_length] = SimpleTokenizer(context_length=context_length)(self.captions)
        return self._tokens[context_length]


def resolve_model_cfg(recipe: dict[str, Any], parent_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe's ``model`` table completed with what its inherited parts bring from the parent."""
    own = recipe.get("model", {})
    cfg = copy.deepcopy(own)
    for part in recipe.get("init", {}).get("copy", []):
        for key in _INHERITED_KEYS[part]:
            if key in own:
                raise ValueError(f"recipe sets model.{key}, but it is inherited with the parent's {part!r}")
            if parent_cfg is not None and key in parent_cfg:
                cfg[key] = copy.deepcopy(parent_cfg[key])
    return cfg


def inherit(model: nn.Module, parent_dir: Path, parts: list[str]) -> list[str]:
    """Copy ``parts`` (``text``, ``visual``, ``logit_scale``) of the parent's weights into ``model``.

    Works across layouts: a CLIP's text tower lives on the model, a CustomTextCLIP's under ``.text``.
    Returns the names of the copied tensors.
    """
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_to_custom_text_state_dict(load_file(str(parent_dir / "open_clip_model.safetensors")))
    custom = hasattr(model, "text")
    picked = {}
    for key, value in state.items():
        part = key.split(".", 1)[0] if "." in key else key
        if part in parts:
            picked[key if custom or part != "text" else key[len("text."):]] = value
    missing_parts = set(parts) - {k.split(".", 1)[0] if "." in k else k for k in state}
    if missing_parts:
        raise ValueError(f"parent {parent_dir} has no {sorted(missing_parts)}")
    result = model.load_state_dict(picked, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"parent weights do not fit the new model: {result.unexpected_keys[:5]}")
    return sorted(picked)


def training_stages(train: dict[str, Any]) -> list[TrainConfig]:
    """A recipe's ``train`` table as stages run one after the other (each with a fresh optimiser and
    schedule): ``stages`` lists each stage's own keys, the other keys are shared by all stages."""
    common = {k: v for k, v in train.items() if k != "stages"}
    return [TrainConfig.from_dict({**common, **stage}) for stage in train.get("stages", [{}])]


def build_model(
    recipe: dict[str, Any],
    pool: TrainingPool,
    seed: int,
    out_dir: Path,
    parent_dir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create, initialise, train and save one model into ``out_dir``; returns its build record."""
    from ..models.fingerprint import state_dict_fingerprint

    parent_cfg = read_config(parent_dir)["model_cfg"] if parent_dir is not None else None
    model_cfg = resolve_model_cfg(recipe, parent_cfg)
    torch.manual_seed(seed)
    model = create_model(model_cfg)
    parts = recipe.get("init", {}).get("copy", [])
    if parts:
        assert parent_dir is not None
        inherit(model, parent_dir, parts)
    if "text" in parts:  # the inherited table keeps the parent's fill in its untrained rows
        assert parent_dir is not None  # as above: parts are copied from the parent
        token_seed = read_config(parent_dir)["upgradebench"]["token_table_seed"]
    else:  # a new text tower: its token table starts from a fill every CPU reproduces
        token_seed = seed
        table = text_tower(model).token_embedding.weight
        with torch.no_grad():
            table.copy_(seeded_token_table(token_seed, *table.shape))
    image_size = model_cfg["vision_cfg"].get("image_size", generator.IMAGE_SIZE)
    images = pool.images_at(image_size)
    tokens = pool.tokens(model_cfg["text_cfg"]["context_length"])
    start = time.perf_counter()
    losses: list[float] = []
    for i, stage in enumerate(training_stages(recipe["train"])):
        losses += train_contrastive(model, images, tokens, stage, seed + i, on_step, pool.attributes, pool.images)
    record = {
        **(extra or {}),
        "inherited": parts,
        "token_table_seed": token_seed,
        "train": {"steps": len(losses), "seconds": round(time.perf_counter() - start, 1),
                  "first_loss": round(losses[0], 4) if losses else None,
                  "last_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4) if losses else None},
        "fingerprint": state_dict_fingerprint(model),
    }
    save_local_dir(model, model_cfg, out_dir, extra=record)
    return record

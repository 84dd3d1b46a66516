"""The VLM wrapper: one frozen open_clip model behind the contract every method uses.

It hides where the text tower lives (on the model for ``CLIP``, under ``.text`` for ``CustomTextCLIP``)
and offers the text encoder as pieces: token embeddings, a truncated forward from embeddings that may
start at any block, and per-layer hidden states. Because attention is causal and pooling reads the EOT
position, running positions ``0..max(eot)`` only gives the same features as the full context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .fingerprint import state_dict_fingerprint
from .spec import ModelSpec
from .transforms import TransformSpec


class VLM:
    """A frozen open_clip model (``CLIP`` or ``CustomTextCLIP``) with the harness's text/image API."""

    def __init__(self, model: nn.Module, tokenizer, spec: ModelSpec, device: str | torch.device = "cpu",
                 folder: str | None = None) -> None:
        self.folder = folder  # the open_clip local-dir folder the model was loaded from, if any
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = torch.device(device)
        # Any: the tower's parts (token_embedding, transformer.resblocks, attn_mask, text_projection, ...) are open_clip
        # attributes that nn.Module's __getattr__ can only type as Tensor | Module
        tower: Any = model.text if hasattr(model, "text") else model
        self._tower: Any = tower
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if pool != "argmax" or getattr(tower, "cls_emb", None) is not None or tower.attn_mask is None:
            raise UserError(
                f"Model {spec.alias!r} has a text tower upgradebench cannot split (pool {pool!r}, "
                "needs a causal CLIP-style tower pooled at the EOT token).",
                "use a CLIP / EVA-CLIP style model",
            )
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.test_transform_spec = TransformSpec(size, mean, std, train=False)
        self.train_transform_spec = TransformSpec(size, mean, std, train=True)
        self._fingerprint: str | None = None

    # ---- identity -------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of the weights (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = state_dict_fingerprint(self.model)
        return self._fingerprint

    @property
    def name(self) -> str:
        """The alias or name the model was loaded under."""
        return self.spec.alias

    # ---- sizes ----------------------------------------------------------------------------------------------
    @property
    def text_width(self) -> int:
        """Width D of the token embeddings / text transformer."""
        return self._tower.token_embedding.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        """Rows of the token-embedding table (49408 for CLIP's tokenizer)."""
        return int(self._tower.token_embedding.weight.shape[0])

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text embedding."""
        proj = self._tower.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def num_text_layers(self) -> int:
        """Number of blocks of the text transformer."""
        return len(self._tower.transformer.resblocks)

    @property
    def context_length(self) -> int:
        """Maximum number of text positions."""
        return self._tower.positional_embedding.shape[0]

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)`` of the model (100 for OpenAI CLIP)."""
        scale = cast(torch.Tensor, self.model.logit_scale)  # a parameter of CLIP / CustomTextCLIP
        return float(scale.detach().exp().item())

    @property
    def text_modules(self) -> dict[str, nn.Module | nn.Parameter]:
        """The text tower's parts by layer name, in forward order (for the drift analysis)."""
        t = self._tower
        parts: dict[str, nn.Module | nn.Parameter] = {
            "token_embedding": t.token_embedding,
            "positional_embedding": t.positional_embedding,
        }
        for i, block in enumerate(t.transformer.resblocks):
            parts[f"block_{i}"] = block
        parts["ln_final"] = t.ln_final
        parts["text_projection"] = t.text_projection
        return parts

    # ---- transforms and images ------------------------------------------------------------------------------
    @property
    def train_transform(self):
        """CoOp's train transform: random-resized-crop (0.08-1) + flip, bicubic, model mean/std."""
        return self.train_transform_spec.build()

    @property
    def test_transform(self):
        """Resize the short side + centre crop, bicubic, model mean/std."""
        return self.test_transform_spec.build()

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Image features (not normalised) of a batch of transformed images."""
        clip: Any = self.model  # open_clip's CLIP / CustomTextCLIP, whose encode_image nn.Module cannot type
        return clip.encode_image(batch.to(self.device)).float()

    # ---- text -----------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Token ids ``[B, context_length]`` on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts)).to(self.device)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, D]`` (no positional embedding)."""
        return self._tower.token_embedding(tokens.to(self.device))

    @staticmethod
    def eot_index(tokens: torch.Tensor) -> torch.Tensor:
        """Position of the EOT token (the largest id) in each row."""
        return tokens.argmax(dim=-1)

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int | None = None, keep: bool = False):
        tr = self._tower.transformer
        length = x.shape[1]
        mask = self._tower.attn_mask[:length, :length].to(device=x.device, dtype=x.dtype)
        batch_first = getattr(tr, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        states = []
        for block in tr.resblocks[start:stop]:
            x = block(x, attn_mask=mask)
            if keep:
                states.append(x if batch_first else x.transpose(0, 1))
        if not batch_first:
            x = x.transpose(0, 1)
        return x, states

    def _pool_project(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        x = self._tower.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
        proj = self._tower.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def encode_text_embeddings(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, start_layer: int = 0
    ) -> torch.Tensor:
        """Text features from embeddings, running only positions ``0..max(eot_index)``.

        With ``start_layer == 0``, ``embeds`` are token embeddings ``[B, L, D]`` and the positional
        embedding is added here; with ``start_layer == k > 0`` they are the hidden states at the input of
        block ``k`` (positional embedding already inside), as the depth study needs.
        """
        length = int(eot_index.max().item()) + 1
        x = embeds[:, :length].to(self.device)
        if start_layer == 0:
            x = x + self._tower.positional_embedding[:length].to(x.dtype)
        elif not 0 < start_layer <= self.num_text_layers:
            raise ValueError(f"start_layer must be in 0..{self.num_text_layers}, got {start_layer}")
        x, _ = self._run_blocks(x, start_layer)
        return self._pool_project(x, eot_index)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features (not normalised) of token ids, on the truncated context."""
        tokens = tokens.to(self.device)
        return self.encode_text_embeddings(self.token_embeddings(tokens), self.eot_index(tokens))

    def embeddings_to_layer(self, embeds: torch.Tensor, eot_index: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states ``[B, L', D]`` at the input of block ``layer`` from token embeddings ``[B, L, D]``.

        Positional embedding added, positions ``0..max(eot_index)`` only, differentiable in ``embeds``; with
        :meth:`encode_text_embeddings` at ``start_layer=layer`` it splits the text encoder at block ``layer``
        (a method that rewrites hidden states in the middle of the tower, as TCP does).
        """
        if not 0 <= layer <= self.num_text_layers:
            raise ValueError(f"layer must be in 0..{self.num_text_layers}, got {layer}")
        length = int(eot_index.max().item()) + 1
        x = embeds[:, :length].to(self.device) + self._tower.positional_embedding[:length].to(embeds.dtype)
        x, _ = self._run_blocks(x, 0, layer)
        return x

    def hidden_states_at(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states ``[B, L', D]`` at the input of block ``layer`` (truncated to ``max(eot)+1``)."""
        tokens = tokens.to(self.device)
        return self.embeddings_to_layer(self.token_embeddings(tokens), self.eot_index(tokens), layer)

    def text_hidden_states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output, truncated to ``max(eot)+1`` positions: the embeddings (token +
        positional) and each block as ``[B, L', D]``, then the final projected feature ``[B, embed_dim]``.
        ``len == num_text_layers + 2``. Positions after a row's own EOT are padding; callers mask them."""
        tokens = tokens.to(self.device)
        eot = self.eot_index(tokens)
        length = int(eot.max().item()) + 1
        x = self.token_embeddings(tokens)[:, :length] + self._tower.positional_embedding[:length]
        first = x
        x, states = self._run_blocks(x, 0, keep=True)
        return [first, *states, self._pool_project(x, eot)]

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos(image, text)`` for every image/class pair."""
        img = F.normalize(image_features.to(text_features.dtype), dim=-1)
        return self.logit_scale * img @ F.normalize(text_features, dim=-1).T

    def __repr__(self) -> str:
        return f"VLM({self.spec.alias!r}, kind={self.spec.kind}, arch={self.spec.arch!r})"

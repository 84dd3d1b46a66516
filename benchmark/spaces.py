"""Linear maps between two models' spaces, fitted on anchors both models share.

Two spaces matter when a module meets another model: the text tower's **token-embedding space** (``TOKEN``: where
a prompt's context vectors live) and the **joint image-text embedding space** (``JOINT``: image features, class
text features, and everything a linear probe or an adapter reads). A map ``M`` (``[D_target, D_source]``) carries
a source vector ``v`` to ``M v``.

Token maps are fitted on the **shared vocabulary**: the rows of both token-embedding tables that both models
learned. A real model learned every row; a model of the embedded world learned only the rows its captions use,
the rest staying at their seeded initialisation (``upgradebench.world.shipped``), which no map should be fitted on.
Both models must use one tokenizer, so that row ``i`` is the same token in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import UserError

if TYPE_CHECKING:
    from .models.vlm import VLM

TOKEN = "token"
"""The text tower's token-embedding space (width ``vlm.text_width``)."""
JOINT = "joint"
"""The joint image-text embedding space (width ``vlm.embed_dim``): image features and class text features."""
SPACES = (TOKEN, JOINT)

MAP_KINDS = ("auto", "procrustes", "lstsq")
"""How a map is fitted: ``procrustes`` (a scaled orthogonal map; widths must agree), ``lstsq`` (ridge-regularised
least squares, any widths) or ``auto`` (Procrustes where the widths agree, else least squares)."""


@dataclass
class LinearMap:
    """``v_target ≈ matrix @ v_source``, fitted on ``anchors`` pairs; ``residual`` is the relative error on them,
    ``||Y - X Mᵀ||_F / ||Y||_F`` (0: the anchors map exactly; 1: the map explains nothing)."""

    matrix: torch.Tensor
    kind: str
    residual: float
    anchors: int

    @property
    def scale(self) -> float:
        """The map's overall scale: its RMS singular value (``s`` of a Procrustes map ``s Q``)."""
        return float(torch.linalg.norm(self.matrix) / min(self.matrix.shape) ** 0.5)

    @property
    def orthogonal(self) -> bool:
        """Whether the map is a multiple of an orthogonal matrix (it preserves angles: dot products scale by a
        constant), so a linear layer acting inside the space can be carried by conjugation."""
        return self.kind == "procrustes"

    def vectors(self, tensor: torch.Tensor, axis: int) -> torch.Tensor:
        """``tensor`` with its ``axis`` (vectors of the source space) carried into the target space."""
        return _along(tensor, axis, self.matrix)

    def covectors(self, tensor: torch.Tensor, axis: int) -> torch.Tensor:
        """``tensor`` with its ``axis`` (covectors: weights that take a dot product with source vectors, the input
        side of a linear layer) carried so that ``w' · (M v) = w · v`` for every ``v`` the map covers:
        ``w' = pinv(M)ᵀ w``."""
        return _along(tensor, axis, torch.linalg.pinv(self.matrix.double()).T.to(self.matrix.dtype))


def _along(tensor: torch.Tensor, axis: int, matrix: torch.Tensor) -> torch.Tensor:
    moved = tensor.movedim(axis, -1)
    out = moved.to(matrix.dtype) @ matrix.T
    return out.to(tensor.dtype).movedim(-1, axis).contiguous()


def fit_map(x: torch.Tensor, y: torch.Tensor, kind: str = "auto", ridge: float = 1e-3) -> LinearMap:
    """The linear map taking the rows of ``x`` (``[n, D_source]``) to those of ``y`` (``[n, D_target]``).

    ``procrustes``: ``s Q`` with ``Q`` orthogonal maximising ``tr(Qᵀ (YᵀX + λP))`` (Schönemann's SVD solution) and
    ``s`` the least-squares scale. ``lstsq``: ``argmin ||Y - X Mᵀ||² + λ||M - P||²``. ``P``, the prior, is the
    identity where the widths agree and zero otherwise; ``λ`` is ``ridge`` times the mean singular value (the mean
    eigenvalue of ``XᵀX`` for ``lstsq``), so both stay defined with fewer anchors than dimensions. No centring: a
    map carries directions, not offsets.
    """
    if kind not in MAP_KINDS:
        raise UserError(f"Unknown map kind {kind!r}.", f"use one of {', '.join(MAP_KINDS)}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"A map needs the same, non-zero number of anchors on both sides ({x.shape[0]} vs "
                        f"{y.shape[0]}).", "fit it on rows both models share")
    same_width = x.shape[1] == y.shape[1]
    if kind == "auto":
        kind = "procrustes" if same_width else "lstsq"
    if kind == "procrustes" and not same_width:
        raise UserError(f"An orthogonal (Procrustes) map needs equal widths, not {x.shape[1]} -> {y.shape[1]}.",
                        "use kind=lstsq across a width change")
    xd, yd = x.double(), y.double()
    # the prior: where widths agree, the identity (a direction no anchor pins stays where it is: with fewer anchors
    # than dimensions, e.g. the embedded world's ~120 learned token rows in 128 dimensions, a fit without it
    # rotates the unpinned directions arbitrarily); across a width change, zero
    prior = torch.eye(x.shape[1], dtype=xd.dtype) if same_width else torch.zeros(y.shape[1], x.shape[1],
                                                                               dtype=xd.dtype)
    if kind == "procrustes":
        cross = yd.T @ xd
        lam = ridge * torch.linalg.svdvals(cross).sum() / x.shape[1]
        u, s, vh = torch.linalg.svd(cross + lam * prior)
        q = u @ vh
        scale = torch.trace(q.T @ cross) / (xd * xd).sum().clamp_min(1e-300)
        matrix = scale * q
    else:
        gram = xd.T @ xd
        lam = ridge * torch.trace(gram) / x.shape[1]
        matrix = torch.linalg.solve(gram + lam * torch.eye(x.shape[1], dtype=gram.dtype), xd.T @ yd + lam * prior.T).T
    residual = float(torch.linalg.norm(yd - xd @ matrix.T) / torch.linalg.norm(yd).clamp_min(1e-300))
    return LinearMap(matrix.float(), kind, residual, x.shape[0])


def token_table(vlm: VLM) -> torch.Tensor:
    """The token-embedding table ``[V, D]`` of ``vlm``'s text tower (on the CPU)."""
    return vlm.token_embeddings(torch.arange(vlm.vocab_size).unsqueeze(0))[0].detach().float().cpu()


def vocabulary_rows(vlm: VLM) -> torch.Tensor:
    """Ids of the token rows ``vlm``'s training learned: every row, except for a model of the embedded world,
    whose build record names the seed of its initial table (the rows still equal to it were never trained)."""
    seed = _recorded_seed(vlm.folder) if vlm.folder else None
    table = token_table(vlm)
    if seed is None:
        return torch.arange(table.shape[0])
    from .world.shipped import seeded_token_table

    return torch.nonzero((table != seeded_token_table(seed, *table.shape)).any(dim=1)).flatten()


@lru_cache(maxsize=32)
def _recorded_seed(folder: str) -> int | None:
    """The initial-table seed an embedded-world model's ``open_clip_config.json`` records, if any."""
    path = Path(folder) / "open_clip_config.json"
    try:
        record = json.loads(path.read_text()).get("upgradebench") or {}
    except (OSError, ValueError, AttributeError):
        return None
    seed = record.get("token_table_seed")
    return int(seed) if isinstance(seed, int) else None


_PROBE = "a photo of a red striped heart on a light blue background, 42 cafés."


def check_same_tokenizer(source: VLM, target: VLM) -> None:
    """Refuse a pair whose tokenizers differ (row ``i`` would not be the same token in both tables)."""
    same = (source.vocab_size == target.vocab_size
            and torch.equal(source.tokenize(_PROBE).cpu(), target.tokenize(_PROBE).cpu()))
    if not same:
        raise UserError(f"{source.name} and {target.name} use different tokenizers ({source.vocab_size} and "
                        f"{target.vocab_size} tokens): no token row means the same in both.",
                        "a token-embedding map needs one tokenizer on both sides; use a mapper that does not map "
                        "token embeddings (upgradebench mappers list)")


def shared_vocabulary(source: VLM, target: VLM) -> torch.Tensor:
    """Ids of the token rows both models learned (one tokenizer required)."""
    check_same_tokenizer(source, target)
    a, b = vocabulary_rows(source), vocabulary_rows(target)
    shared = a[torch.isin(a, b)]
    if shared.numel() == 0:
        raise UserError(f"{source.name} and {target.name} learned no token row in common.",
                        "a token-embedding map needs a shared vocabulary")
    return shared


def token_map(source: VLM, target: VLM, kind: str = "auto", ridge: float = 1e-3) -> LinearMap:
    """The map from ``source``'s token-embedding space to ``target``'s, fitted on their shared vocabulary."""
    rows = shared_vocabulary(source, target)
    return fit_map(token_table(source)[rows], token_table(target)[rows], kind, ridge)

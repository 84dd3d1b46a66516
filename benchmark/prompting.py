"""Prompt building blocks shared by the prompt-learning methods (CoOp, CoCoOp, KgCoOp, ContCoOp, depth study).

CoOp's layout (``trainers/coop.py``): ``[SOS] ctx_1..ctx_N classname-tokens "." [EOS] pad``. The prefix
(SOS) and suffix (class name, ".", EOS) embeddings are rebuilt from the token embeddings of the model in
use, so a context trained on one model can be spliced into another model's text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .models.vlm import VLM

PLACEHOLDER = "X"
# Static bounds of prompt configs, checked before any model loads (``upgradebench.config.ranged``); the model in use
# is checked again when prompts are built (:func:`class_prompts`, :func:`encode_prompts`).
MAX_CONTEXT = 77  # the longest text context of an open_clip model (CLIP's)
MAX_N_CTX = MAX_CONTEXT - 4  # room left for SOS, one class-name token, "." and EOS
MAX_DEPTH = 35  # the deepest open_clip text tower has 36 blocks; the context enters at one of them
N_CTX_WHY = f"a {MAX_CONTEXT}-token text context holds SOS, the context, the class name, '.' and EOS"
DEPTH_WHY = f"the context enters at one of a text tower's blocks, of which open_clip's deepest has {MAX_DEPTH + 1}"


def clean_name(name: str) -> str:
    """CoOp's class-name rule: ``_`` becomes a space."""
    return name.replace("_", " ")


@dataclass
class ClassPrompts:
    """Tokenised ``"X X .. X classname."`` prompts of one model, truncated to the longest EOT + 1."""

    tokens: torch.Tensor  # [C, L]
    eot: torch.Tensor  # [C]
    prefix: torch.Tensor  # [C, 1, D]  SOS embedding
    suffix: torch.Tensor  # [C, L - 1 - n_ctx, D]  class name, ".", EOS, padding
    name_lengths: torch.Tensor  # [C] tokens of each class name
    n_ctx: int


def class_prompts(vlm: VLM, class_names: list[str], n_ctx: int) -> ClassPrompts:
    """Token ids and frozen prefix/suffix embeddings of ``vlm`` for each class."""
    names = [clean_name(n) for n in class_names]
    texts = [" ".join([PLACEHOLDER] * n_ctx + [n]) + "." for n in names]
    tokens = vlm.tokenize(texts)
    eot = vlm.eot_index(tokens)
    name_lengths = eot - 1 - n_ctx - 1  # minus SOS, context and "."
    if int(eot.max()) == tokens.shape[1] - 1:  # a prompt fills the context: the tokenizer may have cut a class name
        _check_names_fit(vlm, names, name_lengths, n_ctx)
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    with torch.no_grad():
        emb = vlm.token_embeddings(tokens)
    return ClassPrompts(tokens, eot, emb[:, :1], emb[:, 1 + n_ctx:], name_lengths, n_ctx)


def _check_names_fit(vlm: VLM, names: list[str], name_lengths: torch.Tensor, n_ctx: int) -> None:
    """Refuse prompts whose class names the tokenizer cut off: the class would be invisible to the text encoder."""
    full = vlm.eot_index(vlm.tokenize(names)) - 1  # each name's own token count
    cut = [n for n, kept, own in zip(names, name_lengths.tolist(), full.tolist()) if kept < own]
    if cut:
        room = vlm.context_length - 3 - int(full.max())
        raise UserError(f"{n_ctx} context tokens leave no room in {vlm.name}'s {vlm.context_length}-token context for "
                        f"the class names {', '.join(map(repr, cut[:3]))}{' ...' if len(cut) > 3 else ''}.",
                        f"pass --config n_ctx=N with N <= {max(room, 1)}")


def check_depth(vlm: VLM, depth: int) -> None:
    """Refuse a context depth beyond ``vlm``'s text tower (the context enters at block ``depth``)."""
    if not 0 <= depth < vlm.num_text_layers:
        raise UserError(f"depth {depth} is outside {vlm.name}'s text tower of {vlm.num_text_layers} blocks.",
                        f"pass --config depth=K with 0 <= K <= {vlm.num_text_layers - 1}")


def text_embedding(vlm: VLM, text: str) -> torch.Tensor:
    """Token embeddings ``[T, D]`` of ``text`` without SOS/EOS (e.g. CoOp's "a photo of a" init)."""
    tokens = vlm.tokenize([text])
    eot = int(vlm.eot_index(tokens)[0])
    with torch.no_grad():
        return vlm.token_embeddings(tokens)[0, 1:eot].clone()


def assemble(prompts: ClassPrompts, ctx: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings ``[C, L, D]`` from context ``[N, D]`` (shared) or ``[C, N, D]`` (per class)."""
    classes = prompts.prefix.shape[0]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(classes, -1, -1)
    return torch.cat([prompts.prefix, ctx.to(prompts.prefix.dtype), prompts.suffix], dim=1)


def encode_prompts(vlm: VLM, prompts: ClassPrompts, ctx: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """Text features ``[C, E]`` of the prompts with context ``ctx`` inserted at block ``depth``.

    ``depth == 0`` is CoOp: the context replaces the token embeddings of the placeholder positions.
    ``depth == k`` feeds the frozen prompt through blocks ``0..k-1`` and replaces the hidden states of the
    context positions at the input of block ``k`` (the paper's Fig. 2d).
    """
    if depth == 0:
        return vlm.encode_text_embeddings(assemble(prompts, ctx), prompts.eot)
    check_depth(vlm, depth)
    with torch.no_grad():
        hidden = vlm.hidden_states_at(prompts.tokens, depth)
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    n = prompts.n_ctx
    hidden = torch.cat([hidden[:, :1], ctx.to(hidden.dtype), hidden[:, 1 + n:]], dim=1)
    return vlm.encode_text_embeddings(hidden, prompts.eot, start_layer=depth)


def zeroshot_text_features(vlm: VLM, class_names: list[str], template: str, batch_size: int = 256) -> torch.Tensor:
    """Text features ``[C, E]`` (not normalised) of ``template.format(name)`` for every class."""
    texts = [template.format(clean_name(n)) for n in class_names]
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            out.append(vlm.encode_text(vlm.tokenize(texts[start:start + batch_size])))
    return torch.cat(out).float()


def condition_embeddings(vlm: VLM, class_names: list[str], condition: str = "{}") -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of each class's condition text (``"{}"`` = the class name alone), padded:
    ``([C, T, D], mask [C, T])``.

    ``mask`` is True at real tokens. Taken from ``vlm``'s own token embeddings, so they follow the model in use.
    """
    texts = [condition.format(clean_name(n)) for n in class_names]
    tokens = vlm.tokenize(texts)
    eot = vlm.eot_index(tokens)
    width = int((eot - 1).max())
    with torch.no_grad():
        emb = vlm.token_embeddings(tokens)[:, 1:1 + width]
    mask = torch.arange(width, device=tokens.device).unsqueeze(0) < (eot - 1).unsqueeze(1)
    return emb, mask

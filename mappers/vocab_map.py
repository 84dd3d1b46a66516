"""``vocab-map``: a prompt's token-space axes carried by a map between the two models' token-embedding tables.

Both models use one tokenizer, so row ``i`` of each table is the same token; the map is fitted on the rows both
learned (``upgradebench.spaces.shared_vocabulary``): orthogonal Procrustes where the text widths agree, ridge least
squares across a width change (LoRASuite's embedding transformation; PTfer's idea that a shared vocabulary anchors
two embedding spaces). It needs no target data. Joint-space axes (a meta-net reading image features) are carried
unchanged, so they must fit the target; a layer acting inside the token space (ContCoOp's attention) is carried
only by an orthogonal map.
"""

from __future__ import annotations

from dataclasses import dataclass

from upgradebench import NONE, TOKEN, VLM, Mapper, Module, TargetData, UserError, carry, ranged, token_map
from upgradebench.mapping import acting_inside, space_axes, spaces_problem, width_problem
from upgradebench.spaces import JOINT, MAP_KINDS, check_same_tokenizer


@dataclass
class VocabMapConfig:
    """``kind``: ``auto`` (Procrustes where widths agree, else least squares), ``procrustes`` or ``lstsq``;
    ``ridge``: the pull towards the prior (identity where widths agree), relative to the anchors' scale."""

    kind: str = "auto"
    ridge: float = ranged(1e-3, ge=0.0)


def token_problem(module: Module, source: VLM, target: VLM, kind: str, who: str) -> str | None:
    """Why ``who`` cannot carry ``module``'s token axes from ``source`` to ``target`` (None: it can)."""
    if kind not in MAP_KINDS:
        return f"{who} has no map kind {kind!r} (use one of {', '.join(MAP_KINDS)})"
    try:
        check_same_tokenizer(source, target)
    except UserError as exc:
        return f"{who} cannot carry it: {exc.message}"
    orthogonal = kind == "procrustes" or (kind == "auto" and source.text_width == target.text_width)
    if not orthogonal:
        if kind == "procrustes":
            return (f"{who} cannot fit an orthogonal map across text widths {source.text_width} -> "
                    f"{target.text_width}")
        inside = acting_inside(module, TOKEN)
        if inside:
            return (f"{who} cannot carry {type(module).__name__}'s {', '.join(inside)}: it acts inside the token "
                    f"space, and a least-squares map across text widths {source.text_width} -> {target.text_width} "
                    "does not preserve what it computes")
    return None


class VocabMap(Mapper[VocabMapConfig]):
    """Token-space axes carried by a map between the token tables, fitted on their shared vocabulary."""

    version = "1"
    budget = NONE
    Config = VocabMapConfig
    description = "Prompt vectors carried by a map between the token-embedding tables (shared vocabulary); no data."

    def supports(self, module: Module, source: VLM, target: VLM, config: VocabMapConfig) -> str | None:
        unreadable = spaces_problem(module, "vocab-map")
        if unreadable:
            return unreadable
        if not space_axes(module).get(TOKEN):
            return (f"vocab-map has nothing to carry: {type(module).__name__} has no axis in the token space "
                    "(feature-map carries the joint space)")
        problem = width_problem(module, target, (JOINT,))
        if problem:
            return f"vocab-map carries the joint space unchanged: {problem}"
        return token_problem(module, source, target, config.kind, "vocab-map")

    def map(self, module: Module, source: VLM, target: VLM, data: TargetData, config: VocabMapConfig,
            seed: int) -> Module:
        return carry(module, {TOKEN: token_map(source, target, config.kind, config.ridge)}, target, "vocab-map")

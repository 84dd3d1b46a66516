"""``feature-map``: joint-space axes carried by a map between the two models' image features, fitted on the task's
training images without their labels (a feature-space transfer, as TransMiter's, with a linear map).

Both models encode the same unlabeled images; the map from the source's features to the target's is fitted on
those pairs (orthogonal Procrustes where the embedding widths agree, ridge least squares otherwise). A probe's
weights, an adapter's layers and a cache's keys are carried by it (vectors by the map, the input side of a layer by
its pseudo-inverse, so that a probe scores ``M f`` as it scored ``f``). Token-space axes, if the module has any
(CoCoOp's and TCP's meta-nets write prompt vectors), are carried as ``vocab-map`` carries them.
"""

from __future__ import annotations

from dataclasses import dataclass

from upgradebench import (
    JOINT,
    TOKEN,
    UNLABELED,
    VLM,
    LinearMap,
    Mapper,
    Module,
    TargetData,
    carry,
    fit_map,
    ranged,
    token_map,
)
from upgradebench.mapping import space_axes, spaces_problem
from upgradebench.spaces import MAP_KINDS

from .vocab_map import token_problem


@dataclass
class FeatureMapConfig:
    """``kind`` / ``token_kind``: how the image-feature map and the token map are fitted (``auto``, ``procrustes``,
    ``lstsq``); ``ridge``: the pull towards the prior, relative to the anchors' scale."""

    kind: str = "auto"
    token_kind: str = "auto"
    ridge: float = ranged(1e-3, ge=0.0)


class FeatureMap(Mapper[FeatureMapConfig]):
    """Joint-space axes carried by a map fitted on unlabeled target images; token axes by the vocabulary map."""

    version = "1"
    budget = UNLABELED
    Config = FeatureMapConfig
    description = "Image-side weights carried by a map between the two models' features of unlabeled task images."

    def supports(self, module: Module, source: VLM, target: VLM, config: FeatureMapConfig) -> str | None:
        unreadable = spaces_problem(module, "feature-map")
        if unreadable:
            return unreadable
        if config.kind not in MAP_KINDS:
            return f"feature-map has no map kind {config.kind!r} (use one of {', '.join(MAP_KINDS)})"
        if config.kind == "procrustes" and source.embed_dim != target.embed_dim:
            return (f"feature-map cannot fit an orthogonal map across embedding widths {source.embed_dim} -> "
                    f"{target.embed_dim}")
        axes = space_axes(module)
        if not axes.get(JOINT):
            return (f"feature-map has nothing to carry: {type(module).__name__} has no axis in the joint image-text "
                    "space (vocab-map carries the token space with no target data)")
        return token_problem(module, source, target, config.token_kind, "feature-map") if axes.get(TOKEN) else None

    def map(self, module: Module, source: VLM, target: VLM, data: TargetData, config: FeatureMapConfig,
            seed: int) -> Module:
        maps: dict[str, LinearMap] = {
            JOINT: fit_map(data.unlabeled_features(source), data.unlabeled_features(target), config.kind,
                           config.ridge)}
        if space_axes(module).get(TOKEN):
            maps[TOKEN] = token_map(source, target, config.token_kind, config.ridge)
        return carry(module, maps, target, "feature-map")

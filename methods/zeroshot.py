"""Zero-shot CLIP (CoOp ``trainers/zsclip.py``): the dataset template through the text encoder of the model in use.

Nothing is trained; the "module" is the template, and the classifier is recomputed with every model, which
is why zero-shot transfers perfectly to an upgraded model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from upgradebench import VLM, FewShotTask, Method, Module, zeroshot_text_features


@dataclass
class ZeroShotConfig:
    """``template``: None uses the dataset's template (docs/methods.md, "Templates"), e.g. ``"{} texture."`` for DTD."""

    template: str | None = None


@dataclass
class ZeroShotModule(Module):
    """A template; logits = ``logit_scale * cos(f, T(template.format(class)))`` with the model in use."""

    spaces = {}  # nothing learned: every mapper carries it as it is


    template: str

    def logits(self, vlm: VLM, image_features: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        return vlm.logits(image_features.to(vlm.device), zeroshot_text_features(vlm, class_names, self.template))


class ZeroShot(Method[ZeroShotConfig]):
    """Zero-shot CLIP with the dataset's hand-written template (Radford et al., 2021; CoOp's zsclip)."""

    version = "1"
    description = "Zero-shot classifier from the dataset template (no training)."
    Config = ZeroShotConfig
    module_class = ZeroShotModule
    uses_train_views = False

    def fit(self, source: VLM, task: FewShotTask, config: ZeroShotConfig, seed: int) -> ZeroShotModule:
        return ZeroShotModule(config.template or task.template)

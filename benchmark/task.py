"""What ``Method.fit`` receives: the few-shot task, with cached image features instead of images.

The harness hands a method the class names, the template, the labels, and features of the frozen
source image encoder: ``V`` cached augmented views of each training image (docs/methods.md, "Training images")
or, with ``views="online"``, freshly augmented images encoded every epoch (the reference's fidelity
path), plus the validation shots. Test labels are never part of a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data.dataset import Dataset, Item
from .data.fewshot import FewShotSplit
from .defaults import DEFAULT_VIEWS
from .features import FeatureCache, encode_items
from .models.transforms import TransformSpec
from .models.vlm import VLM

ONLINE = "online"


@dataclass
class FewShotTask:
    """A K-shot training task on one dataset, bound to the source model's feature cache."""

    dataset: Dataset
    split: FewShotSplit
    source: VLM
    cache: FeatureCache
    views: int | str = DEFAULT_VIEWS
    _memo: dict = field(default_factory=dict, repr=False)

    # ---- what every method needs -----------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names, in label order."""
        return list(self.dataset.classnames)

    @property
    def template(self) -> str:
        """The dataset's zero-shot template, e.g. ``"a photo of a {}."``."""
        return self.dataset.template

    @property
    def shots(self) -> int:
        """K, the number of training images per class."""
        return self.split.shots

    @property
    def train_items(self) -> list[Item]:
        """The sampled training items."""
        return self.split.train

    @property
    def train_labels(self) -> torch.Tensor:
        """Labels of the training items ``[N]``."""
        return torch.tensor([y for _, y in self.split.train], dtype=torch.long)

    @property
    def val_labels(self) -> torch.Tensor:
        """Labels of the validation shots ``[M]`` (min(K, 4) per class)."""
        return torch.tensor([y for _, y in self.split.val], dtype=torch.long)

    def _cached(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def train_plain_features(self) -> torch.Tensor:
        """Training images through the test transform (no augmentation) ``[N, D]``."""
        spec = self.source.test_transform_spec
        return self._cached(("plain",), lambda: self.cache.get(self.source, self.dataset, "train",
                                                                  self.split.train, spec))

    def val_features(self) -> torch.Tensor:
        """Validation shots through the test transform ``[M, D]``."""
        spec = self.source.test_transform_spec
        return self._cached(("val",), lambda: self.cache.get(self.source, self.dataset, "val", self.split.val, spec))

    def train_view_features(self, views: int | None = None,
                            crop_scale: tuple[float, float] = (0.08, 1.0)) -> torch.Tensor:
        """``V`` augmented views of every training image ``[V, N, D]`` (cached; random-resized-crop + flip)."""
        count = views if views is not None else (self.views if isinstance(self.views, int) else DEFAULT_VIEWS)
        spec = self._train_spec(crop_scale)
        return self._cached(("views", count, crop_scale), lambda: self.cache.get_views(
            self.source, self.dataset, "train", self.split.train, spec, views=range(count)))

    def _train_spec(self, crop_scale: tuple[float, float]) -> TransformSpec:
        base = self.source.train_transform_spec
        return TransformSpec(base.size, base.mean, base.std, train=True, crop_scale=crop_scale)

    def epoch_features(self, epoch: int, generator: torch.Generator,
                       crop_scale: tuple[float, float] = (0.08, 1.0)) -> torch.Tensor:
        """The training features of one epoch ``[N, D]``: one augmented view per image.

        Cached mode draws one of the ``V`` cached views (random-resized-crop at ``crop_scale`` + flip) per
        image; ``online`` encodes freshly augmented images (view index = epoch, so each epoch sees new
        crops), as the reference code does.
        """
        if self.views == ONLINE:
            spec = self._train_spec(crop_scale)
            offset = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            return encode_items(self.source, self.dataset, self.split.train, spec, view=offset + epoch,
                                precision=self.cache.precision, workers=self.cache.workers,
                                description=f"online views, epoch {epoch}")
        views = self.train_view_features(crop_scale=crop_scale)
        pick = torch.randint(0, views.shape[0], (views.shape[1],), generator=generator)
        return views[pick, torch.arange(views.shape[1])]

    def load_images(self, items: list[Item]):
        """Raw PIL images, for the rare method that truly needs pixels."""
        return [self.dataset.load_image(ref) for ref, _ in items]

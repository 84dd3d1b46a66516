"""Image transforms of the reference recipes (CoOp / Tip-Adapter), built from a model's preprocess config."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T


@dataclass(frozen=True)
class TransformSpec:
    """A named, hashable description of an image transform; ``key`` goes into feature-cache keys."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True

    @property
    def key(self) -> str:
        """Stable string naming this transform."""
        norm = ",".join(f"{v:.4f}" for v in self.mean + self.std)
        if not self.train:
            return f"test{self.size}-bicubic-center[{norm}]"
        s0, s1 = self.crop_scale
        return f"train{self.size}-rrc{s0:g}-{s1:g}{'-flip' if self.flip else ''}[{norm}]"

    def build(self) -> T.Compose:
        """The torchvision transform (PIL image -> normalised tensor)."""
        bicubic = T.InterpolationMode.BICUBIC
        if self.train:
            ops = [T.RandomResizedCrop(self.size, scale=self.crop_scale, interpolation=bicubic)]
            if self.flip:
                ops.append(T.RandomHorizontalFlip())
        else:
            ops = [T.Resize(self.size, interpolation=bicubic), T.CenterCrop(self.size)]
        return T.Compose([*ops, T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(self.mean, self.std)])


def _to_rgb(image):  # a named function keeps the transform picklable for DataLoader workers
    return image.convert("RGB")

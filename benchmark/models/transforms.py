"""Image transforms of the reference recipes (CoOp / Tip-Adapter), built from a model's preprocess config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
        return T.Compose([*self._geometry(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def pixels(self) -> T.Compose:
        """The geometric part of :meth:`build` (PIL image -> uint8 tensor ``[3, S, S]``).

        Feature extraction moves uint8 pixels between processes and to the device (4x less than float) and
        normalises whole batches there with :meth:`normalize`.
        """
        return T.Compose([*self._geometry(), T.PILToTensor()])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``[..., 3, S, S]`` of :meth:`pixels` -> exactly (bit for bit) what :meth:`build` gives."""
        # the same operations, in the same order and dtype, as ToTensor (div 255) then Normalize
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        return pixels.to(torch.float32).div(255).sub_(mean).div_(std)

    def _geometry(self) -> list:
        bicubic = T.InterpolationMode.BICUBIC
        if self.train:
            ops = [T.RandomResizedCrop(self.size, scale=self.crop_scale, interpolation=bicubic)]
            if self.flip:
                ops.append(T.RandomHorizontalFlip())
        else:
            ops = [T.Resize(self.size, interpolation=bicubic), T.CenterCrop(self.size)]
        return [*ops, T.Lambda(_to_rgb)]


def _to_rgb(image):  # a named function keeps the transform picklable for DataLoader workers
    return image.convert("RGB")

"""A tiny in-memory dataset for harness tests: solid-colour images with noise, one class per colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from upgradebench.data import Dataset
from upgradebench.paths import home

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SIZES = {"train": 24, "val": 6, "test": 30}


class TinyColours(Dataset):
    """4 classes x (24 train, 6 val, 30 test) images; refs are ``split/index``."""

    name = "tiny-colours"
    template = "a photo of a {}."

    def __init__(self, root: Path | None = None) -> None:
        self.classnames = list(COLOURS)

    def split(self, name: str) -> list[tuple[str, int]]:
        per = SIZES[name]
        return [(f"{name}/{i}", i % len(COLOURS)) for i in range(per * len(COLOURS))]

    def load_image(self, ref: str) -> Image.Image:
        split, index = ref.split("/")
        rng = np.random.default_rng([ord(c) for c in split] + [int(index)])
        colour = np.array(COLOURS[self.classnames[int(index) % len(COLOURS)]], dtype=float)
        pixels = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)

    @property
    def fewshot_dir(self) -> Path:
        return home() / "fewshot" / self.name

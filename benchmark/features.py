"""The image-feature cache: the frozen image encoder runs once per (model, dataset, split, transform, view).

Key = (model fingerprint, dataset fingerprint, split, transform key, view index, precision). One
safetensors file per key holds the features of every item computed so far (item references in the file's
metadata); asking for new items of the same key computes only those and rewrites the file atomically.
Augmented view ``v`` of an item is seeded by (item, v), so it is the same whichever other items are
computed with it. Files live under ``$UPGRADEBENCH_HOME/features``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .data.dataset import Dataset, Item
from .models.transforms import TransformSpec
from .models.vlm import VLM
from .paths import features_dir

PRECISIONS = ("fp32", "bf16", "fp16")


def _seed_of(ref: str, view: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{ref}|{view}".encode()).digest()[:8], "little") & (2**63 - 1)


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for bf16/fp16 (bf16 on CPU), or a no-op for fp32."""
    if precision == "fp32":
        return nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    dtype = torch.bfloat16 if precision == "bf16" or device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress_bar(transient: bool = True) -> Progress:
    """The rich progress bar every long step shows."""
    # on stderr, so that stdout stays clean for --json and tables
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=transient, console=Console(stderr=True))


def encode_items(
    vlm: VLM,
    dataset: Dataset,
    items: Sequence[Item],
    transform: TransformSpec,
    view: int | None = None,
    precision: str = "fp32",
    batch_size: int = 128,
    description: str = "",
) -> torch.Tensor:
    """Encode the images of ``items`` (no cache). ``view`` seeds the augmentation of a train transform."""
    tf = transform.build()
    out: list[torch.Tensor] = []
    with progress_bar() as bar:
        task = bar.add_task(description or f"encoding {dataset.name}", total=len(items))
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = []
            for ref, _ in chunk:
                image = dataset.load_image(ref)
                if transform.train:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(_seed_of(ref, view or 0))
                        images.append(tf(image))
                else:
                    images.append(tf(image))
            batch = torch.stack(images)
            with autocast_context(vlm.device, precision):
                out.append(vlm.encode_images(batch).float().cpu())
            bar.advance(task, len(chunk))
    return torch.cat(out) if out else torch.empty(0, vlm.embed_dim)


class FeatureCache:
    """Image features cached on disk; reused by every method and every later run."""

    def __init__(self, root: str | Path | None = None, precision: str = "fp32") -> None:
        self.root = Path(root) if root is not None else features_dir()
        self.precision = precision
        self.computed = 0  # images encoded by this cache object (tests and benchmarks read it)

    def path(self, vlm: VLM, dataset: Dataset, split: str, transform: TransformSpec, view: int | None) -> Path:
        """The file of one cache key."""
        tkey = hashlib.sha256(transform.key.encode()).hexdigest()[:12]
        name = f"{split}-{tkey}-{'test' if view is None else f'view{view}'}-{self.precision}.safetensors"
        return self.root / vlm.fingerprint / f"{dataset.name}-{dataset.fingerprint}" / name

    def get(
        self,
        vlm: VLM,
        dataset: Dataset,
        split: str,
        items: Sequence[Item],
        transform: TransformSpec,
        view: int | None = None,
    ) -> torch.Tensor:
        """Features ``[len(items), D]`` of ``items``, computing (and caching) only the missing ones."""
        path = self.path(vlm, dataset, split, transform, view)
        refs, feats = self._read(path)
        index = {r: i for i, r in enumerate(refs)}
        missing = list(dict.fromkeys(ref for ref, _ in items if ref not in index))
        if missing:
            what = f"{vlm.name} {dataset.name}/{split} " + ("test transform" if view is None else f"view {view}")
            new = encode_items(vlm, dataset, [(r, -1) for r in missing], transform, view, self.precision,
                               description=f"features {what}")
            self.computed += len(missing)
            refs = refs + missing
            feats = new if feats is None else torch.cat([feats, new])
            self._write(path, refs, feats, vlm, dataset, split, transform, view)
            index = {r: i for i, r in enumerate(refs)}
        return feats[torch.tensor([index[ref] for ref, _ in items], dtype=torch.long)]

    @staticmethod
    def _read(path: Path) -> tuple[list[str], torch.Tensor | None]:
        if not path.is_file():
            return [], None
        with safe_open(str(path), framework="pt") as f:
            refs = json.loads(f.metadata()["refs"])
            return refs, f.get_tensor("features")

    def _write(self, path: Path, refs: list[str], feats: torch.Tensor, vlm: VLM, dataset: Dataset, split: str,
               transform: TransformSpec, view: int | None) -> None:
        meta = {"refs": json.dumps(refs), "model": vlm.name, "model_fingerprint": vlm.fingerprint,
                "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "split": split,
                "transform": transform.key, "view": str(view), "precision": self.precision}
        with atomic_path(path) as tmp:
            save_file({"features": feats.contiguous()}, str(tmp), metadata=meta)


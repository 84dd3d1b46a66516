"""The image-feature cache: the frozen image encoder runs once per (model, dataset, split, transform, view).

Key = (model fingerprint, dataset fingerprint, split, transform key, view index, precision). One
safetensors file per key holds the features of every item computed so far (item references in the file's
metadata); asking for new items of the same key computes only those and rewrites the file atomically
(every few thousand items, so an interrupted extraction of a large split resumes where it stopped).
Augmented view ``v`` of an item is seeded by (item, v), so it is the same whichever other items are
computed with it. Files live under ``$UPGRADEBENCH_HOME/features``. Each file records its key and a content
hash (``integrity.py``): a damaged file, or one whose recorded key is not the key it is read for, is computed
again, with a warning. Writers of one key take a lock file
and merge what the other wrote, so concurrent extractions lose no items.

Extraction decodes each image once for all the views it needs; ``workers`` processes (a torch DataLoader)
decode and augment, the main process encodes batches. Each view is seeded by (item, view) and the images
of a view are encoded in the same batches as by one process, so the features do not depend on the number
of workers; every batch has the same shape (a short one is padded with blank images), so an item's features
do not depend on which other items were missing from the cache with it. Pixels travel as uint8 (pinned,
copied without blocking when the model is on CUDA) and are normalised on the model's device. Memory format
stays as it is: the image towers here are ViTs, whose only convolution is the patch embedding, so
channels-last has nothing to speed up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .atomic import atomic_path
from .data.dataset import Dataset, Item
from .errors import UserError
from .integrity import DIGEST_KEY, clean_stale_tmp, file_lock, tensors_digest
from .models.transforms import TransformSpec
from .models.vlm import VLM
from .paths import features_dir

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
CHUNK = 8  # items a worker decodes per hand-over: small enough to spread a short split over every worker
FLUSH_EVERY = 4096  # items between two writes of a growing cache file (the resume granularity)
# path -> (inode, size, mtime) of the version whose hash this process checked: a file read again unchanged
# (every run of a sweep reads the same test features) is hashed once, not on every read
_VERIFIED: dict[Path, tuple[int, int, int]] = {}


def default_workers() -> int:
    """Decoding processes when none are asked for: every core but the one that encodes, at most 16."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


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
    """The rich progress bar every long step shows (on stderr, so that stdout stays clean for --json and tables).

    Where stderr is not a terminal (a log file) a bar cannot redraw: a transient one is not shown at all (it
    would leave only a blank line), a lasting one prints its final state when it ends.
    """
    console = Console(stderr=True)
    # descriptions name runs such as coop[n_ctx=4]: text, never markup
    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=transient, console=console,
                    disable=transient and not console.is_terminal)


class ViewPixels(TorchDataset):
    """Item ``i`` -> uint8 pixels ``[len(views), 3, S, S]`` of its image under every view (one decode)."""

    def __init__(self, dataset: Dataset, refs: Sequence[str], transform: TransformSpec,
                 views: Sequence[int | None]) -> None:
        self.dataset, self.refs, self.transform, self.views = dataset, refs, transform, list(views)
        self.pixels = transform.pixels()

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[str, str | None]:
        ref = self.refs[index]
        try:
            image = self.dataset.load_image(ref)
        except UserError as exc:
            # a DataLoader re-raises worker exceptions with only a message: the fix travels as data instead
            return exc.message, exc.fix
        if not self.transform.train:
            return self.pixels(image).unsqueeze(0)
        out = []
        for view in self.views:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed_of(ref, view or 0))
                out.append(self.pixels(image))
        return torch.stack(out)


def _collate(samples: list) -> torch.Tensor | tuple[str, str | None]:
    for sample in samples:
        if isinstance(sample, tuple):
            return sample
    return torch.stack(samples)


def pixel_loader(dataset: Dataset, refs: Sequence[str], transform: TransformSpec, views: Sequence[int | None],
                 workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Chunks of ``CHUNK`` items' :class:`ViewPixels` ``[b, V, 3, S, S]`` in order, decoded by ``workers`` processes.

    An unreadable image arrives as ``(message, fix)`` instead of a tensor.
    """
    return DataLoader(ViewPixels(dataset, refs, transform, views), batch_size=CHUNK, collate_fn=_collate,
                      num_workers=workers, pin_memory=pin_memory)


def encode_views(
    vlm: VLM,
    dataset: Dataset,
    refs: Sequence[str],
    transform: TransformSpec,
    views: Sequence[int | None],
    precision: str = "fp32",
    workers: int = 0,
    batch_size: int = 128,
) -> Iterator[torch.Tensor]:
    """Features of ``refs`` under every view, batch after batch: ``[len(views), b, D]`` on the CPU.

    Each image is decoded once (by one of ``workers`` processes, or here with 0); ``views`` seed the
    augmentation of a train transform (``None`` = view 0). Batches hold ``batch_size`` items of one view; a
    short last batch is padded to ``batch_size`` with blank images, so that an item's features are the same
    bits whichever other items are encoded with it (the cache's history never changes a number).
    """
    cuda = vlm.device.type == "cuda"
    # starting a worker costs more than decoding a few images
    workers = min(workers, len(refs) // CHUNK)
    loader = pixel_loader(dataset, refs, transform, views, workers, pin_memory=cuda)
    pending: list[torch.Tensor] = []
    count = 0
    for index, chunk in enumerate(loader):
        if isinstance(chunk, tuple):
            raise UserError(*chunk)
        pending.append(chunk.to(vlm.device, non_blocking=cuda))
        count += len(chunk)
        last = (index + 1) * CHUNK >= len(refs)
        while count >= batch_size or (last and count):
            pixels = torch.cat(pending)
            batch, rest = pixels[:batch_size], pixels[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)
            n = len(batch)
            if n < batch_size:
                # kernels are chosen by shape: a short batch gives its items other bits than a full one would
                batch = torch.cat([batch, batch.new_zeros((batch_size - n, *batch.shape[1:]))])
            with torch.no_grad(), autocast_context(vlm.device, precision):
                feats = torch.stack([vlm.encode_images(transform.normalize(batch[:, v]).contiguous())[:n].float().cpu()
                                     for v in range(batch.shape[1])])
            yield feats  # outside the contexts, which would otherwise hold for the caller between batches


def encode_items(
    vlm: VLM,
    dataset: Dataset,
    items: Sequence[Item],
    transform: TransformSpec,
    view: int | None = None,
    precision: str = "fp32",
    workers: int = 0,
    description: str = "",
) -> torch.Tensor:
    """Encode the images of ``items`` (no cache). ``view`` seeds the augmentation of a train transform."""
    out: list[torch.Tensor] = []
    with progress_bar() as bar:
        task = bar.add_task(description or f"encoding {dataset.name}", total=len(items))
        for feats in encode_views(vlm, dataset, [ref for ref, _ in items], transform, [view], precision, workers):
            out.append(feats[0])
            bar.advance(task, feats.shape[1])
    return torch.cat(out) if out else torch.empty(0, vlm.embed_dim)


class FeatureCache:
    """Image features cached on disk; reused by every method and every later run.

    ``workers`` decoding processes (default :func:`default_workers`; 0 decodes in this process).
    """

    def __init__(self, root: str | Path | None = None, precision: str = "fp32", workers: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise UserError(f"Unknown precision {precision!r}.", f"use one of {', '.join(PRECISIONS)}")
        self.root = Path(root) if root is not None else features_dir()
        self.precision = precision
        self.workers = default_workers() if workers is None else workers
        self.computed = 0  # images encoded (one per item and view) by this cache object; tests and benchmarks read it

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
        return self.get_views(vlm, dataset, split, items, transform, [view])[0]

    def get_views(
        self,
        vlm: VLM,
        dataset: Dataset,
        split: str,
        items: Sequence[Item],
        transform: TransformSpec,
        views: Sequence[int | None],
    ) -> torch.Tensor:
        """Features ``[len(views), len(items), D]``: :meth:`get` for several views, one decode per image.

        Views that miss the same items are computed together; each view keeps its own file.
        """
        stored = {view: self._read(self.path(vlm, dataset, split, transform, view),
                                   self._key(vlm, dataset, split, transform, view)) for view in views}
        groups: dict[tuple[str, ...], list[int | None]] = {}
        for view, (refs, _) in stored.items():
            known = set(refs)
            missing = tuple(dict.fromkeys(ref for ref, _ in items if ref not in known))
            if missing:
                groups.setdefault(missing, []).append(view)
        for missing, group in groups.items():
            self._compute(vlm, dataset, split, transform, list(missing), group, stored)
        out = []
        for view in views:
            refs, feats = stored[view]
            assert feats is not None  # every item was computed above, so every view holds features
            index = {r: i for i, r in enumerate(refs)}
            out.append(feats[torch.tensor([index[ref] for ref, _ in items], dtype=torch.long)])
        return torch.stack(out)

    def _compute(self, vlm: VLM, dataset: Dataset, split: str, transform: TransformSpec, missing: list[str],
                 views: list[int | None], stored: dict) -> None:
        """Encode ``missing`` under ``views`` into ``stored``, writing the files every ``FLUSH_EVERY`` items."""
        what = "test transform" if views == [None] else \
            (f"view {views[0]}" if len(views) == 1 else f"{len(views)} views")
        fresh: list[torch.Tensor] = []  # [len(views), b, D] batches not yet in ``stored``
        done = 0
        with progress_bar() as bar:
            task = bar.add_task(f"features {vlm.name} {dataset.name}/{split} {what}", total=len(missing))
            for feats in encode_views(vlm, dataset, missing, transform, views, self.precision, self.workers):
                fresh.append(feats)
                self.computed += feats.shape[1] * len(views)
                bar.advance(task, feats.shape[1])
                pending = sum(f.shape[1] for f in fresh)
                if pending >= FLUSH_EVERY or done + pending == len(missing):
                    new = torch.cat(fresh, dim=1)
                    for i, view in enumerate(views):
                        refs, old = stored[view]
                        stored[view] = (refs + missing[done:done + new.shape[1]],
                                        new[i] if old is None else torch.cat([old, new[i]]))
                        refs, feats = stored[view]
                        stored[view] = self._write(self.path(vlm, dataset, split, transform, view), refs, feats,
                                                   vlm, dataset, split, transform, view)
                    done, fresh = done + new.shape[1], []

    def _key(self, vlm: VLM, dataset: Dataset, split: str, transform: TransformSpec,
             view: int | None) -> dict[str, str]:
        """The cache key a file records in its metadata, and is compared with when it is read."""
        return {"model": vlm.name, "model_fingerprint": vlm.fingerprint,
                "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "split": split,
                "transform": transform.key, "view": str(view), "precision": self.precision}

    @staticmethod
    def _read(path: Path, key: dict[str, str]) -> tuple[list[str], torch.Tensor | None]:
        """The refs and features stored in ``path``; a damaged or unverifiable file counts as empty (rebuilt).

        So does a file whose recorded key is not ``key`` (one copied over another model's, split's or view's):
        the file name holds only part of the key, and features of other weights must never be used.
        """
        if not path.is_file():
            return [], None
        try:
            stat = path.stat()
            version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                feats = f.get_tensor("features")
            refs = json.loads(meta["refs"])
            recorded = meta.pop(DIGEST_KEY, None)
            problem = None if _VERIFIED.get(path) == version or recorded == tensors_digest({"features": feats}, meta) \
                else ("has no content hash (written by an older upgradebench)" if recorded is None
                      else "does not match its content hash")
            if problem is None and len(refs) != len(feats):
                problem = f"lists {len(refs)} items for {len(feats)} features"
            # the model's name is only a label: the same weights may be cached under another alias
            wrong = [f"{k} {meta.get(k)!r} (not {v!r})" for k, v in key.items() if k != "model" and meta.get(k) != v]
            if problem is None and wrong:
                problem = "was computed for another key: " + ", ".join(wrong)
        except Exception as exc:  # safetensors and json raise several types for a damaged file
            problem = f"is unreadable ({type(exc).__name__})"
        if problem is not None:
            _VERIFIED.pop(path, None)
            log.warning("feature cache file %s %s: its features are computed again", path, problem)
            return [], None
        _VERIFIED[path] = version
        return refs, feats

    def _write(self, path: Path, refs: list[str], feats: torch.Tensor, vlm: VLM, dataset: Dataset, split: str,
               transform: TransformSpec, view: int | None) -> tuple[list[str], torch.Tensor]:
        """Write ``refs``/``feats`` with their content hash, merged with what another process wrote meanwhile.

        Returns what the file now holds. Writers of one key are serialised by a lock file, and each keeps
        the other's items, so concurrent extractions lose nothing.
        """
        meta = self._key(vlm, dataset, split, transform, view)
        with file_lock(path.parent / f".{path.name}.lock"):
            clean_stale_tmp(path.parent)
            disk_refs, disk_feats = self._read(path, self._key(vlm, dataset, split, transform, view)) \
                if path.is_file() else ([], None)
            known = set(refs)
            extra = [i for i, ref in enumerate(disk_refs) if ref not in known]
            if extra:
                assert disk_feats is not None  # _read gives features whenever it gives refs
                refs = refs + [disk_refs[i] for i in extra]
                feats = torch.cat([feats, disk_feats[torch.tensor(extra, dtype=torch.long)]])
            feats = feats.contiguous()
            meta["refs"] = json.dumps(refs)
            meta[DIGEST_KEY] = tensors_digest({"features": feats}, meta)
            with atomic_path(path) as tmp:
                save_file({"features": feats}, str(tmp), metadata=meta)
            stat = path.stat()
            _VERIFIED[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)  # hashed just now, while writing
        return refs, feats

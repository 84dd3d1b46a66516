"""Feature extraction on real JPEG files: the one-process path of before against the parallel, decode-once path.

Generates ``--images`` photo-like JPEGs of 500x375 pixels at quality 90 (about the size of a DTD or Caltech
image) in CoOp's DTD layout, read through the real CoOp loader, and measures:

- ``decode``: decode + augment throughput of one process without a model, for V = ``--views`` augmented
  views per training image (before: one decode per view and a float transform; after: one decode, V uint8
  views) and for the test transform; the "after" rate is what one DataLoader worker delivers;
- ``pipeline``: the same through the DataLoader with 1..``--max-workers`` workers (no model);
- ``end_to_end``: V views of ``--e2e-images`` images encoded by the real ``--arch`` architecture with random
  weights (timing does not depend on weights), before vs after, on ``--device``;
- ``workers_per_device``: encode throughput of the model alone on ``--device`` divided by the per-worker
  decode throughput: how many decoding workers keep that device busy.

    python benchmarks/extraction.py --threads 1 --out benchmarks/results/extraction_vitb16.json
    python benchmarks/extraction.py --device cuda --precision bf16 --e2e-images 512 --workers 15 \
        --max-workers 15 --encode-batch 128                                            # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from report import emit  # benchmarks/report.py, next to this script

from upgradebench.data import get_dataset
from upgradebench.features import FeatureCache, ViewPixels, _seed_of, autocast_context, pixel_loader
from upgradebench.models import VLM, ModelSpec

CLASSES = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked"]


def write_dtd_like(root: Path, count: int, size: tuple[int, int] = (500, 375)) -> int:
    """``count`` photo-like JPEGs in CoOp's DTD layout under ``root``; returns their mean size in bytes."""
    rng = np.random.default_rng(0)
    w, h = size
    entries, total = [], 0
    for i in range(count):
        label = i % len(CLASSES)
        # smooth colour fields plus sensor-like noise: compresses like a photograph, unlike pure noise
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        rel = f"{CLASSES[label]}/{CLASSES[label]}_{i:04d}.jpg"
        path = root / "dtd" / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        total += path.stat().st_size
        entries.append([rel, label, CLASSES[label]])
    split = {"train": entries, "val": entries[: len(CLASSES)], "test": entries}
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return total // count


def random_vlm(arch: str, device: str) -> VLM:
    """``arch`` with random weights (timing only)."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    return VLM(model, open_clip.get_tokenizer(arch), ModelSpec(arch, "open_clip", arch, None), device)


def before(vlm: VLM, dataset, refs: list[str], spec, views: int, precision: str, batch_size: int = 128) -> None:
    """Extraction as it was: per view, every image decoded again and transformed to float here, then encoded."""
    tf = spec.build()
    for view in range(views):
        for start in range(0, len(refs), batch_size):
            images = []
            for ref in refs[start:start + batch_size]:
                image = dataset.load_image(ref)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_seed_of(ref, view))
                    images.append(tf(image))
            with autocast_context(vlm.device, precision):
                vlm.encode_images(torch.stack(images)).float().cpu()


def decode_rates(dataset, refs: list[str], train, test, views: int) -> dict:
    """Images per second of one process, without a model: before and after, train views and test transform."""
    tf = train.build()

    def old_train():
        for view in range(views):
            for ref in refs:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_seed_of(ref, view))
                    tf(dataset.load_image(ref))

    new_train = ViewPixels(dataset, refs, train, range(views))
    new_test = ViewPixels(dataset, refs, test, [None])
    old_test = test.build()
    out = {}
    for name, fn in (("train_views_before", old_train),
                     ("train_views_after", lambda: [new_train[i] for i in range(len(refs))]),
                     ("test_before", lambda: [old_test(dataset.load_image(r)) for r in refs]),
                     ("test_after", lambda: [new_test[i] for i in range(len(refs))])):
        start = time.perf_counter()
        fn()
        out[f"{name}_images_per_s"] = len(refs) / (time.perf_counter() - start)
    out["train_views_speedup"] = out["train_views_after_images_per_s"] / out["train_views_before_images_per_s"]
    out["train_views_after_views_per_s"] = out["train_views_after_images_per_s"] * views
    return out


def pipeline_rates(dataset, refs: list[str], train, views: int, max_workers: int) -> dict:
    """Training images (with all their views) per second through the DataLoader, by number of workers."""
    out = {}
    for workers in range(1, max_workers + 1):
        loader = pixel_loader(dataset, refs, train, range(views), workers)
        start = time.perf_counter()
        for _ in loader:
            pass
        out[str(workers)] = len(refs) / (time.perf_counter() - start)
    return out


def encode_rate(vlm: VLM, precision: str, batch: int, repeats: int) -> float:
    """Images per second the image tower alone encodes (uint8 pixels already on the device)."""
    pixels = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=vlm.device)
    spec = vlm.test_transform_spec
    with torch.no_grad(), autocast_context(vlm.device, precision):
        vlm.encode_images(spec.normalize(pixels))  # warm-up (kernel selection, allocator)
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            vlm.encode_images(spec.normalize(pixels))
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16-quickgelu")
    parser.add_argument("--images", type=int, default=300, help="JPEGs generated (decode measurements).")
    parser.add_argument("--e2e-images", type=int, default=16, help="Images encoded end to end, before and after.")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="Workers of the 'after' end-to-end path.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--encode-batch", type=int, default=8, help="Batch of the model-only encode rate.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="Also write the JSON result here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vlm = random_vlm(args.arch, args.device)
    train, test = vlm.train_transform_spec, vlm.test_transform_spec
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mean_bytes = write_dtd_like(root / "data", args.images)
        dataset = get_dataset("dtd", root / "data")
        refs = [ref for ref, _ in dataset.split("train")]
        out = {"arch": args.arch, "device": args.device, "precision": args.precision, "threads": args.threads,
               "views": args.views, "images": args.images, "image_size": [500, 375], "jpeg_quality": 90,
               "mean_jpeg_bytes": mean_bytes, "cpu_count": os.cpu_count()}
        out["decode"] = decode_rates(dataset, refs, train, test, args.views)
        out["pipeline_images_per_s_by_workers"] = pipeline_rates(dataset, refs, train, args.views, args.max_workers)

        e2e = refs[: args.e2e_images]
        start = time.perf_counter()
        before(vlm, dataset, e2e, train, args.views, args.precision)
        old = time.perf_counter() - start
        cache = FeatureCache(root=root / "features", precision=args.precision, workers=args.workers)
        start = time.perf_counter()
        cache.get_views(vlm, dataset, "train", [(r, 0) for r in e2e], train, range(args.views))
        new = time.perf_counter() - start
        out["end_to_end"] = {"images": len(e2e), "workers_after": args.workers,
                             "before_images_per_s": len(e2e) / old, "after_images_per_s": len(e2e) / new,
                             "speedup": old / new}

        rate = encode_rate(vlm, args.precision, args.encode_batch, repeats=3 if args.device == "cpu" else 50)
        per_worker = out["decode"]["train_views_after_views_per_s"]
        out["workers_per_device"] = {
            "encode_images_per_s": rate, "decode_views_per_s_per_worker": per_worker,
            "test_decode_images_per_s_per_worker": out["decode"]["test_after_images_per_s"],
            "workers_for_train_views": math.ceil(rate / per_worker),
            "workers_for_test": math.ceil(rate / out["decode"]["test_after_images_per_s"]),
        }
    emit(out, args.out)


if __name__ == "__main__":
    main()

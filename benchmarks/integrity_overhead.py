"""What integrity checks cost: reading a feature-cache file with and without its content hash, and the row hash.

    python benchmarks/integrity_overhead.py [--items 50000] [--dim 512] [--repeats 5] [--results results/runs]
                                            [--json out.json]

Feature cache: writes one cache file of ``items`` x ``dim`` float32 features (ImageNet's test split with a
ViT-B/16 by default) through ``FeatureCache._write`` and reads it back ``repeats`` times, timing the plain
safetensors read (what the cache did before hashes) and ``FeatureCache._read`` (the same read plus the
SHA-256 check), each followed by the gather of every item's row that a cache read is used for. A process
hashes a file once: later reads of the unchanged file (same inode, size and time) are timed separately. Rows:
the time of ``read_results`` on a results folder and the share of it spent on ``row_hashes``. Medians are
reported; the machine's load shows in the spread, not in the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open

from upgradebench import features as features_module
from upgradebench import results as results_module
from upgradebench.features import FeatureCache


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def feature_read(items: int, dim: int, repeats: int) -> dict:
    """Median seconds of a plain read and of a checked read of one cache file of ``items`` x ``dim``."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(root=tmp, workers=0)
        path = Path(tmp) / "features.safetensors"
        vlm = SimpleNamespace(name="bench", fingerprint="0" * 16)
        dataset = SimpleNamespace(name="bench", fingerprint="0" * 16)
        transform = SimpleNamespace(key="bench")
        cache._write(path, [f"item/{i}" for i in range(items)], torch.randn(items, dim), vlm, dataset, "test",
                     transform, None)

        def plain() -> torch.Tensor:
            with safe_open(str(path), framework="pt") as f:
                json.loads(f.metadata()["refs"])
                return f.get_tensor("features")

        index = torch.randperm(items)  # what a cache read is followed by: the rows of the items asked for
        plain_s = _median_time(lambda: plain()[index], repeats)
        def checked_first() -> torch.Tensor:
            features_module._VERIFIED.clear()  # as the first read of the file in a process
            return FeatureCache._read(path)[1][index]

        checked_s = _median_time(checked_first, repeats)
        again_s = _median_time(lambda: FeatureCache._read(path)[1][index], repeats)
    return {"items": items, "dim": dim, "mbytes": round(items * dim * 4 / 1e6, 1), "plain_s": round(plain_s, 4),
            "checked_first_read_s": round(checked_s, 4), "first_read_overhead": round(checked_s / plain_s - 1, 3),
            "checked_later_read_s": round(again_s, 4), "later_read_overhead": round(again_s / plain_s - 1, 3)}


def row_read(folder: str, repeats: int) -> dict:
    """Median seconds of ``read_results(folder)`` and of the row hashing inside it."""
    spent = [0.0]
    original = results_module.row_hashes

    def timed(df):
        start = time.perf_counter()
        out = original(df)
        spent[0] += time.perf_counter() - start
        return out

    results_module.row_hashes = timed
    try:
        total = _median_time(lambda: results_module.read_results(folder), repeats)
    finally:
        results_module.row_hashes = original
    rows = len(results_module.read_results(folder))
    return {"folder": folder, "rows": rows, "read_s": round(total, 3), "hash_s": round(spent[0] / repeats, 4),
            "share": round(spent[0] / repeats / total, 4)}


def main() -> None:
    """Measure and print (or write) both overheads."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", default="results/runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = {"feature_cache": feature_read(args.items, args.dim, args.repeats),
           "rows": row_read(args.results, max(1, args.repeats // 2))}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Speed and fidelity of the fast path (cached views, truncated context) against the reference's naive loop.

The naive loop does what CoOp's reference code does: every epoch it encodes freshly augmented training
images with the frozen image encoder, and it runs the text encoder on the full 77-token context. The fast
path encodes ``V`` augmented views once (feature cache) and runs only positions ``0..max(eot)``.

    python benchmarks/speed.py epochs   [--arch ViT-B-16-quickgelu] [--classes 10] [--shots 16] [--views 10]
    python benchmarks/speed.py fidelity [--dataset toy-pattern] [--seeds 1,2,3] [--method coop]
    python benchmarks/speed.py default-run

``epochs`` times CoOp and ContCoOp epochs on a real architecture with random weights (no pretrained weights
can be downloaded here; timing does not depend on them) and the whole run including feature extraction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from report import emit  # benchmarks/report.py, next to this script

from upgradebench.data import Dataset, get_dataset, load_fewshot
from upgradebench.discovery import get_method
from upgradebench.features import FeatureCache
from upgradebench.models import VLM, ModelSpec, load_vlm
from upgradebench.runner import Runner
from upgradebench.task import ONLINE, FewShotTask


class NaiveVLM(VLM):
    """A VLM whose text encoder always runs the full context, as the reference TextEncoder does."""

    def _pad(self, embeds):
        full = self.context_length
        if embeds.shape[1] < full:
            pad = self._tower.token_embedding.weight[0].expand(embeds.shape[0], full - embeds.shape[1], -1)
            embeds = torch.cat([embeds, pad.to(embeds.dtype)], dim=1)
        return embeds

    def encode_text_embeddings(self, embeds, eot_index, start_layer=0):
        x = self._pad(embeds) + self._tower.positional_embedding.to(embeds.dtype) if start_layer == 0 else embeds
        x, _ = self._run_blocks(x, start_layer)
        return self._pool_project(x, eot_index)

    def embeddings_to_layer(self, embeds, eot_index, layer):
        x = self._pad(embeds) + self._tower.positional_embedding.to(embeds.dtype)
        x, _ = self._run_blocks(x, 0, layer)
        return x


class SyntheticDataset(Dataset):
    """``classes`` classes of noisy solid-colour 224 px images; content is irrelevant for timing."""

    template = "a photo of a {}."

    def __init__(self, classes: int, per_class: int) -> None:
        self.name = f"synthetic{classes}"
        self.classnames = [f"class {i}" for i in range(classes)]
        self.per_class = per_class
        self._dir = Path(tempfile.mkdtemp())

    def split(self, name):
        n = self.per_class if name != "val" else 4
        return [(f"{name}/{i}", i % len(self.classnames)) for i in range(n * len(self.classnames))]

    def load_image(self, ref):
        rng = np.random.default_rng([ord(c) for c in ref])
        return Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))

    @property
    def fewshot_dir(self):
        return self._dir


def _time_epochs(method_name: str, vlm: VLM, task: FewShotTask, epochs: int, config_overrides: dict) -> float:
    method = get_method(method_name)
    config = method.make_config({"epochs": str(epochs), **config_overrides})
    start = time.perf_counter()
    method().fit(vlm, task, config, seed=1)
    return (time.perf_counter() - start) / epochs


def random_arch_vlms(arch: str, threads: int) -> tuple[VLM, NaiveVLM]:
    """The fast and the naive wrapper around one randomly initialised open_clip ``arch`` (timing only)."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = open_clip.create_model(arch, pretrained=None)
    tokenizer = open_clip.get_tokenizer(arch)
    spec = ModelSpec(arch, "open_clip", arch, None)
    return VLM(model, tokenizer, spec), NaiveVLM(model, tokenizer, spec)


def bench_epochs(args) -> dict:
    fast_vlm, naive_vlm = random_arch_vlms(args.arch, args.threads)
    dataset = SyntheticDataset(args.classes, args.shots)
    split = load_fewshot(dataset, args.shots, 1)
    out = {"arch": args.arch, "classes": args.classes, "shots": args.shots, "views": args.views,
           "threads": torch.get_num_threads(), "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(root=tmp)
        start = time.perf_counter()
        fast_task = FewShotTask(dataset, split, fast_vlm, cache, views=args.views)
        fast_task.train_view_features()
        out["feature_extraction_s"] = time.perf_counter() - start
        naive_task = FewShotTask(dataset, split, naive_vlm, cache, views=ONLINE)
        for name in ("coop", "contcoop"):
            fast = _time_epochs(name, fast_vlm, fast_task, args.fast_epochs, {})
            naive = _time_epochs(name, naive_vlm, naive_task, args.naive_epochs, {})
            full_epochs = 200  # 16 shots
            out[name] = {"fast_epoch_s": fast, "naive_epoch_s": naive, "epoch_speedup": naive / fast,
                         "fast_run_s": out["feature_extraction_s"] + full_epochs * fast,
                         "naive_run_s": full_epochs * naive,
                         "run_speedup": full_epochs * naive / (out["feature_extraction_s"] + full_epochs * fast)}
    return out


def bench_fidelity(args) -> dict:
    runner = Runner(results=tempfile.mkdtemp())
    dataset = get_dataset(args.dataset)
    source = load_vlm(args.source, device="cpu")
    naive_source = NaiveVLM(source.model, source.tokenizer, source.spec)
    target = load_vlm(args.target, device="cpu")
    method = get_method(args.method)
    config = method.make_config({})
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = load_fewshot(dataset, args.shots, seed)
        for path, vlm, views in (("fast", source, 10), ("naive", naive_source, ONLINE)):
            task = FewShotTask(dataset, split, vlm, runner.cache, views=views)
            torch.manual_seed(seed)
            start = time.perf_counter()
            module = method().fit(vlm, task, config, seed)
            fit_s = time.perf_counter() - start
            base = runner.evaluate(module, source, dataset)[0]
            new = runner.evaluate(module, target, dataset)[0]
            rows.append({"seed": seed, "path": path, "base": base, "new": new, "fit_s": fit_s})
            print(json.dumps(rows[-1]), file=sys.stderr)
    mean = {p: {k: float(np.mean([r[k] for r in rows if r["path"] == p])) for k in ("base", "new", "fit_s")}
            for p in ("fast", "naive")}
    return {"dataset": args.dataset, "method": args.method, "rows": rows, "mean": mean,
            "base_gap": mean["fast"]["base"] - mean["naive"]["base"],
            "new_gap": mean["fast"]["new"] - mean["naive"]["new"]}


def bench_default_run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run(["upgradebench", "run", "--method", "contcoop", "--results", tmp, "--json"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return {"command": "upgradebench run --method contcoop", "seconds": seconds, "output": json.loads(proc.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, help="Also write the JSON result here.")
    e = sub.add_parser("epochs", parents=[common])
    e.add_argument("--arch", default="ViT-B-16-quickgelu")
    e.add_argument("--classes", type=int, default=10)
    e.add_argument("--shots", type=int, default=16)
    e.add_argument("--views", type=int, default=10)
    e.add_argument("--fast-epochs", type=int, default=5)
    e.add_argument("--naive-epochs", type=int, default=1)
    e.add_argument("--threads", type=int, default=torch.get_num_threads())
    f = sub.add_parser("fidelity", parents=[common])
    f.add_argument("--dataset", default="toy-pattern")
    f.add_argument("--method", default="coop")
    f.add_argument("--source", default="toy-clip")
    f.add_argument("--target", default="toy-eva")
    f.add_argument("--shots", type=int, default=16)
    f.add_argument("--seeds", default="1,2,3")
    sub.add_parser("default-run", parents=[common])
    args = parser.parse_args()
    result = {"epochs": bench_epochs, "fidelity": bench_fidelity, "default-run": bench_default_run}[args.cmd](args)
    emit(result, args.out)


if __name__ == "__main__":
    main()

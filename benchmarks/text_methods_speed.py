"""TCP, ProGrad and CLIP-LoRA (text encoder) on the real ViT-B/16 architecture: per-epoch time of the fast path
against a reference-style loop, and memory of a training step at the references' batch size (32).

Random weights (nothing can be downloaded here; timing and memory do not depend on the weights), synthetic
images, 10 classes x 16 shots (160 training images), one thread unless ``--threads``.

- ``fast``: the method's ``fit`` on cached image features with the truncated text encoder.
- ``naive_text``: the same ``fit`` on the same cached features through ``NaiveVLM`` (full 77-token context
  everywhere, as the references' ``TextEncoder``).
- ``naive``: ``naive_text`` plus encoding the epoch's 160 augmented images with the frozen image encoder,
  which the references do every epoch (timed once here, ``image_epoch_s``, and added: running the online loop
  for each method would only repeat that measurement).
CLIP-LoRA counts iterations, not epochs (``500 * K``); it is timed over ``iters_per_shot=1`` (K iterations) and
reported per epoch of ``N // 32`` iterations and for the whole 8000-iteration run.

Memory (``memory``): peak resident memory of one training step (batch 32) for C classes, measured in a fresh
subprocess as ``ru_maxrss`` after the step minus the resident memory before it (the model already loaded), on
CPU. What a step holds is the text encoder's activations over the C class prompts, so it grows with C.

    python benchmarks/text_methods_speed.py epochs [--arch ViT-B-16-quickgelu] [--threads 1] [--out FILE]
    python benchmarks/text_methods_speed.py memory [--classes 10,100,1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from report import emit  # benchmarks/report.py, next to this script
from speed import SyntheticDataset, _time_epochs, random_arch_vlms  # benchmarks/speed.py, next to this script

from upgradebench.data import load_fewshot
from upgradebench.discovery import get_method
from upgradebench.features import FeatureCache
from upgradebench.task import FewShotTask

METHODS = {"coop": {}, "prograd": {}, "tcp": {}, "clip-lora": {}}
BATCH = 32


def _time_lora(vlm, task) -> float:
    """Seconds per CLIP-LoRA iteration (K iterations timed)."""
    method = get_method("clip-lora")
    start = time.perf_counter()
    method().fit(vlm, task, method.make_config({"iters_per_shot": "1"}), seed=1)
    return (time.perf_counter() - start) / task.shots


def bench_epochs(args) -> dict:
    """Per-epoch seconds, fast against naive, for CoOp (the baseline of docs/performance.md's table) and the three
    methods."""
    fast_vlm, naive_vlm = random_arch_vlms(args.arch, args.threads)
    dataset = SyntheticDataset(args.classes, args.shots)
    split = load_fewshot(dataset, args.shots, 1)
    n = len(split.train)
    out = {"arch": args.arch, "classes": args.classes, "shots": args.shots, "train_images": n,
           "threads": torch.get_num_threads(), "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        task = FewShotTask(dataset, split, fast_vlm, FeatureCache(root=tmp), views=1)
        start = time.perf_counter()
        task.train_view_features()  # one augmented view of every image: what the reference encodes per epoch
        out["image_epoch_s"] = image_s = time.perf_counter() - start
        for name in METHODS:
            if name == "clip-lora":
                iters = n // BATCH
                fast, naive_text = (_time_lora(v, task) * iters for v in (fast_vlm, naive_vlm))
                runs = {"run_iterations": 500 * args.shots, "epochs_per_run": 500 * args.shots / iters}
            else:
                config = get_method(name).make_config({})
                epochs = config.epochs or 200
                fast = _time_epochs(name, fast_vlm, task, args.fast_epochs, {})
                naive_text = _time_epochs(name, naive_vlm, task, 1, {})
                runs = {"epochs_per_run": epochs}
            naive = naive_text + image_s
            out[name] = {"fast_epoch_s": fast, "naive_text_epoch_s": naive_text, "naive_epoch_s": naive,
                         "epoch_speedup": naive / fast, "text_speedup": naive_text / fast, **runs,
                         "fast_run_s": runs["epochs_per_run"] * fast, "naive_run_s": runs["epochs_per_run"] * naive}
            print(json.dumps({name: out[name]}), file=sys.stderr)
    return out


@dataclass
class FeatureTask:
    """The part of ``FewShotTask`` that ``fit`` reads, on random image features (memory probe only)."""

    source: Any
    class_names: list[str]
    features: torch.Tensor
    template: str = "a photo of a {}."
    shots: int = 1
    dataset: Any = field(default_factory=lambda: SimpleNamespace(name="synthetic"))

    @property
    def train_labels(self) -> torch.Tensor:
        """Labels cycling over the classes."""
        return torch.arange(len(self.features)) % len(self.class_names)

    def epoch_features(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """The same random features every epoch."""
        return self.features


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def probe(arch: str, method_name: str, classes: int) -> dict:
    """One training step of ``method_name`` at batch 32 with ``classes`` classes; peak memory above the loaded model."""
    vlm, _ = random_arch_vlms(arch, 1)
    task = FeatureTask(vlm, [f"class number {i}" for i in range(classes)], torch.randn(BATCH, vlm.embed_dim))
    method = get_method(method_name)
    overrides = {"iters_per_shot": "1", "batch_size": str(BATCH)} if method_name == "clip-lora" else \
        {"epochs": "1", "batch_size": str(BATCH)}
    before, peak_before = _rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    method().fit(vlm, task, method.make_config(overrides), seed=1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method_name, "classes": classes, "batch": BATCH, "step_s": seconds,
            "rss_before_mb": before / 1024, "peak_before_mb": peak_before / 1024,
            "step_peak_above_model_mb": (peak - before) / 1024}


def bench_memory(args) -> dict:
    """Run :func:`probe` for each method and class count in its own process (a clean peak)."""
    rows = []
    for classes in [int(c) for c in args.classes.split(",")]:
        for name in args.methods.split(","):
            proc = subprocess.run([sys.executable, __file__, "probe", "--arch", args.arch, "--method", name,
                                   "--n-classes", str(classes)], capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return {"arch": args.arch, "device": "cpu", "probe": "ru_maxrss after one step - RSS before it", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--arch", default="ViT-B-16-quickgelu")
    common.add_argument("--out", type=Path, help="Also write the JSON result here.")
    e = sub.add_parser("epochs", parents=[common])
    e.add_argument("--classes", type=int, default=10)
    e.add_argument("--shots", type=int, default=16)
    e.add_argument("--fast-epochs", type=int, default=3)
    e.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("memory", parents=[common])
    m.add_argument("--classes", default="10,100,1000")
    m.add_argument("--methods", default="coop,tcp,clip-lora")
    p = sub.add_parser("probe", parents=[common])
    p.add_argument("--method", required=True)
    p.add_argument("--n-classes", type=int, required=True)
    args = parser.parse_args()
    if args.cmd == "probe":
        print(json.dumps(probe(args.arch, args.method, args.n_classes)))
        return
    result = {"epochs": bench_epochs, "memory": bench_memory}[args.cmd](args)
    emit(result, args.out)


if __name__ == "__main__":
    main()

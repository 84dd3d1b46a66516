"""CoCoOp's per-image text encoding: the batched, truncated path against the reference's per-image loop.

The reference (CoOp ``trainers/cocoop.py``; its issues #21, #48) encodes the images every step and runs the
text encoder once per image on the full 77-token context. Compared here, on a real architecture with random
weights (nothing can be downloaded; timing does not depend on the weights) and synthetic images:

- training epoch (batch 1, the recipe): ``fast`` = ``CoCoOp.fit`` on cached image features with the truncated
  text encoder; ``naive_text`` = the same with ``NaiveVLM`` (full 77-token context); ``naive`` = ``NaiveVLM`` and
  ``views=online`` (fresh images through the image encoder every epoch), i.e. what the reference does;
- evaluation: ``fast`` = ``CoCoOpModule.logits`` (images x classes prompts per truncated text-encoder call,
  chunked); ``naive`` = the same module on ``NaiveVLM`` with ``max_prompts=1``, one full-context call per image.
  Both give the same logits (the largest difference is reported).

    python benchmarks/cocoop_speed.py [--arch ViT-B-16-quickgelu] [--classes 10] [--shots 2] [--test-per-class 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from report import emit  # benchmarks/report.py, next to this script
from speed import SyntheticDataset, random_arch_vlms  # benchmarks/speed.py, next to this script

from upgradebench.data import load_fewshot
from upgradebench.discovery import get_method
from upgradebench.features import FeatureCache
from upgradebench.methods.cocoop import CoCoOpModule
from upgradebench.task import ONLINE, FewShotTask


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench(args) -> dict:
    """Seconds per training epoch and per evaluation pass, fast against naive."""
    fast_vlm, naive_vlm = random_arch_vlms(args.arch, args.threads)
    dataset = SyntheticDataset(args.classes, max(args.shots, args.test_per_class))
    split = load_fewshot(dataset, args.shots, 1)
    method = get_method("cocoop")
    config = method.make_config({"epochs": "1"})
    out = {"arch": args.arch, "classes": args.classes, "shots": args.shots, "train_images": len(split.train),
           "test_images": args.classes * args.test_per_class, "threads": torch.get_num_threads(), "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(root=tmp)
        fast_task = FewShotTask(dataset, split, fast_vlm, cache, views=args.views)
        _, out["feature_extraction_s"] = _timed(fast_task.train_view_features)
        module, fast = _timed(lambda: method().fit(fast_vlm, fast_task, config, seed=1))
        _, naive_text = _timed(lambda: method().fit(naive_vlm, fast_task, config, seed=1))
        naive_task = FewShotTask(dataset, split, naive_vlm, cache, views=ONLINE)
        _, naive = _timed(lambda: method().fit(naive_vlm, naive_task, config, seed=1))
        out["train_epoch_s"] = {"fast": fast, "naive_text": naive_text, "naive": naive,
                                "speedup_text": naive_text / fast, "speedup": naive / fast}

        items = dataset.split("test")[:out["test_images"]]
        feats = cache.get(fast_vlm, dataset, "test", items, fast_vlm.test_transform_spec)
        fast_logits, fast_eval = _timed(lambda: module.logits(fast_vlm, feats, dataset.classnames))
        per_image = CoCoOpModule(module.ctx, module.meta_net, max_prompts=1)
        naive_logits, naive_eval = _timed(lambda: per_image.logits(naive_vlm, feats, dataset.classnames))
        out["eval_s"] = {"fast": fast_eval, "naive": naive_eval, "speedup": naive_eval / fast_eval,
                         "max_abs_logit_diff": float((fast_logits - naive_logits).abs().max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16-quickgelu")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--test-per-class", type=int, default=5)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="Also write the JSON result here.")
    args = parser.parse_args()
    emit(bench(args), args.out)


if __name__ == "__main__":
    main()

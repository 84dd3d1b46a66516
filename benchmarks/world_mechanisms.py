"""The world's mechanism targets (docs/world.md) measured on a few seeds, before any reference result exists,
and the diagnostics behind them: how much of CoOp's room a shared context can reach, and where it is lost.

    python benchmarks/world_mechanisms.py [--seed 1] [--dataset toy-shape ...] [--json out.json]

For each seed and task (16 shots): zero-shot, CoOp (its reference recipe) and the linear probe on the source;
zero-shot and CoOp fitted on the target itself (the oracle); and, for CoOp, the share of its own training shots
it classifies (on the test transform's features), a direct measure of how far a shared context moves the
classifier. Then two diagnostics on the source:

- *frame sensitivity*: the mean cosine distance between one class's text features under different sentence
  frames, against the distance between classes under one frame (a tower that ignores the frame gives a
  context nothing to act through);
- *context capacity*: a shared 16-token context trained with Adam, full batch, on the shots' features of the
  test transform ("plain") or of CoOp's cached random-resized-crop views at scale 0.08-1 and 0.5-1: the test
  top-1 it reaches tells whether the context or the crops limit CoOp.

Uses only the public API and the installed world (``UPGRADEBENCH_HOME``); about 15 minutes for the six tasks
and one seed on the project's 2-core machine. Nothing here is a fidelity result: it is how a world design is
judged against its targets, never against a method's outcome across the upgrade.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

import torch
import torch.nn.functional as F

from upgradebench import VLM, FewShotTask, class_prompts, encode_prompts, get_method
from upgradebench.data import load_fewshot
from upgradebench.ledger import top1_of
from upgradebench.runner import Runner

TASKS = ["toy-shape", "toy-colour", "toy-pattern", "toy-size", "toy-background", "toy-colour-shape"]
FRAMES = ["a photo of a {}.", "a drawing of a {}.", "there is a {}.", "{}.", "a close-up photo of a {}.",
          "a blurry photo of a {}.", "a photo of a {} in the corner."]
SHOTS = 16
CAPACITY_STEPS = 300


def fit_and_score(runner: Runner, method: str, vlm: VLM, dataset: str, seed: int) -> dict[str, float]:
    """Test top-1 of ``method`` fitted on ``vlm`` (its default config), and the share of its training shots it
    classifies right on the test transform's features (both %)."""
    ds = runner.dataset(dataset)
    split = load_fewshot(ds, SHOTS, seed)
    cls = get_method(method)
    torch.manual_seed(seed)
    module = cls().fit(vlm, FewShotTask(ds, split, vlm, runner.cache), cls.Config(), seed)
    top1, _, _ = runner.evaluate(module, vlm, ds)
    feats = runner.cache.get(vlm, ds, "train", split.train, vlm.test_transform_spec)
    labels = torch.tensor([y for _, y in split.train])
    with torch.no_grad():
        fitted = top1_of(module.logits(vlm, feats, ds.classnames), labels)
    return {"test": top1, "train": fitted}


@torch.no_grad()
def frame_sensitivity(vlm: VLM, classes: list[str]) -> dict[str, float]:
    """Mean cosine distance between classes under one frame, and between frames for one class."""
    feats = torch.stack([F.normalize(vlm.encode_text(vlm.tokenize([f.format(c) for c in classes])).float(), dim=-1)
                         for f in FRAMES])  # [frames, classes, D]

    def spread(x: torch.Tensor) -> float:  # [n, D] -> mean 1 - cos over distinct pairs
        off = ~torch.eye(len(x), dtype=torch.bool)
        return (1 - x @ x.T)[off].mean().item()

    return {"between_classes": mean(spread(feats[i]) for i in range(len(FRAMES))),
            "between_frames": mean(spread(feats[:, j]) for j in range(len(classes)))}


def context_capacity(runner: Runner, vlm: VLM, dataset: str, seed: int) -> dict[str, float]:
    """Test top-1 of a shared context fitted (Adam, full batch) on plain features and on crop views."""
    ds = runner.dataset(dataset)
    split = load_fewshot(ds, SHOTS, seed)
    task = FewShotTask(ds, split, vlm, runner.cache)
    test_items = ds.split("test")
    test = runner.cache.get(vlm, ds, "test", test_items, vlm.test_transform_spec)
    test_labels = torch.tensor([y for _, y in test_items])
    prompts = class_prompts(vlm, ds.classnames, 16)
    inputs = {"plain": (task.train_plain_features(), task.train_labels)}
    for scale in ((0.08, 1.0), (0.5, 1.0)):
        views = task.train_view_features(crop_scale=scale)  # [V, N, D]
        inputs[f"crops {scale[0]}-{scale[1]:g}"] = (views.reshape(-1, views.shape[-1]),
                                                    task.train_labels.repeat(views.shape[0]))
    out = {}
    for name, (feats, labels) in inputs.items():
        torch.manual_seed(seed)
        ctx = torch.nn.Parameter(torch.randn(16, vlm.text_width) * 0.02)
        opt = torch.optim.Adam([ctx], lr=0.01)
        for _ in range(CAPACITY_STEPS):
            loss = F.cross_entropy(vlm.logits(feats, encode_prompts(vlm, prompts, ctx)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[name] = top1_of(vlm.logits(test, encode_prompts(vlm, prompts, ctx)), test_labels)
    return out


def main() -> None:
    """Measure and print the mechanism numbers (and write them as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="toy-clip")
    parser.add_argument("--target", default="toy-eva")
    parser.add_argument("--dataset", action="append", help="toy task (repeatable; default: the six tasks)")
    parser.add_argument("--seed", type=int, action="append", help="seed (repeatable; default: 1)")
    parser.add_argument("--capacity-dataset", default="toy-shape", help="task of the context-capacity diagnostic")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    datasets, seeds = args.dataset or TASKS, args.seed or [1]
    runner = Runner(device="cpu")  # evaluates only: writes no results
    source, target = runner.model(args.source), runner.model(args.target)

    rows = []
    for seed in seeds:
        for dataset in datasets:
            row = {"seed": seed, "dataset": dataset}
            for prefix, vlm, methods in (("source", source, ("zeroshot", "coop", "linear-probe")),
                                         ("target", target, ("zeroshot", "coop"))):
                for method in methods:
                    score = fit_and_score(runner, method, vlm, dataset, seed)
                    row[f"{prefix} {method}"] = score["test"]
                    if method == "coop":
                        row[f"{prefix} coop fits its shots"] = score["train"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    def avg(column: str) -> float:
        return mean(r[column] for r in rows)

    summary = {
        "datasets": datasets, "seeds": seeds,
        "upgrade lift (target ZS - source ZS)": avg("target zeroshot") - avg("source zeroshot"),
        "CoOp Base - ZS": avg("source coop") - avg("source zeroshot"),
        "linear probe Base - ZS": avg("source linear-probe") - avg("source zeroshot"),
        "oracle CoOp on target - its ZS": avg("target coop") - avg("target zeroshot"),
        "frame sensitivity": {"frames": FRAMES,
                              **frame_sensitivity(source, runner.dataset(args.capacity_dataset).classnames)},
        "context capacity": {"dataset": args.capacity_dataset, "seed": seeds[0],
                             **context_capacity(runner, source, args.capacity_dataset, seeds[0])},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Measured behaviour of the embedded world: build time, zero-shot top-1 of every toy model on every toy
task, and the per-layer drift of each target's text tower away from toy-clip's.

    python benchmarks/world_report.py [--markdown docs/world-measured.md] [--json out.json]

Builds the world first if needed (the build time is reported only when this run built it; pass
``--rebuild`` to time a full build from scratch). ``UPGRADEBENCH_WORLD`` selects the world size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from upgradebench.analysis.drift import parameter_drift
from upgradebench.data import DATASETS, dataset_names, get_dataset
from upgradebench.models import load_vlm
from upgradebench.world import zoo
from upgradebench.world.recipes import recipe_table
from upgradebench.world.worlds import world_name, world_root

SOURCE = "toy-clip"


def build(rebuild: bool) -> float | None:
    """Build every toy model; the wall-clock seconds if anything was built."""
    if rebuild:
        shutil.rmtree(world_root() / "models", ignore_errors=True)
    if all(zoo.is_built(n) for n in recipe_table()):
        return None
    start = time.perf_counter()
    zoo.build_models()
    return time.perf_counter() - start


def world_datasets() -> list[str]:
    """The toy datasets, main tasks first, then the OOD variants."""
    dataset_names()
    entries = [e for e in DATASETS.entries() if e.meta.get("kind") == "world"]
    return [e.name for e in entries if not e.meta.get("ood_of")] + [e.name for e in entries if e.meta.get("ood_of")]


@torch.no_grad()
def zero_shot(models: list[str], datasets: list[str]) -> dict[str, dict[str, float]]:
    """Top-1 (%) of each model on each dataset's test split, with the dataset's template."""
    vlms = {m: load_vlm(m, device="cpu") for m in models}
    table: dict[str, dict[str, float]] = {m: {} for m in models}
    for name in datasets:
        ds = get_dataset(name)
        items = ds.split("test")
        images = [ds.load_image(ref) for ref, _ in items]  # rendered once, shared by every model
        labels = torch.tensor([y for _, y in items])
        for model, vlm in vlms.items():
            tf = vlm.test_transform
            feats = torch.cat([vlm.encode_images(torch.stack([tf(im) for im in images[i:i + 256]]))
                               for i in range(0, len(images), 256)])
            text = vlm.encode_text(vlm.tokenize(ds.prompts()))
            pred = vlm.logits(feats, text).argmax(-1)
            table[model][name] = 100.0 * float((pred == labels).float().mean())
    return table


def drift(targets: list[str]) -> dict[str, list[dict]]:
    """Per-layer parameter drift of each target's text tower from the source's."""
    source = load_vlm(SOURCE, device="cpu")
    return {t: parameter_drift(source, load_vlm(t, device="cpu")) for t in targets}


def markdown(build_s: float | None, acc: dict, main: list[str], ood: list[str], drifts: dict) -> str:
    """The report as markdown tables."""
    models = list(acc)
    lines = [f"World size: `{world_name()}`.", ""]
    if build_s is not None:
        lines += [f"Full build (render the pool, train {', '.join(models)}): **{build_s:.0f} s**.", ""]
    head = "| model | " + " | ".join(main) + " | **mean** | " + " | ".join(ood) + " |"
    lines += ["Zero-shot top-1 (%) on the test splits:", "", head, "|" + "---|" * (len(main) + len(ood) + 2)]
    for m in models:
        mean = sum(acc[m][d] for d in main) / len(main)
        lines.append(f"| {m} | " + " | ".join(f"{acc[m][d]:.1f}" for d in main) + f" | **{mean:.1f}** | "
                     + " | ".join(f"{acc[m][d]:.1f}" for d in ood) + " |")
    if drifts:
        layers = [r["layer"] for r in next(iter(drifts.values()))]
        lines += ["", f"Relative parameter drift `||W_t - W_s|| / ||W_s||` of the text tower from {SOURCE}:", "",
                  "| target | " + " | ".join(layers) + " |", "|" + "---|" * (len(layers) + 1)]
        for t, rows in drifts.items():
            lines.append(f"| {t} | " + " | ".join(f"{r['relative_change']:.3f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Build, measure, print (and optionally write) the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--rebuild", action="store_true", help="delete the built models first and time the build")
    args = parser.parse_args()

    build_s = build(args.rebuild)
    models = list(recipe_table())
    datasets = world_datasets()
    ood = [d for d in datasets if DATASETS.entry(d).meta.get("ood_of")]
    main_tasks = [d for d in datasets if d not in ood]
    acc = zero_shot(models, datasets)
    drifts = drift([m for m in models if m != SOURCE])
    report = markdown(build_s, acc, main_tasks, ood, drifts)
    print(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    if args.json:
        args.json.write_text(json.dumps({"world": world_name(), "build_seconds": build_s, "zero_shot": acc,
                                         "drift": drifts}, indent=2))


if __name__ == "__main__":
    main()

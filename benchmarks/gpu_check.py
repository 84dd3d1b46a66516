"""The GPU check: the real architectures (random weights) on CUDA, run once when a GPU is available.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --classes 4 --classes-large 8 --pairs b16 --smoke   # plumbing only

For each model pair of the paper (ViT-B/16 CLIP -> EVA02-CLIP-B/16 for Table 2, ViT-L/14 for Table 8) it

1. asserts that the truncated-context text path (``VLM.encode_text_embeddings``, positions ``0..max(eot)``)
   equals open_clip's ``encode_text`` on the device, in fp32 and under bf16 autocast (within tolerance);
2. measures image-encoder throughput (images/s, bf16 autocast, channels-last or not, batch 256): the cost
   of feature extraction once decoding keeps up (``benchmarks/extraction.py`` measures decoding);
3. fits every registered method briefly (one epoch, or a few iterations per shot; methods without
   optimisation steps: their whole fit) on a synthetic few-shot task with cached features, at two class
   counts, and records seconds and peak GPU memory (seconds per step = a + b * classes, from the two);
4. measures peak memory (``torch.cuda.max_memory_allocated``) of CoCoOp's batched path and of ContCoOp on
   ViT-L/14 per batch size, and of plain training steps of its text encoder per prompt count, each next to
   the model of ``upgradebench.memory`` (``benchmarks/memory.py`` checks that model on CPU);
5. estimates the GPU-hours of the paper grids ``paper:table2`` and ``paper:table8`` (8 methods x 11 datasets x
   3 seeds, 16 shots) with ``upgradebench.cost`` from these throughputs (``--throughputs-out`` writes them in
   the format upgradebench ships as ``gpu_throughputs.json``, which ``sweep --dry-run`` estimates from).

Timing does not depend on the weights, so random weights measure what real ones would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from report import emit  # benchmarks/report.py, next to this script
from speed import SyntheticDataset  # benchmarks/speed.py, next to this script

from upgradebench.cost import estimate
from upgradebench.data import load_fewshot
from upgradebench.discovery import available_methods, get_method
from upgradebench.features import FeatureCache, autocast_context
from upgradebench.memory import TextShape, encode_text_bounded, model_bytes, training_peak_bytes
from upgradebench.models import VLM, ModelSpec
from upgradebench.plan import plan_runs
from upgradebench.prompting import class_prompts
from upgradebench.sweep import load_grid
from upgradebench.task import FewShotTask

# key -> (source architecture, target architecture, the paper grid it is estimated for)
PAIRS = {"b16": ("ViT-B-16-quickgelu", "EVA02-B-16", "table2"), "l14": ("ViT-L-14-quickgelu", "EVA02-L-14", "table8")}
PAPER_METHODS = ("zeroshot", "linear-probe", "clip-adapter", "tip-adapter-f", "coop", "cocoop", "kgcoop", "contcoop")


class SyntheticTask(FewShotTask):
    """A few-shot task whose cached features are random unit vectors (timing does not depend on them)."""

    def train_view_features(self, views=None, crop_scale=(0.08, 1.0)) -> torch.Tensor:
        count = views if views is not None else self.views
        return self._cached(("views", count), lambda: F.normalize(
            torch.randn(count, len(self.split.train), self.source.embed_dim, generator=_gen()), dim=-1))

    def train_plain_features(self) -> torch.Tensor:
        return self.train_view_features()[0]

    def val_features(self) -> torch.Tensor:
        return self._cached(("val",), lambda: F.normalize(
            torch.randn(len(self.split.val), self.source.embed_dim, generator=_gen()), dim=-1))


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def build(arch: str, device: torch.device) -> VLM:
    """A randomly initialised open_clip ``arch`` wrapped as the harness's VLM, on ``device``."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    return VLM(model, open_clip.get_tokenizer(arch), ModelSpec(arch, "open_clip", arch, None), device=device)


def text_equivalence(vlm: VLM, classes: int) -> dict:
    """Max |difference| of the truncated path against open_clip's encode_text, fp32 and bf16 autocast."""
    prompts = [f"a photo of a {name}, a type of thing." for name in SyntheticDataset(classes, 1).classnames]
    tokens = vlm.tokenize(prompts).to(vlm.device)
    out = {}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            with autocast_context(vlm.device, precision):
                reference = vlm.model.encode_text(tokens).float()
                fast = vlm.encode_text_embeddings(vlm.token_embeddings(tokens), vlm.eot_index(tokens)).float()
            diff = (reference - fast).abs().max().item()
            cosine = F.cosine_similarity(reference, fast, dim=-1).min().item()
            out[precision] = {"max_abs_diff": diff, "min_cosine": cosine, "scale": reference.abs().max().item()}
    assert out["fp32"]["max_abs_diff"] <= 1e-4 * max(1.0, out["fp32"]["scale"]), out
    assert out["bf16"]["min_cosine"] >= 0.999, out
    return out


def image_throughput(vlm: VLM, batch: int, iters: int) -> dict:
    """Images per second of the image encoder under bf16 autocast, plain and channels-last."""
    size = vlm.test_transform_spec.size
    images = torch.randn(batch, 3, size, size, device=vlm.device)
    out = {}
    for layout in ("contiguous", "channels_last"):
        x = images.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else images
        model = vlm.model.visual.to(memory_format=torch.channels_last if layout == "channels_last"
                                    else torch.contiguous_format)
        with torch.no_grad(), autocast_context(vlm.device, "bf16"):
            for _ in range(2):
                model(x)
            _sync(vlm.device)
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            _sync(vlm.device)
        out[layout] = batch * iters / (time.perf_counter() - start)
    vlm.model.visual.to(memory_format=torch.contiguous_format)
    out["best"] = max(out["contiguous"], out["channels_last"])
    return out


def short_config(method_name: str) -> dict[str, str]:
    """Overrides that make a fit short enough to time: one epoch, or 5 iterations per shot (CLIP-LoRA)."""
    fields = getattr(get_method(method_name).Config, "__dataclass_fields__", {})
    if "epochs" in fields:
        return {"epochs": "1"}
    return {"iters_per_shot": "5"} if "iters_per_shot" in fields else {}


def fit_timing(vlm: VLM, method_name: str, classes: int, shots: int, views: int) -> dict:
    """One short fit (:func:`short_config`) of ``method_name`` on a synthetic task: seconds, optimisation steps
    (None for a method without them), peak GPU memory."""
    method = get_method(method_name)
    config = method.make_config(short_config(method_name))
    dataset = SyntheticDataset(classes, shots)
    split = load_fewshot(dataset, shots, 1)
    with tempfile.TemporaryDirectory() as tmp:
        task = SyntheticTask(dataset, split, vlm, FeatureCache(root=tmp), views=views)
        task.train_view_features()
        task.val_features()
        _peak_reset(vlm.device)
        _sync(vlm.device)
        start = time.perf_counter()
        method().fit(vlm, task, config, seed=1)
        _sync(vlm.device)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": method.steps(config, dataset.name, classes, shots),
            "peak_gib": _peak_gib(vlm.device)}


def fit_model(small: dict, large: dict, classes: tuple[int, int]) -> dict:
    """The cost model of one method on one architecture (``upgradebench.cost``): seconds per optimisation
    step ``a + b * classes`` from short fits at two class counts; without steps, the whole fit per class."""
    if small["steps"] is None:
        return {"a": 0.0, "b": 0.0, "fit_per_class_s": large["seconds"] / classes[1]}
    per_step = [t["seconds"] / t["steps"] for t in (small, large)]
    b = max((per_step[1] - per_step[0]) / (classes[1] - classes[0]), 0.0)
    a = per_step[0] - b * classes[0]
    if a < 0:  # per-step time that is not linear in the classes: charge all of it per class (an upper bound)
        a, b = 0.0, per_step[1] / classes[1]
    return {"a": a, "b": b, "fit_per_class_s": None}


def memory_sweep(vlm: VLM, classes: int, shots: int, batches: list[int]) -> dict:
    """Peak GPU memory (GiB) of one epoch of CoCoOp and ContCoOp per batch size, measured and modelled."""
    out: dict[str, dict[str, dict]] = {}
    shape, weights = TextShape.of(vlm), model_bytes(vlm)
    for method_name in ("cocoop", "contcoop"):
        out[method_name] = {}
        for batch in batches:
            method = get_method(method_name)
            config = method.make_config({"epochs": "1", "batch_size": str(batch)})
            dataset = SyntheticDataset(classes, shots)
            split = load_fewshot(dataset, shots, 1)
            length = class_prompts(vlm, dataset.classnames, config.n_ctx).tokens.shape[1]
            rows = batch * classes if method_name == "cocoop" else classes
            cell: dict = {"prompt_rows": rows, "length": length,
                          "model_gib": training_peak_bytes(shape, weights, rows, length) / 2**30}
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    task = SyntheticTask(dataset, split, vlm, FeatureCache(root=tmp), views=2)
                    _peak_reset(vlm.device)
                    method().fit(vlm, task, config, seed=1)
                cell["measured_gib"] = _peak_gib(vlm.device)
            except torch.cuda.OutOfMemoryError:
                cell["measured_gib"] = "out of memory"
            out[method_name][str(batch)] = cell
            print(f"  memory {method_name} batch {batch}: {cell}", file=sys.stderr, flush=True)
    return out


def text_step_memory(vlm: VLM, rows_list: list[int], length: int) -> list[dict]:
    """Peak GPU memory of one unchunked fp32 training step of the text encoder (forward, backward to the prompt
    embeddings) per prompt count, against ``training_peak_bytes``: checks the per-token model on CUDA, whose
    attention kernels may keep other tensors than the CPU's."""
    shape, weights = TextShape.of(vlm), model_bytes(vlm)
    out = []
    for rows in rows_list:
        embeds = torch.randn(rows, length, vlm.text_width, device=vlm.device, requires_grad=True)
        eot = torch.full((rows,), length - 1, device=vlm.device)
        _peak_reset(vlm.device)
        encode_text_bounded(vlm, embeds, eot, max_rows=rows).square().sum().backward()
        _sync(vlm.device)
        measured = _peak_gib(vlm.device)
        modelled = training_peak_bytes(shape, weights, rows, length, chunked=False) / 2**30
        del embeds
        out.append({"rows": rows, "length": length, "measured_gib": measured, "model_gib": modelled,
                    "ratio": measured / modelled if measured else None})
        print(f"  text step {rows} rows: {out[-1]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pairs", default="b16,l14", help="b16 (Table 2) and/or l14 (Table 8)")
    parser.add_argument("--classes", type=int, default=100, help="class count of the timed epochs")
    parser.add_argument("--classes-large", type=int, default=200, help="second class count (per-step model)")
    parser.add_argument("--shots", type=int, default=4,
                        help="shots of the timed epochs (steps scale with shots; the estimate is for 16)")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    parser.add_argument("--memory-classes", type=int, default=100)
    parser.add_argument("--memory-batches", default="1,8,32")
    parser.add_argument("--memory-rows", default="100,400,1000", help="prompt rows of the plain text-encoder steps")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing, not the speed")
    parser.add_argument("--out", type=Path, help="the whole report (JSON)")
    parser.add_argument("--throughputs-out", type=Path,
                        help="the throughput table in upgradebench.cost's format (benchmark/gpu_throughputs.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    names = [m for m in args.methods.split(",") if m] or [entry.name for entry, _ in available_methods()[0]]
    report: dict = {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version(),
                    "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "classes": [args.classes, args.classes_large], "shots": args.shots, "views": args.views,
                    "methods": names, "pairs": {}}
    iters, batch = (1, 4) if args.smoke else (10, 256)
    table: dict = {"_doc": "Throughputs measured by benchmarks/gpu_check.py (see upgradebench.cost).",
                   "measured": {"device": report["device"], "torch": torch.__version__,
                                "date": time.strftime("%Y-%m-%d"), "script": "benchmarks/gpu_check.py"},
                   "archs": {}}
    for key in args.pairs.split(","):
        source_arch, target_arch, grid = PAIRS[key]
        started = time.perf_counter()
        pair: dict = {"source": source_arch, "target": target_arch}
        for role, arch in (("source", source_arch), ("target", target_arch)):
            vlm = build(arch, device)
            pair[f"{role}_text_equivalence"] = text_equivalence(vlm, args.classes)
            pair[f"{role}_images_per_s"] = image_throughput(vlm, batch, iters)
            print(f"{arch}: text path ok, {pair[f'{role}_images_per_s']['best']:.0f} images/s", file=sys.stderr,
                  flush=True)
            if role == "source":
                source = vlm
            else:
                del vlm
        fits = {}
        for name in names:
            small = fit_timing(source, name, args.classes, args.shots, args.views)
            large = fit_timing(source, name, args.classes_large, args.shots, args.views)
            fits[name] = {**fit_model(small, large, (args.classes, args.classes_large)),
                          "timed": {"small": small, "large": large}}
            print(f"  {name}: {small['seconds']:.2f} s / {large['seconds']:.2f} s per short fit "
                  f"({args.classes} / {args.classes_large} classes), peak {small['peak_gib']} GiB", file=sys.stderr,
                  flush=True)
        table["archs"][source_arch] = {"images_per_s": pair["source_images_per_s"]["best"], "fit": {
            name: {k: v for k, v in fit.items() if k != "timed"} for name, fit in fits.items()}}
        table["archs"][target_arch] = {"images_per_s": pair["target_images_per_s"]["best"]}
        pair["fit"] = fits
        specs = load_grid(f"paper:{grid}").specs()
        pair["estimate_paper_grid"] = estimate(plan_runs(specs), table).as_dict()
        # the same grid for the methods added since the paper (one run per coop run of the grid)
        added = [dataclasses.replace(s, method=m) for s in specs if s.method == "coop"
                 for m in names if m not in PAPER_METHODS]
        pair["estimate_added_methods"] = estimate(plan_runs(added), table).as_dict()
        if key == "l14":
            # peak memory per step does not depend on the number of steps: 2 shots keep the epoch short
            pair["memory_gib"] = memory_sweep(source, args.memory_classes, 2,
                                              [int(b) for b in args.memory_batches.split(",")])
            pair["text_step_memory"] = text_step_memory(source, [int(r) for r in args.memory_rows.split(",")], 17)
        pair["seconds"] = time.perf_counter() - started
        report["pairs"][key] = pair
        del source
        print(json.dumps({grid: pair["estimate_paper_grid"]}, indent=1), file=sys.stderr, flush=True)
    report["throughputs"] = table
    emit(report, args.out, (args.throughputs_out, table))


if __name__ == "__main__":
    main()

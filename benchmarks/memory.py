"""Training memory of CoCoOp and ContCoOp at ViT-L/14: the model of ``upgradebench.memory`` checked on CPU, then
extrapolated to a peak per batch size (and per class count).

On the real text towers of ``clip-l`` (ViT-L-14-quickgelu) and ``eva-clip-l`` (EVA02-L-14), random weights
(memory does not depend on them), fp32 as the methods train, one training step (forward + backward to the
prompt embeddings) through ``encode_text_bounded``:

1. kept activations: the distinct non-parameter storages autograd saves (``saved_tensors_hooks``) against
   ``TextShape.saved_bytes``;
2. peak: the process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before
   each step; glibc's mmap threshold pinned at 64 KiB so that freed tensors leave the resident set) minus the
   resident set before the step, against ``training_peak_bytes`` less the weights (already resident); once
   unchunked and once with a forced small number of rows per call;
3. the table: modelled peak of one training step (weights of both towers + activations) per batch size and
   class count, unchunked (what a single text-encoder call would need) and with the chunking the methods use,
   against a 24 GB GPU. CUDA's ``max_memory_allocated`` for the same steps is measured by
   ``benchmarks/gpu_check.py`` when a GPU is lent.

    python benchmarks/memory.py --out benchmarks/results/memory_vitl14.json --markdown table.md   (3.5 min, 1 thread)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
from pathlib import Path

import open_clip
import torch
from report import emit  # benchmarks/report.py, next to this script

from upgradebench.memory import (
    TEXT_ACTIVATION_BUDGET,
    TextShape,
    encode_text_bounded,
    model_bytes,
    rows_per_call,
    saved_activation_bytes,
    training_peak_bytes,
)
from upgradebench.models import VLM, ModelSpec

ARCHS = {"clip-l": "ViT-L-14-quickgelu", "eva-clip-l": "EVA02-L-14"}
GPU_BYTES = 24 * 10**9  # a "24 GB" GPU, counted in decimal gigabytes (the smaller reading)
GIB = 2**30


def build(arch: str) -> VLM:
    """The random-weight ``arch`` as the harness's VLM on the CPU."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    return VLM(model, open_clip.get_tokenizer(arch), ModelSpec(arch, "open_clip", arch, None))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _step(vlm: VLM, rows: int, length: int, max_rows: int | None) -> None:
    embeds = torch.randn(rows, length, vlm.text_width, requires_grad=True)
    out = encode_text_bounded(vlm, embeds, torch.full((rows,), length - 1), max_rows)
    out.square().sum().backward()


def peak_rss_bytes(vlm: VLM, rows: int, length: int, max_rows: int | None) -> int:
    """Resident-set high-water mark of one training step above the resident set before it."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmRSS")
    _step(vlm, rows, length, max_rows)
    return (_status_kib("VmHWM") - before) * 1024


def validate(vlm: VLM, rows_list: list[int], length: int, chunk: int) -> dict:
    """Measured against modelled: kept activations and step peaks, unchunked and with ``chunk`` rows per call."""
    shape = TextShape.of(vlm)
    out: dict = {"shape": vars(shape), "length": length, "kept": [], "peak": []}
    _step(vlm, 2, length, None)  # warm-up: allocator, kernels, thread pools
    for rows in rows_list:
        measured, modelled = saved_activation_bytes(vlm, rows, length), shape.saved_bytes(rows, length)
        out["kept"].append({"rows": rows, "measured_mib": measured / 2**20, "model_mib": modelled / 2**20,
                            "ratio": measured / modelled})
        for per_call in (None, chunk):
            if per_call is not None and per_call >= rows:
                continue
            budget = shape.saved_bytes(per_call, length) if per_call else TEXT_ACTIVATION_BUDGET
            modelled = training_peak_bytes(shape, 0, rows, length, chunked=per_call is not None, budget=budget)
            measured = peak_rss_bytes(vlm, rows, length, per_call or rows)
            out["peak"].append({"rows": rows, "rows_per_call": per_call or rows, "measured_mib": measured / 2**20,
                                "model_mib": modelled / 2**20, "ratio": measured / modelled})
            print(f"  rows {rows:4d} per call {per_call or rows:4d}: peak {measured / 2**20:8.1f} MiB measured, "
                  f"{modelled / 2**20:8.1f} MiB modelled", flush=True)
    return out


def table(vlm: VLM, batches: list[int], classes: list[int], cocoop_length: int, contcoop_length: int) -> dict:
    """Modelled peak (GiB) of one training step of CoCoOp per batch size x classes and of ContCoOp per classes."""
    shape, weights = TextShape.of(vlm), model_bytes(vlm)

    def row(rows: int, length: int) -> dict:
        plain = training_peak_bytes(shape, weights, rows, length, chunked=False)
        chunked = training_peak_bytes(shape, weights, rows, length)
        per_call = min(rows, rows_per_call(shape, length))
        return {"prompt_rows": rows, "rows_per_call": per_call, "calls": -(-rows // per_call),
                "unchunked_gib": plain / GIB, "chunked_gib": chunked / GIB,
                "unchunked_fits_24gb": plain <= GPU_BYTES, "chunked_fits_24gb": chunked <= GPU_BYTES}

    cocoop = {str(c): {str(b): row(b * c, cocoop_length) for b in batches} for c in classes}
    contcoop = {str(c): row(c, contcoop_length) for c in classes}
    largest = {str(c): max([b for b in batches if cocoop[str(c)][str(b)]["unchunked_fits_24gb"]], default=0)
               for c in classes}
    return {"weights_gib": weights / GIB, "cocoop_length": cocoop_length, "contcoop_length": contcoop_length,
            "cocoop": cocoop, "contcoop": contcoop, "cocoop_largest_unchunked_batch_in_24gb": largest}


def markdown(report: dict) -> str:
    """The per-batch-size tables as Markdown (included in docs/memory.md)."""
    lines = []
    for alias, t in report["tables"].items():
        classes = list(t["contcoop"])
        batches = list(t["cocoop"][classes[0]])
        lines += [f"**{alias}** (`{ARCHS[alias]}`, weights {t['weights_gib']:.2f} GiB): CoCoOp, peak GiB of one "
                  f"training step, {t['cocoop_length']}-token prompts; unchunked / chunked (calls per step)", "",
                  "| classes | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for c in classes:
            cells = [f"{r['unchunked_gib']:.1f} / {r['chunked_gib']:.1f} ({r['calls']})"
                     for r in t["cocoop"][c].values()]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines += ["", f"ContCoOp (any batch size; {t['contcoop_length']}-token prompts): "
                  + ", ".join(f"{c} classes {r['unchunked_gib']:.1f} / {r['chunked_gib']:.1f} GiB ({r['calls']})"
                              for c, r in t["contcoop"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="clip-l,eva-clip-l")
    parser.add_argument("--rows", default="8,32,64", help="prompt rows of the measured steps")
    parser.add_argument("--length", type=int, default=17, help="prompt tokens of the measured steps")
    parser.add_argument("--chunk", type=int, default=16, help="rows per call of the measured chunked steps")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--classes", default="10,100,397,1000")
    parser.add_argument("--cocoop-length", type=int, default=17,
                        help="SOS + 4 context + a class name of up to 10 tokens + '.' + EOS")
    parser.add_argument("--contcoop-length", type=int, default=29, help="as --cocoop-length with 16 context tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="Also write the JSON result here.")
    parser.add_argument("--markdown", type=Path, help="Also write the tables as Markdown here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: large blocks are unmapped when freed
    report: dict = {"torch": torch.__version__, "open_clip": open_clip.__version__, "device": "cpu",
                    "measure": "kept = autograd saved-tensor storages; peak = VmHWM - VmRSS before the step",
                    "budget_gib": TEXT_ACTIVATION_BUDGET / GIB, "gpu_bytes": GPU_BYTES,
                    "validation": {}, "tables": {}}
    for alias in args.models.split(","):
        print(f"{alias}:", flush=True)
        vlm = build(ARCHS[alias])
        report["validation"][alias] = validate(vlm, [int(r) for r in args.rows.split(",")], args.length, args.chunk)
        report["tables"][alias] = table(vlm, [int(b) for b in args.batches.split(",")],
                                        [int(c) for c in args.classes.split(",")], args.cocoop_length,
                                        args.contcoop_length)
        del vlm
    if args.markdown:
        args.markdown.write_text(markdown(report) + "\n")
    emit(report, args.out)


if __name__ == "__main__":
    main()

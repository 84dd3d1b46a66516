"""What the prediction ledger costs: run time with and without it, and bytes per test item.

    python benchmarks/ledger_overhead.py [--method contcoop] [--repeats 3] [--json out.json]

Runs ``upgradebench run --method METHOD`` (default source, target and dataset) into fresh results folders,
alternating a normal run with one whose ledger step (per-item predictions and the parquet write) is replaced
by nothing, after one warm-up run that fills the feature cache. Reports the median wall time of each, the
relative overhead, the time of the ledger step measured inside the runs (robust to a busy machine), and the
size of the ledger files per test item. ``UPGRADEBENCH_WORLD`` selects the world.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from upgradebench import runner as runner_module
from upgradebench.results import read_results
from upgradebench.runner import Runner, RunSpec


def timed_run(method: str, folder: Path, ledger: bool) -> tuple[float, float]:
    """Wall seconds of one run (fit + evaluations + zero-shot reference) into ``folder``, and of its ledger step.

    The ledger step (per-item predictions and the parquet writes) is timed inside the run, so its share does
    not depend on how busy the machine was during the rest of the run.
    """
    saved = runner_module.write_ledger, runner_module.predictions
    spent = [0.0]

    def timed(fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return call

    if ledger:
        runner_module.write_ledger, runner_module.predictions = timed(saved[0]), timed(saved[1])
    else:
        runner_module.write_ledger = lambda *args, **kwargs: None
        runner_module.predictions = lambda logits, labels, items: pd.DataFrame({"item": items})
    try:
        start = time.perf_counter()
        Runner(folder).run(RunSpec(method=method))
        return time.perf_counter() - start, spent[0]
    finally:
        runner_module.write_ledger, runner_module.predictions = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="contcoop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed_run(args.method, root / "warm-up", ledger=True)  # fills the feature cache
        times: dict[bool, list[float]] = {True: [], False: []}
        ledger_step: list[float] = []
        for i in range(args.repeats):
            for ledger in (False, True):
                seconds, step = timed_run(args.method, root / f"{ledger}-{i}", ledger)
                times[ledger].append(seconds)
                if ledger:
                    ledger_step.append(step)
        ledgers = sorted((root / f"True-{args.repeats - 1}").glob("*/ledger/*.parquet"))
        rows = read_results(root / f"True-{args.repeats - 1}")
        items = int(rows.n_test.sum())
        size = sum(p.stat().st_size for p in ledgers)
    with_ledger, without = statistics.median(times[True]), statistics.median(times[False])
    report = {"method": args.method, "repeats": args.repeats, "seconds_with_ledger": times[True],
              "seconds_without_ledger": times[False], "median_with": with_ledger, "median_without": without,
              "overhead": with_ledger / without - 1, "ledger_step_seconds": ledger_step,
              "ledger_step_share": statistics.median(s / t for s, t in zip(ledger_step, times[True])),
              "ledger_files": len(ledgers), "ledger_bytes": size,
              "items": items, "bytes_per_item": size / items}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

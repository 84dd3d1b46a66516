"""How fast a results folder is read: rows (``read_results``) and prediction ledgers (``read_ledgers``).

    python benchmarks/read_speed.py [--results results/runs] [--repeats 3] [--out benchmarks/results/read_speed.json]

Reads the folder ``--repeats`` times after one warm-up read (the page cache then holds the files) and reports
the median seconds of each, per file and in total. Every command that reads results (``results show``,
``figures``, ``fidelity``, ``leaderboard build``) pays this before it computes anything.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from report import emit  # benchmarks/report.py, next to this script

from upgradebench.metrics import read_ledgers
from upgradebench.results import read_results


def median_seconds(read, repeats: int) -> tuple[float, int]:
    """Median wall seconds of ``read()`` over ``repeats`` calls after a warm-up, and the size of what it read."""
    size = len(read())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows_s, rows = median_seconds(lambda: read_results(args.results), args.repeats)
    ledgers_s, ledgers = median_seconds(lambda: read_ledgers(args.results), args.repeats)
    emit({"results": args.results.name, "repeats": args.repeats,
          "rows": {"count": rows, "seconds": round(rows_s, 3), "ms_each": round(1000 * rows_s / rows, 2)},
          "ledgers": {"count": ledgers, "seconds": round(ledgers_s, 3),
                      "ms_each": round(1000 * ledgers_s / ledgers, 2)}}, args.out)


if __name__ == "__main__":
    main()

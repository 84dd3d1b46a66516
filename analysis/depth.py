"""The depth study (paper Fig. 2d): CoOp whose context enters the text encoder at the input of block k.

Each depth is an ordinary CoOp run with ``--config depth=k`` through the :class:`~upgradebench.runner.Runner`,
so its rows land in the same parquet store (method ``coop``, variant ``depth=k``) and resume like any run.
``k = 0`` is plain CoOp: its config equals the default, so it *is* the plain CoOp run (same run id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from upgradebench.errors import UserError
from upgradebench.plan import RunPlan, RunSpec
from upgradebench.runner import Runner

from .selection import sweep_summary

DEPTH_METHOD = "coop"
DEPTH_KEY = "depth"


def parse_layers(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-3,6"`` -> sorted distinct depths."""
    depths: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        low, sep, high = item.partition("-")
        try:
            depths.update(range(int(low), int(high) + 1) if sep else [int(low)])
        except ValueError:
            raise UserError(f"--layers expects numbers like 0,1,2 or 0-11, got {item!r}.") from None
    if not depths:
        raise UserError("--layers is empty.", "pass e.g. --layers 0,1,2,3")
    return sorted(depths)


def depth_specs(dataset: str, layers: Sequence[int], seeds: Sequence[int], **spec: Any) -> list[RunSpec]:
    """One CoOp :class:`RunSpec` per (depth, seed); ``spec`` holds the other RunSpec fields
    (``config`` holds further ``key=value`` overrides, which must not set ``depth`` themselves)."""
    config = dict(spec.pop("config", None) or {})
    if DEPTH_KEY in config:
        raise UserError("--config depth=... conflicts with --layers.", "give the depths with --layers only")
    return [RunSpec(method=DEPTH_METHOD, dataset=dataset, seed=seed, config={**config, DEPTH_KEY: k}, **spec)
            for k in layers for seed in seeds]


def plan_depths(runner: Runner, specs: Sequence[RunSpec]) -> list[RunPlan]:
    """Every run of ``specs`` (:meth:`Runner.plan`: the CoOp runs and their zero-shot reference); every depth must
    be a block of the source's text encoder (0 .. blocks - 1), checked before any fit."""
    plans = runner.plan(specs)
    for plan in plans:
        if plan.method.name != DEPTH_METHOD:
            continue
        blocks = runner.model(plan.source, plan.pretrained.get(plan.source)).num_text_layers
        depth = getattr(plan.config, DEPTH_KEY)
        if not 0 <= depth < blocks:
            raise UserError(f"Depth {depth} is not a block of {plan.source!r}'s text encoder (0..{blocks - 1}).",
                            f"pass --layers within 0-{blocks - 1}")
    return plans


def run_depth_study(runner: Runner, specs: Sequence[RunSpec],
                    on_start: Callable[[RunPlan], None] | None = None) -> pd.DataFrame:
    """Plan every spec (:func:`plan_depths`), then run each (fit or resume, evaluate); returns all rows, zero-shot
    included. ``on_start`` is called before each depth's run (progress output), not before the zero-shot run."""
    def start(plan: RunPlan) -> None:
        if on_start is not None and plan.method.name == DEPTH_METHOD:
            on_start(plan)

    outcomes = runner.run_all(plan_depths(runner, specs), start)
    return pd.concat([outcome.rows for outcome in outcomes], ignore_index=True)


def depth_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Base / New / H per (source, target, dataset, shots, depth), over seeds, from any result rows."""
    summary = sweep_summary(df, DEPTH_METHOD, (DEPTH_KEY,))
    if summary.empty:
        return summary
    return summary.sort_values(["source", "target", "dataset", "shots", DEPTH_KEY]).reset_index(drop=True)

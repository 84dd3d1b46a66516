"""The committed reference results (``results/``) are complete, readable and what the README shows."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
import yaml

from upgradebench.results import in_distribution, summarize

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "runs"
TOY_TASKS = ["toy-shape", "toy-colour", "toy-pattern", "toy-colour-shape", "toy-size", "toy-background"]
TARGETS = ["toy-eva", "toy-eva-drift"]


@pytest.fixture
def reference(committed_rows):
    return committed_rows


def test_every_builtin_method_is_in_the_main_grid():
    builtins = {ep.name for ep in entry_points(group="upgradebench.methods") if ep.dist.name == "upgradebench"}
    grid = yaml.safe_load((ROOT / "results" / "grids" / "main.yaml").read_text())
    assert set(grid["methods"]) == builtins


def test_every_builtin_method_has_three_seeds_on_every_toy_task(reference):
    main = in_distribution(reference[reference.method_variant == ""])
    builtins = [ep.name for ep in entry_points(group="upgradebench.methods") if ep.dist.name == "upgradebench"]
    for target in TARGETS:
        rows = main[(main.role == "new") & (main.eval_model == target)]
        seeds = rows.groupby(["method", "dataset"]).seed.nunique()
        for method in builtins:
            for task in TOY_TASKS:
                assert seeds.get((method, task), 0) == 3, (method, task, target)


def test_readme_table_is_the_summary_of_the_committed_rows(reference):
    summary = summarize(in_distribution(reference[reference.method_variant == ""]))
    avg = summary[summary.dataset == "Average"].set_index(["method", "target"])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reference results"):]
    rows = re.findall(r"^\| ([a-z-]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section, re.M)
    assert len(rows) == summary.method.nunique()
    for method, base, new_eva, h_eva, new_drift, h_drift in rows:
        for target, new, h in (("toy-eva", new_eva, h_eva), ("toy-eva-drift", new_drift, h_drift)):
            cell = avg.loc[(method, target)]
            assert (round(cell.base, 2), round(cell.new, 2), round(cell.H, 2)) == (float(base), float(new), float(h))


def test_depth_study_and_drift_are_committed(reference):
    depth = reference[(reference.method == "coop") & reference.method_variant.str.startswith("depth=")]
    assert sorted(depth.method_variant.unique()) == ["depth=1", "depth=2", "depth=3"]
    drift = pd.read_parquet(ROOT / "results" / "analysis" / "drift.parquet")
    assert set(drift.target) == set(TARGETS) and set(drift.kind) == {"parameters", "features"}

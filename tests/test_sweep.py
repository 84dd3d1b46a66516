"""Sweeps expand grids, resume after interruption, and report failures without losing the other runs."""

from __future__ import annotations

import json

import pytest

from upgradebench.errors import UserError
from upgradebench.results import read_results
from upgradebench.sweep import load_grid

from .cli_helpers import run_cli, run_json


def test_grid_expands_variants_and_ood(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("methods: [coop, contcoop]\ndatasets: [a]\nseeds: [1, 2]\n"
                    "variants: {contcoop: [{kd: false}]}\nood: {a: [b]}\n")
    specs = load_grid(path).specs()
    assert len(specs) == 2 * (1 + 2)
    assert {tuple(sorted(s.config.items())) for s in specs if s.method == "contcoop"} == {(), (("kd", False),)}
    assert all(s.ood == ["b"] for s in specs) and not any(s.oracle for s in specs)
    path.write_text("methods: [coop]\ndatasets: [a]\noracle: true\n")
    assert all(s.oracle for s in load_grid(path).specs())  # a grid can ask for the oracle fits


def test_bad_grid_names_the_key(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("methods: [coop]\ndatasets: [a]\nseed: [1]\n")
    with pytest.raises(UserError, match="unknown keys: seed"):
        load_grid(path)


def test_sweep_resumes_and_reports_failures(capsys, micro_dirs, tiny_dataset, tmp_path):
    src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
    grid = tmp_path / "g.yaml"
    grid.write_text(f"source: '{src}'\ntargets: ['{tgt}']\nmethods: [zeroshot, coop]\n"
                    f"datasets: [{tiny_dataset}]\nseeds: [1, 2]\nshots: [1]\n")
    code, text, err = run_cli(capsys, "sweep", "--grid", str(grid), "--results", str(tmp_path / "r"), "--json")
    out = json.loads(text)
    # coop's zero-shot reference is the grid's zero-shot run: planned once
    assert code == 0 and out["total"] == 4 and len(out["completed"]) == 4 and not out["failed"]
    assert out["fitted"] == 4 and out["reused"] == 0
    # stderr is not a terminal here (a log file): a line per finished run saying what it did, no blank lines
    assert [line for line in err.splitlines() if line.startswith("[")] == [
        f"[{i}/4] {name}: done (fitted, 2 rows written)" for i, name in enumerate(out["completed"], 1)]
    assert "" not in err.splitlines()
    first = read_results(tmp_path / "r")
    assert set(first.method) == {"zeroshot", "coop"} and set(first.seed) == {1, 2}
    assert {o["folder"] for o in out["outcomes"].values()} == {str(tmp_path / "r" / r) for r in set(first.run_id)}
    code, text, err = run_cli(capsys, "sweep", "--grid", str(grid), "--results", str(tmp_path / "r"), "--json")
    again = json.loads(text)
    assert read_results(tmp_path / "r").created_at.tolist() == first.created_at.tolist()  # resumed, nothing redone
    # a reused run is never just "done": it says it was reused and that nothing was written
    assert code == 0 and again["reused"] == 4 and again["fitted"] == again["evaluated"] == 0
    assert [line for line in err.splitlines() if line.startswith("[")] == [
        f"[{i}/4] {name}: done (reused, nothing written (2 rows already there))"
        for i, name in enumerate(again["completed"], 1)]
    code, out, err = run_cli(capsys, "sweep", "--method", "nope", "--dataset", tiny_dataset)
    assert code == 2 and "Unknown method" in err


def test_dry_run_lists_runs(capsys, tiny_dataset):
    out = run_json(capsys, "sweep", "--method", "coop", "--dataset", tiny_dataset, "--seed", "1", "--dry-run")
    assert out["runs"] == [f"coop {tiny_dataset} k=16 seed=1", f"zeroshot {tiny_dataset} k=16 seed=1"]
    assert out["missing"] == []


def test_dry_run_lists_the_zeroshot_and_oracle_runs_once_each(capsys, tmp_path):
    """The planner's list is the sweep: each method's oracle run per target, one zero-shot run per cell."""
    path = tmp_path / "g.yaml"
    path.write_text("source: toy-clip\ntargets: [toy-eva, toy-eva-drift]\nmethods: [coop, zeroshot, kgcoop]\n"
                    "datasets: [toy-shape]\nseeds: [1, 2]\noracle: true\n")
    out = run_json(capsys, "sweep", "--grid", str(path), "--dry-run")
    cell = ["coop {} seed={}", "coop {} seed={} oracle on toy-eva", "coop {} seed={} oracle on toy-eva-drift",
            "zeroshot {} seed={}", "kgcoop {} seed={}", "kgcoop {} seed={} oracle on toy-eva",
            "kgcoop {} seed={} oracle on toy-eva-drift"]
    assert out["runs"] == [run.format("toy-shape k=16", seed) for seed in (1, 2) for run in cell]


def test_options_slice_a_grid(capsys, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("methods: [coop, contcoop]\ndatasets: [toy-shape, toy-pattern]\nseeds: [1]\n")
    out = run_json(capsys, "sweep", "--grid", str(path), "--dataset", "toy-pattern", "--method", "coop", "--dry-run")
    assert out["runs"] == ["coop toy-pattern k=16 seed=1", "zeroshot toy-pattern k=16 seed=1"]


def test_grid_values_plan_typed_as_their_text_would_and_wrong_types_are_refused():
    """A grid's YAML values reach the config without a round trip through text, with the same result."""
    from upgradebench.plan import RunSpec, make_plan

    typed = make_plan(RunSpec(method="contcoop", config={"kd_weight": 0, "heads": 2, "attention": False}))
    text = make_plan(RunSpec(method="contcoop", config={"kd_weight": "0", "heads": "2", "attention": "false"}))
    assert typed.config == text.config and type(typed.config.kd_weight) is float  # an int is a float where one is due
    assert typed.variant() == text.variant() == "attention=False,heads=2,kd_weight=0.0"  # so the run ids agree
    for bad in ({"heads": 2.5}, {"heads": True}, {"attention": 1}, {"n_ctx": None}, {"condition": [1]}):
        with pytest.raises(UserError, match=next(iter(bad))):
            make_plan(RunSpec(method="contcoop", config=bad))


def test_a_plan_unpickled_in_a_fresh_process_keeps_its_method():
    # --jobs and submitit send plans to other processes, where get_method has not named the class yet
    import pickle
    import subprocess
    import sys

    from upgradebench.plan import RunSpec, make_plan

    plan = make_plan(RunSpec(method="kgcoop", config={"n_ctx": 2}))
    code = "import pickle, sys; p = pickle.loads(sys.stdin.buffer.read()); print(p.method.name, p.describe())"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(plan), capture_output=True, check=True)
    assert out.stdout.decode().split() == ["kgcoop", *plan.describe().split()]
    assert plan.describe().startswith("kgcoop[n_ctx=2] ")


@pytest.mark.parametrize("executor", [["--jobs", "2"], ["--executor", "submitit-local"]])
def test_every_executor_gets_the_planned_list_oracle_runs_included(capsys, monkeypatch, tmp_path, executor):
    """`--jobs` and submitit receive each oracle and zero-shot run as a run of its own (so they run in parallel)."""
    from upgradebench import sweep
    from upgradebench.plan import RunSpec, plan_runs

    given = []

    def parallel(plans, runner_kwargs, jobs, keep_going=True):
        given.extend(plans)
        return sweep.SweepReport(len(plans))

    def slurm(plans, runner_kwargs, folder, options, cluster=None):
        given.extend(plans)
        return []

    monkeypatch.setattr(sweep, "run_parallel", parallel)
    monkeypatch.setattr(sweep, "run_slurm", slurm)
    path = tmp_path / "g.yaml"
    path.write_text("source: toy-clip\ntargets: [toy-eva]\nmethods: [coop]\ndatasets: [toy-shape]\nseeds: [1, 2]\n"
                    "shots: [2]\noracle: true\n")
    code, _, err = run_cli(capsys, "sweep", "--grid", str(path), "--results", str(tmp_path / "r"), *executor)
    assert code == 0, err
    specs = [RunSpec(method="coop", source="toy-clip", targets=["toy-eva"], dataset="toy-shape", shots=2, seed=s,
                     oracle=True) for s in (1, 2)]
    assert [p.describe() for p in given] == [p.describe() for p in plan_runs(specs)]
    assert sum(p.role == "oracle" for p in given) == 2 and sum(p.method.name == "zeroshot" for p in given) == 2


def test_dry_run_table_shows_variant_labels_as_written(capsys, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("methods: [coop]\ndatasets: [toy-shape]\nseeds: [1]\nvariants: {coop: [{n_ctx: 4}]}\n")
    code, out, _ = run_cli(capsys, "sweep", "--grid", str(path), "--dry-run")
    assert code == 0 and "coop[n_ctx=4] toy-shape k=16 seed=1" in out and "\\[" not in out  # escaped once, not twice


def test_the_planner_gives_exactly_the_committed_reference_runs(committed_rows):
    """Planning results/grids/*.yaml and regenerate.sh's depth study names every committed run folder and no other:
    the plan list (zero-shot and oracle runs included) and the run ids are those the reference results came from."""
    from pathlib import Path

    from upgradebench.analysis.depth import depth_specs
    from upgradebench.plan import plan_runs

    root = Path(__file__).resolve().parents[1] / "results"
    rows = committed_rows
    datasets = dict(zip(rows.dataset, rows.dataset_fingerprint))
    models = dict(zip(rows.eval_model, rows.eval_fingerprint))
    specs = [spec for grid in sorted((root / "grids").glob("*.yaml")) for spec in load_grid(grid).specs()]
    specs += depth_specs("toy-pattern", range(4), [1, 2, 3], source="toy-clip", targets=["toy-eva", "toy-eva-drift"])
    planned = [plan.identify(datasets[plan.dataset], plan.dataset, models[plan.source], "fp32")[1]
               for plan in plan_runs(specs)]
    assert len(planned) == len(set(planned))  # a run asked for twice is planned once
    assert set(planned) == {run.name for run in (root / "runs").iterdir()}


def test_a_run_asked_for_with_other_targets_is_planned_once_on_all_of_them():
    from upgradebench.plan import RunSpec, plan_runs

    one = RunSpec(method="coop", source="toy-clip", targets=["toy-eva"], dataset="toy-shape", shots=2, seed=1)
    two = RunSpec(method="coop", source="toy-clip", targets=["toy-eva-drift", "toy-eva"], dataset="toy-shape", shots=2,
                  seed=1, ood=["toy-shape-sketch"])
    plans = plan_runs([one, two])
    coop = [p for p in plans if p.method.name == "coop"]
    assert len(coop) == 1 and coop[0].targets == ("toy-eva", "toy-eva-drift") and coop[0].ood == ("toy-shape-sketch",)
    assert sum(p.method.name == "zeroshot" for p in plans) == 1

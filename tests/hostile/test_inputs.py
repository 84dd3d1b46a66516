"""Hostile inputs to the execution path: bad option and config values, output folders, test sets of other
classes, the parallel and submitit executors, and kill -9 of a run and of a sweep at three moments each.

Every case asserts the exit code and the message; the kill cases compare the rows after a resume with those
of an uninterrupted run (none lost, duplicated or different). Runs use the micro world (seconds per run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from upgradebench.data import DATASETS
from upgradebench.results import read_results

from ..cli_helpers import run_cli, run_json
from ..test_figures import PAIRS, synthetic_results
from ..tiny_data import COLOURS, TinyColours
from .conftest import MICRO_RUN, grid_file

KEY = ["run_id", "eval_model", "dataset", "role"]




def _rows(folder: Path) -> pd.DataFrame:
    """The rows of a results folder that must not change with interruptions, in a stable order."""
    df = read_results(folder)
    cols = [*KEY, "method", "seed", "top1", "n_test", "eval_fingerprint"]
    return df[cols].sort_values(KEY).reset_index(drop=True)


def _same_rows(folder: Path, reference: Path) -> None:
    got, want = _rows(folder), _rows(reference)
    assert not got.duplicated(KEY).any(), "a row is duplicated"
    pd.testing.assert_frame_equal(got, want)


# ---- validation before anything loads -------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--config", "n_ctx=-3"], "coop.n_ctx=-3 is out of range (it must be >= 1)"),
    (["--config", "lr=0"], "coop.lr=0.0 is out of range (it must be > 0)"),
    (["--config", "momentum=nan"], "coop.momentum=nan is out of range"),
    (["--config", "n_ctx=four"], "coop.n_ctx: cannot read 'four' as int"),
    (["--precision", "fp8"], "Unknown precision 'fp8'"),
    (["--device", "junk"], "--device 'junk' is not a device"),
    (["--ood", "toy-pattern"], "Dataset toy-pattern has other classes than toy-shape"),
])
def test_run_refuses_bad_values_before_any_model_loads(capsys, no_model_loads, tmp_path, args, message):
    code, out, err = run_cli(capsys, "run", "--method", "coop", *MICRO_RUN, "--results", str(tmp_path / "r"), *args)
    assert code == 2 and message in err and "fix:" in err and "Traceback" not in err
    assert not list((tmp_path / "r").rglob("*.parquet"))  # nothing written


@pytest.mark.parametrize("grid, message", [
    ("methods: [coop]\ndatasets: [toy-shape]\nvariants: {coop: [{n_ctx: -3}]}\n", "coop.n_ctx=-3 is out of range"),
    ("methods: [coop]\ndatasets: [toy-shape]\nvariants: {coop: [{epochs: many}]}\n", "coop.epochs: cannot read"),
    ("methods: coop\ndatasets: [toy-shape]\n", "'methods' must be a list of strs"),
    ("methods: [coop]\ndatasets: [toy-shape]\nseeds: 1\n", "'seeds' must be a list of ints"),
    ("methods: [coop]\ndatasets: [toy-shape]\nviews: 0\n", "--views must be a positive number"),
])
def test_grid_values_are_checked_in_a_dry_run(capsys, tmp_path, grid, message):
    code, _, err = run_cli(capsys, "sweep", "--grid", grid_file(tmp_path, grid), "--dry-run")
    assert code == 2 and message in err and "Traceback" not in err


def test_grid_that_is_a_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "sweep", "--grid", str(tmp_path), "--dry-run")
    assert code == 2 and "is a folder, not a YAML file" in err


@pytest.mark.parametrize("args, message", [
    (["--executor", "cloud"], "Unknown executor 'cloud'"),
    (["--executor", "slurm", "--jobs", "2"], "--jobs is for --executor local"),
])
def test_sweep_refuses_bad_executor_options_before_a_dry_run(capsys, args, message):
    code, _, err = run_cli(capsys, "sweep", "--method", "zeroshot", "--dataset", "toy-shape", "--dry-run", *args)
    assert code == 2 and message in err


def test_threads_beyond_the_cores_are_capped(capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        code, _, err = run_cli(capsys, "--threads", "100000", "methods", "list", "--json")
        assert code == 0 and "more than the 2 CPU cores; using 2" in err and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---- output folders -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def board_results(tmp_path_factory) -> Path:
    return synthetic_results(tmp_path_factory.mktemp("board") / "results", pairs=PAIRS[:1],
                             methods=("zeroshot", "coop"))


def test_output_folder_of_other_files_needs_force(capsys, board_results, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("not the leaderboard's")
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(board_results), "--out", str(out))
    assert code == 2 and "a folder with other files in it" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]  # untouched
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(board_results), "--out", str(out),
                           "--force")
    assert code == 0 and (out / "index.html").is_file() and (out / "thesis.tex").is_file()


def test_output_folder_written_before_is_written_again(capsys, board_results, tmp_path):
    out = tmp_path / "site"
    for _ in range(2):  # the second build rewrites its own folder without --force
        code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(board_results), "--out", str(out))
        assert code == 0, err


@pytest.mark.parametrize("out, message", [("", "--out is empty"), ("/", "is the filesystem root"),
                                          ("FILE", "is a file, not a folder")])
def test_output_folder_refused(capsys, board_results, tmp_path, out, message):
    if out == "FILE":
        out = str(tmp_path / "notes.txt")
        Path(out).write_text("x")
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(board_results), "--out", out)
    assert code == 2 and message in err and "Traceback" not in err


# ---- test sets of other classes ---------------------------------------------------------------------------------
class TinySubset(TinyColours):
    """Two of the tiny dataset's four classes, in another order, that record their labels in it (as ImageNet-A)."""

    name = "tiny-colours-sub"
    parent_labels = [2, 1]

    def __init__(self, root: Path | None = None) -> None:
        self.classnames = [list(COLOURS)[p] for p in self.parent_labels]

    def has_split(self, name: str) -> bool:
        return name == "test"

    def split(self, name: str) -> list[tuple[str, int]]:
        return [(ref, self.parent_labels.index(y)) for ref, y in TinyColours().split("test") if y in self.parent_labels]

    def load_image(self, ref: str) -> object:
        return TinyColours().load_image(ref)


@pytest.fixture
def subset(tiny_dataset):
    DATASETS.register("tiny-colours-sub", lambda root: TinySubset(root), num_classes=2, kind="test",
                      ood_of=tiny_dataset, replace=True)
    yield "tiny-colours-sub"
    DATASETS.unregister("tiny-colours-sub")


def test_subset_test_set_is_scored_on_the_modules_columns(capsys, micro_dirs, tiny_dataset, subset, tmp_path):
    from upgradebench.features import FeatureCache
    from upgradebench.models import load_vlm
    from upgradebench.module_io import load_module

    src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
    run_json(capsys, "run", "--method", "linear-probe", "--source", src, "--target", tgt, "--dataset", tiny_dataset,
             "--shots", "2", "--views", "1", "--ood", subset, "--results", str(tmp_path / "r"))
    df = read_results(tmp_path / "r")
    row = df[(df.method == "linear-probe") & (df.dataset == subset) & (df.role == "base")].iloc[0]
    # measured independently: the module's 4-class logits on the subset's images, columns [2, 1], argmax
    module = load_module(tmp_path / "r" / row.run_id / "module")
    vlm, ds = load_vlm(src, device="cpu"), TinySubset()
    items = ds.split("test")
    feats = FeatureCache().get(vlm, ds, "test", items, vlm.test_transform_spec)
    logits = module.logits(vlm, feats, TinyColours().classnames)[:, TinySubset.parent_labels]
    expected = 100 * (logits.argmax(1) == torch.tensor([y for _, y in items])).float().mean().item()
    assert row.n_test == len(items) == 60 and row.top1 == pytest.approx(expected)
    # eval finds the module's dataset from its run identity and maps the subset the same way
    ev = run_json(capsys, "eval", "--module", str(tmp_path / "r" / row.run_id / "module"), "--model", src,
                  "--dataset", subset)
    assert ev["top1"] == pytest.approx(row.top1)


def test_eval_on_a_dataset_of_other_classes_is_refused(capsys, micro_dirs, tiny_dataset, tmp_path):
    src = f"local-dir:{micro_dirs['clip']}"
    run_json(capsys, "run", "--method", "zeroshot", "--source", src, "--target", f"local-dir:{micro_dirs['eva']}",
             "--dataset", tiny_dataset, "--results", str(tmp_path / "r"))
    module = next((tmp_path / "r").glob("zeroshot-*/module"))
    code, _, err = run_cli(capsys, "eval", "--module", str(module), "--model", src, "--dataset", "toy-pattern")
    assert code == 2 and "which is neither toy-pattern" in err and "fitted on" in err


# ---- executors ---------------------------------------------------------------------------------------------------
SWEEP = ("source: toy-clip\ntargets: [toy-eva]\nmethods: [zeroshot, coop]\ndatasets: [toy-shape]\nseeds: [1, 2]\n"
         "shots: [2]\n")
FAILING = "variants: {coop: [{ctx_init: 'a photo of', n_ctx: 5}]}\n"  # passes validation, fails in fit


@pytest.mark.slow
def test_parallel_sweep_matches_serial_and_reports_failures(capsys, tmp_path):
    grid = grid_file(tmp_path, SWEEP + FAILING)
    serial = run_cli(capsys, "sweep", "--grid", grid, "--results", str(tmp_path / "serial"), "--workers", "0", "--json")
    parallel = run_cli(capsys, "sweep", "--grid", grid, "--results", str(tmp_path / "par"), "--workers", "0",
                       "--jobs", "2", "--json")
    for code, out, _ in (serial, parallel):
        report = json.loads(out)
        assert code == 1 and report["total"] == 6 and len(report["completed"]) == 4
        assert sorted(report["failed"]) == [f"coop[ctx_init=a photo of,n_ctx=5] toy-shape k=2 seed={s}" for s in (1, 2)]
        assert all("has 3 tokens but n_ctx is 5" in why for why in report["failed"].values())
    _same_rows(tmp_path / "par", tmp_path / "serial")


def test_parallel_workers_get_one_gpu_each(monkeypatch):
    """The worker set-up takes its GPU from the queue before torch touches CUDA."""
    import queue

    from upgradebench import sweep

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    assert sweep.visible_gpus() == ["4", "7"]
    gpus = queue.Queue()
    gpus.put("7")
    before = torch.get_num_threads()
    try:
        sweep._start_worker(gpus, {"results": os.devnull, "device": "cpu"}, 1)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "7" and sweep._WORKER["runner"].device.type == "cpu"
    finally:
        torch.set_num_threads(before)
        sweep._WORKER.clear()


@pytest.mark.slow
def test_submitit_local_executor_rows_kill_and_resume(capsys, tmp_path):
    submitit = pytest.importorskip("submitit")
    from upgradebench.runner import Runner, RunSpec
    from upgradebench.sweep import run_slurm, wait_jobs

    one = "source: toy-clip\ntargets: [toy-eva]\nmethods: [zeroshot]\ndatasets: [toy-shape]\nseeds: [1]\nshots: [2]\n"
    crash = "variants: {zeroshot: [{template: '{0} {1}'}]}\n"  # passes validation, raises IndexError in the job
    code, out, err = run_cli(capsys, "sweep", "--grid", grid_file(tmp_path, one + crash),
                             "--results", str(tmp_path / "sub"),
                             "--workers", "0", "--executor", "submitit-local", "--json")
    report = json.loads(out)
    assert code == 1 and report["completed"] == ["zeroshot toy-shape k=2 seed=1"], err
    assert "IndexError" in report["failed"]["zeroshot[template={0} {1}] toy-shape k=2 seed=1"]
    code, _, _ = run_cli(capsys, "sweep", "--grid", grid_file(tmp_path, one), "--results", str(tmp_path / "serial"),
                         "--workers", "0", "--json")
    assert code == 0
    _same_rows(tmp_path / "sub", tmp_path / "serial")

    # a job killed with -9 is reported as failed; running the sweep again completes its rows
    spec = RunSpec(method="zeroshot", source="toy-clip", targets=["toy-eva"], dataset="toy-shape", shots=2, seed=1)
    runner_kwargs = {"results": tmp_path / "killed", "workers": 0}
    [plan] = Runner(**runner_kwargs).plan(spec)  # a zero-shot run: the one run of its list
    [job] = run_slurm([plan], runner_kwargs, tmp_path / "killed" / "slurm", {}, cluster="local")
    assert isinstance(job, submitit.local.local.LocalJob)
    os.kill(int(job.job_id), signal.SIGKILL)  # a local job's id is its process id
    killed = wait_jobs([plan], [job])
    assert killed.completed == [] and list(killed.failed) == ["zeroshot toy-shape k=2 seed=1"]
    assert not list((tmp_path / "killed").rglob("*.parquet"))
    code, out, _ = run_cli(capsys, "sweep", "--grid", grid_file(tmp_path, one), "--workers", "0",
                           "--results", str(tmp_path / "killed"), "--executor", "submitit-local", "--json")
    assert code == 0 and json.loads(out)["completed"] == ["zeroshot toy-shape k=2 seed=1"]
    _same_rows(tmp_path / "killed", tmp_path / "serial")


# ---- kill -9 ------------------------------------------------------------------------------------------------------
def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """``upgradebench ARGS`` in a child process (stderr to a file: a full pipe would stall it)."""
    log = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
    proc = subprocess.Popen([sys.executable, "-c", "from upgradebench.cli import main; main()", *args],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            env={**os.environ, "UPGRADEBENCH_THREADS": "1"})
    return proc, log


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie no parent reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_when(proc: subprocess.Popen, log: Path, moment: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``moment()`` holds; fails if it finished or errored first. Its worker processes
    (``--jobs``) must end by themselves within seconds."""
    deadline = time.monotonic() + timeout
    while not moment():
        if proc.poll() is not None:
            pytest.fail(f"finished (exit {proc.returncode}) before the kill moment: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill moment never came")
        time.sleep(0.005)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [c for c in children if _alive(c)]
    for pid in orphans:  # ended here so that a failure leaves nothing running
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "worker processes outlived the killed sweep"


def _count(folder: Path, pattern: str) -> Callable[[], int]:
    return lambda: len(list(folder.glob(pattern)))


RUN = ["run", "--method", "coop", *MICRO_RUN, "--config", "epochs=20", "--config", "n_ctx=4", "--json"]
RUN_MOMENTS = {  # the run has started fitting / its module is saved / its first row is written
    "fitting": lambda res, log: "run coop on toy-shape" in log.read_text(),
    "module saved": lambda res, log: _count(res, "coop-*/module/module.json")() >= 1,
    "first row": lambda res, log: _count(res, "coop-*/*.parquet")() >= 1,
}


@pytest.mark.slow
def test_kill_9_of_a_run_at_three_moments_loses_nothing(capsys, tmp_path):
    code, out, err = run_cli(capsys, *RUN, "--results", str(tmp_path / "full"))  # uninterrupted (and builds the world)
    assert code == 0, err
    for i, (name, moment) in enumerate(RUN_MOMENTS.items()):
        res = tmp_path / f"killed-{i}"
        proc, log = _start(tmp_path, *RUN, "--results", str(res))
        _kill_when(proc, log, lambda moment=moment, res=res, log=log: moment(res, log))
        code, out, err = run_cli(capsys, *RUN, "--results", str(res))
        assert code == 0 and json.loads(out)["rows"], f"{name}: {err}"
        _same_rows(res, tmp_path / "full")


SWEEP_MOMENTS = {  # the first row / the first coop module / a row of the second seed is on disk
    "first row": lambda res: _count(res, "*/*.parquet")() >= 1,
    "coop module": lambda res: _count(res, "coop-*/module/module.json")() >= 1,
    "second seed": lambda res: _count(res, "*-s2-*/*.parquet")() >= 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_kill_9_of_a_sweep_at_three_moments_loses_nothing(capsys, tmp_path, jobs):
    """The killed sweep runs with ``--jobs``; the uninterrupted one and the resumes run serially (the parallel
    executor's rows equal the serial ones: test_parallel_sweep_matches_serial_and_reports_failures)."""
    grid = grid_file(tmp_path, SWEEP + "variants: {coop: [{epochs: 20, n_ctx: 4}]}\n")
    sweep = ["sweep", "--grid", grid, "--workers", "0", "--json"]
    code, out, err = run_cli(capsys, *sweep, "--results", str(tmp_path / "full"))
    assert code == 0 and json.loads(out)["total"] == 6, err
    for i, (name, moment) in enumerate(SWEEP_MOMENTS.items()):
        res = tmp_path / f"killed-{i}"
        proc, log = _start(tmp_path, *sweep, "--jobs", jobs, "--results", str(res))
        _kill_when(proc, log, lambda moment=moment, res=res: moment(res))
        code, out, err = run_cli(capsys, *sweep, "--results", str(res))
        report = json.loads(out)
        assert code == 0 and len(report["completed"]) == 6 and not report["failed"], f"{name}: {err}"
        _same_rows(res, tmp_path / "full")

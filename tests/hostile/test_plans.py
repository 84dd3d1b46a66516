"""Hostile inputs to planning and execution: grid values, run options, executor options, grid files that are not
files, and plugins that misbehave (wrong logits, a failing fit, prints that would break ``--json``).

One test per family; each asserts the exit code and the one-line message, and that nothing heavy happened first
(no model loaded, no row written, nothing submitted).
"""

from __future__ import annotations

import json
import os

import pytest

from upgradebench.results import read_results

from ..cli_helpers import run_cli
from .conftest import MICRO_RUN as RUN
from .conftest import grid_file

GRID = "source: toy-clip\ntargets: [toy-eva]\nmethods: [coop]\ndatasets: [toy-shape]\n"




def _one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2 and message in err and "Traceback" not in err + out, err


@pytest.mark.parametrize("extra, message", [
    ("shots: [0]\n", "shots must be at least 1"),
    ("shots: [-4]\n", "shots must be at least 1"),
    ("seeds: [99999999999999999999999]\n", "is not a valid seed"),
    ("seeds: [-1]\n", "is not a valid seed"),
    ("targets: [toy-clip]\n", "'toy-clip' is both the source and a target"),
    ("targets: []\n", "needs a non-empty 'targets' list"),
    ("targets: [toy-eva, toy-eva]\n", "given more than once"),
    ("oracle: 'false'\n", "'oracle' must be true or false"),
    ("ood: {toy-shape: toy-shape-sketch}\n", "'ood' must map a name to a list"),
    ("ood: {toy-shape: [[toy-shape-sketch]]}\n", "'ood' must map a dataset name to a list of dataset names"),
    ("ood: [toy-shape-sketch]\n", "'ood' must map a name to a list"),
    ("views: [1, 2]\n", "--views must be a positive number or 'online'"),
    ("views: true\n", "--views must be a positive number or 'online'"),
])
def test_bad_grid_values_are_refused_in_a_dry_run(capsys, no_model_loads, tmp_path, extra, message):
    """Grid values that used to plan (``shots: [0]``, ``oracle: "false"`` read as true) or crash (``views: [1, 2]``,
    a seed beyond int64) are refused before anything runs, naming the grid."""
    grid = GRID.replace("targets: [toy-eva]\n", "") if extra.startswith("targets") else GRID
    code, out, err = run_cli(capsys, "sweep", "--grid", grid_file(tmp_path, grid + extra), "--dry-run")
    _one_line_error(code, out, err, message)
    # the grid's own values name the file; the models are checked as planned (--source/--target may override them)
    assert "grid.yaml" in err or "the grid's targets" in err


@pytest.mark.parametrize("args, message", [
    (["--seed", "99999999999999999999999"], "--seed 99999999999999999999999 is not a valid seed"),
    (["--seed", "-3"], "--seed -3 is not a valid seed"),
    (["--shots", "0"], "--shots must be at least 1"),
    (["--target", "toy-clip"], "'toy-clip' is both the source and a target"),
    (["--target", "toy-eva", "--target", "toy-eva"], "given more than once"),
])
def test_bad_run_options_are_refused_before_any_model_loads(capsys, no_model_loads, tmp_path, args, message):
    base = [a for a in RUN if a not in ("--target", "toy-eva")] if "--target" in args else RUN
    code, out, err = run_cli(capsys, "run", "--method", "coop", *base, "--results", str(tmp_path / "r"), *args)
    _one_line_error(code, out, err, message)
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("*.parquet"))


def test_slurm_options_and_a_missing_slurm_are_refused_before_planning(capsys, monkeypatch, no_model_loads, tmp_path):
    """``--slurm-minutes -5`` is refused; ``--executor slurm`` where there is no SLURM never says "submitted" (submitit
    would run the jobs here, in the background)."""
    pytest.importorskip("submitit")
    grid = grid_file(tmp_path, GRID)
    code, out, err = run_cli(capsys, "sweep", "--grid", grid, "--slurm-minutes", "-5", "--executor", "slurm")
    assert code == 2 and "--slurm-minutes" in err and "Traceback" not in err
    monkeypatch.setattr("shutil.which", lambda name, *args, **kwargs: None)  # no sbatch on this machine
    code, out, err = run_cli(capsys, "sweep", "--grid", grid, "--executor", "slurm", "--results", str(tmp_path / "r"))
    _one_line_error(code, out, err, "SLURM is not available on this machine")
    assert "submitted" not in err and not (tmp_path / "r").exists()


def test_workers_beyond_the_cores_are_capped(capsys, monkeypatch, tmp_path):
    """``--workers 1000`` on 2 cores reaches the feature cache as 2, with a warning."""
    from upgradebench.errors import UserError

    seen = []

    class Recorder:
        def __init__(self, precision: str = "fp32", workers: int | None = None) -> None:
            seen.append(workers)
            raise UserError("stop here")

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr("upgradebench.runner.FeatureCache", Recorder)
    code, _, err = run_cli(capsys, "run", "--method", "coop", *RUN[:-2], "--workers", "1000")
    assert code == 2 and seen == [2] and "--workers 1000 is more than the 2 CPU cores; using 2" in err


@pytest.mark.parametrize("kind", ["device", "huge", "fifo"])
def test_grid_files_that_are_not_small_regular_files_are_refused_unread(capsys, tmp_path, kind):
    """``--grid /dev/zero`` used to read until memory ran out; a device, a pipe or a huge file is refused."""
    if kind == "device":
        path, message = "/dev/zero", "is not a regular file"
    elif kind == "fifo":
        path, message = str(tmp_path / "pipe"), "is not a regular file"
        os.mkfifo(path)  # opening it for reading would block forever
    else:
        path, message = str(tmp_path / "huge.yaml"), "more than a grid's"
        with open(path, "wb") as handle:
            handle.truncate(64 << 20)  # sparse: 64 MiB that cost no disk
    code, out, err = run_cli(capsys, "sweep", "--grid", path, "--dry-run")
    _one_line_error(code, out, err, message)


PLUGIN = '''
import sys
from dataclasses import dataclass

import torch

from upgradebench import Method, Module

print("hello from the plugin's import")


@dataclass
class HostileConfig:
    mode: str = "fine"


@dataclass
class HostileModule(Module):
    mode: str

    def logits(self, vlm, image_features, class_names):
        n, c = image_features.shape[0], len(class_names)
        print("hello from the plugin's logits")
        if self.mode == "wide":
            return torch.zeros(n, c + 2)
        if self.mode == "narrow":
            return torch.zeros(n, 1)
        if self.mode == "nan":
            return torch.full((n, c), float("nan"))
        return torch.zeros(n, c)


class Hostile(Method):
    version = "1"
    description = "misbehaves on request"
    Config = HostileConfig
    module_class = HostileModule
    uses_train_views = False

    def fit(self, source, task, config, seed):
        print("hello from the plugin's fit")
        if config.mode == "raise":
            raise RuntimeError("the plugin exploded")
        return HostileModule(config.mode)
'''


@pytest.fixture
def hostile_plugin(tmp_path, monkeypatch):
    """A registered third-party method ``hostile`` that prints, and misbehaves by its config's ``mode``."""
    from upgradebench.discovery import METHODS

    site = tmp_path / "site"
    site.mkdir()
    (site / "hostile_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    METHODS.register("hostile", "hostile_plugin:Hostile", origin="hostile-plugin", origin_version="0.1",
                     builtin=False)
    yield "hostile"
    METHODS.unregister("hostile")


@pytest.mark.parametrize("mode, message", [
    ("wide", "Method 'hostile' gave logits of shape [48, 10] on toy-clip; expected [48, 8]"),
    ("narrow", "Method 'hostile' gave logits of shape [48, 1] on toy-clip; expected [48, 8]"),
    ("nan", "Method 'hostile' gave logits with NaN or infinite values on toy-clip"),
    ("raise", "Method 'hostile' failed while fitting on toy-clip: RuntimeError: the plugin exploded"),
])
def test_a_misbehaving_plugin_is_one_line_naming_it_and_writes_no_row(capsys, hostile_plugin, tmp_path, mode,
                                                                      message):
    """Logits of the wrong shape used to score 0 % or chance with exit 0; a failing fit printed a traceback."""
    code, out, err = run_cli(capsys, "run", "--method", hostile_plugin, *RUN, "--config", f"mode={mode}",
                             "--results", str(tmp_path / "r"), "--json")
    _one_line_error(code, out, err, message)
    assert out == ""  # no JSON (and no plugin print) on stdout
    assert not list((tmp_path / "r").rglob("*.parquet"))


def test_plugin_prints_never_reach_json_stdout(capsys, hostile_plugin, tmp_path):
    """A plugin that prints at import, in fit and in logits leaves `run --json` and `sweep --json` parseable."""
    import sys

    sys.modules.pop("hostile_plugin", None)  # imported afresh inside the command, as on a first run
    code, out, err = run_cli(capsys, "run", "--method", hostile_plugin, *RUN, "--results", str(tmp_path / "r"),
                             "--json")
    assert code == 0, err
    assert json.loads(out)["rows_written"] == 4 and "hello from the plugin's import" in err
    assert "hello from the plugin's fit" in err and "hello from the plugin's logits" in err
    sys.modules.pop("hostile_plugin", None)
    grid = grid_file(tmp_path, GRID.replace("[coop]", f"[{hostile_plugin}]") + "shots: [2]\nseeds: [1]\n")
    code, out, err = run_cli(capsys, "sweep", "--grid", grid, "--results", str(tmp_path / "r"), "--workers", "0",
                             "--json")
    assert code == 0 and json.loads(out)["reused"] == 2, err
    assert len(read_results(tmp_path / "r")) == 4

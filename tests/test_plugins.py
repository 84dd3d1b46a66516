"""Third-party methods arrive through the ``upgradebench.methods`` entry-point group, like the built-ins."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from upgradebench import Method, UserError, available_methods, get_method, ranged
from upgradebench.discovery import METHODS, discover_methods
from upgradebench.results import read_results

from .cli_helpers import run_cli, run_json

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "upgradebench-example-method"


def _fake_dist(root: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution (dist-info with entry_points.txt) on ``root``."""
    info = root / f"{name.replace('-', '_')}-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9\n")
    (info / "entry_points.txt").write_text(f"[upgradebench.methods]\n{entry_points}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A site folder on sys.path; the method registry is rescanned and cleaned afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    # the built-ins are registered first, so that cleaning up removes only what the test added (`methods list`
    # answers from its catalog and may not have filled the registry yet)
    discover_methods()
    before = set(METHODS.names())
    yield site
    for name in set(METHODS.names()) - before:
        METHODS.unregister(name)


def test_builtins_come_from_the_entry_point_group(capsys):
    listed = {m["name"]: m for m in run_json(capsys, "methods", "list")["methods"]}
    assert {"zeroshot", "linear-probe", "coop", "contcoop"} <= set(listed)
    assert all(listed[n]["origin"] == "upgradebench" and listed[n]["builtin"] for n in ("coop", "contcoop"))
    assert listed["contcoop"]["config"]["kd_weight"] == 1.0 and listed["coop"]["config"]["n_ctx"] == 16


def test_readme_example_package_installs_and_runs_end_to_end(capsys, plugin_path, micro_dirs, tiny_dataset, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(plugin_path), str(EXAMPLE)], check=True, capture_output=True)
    discover_methods(force=True)
    listed = {m["name"]: m for m in run_json(capsys, "methods", "list")["methods"]}
    assert listed["prototype"]["origin"] == "upgradebench-example-method"
    assert listed["prototype"]["origin_version"] == "0.1.0" and not listed["prototype"]["builtin"]
    src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
    run_json(capsys, "run", "--method", "prototype", "--source", src, "--target", tgt, "--dataset", tiny_dataset,
             "--shots", "4", "--views", "2", "--results", str(tmp_path / "r"))
    df = read_results(tmp_path / "r")
    rows = df[df.method == "prototype"]
    assert set(rows.role) == {"base", "new"}
    assert rows.method_origin.iloc[0] == "upgradebench-example-method==0.1.0"
    assert rows[rows.role == "base"].top1.iloc[0] > 50  # colour prototypes work on the source
    # and the plugin's own test, upgradebench's method test kit, passes on the installed plugin
    tests = EXAMPLE / "tests" / "test_prototype.py"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(plugin_path)})
    assert run.returncode == 0, run.stdout[-2000:]


def test_broken_plugin_is_skipped_with_a_warning(capsys, plugin_path):
    _fake_dist(plugin_path, "ub-broken", "broken = ub_does_not_exist:Method")
    discover_methods(force=True)
    code, out, err = run_cli(capsys, "methods", "list", "--json")
    assert code == 0
    assert "broken" in err and "skipped" in err
    assert "coop" in out
    assert get_method("coop").name == "coop"  # every other method still works


def test_plugin_cannot_shadow_a_builtin(plugin_path):
    _fake_dist(plugin_path, "ub-shadow", "coop = ub_example_method:Prototype")
    discover_methods(force=True)
    assert METHODS.entry("coop").origin == "upgradebench"
    assert get_method("coop").__module__ == "upgradebench.methods.coop"


def test_plugins_can_be_switched_off(plugin_path, monkeypatch):
    _fake_dist(plugin_path, "ub-other", "other = ub_example_method:Prototype")
    monkeypatch.setenv("UPGRADEBENCH_NO_PLUGINS", "1")
    discover_methods(force=True)
    assert "other" not in METHODS


# ---- the contract is checked when a method is loaded -------------------------------------------------------------
def _plugin_class(**attrs):
    """A method class in the shape of the example plugin, with ``attrs`` replaced (None: attribute removed)."""
    from ub_example_method import Prototype

    body = {"version": "0.1.0", "Config": Prototype.Config, "module_class": Prototype.module_class,
            "fit": Prototype.fit, **attrs}
    return type("Broken", (Method,), {k: v for k, v in body.items() if v is not None})


class _NotADataclass:
    pass


@pytest.mark.parametrize("attrs,problem,fix", [
    ({"Config": None}, "has no dataclass Config", "add a class attribute Config"),
    ({"Config": _NotADataclass}, "has no dataclass Config", "@dataclass"),
    ({"version": None}, "has no version", 'version = "1"'),
    ({"module_class": None}, "has no module_class", "@dataclass subclass of upgradebench.Module"),
    ({"fit": None}, "does not implement fit", "implement fit"),
    ({"Config": dataclass(type("C", (), {"__annotations__": {"k": "int"}}))}, "have no default", "default"),
    ({"Config": dataclass(type("C", (), {"__annotations__": {"k": "int"}, "k": ranged(0, ge=1)}))},
     "out of its own range", "fix the default or the range"),
])
def test_a_method_that_breaks_the_contract_is_refused_naming_the_plugin_and_the_fix(attrs, problem, fix, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    METHODS.register("broken", _plugin_class(**attrs), origin="ub-broken", origin_version="1.2", replace=True)
    try:
        with pytest.raises(UserError) as err:
            get_method("broken")
        assert problem in err.value.message and "'broken'" in err.value.message
        assert "ub-broken 1.2" in err.value.message and fix in err.value.fix
        assert "broken" in available_methods()[1]  # listed as broken, not a traceback
    finally:
        METHODS.unregister("broken")


def test_the_registry_names_a_method_and_never_writes_the_class(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    cls = _plugin_class()
    METHODS.register("proto-a", cls, origin="tests", replace=True)
    try:
        assert get_method("proto-a") is cls and cls.name == "proto-a" and type(cls()).name == "proto-a"
        assert "name" not in vars(cls)
    finally:
        METHODS.unregister("proto-a")
    with pytest.raises(UserError, match="not a registered method"):
        cls.name  # noqa: B018

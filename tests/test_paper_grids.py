"""The paper's grids ship with the package and resolve on the miniature CoOp-layout folders."""

from __future__ import annotations

import dataclasses

import pytest

from upgradebench.discovery import get_method
from upgradebench.errors import UserError
from upgradebench.plan import plan_runs
from upgradebench.sweep import load_grid, missing_inputs, paper_grids

from .cli_helpers import run_cli, run_json
from .coop_fixtures import build

PAPER = {"table2", "table3", "table4", "table5", "table6", "table7", "table8", "fig2d", "fig4"}


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory):
    return build(tmp_path_factory.mktemp("coop"))


def test_every_paper_grid_ships_and_describes_itself():
    grids = paper_grids()
    assert set(grids) == PAPER
    assert all(text.startswith("Paper ") for text in grids.values())


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_grid_resolves_methods_configs_models_and_datasets(name, coop_root):
    grid = load_grid(f"paper:{name}")
    specs = grid.specs()
    for spec in specs:
        get_method(spec.method).make_config(spec.config)  # every variant is a valid config of its method
    plans = plan_runs(specs)  # and plans, loading nothing: models, shots, seeds, views
    assert sum(p.method.name == "zeroshot" for p in plans) == len(grid.datasets) * len(grid.shots) * len(grid.seeds)
    # on the miniature folders every dataset is found; only the real weights are missing here
    missing = missing_inputs(grid, coop_root)
    assert {m["kind"] for m in missing} <= {"model"}
    assert {m["name"] for m in missing} == {grid.source, *grid.targets}
    assert all("No weights" in m["problem"] for m in missing)


def test_paper_grid_sizes_match_the_paper():
    assert len(load_grid("paper:table2").specs()) == 8 * 11 * 3
    assert len(load_grid("paper:table8").specs()) == 8 * 11 * 3
    assert load_grid("paper:table3").ood == {"imagenet": ["imagenet_v2", "imagenet_sketch", "imagenet_a",
                                                          "imagenet_r"]}
    assert {s.config.get("depth", 0) for s in load_grid("paper:fig2d").specs()} == set(range(12))


def test_dry_run_lists_runs_and_what_is_missing(capsys, coop_root, tmp_path):
    out = run_json(capsys, "sweep", "--grid", "paper:table4", "--dry-run", "--data-root", str(coop_root))
    assert len(out["runs"]) == 4 * 3 + 3 and set(out["paper_grids"]) == PAPER  # + the zero-shot run of each seed
    assert [r for r in out["runs"] if r.startswith("zeroshot")] == [f"zeroshot dtd k=16 seed={s}" for s in (1, 2, 3)]
    assert [m["name"] for m in out["missing"]] == ["clip", "eva-clip"]
    out = run_json(capsys, "sweep", "--grid", "paper:table4", "--dry-run", "--data-root", str(tmp_path))
    assert {"kind": "dataset", "name": "dtd"} in [{k: m[k] for k in ("kind", "name")} for m in out["missing"]]


@pytest.mark.parametrize("text, message", [
    ("methods: coop\ndatasets: [toy-shape]\n", "'methods' must be a list of strs"),
    ("methods: [coop]\ndatasets: [toy-shape]\nseeds: 1\n", "'seeds' must be a list of ints"),
    ("methods: [coop]\ndatasets: [toy-shape]\nseeds: ['1']\n", "'seeds' must be a list of ints"),
    ("methods: [coop]\ndatasets: [toy-shape]\nvariants: {coop: {n_ctx: 4}}\n", "'variants' must map"),
    ("methods: [coop]\ndatasets: [toy-shape]\nvariants: {coop: [4]}\n", "must be a mapping of config keys"),
])
def test_grid_value_types_are_checked(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_grid(path)


def test_grid_errors_reach_the_user_without_a_traceback(capsys, tmp_path):
    for grid, message in (("paper:nope", "No shipped grid named 'nope'"), (str(tmp_path), "is a folder")):
        code, _, err = run_cli(capsys, "sweep", "--grid", grid, "--dry-run")
        assert code == 2 and message in err and "Traceback" not in err


TABLE = {"measured": {"device": "test GPU"}, "archs": {
    "ViT-B-16-quickgelu": {"images_per_s": 1000.0, "fit": {"coop": {"a": 0.01, "b": 0.0, "fit_per_class_s": None}}},
    "EVA02-B-16": {"images_per_s": 500.0}}}


def test_cost_estimate_counts_shared_features_once_and_every_fit():
    """Known answer on a hand-made throughput table: coop on DTD (47 classes, 1692 test images), 16 shots."""
    from upgradebench.cost import estimate
    from upgradebench.plan import RunSpec, plan_runs

    specs = [RunSpec(method="coop", source="clip", targets=["eva-clip"], dataset="dtd", seed=s) for s in (1, 2)]
    cost = estimate(plan_runs(specs), TABLE)
    sample = 47 * 16 * (10 + 1) + 47 * 4  # views + plain training images, then validation shots, per seed
    assert cost.extraction_hours * 3600 == pytest.approx(2 * sample / 1000 + 1692 / 1000 + 1692 / 500)
    assert cost.fit_hours["coop"] * 3600 == pytest.approx(2 * 200 * 24 * 0.01)  # 200 epochs x 24 steps x 10 ms
    assert set(cost.not_estimated) == {"zeroshot dtd k=16 seed=1", "zeroshot dtd k=16 seed=2"}  # its fit: unmeasured
    toy = estimate(plan_runs([RunSpec(method="coop")]), TABLE)
    assert toy.total_hours == 0
    assert "no throughput measured for toy-clip, toy-eva" in next(iter(toy.not_estimated.values()))
    unmeasured = estimate(plan_runs([RunSpec(method="kgcoop", source="clip", targets=["eva-clip"], dataset="dtd")]),
                          TABLE)
    assert "no fit time measured for kgcoop" in next(iter(unmeasured.not_estimated.values()))


def test_cost_estimate_counts_oracle_fits_on_the_target():
    """An oracle run is a fit on the target's architecture: priced there, its extraction on the target too."""
    from upgradebench.cost import estimate
    from upgradebench.plan import RunSpec, plan_runs

    table = {**TABLE, "archs": {**TABLE["archs"], "EVA02-B-16": {
        "images_per_s": 500.0, "fit": {"coop": {"a": 0.03, "b": 0.0, "fit_per_class_s": None}}}}}
    spec = RunSpec(method="coop", source="clip", targets=["eva-clip"], dataset="dtd", seed=1)
    plain = estimate(plan_runs([spec]), table)
    oracle = estimate(plan_runs([dataclasses.replace(spec, oracle=True)]), table)
    steps = 200 * 24
    assert plain.fit_hours["coop"] * 3600 == pytest.approx(steps * 0.01)
    assert oracle.fit_hours["coop"] * 3600 == pytest.approx(steps * 0.01 + steps * 0.03)  # + the fit on eva-clip
    sample = 47 * 16 * (10 + 1) + 47 * 4
    assert (oracle.extraction_hours - plain.extraction_hours) * 3600 == pytest.approx(sample / 500)

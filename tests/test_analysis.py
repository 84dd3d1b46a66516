"""Drift and the depth study on micro models: exact zeros, localised changes, k = 0 equals plain CoOp."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from upgradebench.analysis.depth import parse_layers
from upgradebench.analysis.drift import DRIFT_SCHEMA, analysis_schema_markdown, read_drift
from upgradebench.errors import UserError
from upgradebench.results import read_results
from upgradebench.world.modelio import create_model, save_local_dir

from .cli_helpers import run_cli, run_json
from .conftest import MICRO_CLIP, MICRO_TEXT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def drift_models(tmp_path_factory, micro_dirs) -> dict[str, str]:
    """The micro CLIP, a copy of it with block 1 of the text tower perturbed, and a narrower text tower."""
    root = tmp_path_factory.mktemp("drift_models")
    torch.manual_seed(0)  # the micro CLIP's seed: same weights as micro_dirs["clip"]
    model = create_model(copy.deepcopy(MICRO_CLIP))
    with torch.no_grad():
        for p in model.transformer.resblocks[1].parameters():
            p.mul_(1.1)  # every parameter of the block changes by exactly 10 %
    narrow = {**MICRO_CLIP, "text_cfg": {**MICRO_TEXT, "width": 32}}
    torch.manual_seed(0)
    return {"clip": f"local-dir:{micro_dirs['clip']}", "eva": f"local-dir:{micro_dirs['eva']}",
            "perturbed": f"local-dir:{save_local_dir(model, MICRO_CLIP, root / 'perturbed')}",
            "narrow": f"local-dir:{save_local_dir(create_model(copy.deepcopy(narrow)), narrow, root / 'narrow')}"}


def _drift(capsys, tmp_path, source, *targets, dataset="tiny-colours"):
    args = ["analyze", "drift", "--source", source, "--dataset", dataset, "--out", str(tmp_path / "drift.parquet")]
    for t in targets:
        args += ["--target", t]
    out = run_json(capsys, *args)
    return out, read_drift(out["out"])


def _by(df, kind):
    part = df[df.kind == kind].sort_values("layer_index")
    return dict(zip(part.layer, part.mean_abs_change)), dict(zip(part.layer, part.relative_change))


def test_drift_of_identical_towers_is_zero(capsys, tmp_path, drift_models, tiny_dataset):
    out, df = _drift(capsys, tmp_path, drift_models["clip"], drift_models["clip"])
    assert list(df.columns) == list(DRIFT_SCHEMA.columns) and len(out["rows"]) == len(df)
    layers = ["token_embedding", "positional_embedding", "block_0", "block_1", "block_2", "ln_final",
              "text_projection"]
    for kind in ("parameters", "features"):
        assert df[df.kind == kind].sort_values("layer_index").layer.tolist() == layers
    assert (df.mean_abs_change == 0).all() and (df.relative_change == 0).all()
    features = df[df.kind == "features"]
    assert set(features.n_prompts) == {4} and set(features.prompt_datasets) == {"tiny-colours"}


def test_drift_is_localised_to_the_perturbed_block(capsys, tmp_path, drift_models, tiny_dataset):
    _, df = _drift(capsys, tmp_path, drift_models["clip"], drift_models["perturbed"])
    params, params_rel = _by(df, "parameters")
    assert {k for k, v in params.items() if v > 0} == {"block_1"}
    assert params_rel["block_1"] == pytest.approx(0.1)
    feats, feats_rel = _by(df, "features")
    assert {k for k, v in feats.items() if v > 0} == {"block_1", "block_2", "ln_final", "text_projection"}
    assert all(feats_rel[k] > 0 for k in ("block_1", "block_2", "ln_final", "text_projection"))


def test_drift_between_clip_and_customtext_towers(capsys, tmp_path, drift_models, tiny_dataset):
    """Different module layouts (CLIP vs CustomTextCLIP), same shapes: compared layer by layer."""
    _, df = _drift(capsys, tmp_path, drift_models["clip"], drift_models["eva"], drift_models["perturbed"])
    assert set(df.target) == {drift_models["eva"], drift_models["perturbed"]}
    eva = df[df.target == drift_models["eva"]]
    assert (eva.mean_abs_change > 0).sum() >= 12  # independent random weights differ almost everywhere


def test_drift_of_different_shapes_is_a_clear_error(capsys, drift_models, tiny_dataset, tmp_path):
    code, out, err = run_cli(capsys, "analyze", "drift", "--source", drift_models["clip"], "--target",
                             drift_models["narrow"], "--dataset", tiny_dataset, "--out", str(tmp_path / "d.parquet"))
    assert code == 2 and "differs in shape" in err and "fix:" in err and "Traceback" not in err + out
    assert not (tmp_path / "d.parquet").exists()


def test_analysis_schema_document_is_current():
    assert (ROOT / "results" / "ANALYSIS_SCHEMA.md").read_text() == analysis_schema_markdown()


def test_parse_layers():
    assert parse_layers("0,1,2") == [0, 1, 2]
    assert parse_layers("3, 0-2,2") == [0, 1, 2, 3]
    for bad in ("", "a", "1-x"):
        with pytest.raises(UserError):
            parse_layers(bad)


COOP_FAST = ["--shots", "2", "--views", "2", "--config", "epochs=2", "--config", "n_ctx=4"]


def test_depth_zero_is_plain_coop_and_feeds_fig2d(capsys, micro_dirs, tiny_dataset, tmp_path):
    src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
    depth = run_json(capsys, "analyze", "depth", "--dataset", tiny_dataset, "--layers", "0,2", "--source", src,
                     "--target", tgt, *COOP_FAST, "--results", str(tmp_path / "depth"))
    plain = run_json(capsys, "run", "--method", "coop", "--source", src, "--target", tgt, "--dataset", tiny_dataset,
                     *COOP_FAST, "--results", str(tmp_path / "plain"))
    assert [r["depth"] for r in depth["rows"]] == [0, 2]
    k0 = depth["rows"][0]
    assert k0["Base"] == plain["rows"][0]["Base"] and k0["New"] == plain["rows"][0][f"New {tgt}"]

    rows = read_results(tmp_path / "depth")
    coop = rows[rows.method == "coop"]
    assert sorted(set(coop.method_variant)) == ["depth=2,epochs=2,n_ctx=4", "epochs=2,n_ctx=4"]
    plain_rows = read_results(tmp_path / "plain")
    k0_run = coop[coop.method_variant == "epochs=2,n_ctx=4"].run_id.iloc[0]
    assert k0_run == plain_rows[plain_rows.method == "coop"].run_id.iloc[0]  # the very same run
    a = load_file(str(tmp_path / "depth" / k0_run / "module" / "module.safetensors"))
    b = load_file(str(tmp_path / "plain" / k0_run / "module" / "module.safetensors"))
    assert torch.equal(a["ctx"], b["ctx"])
    assert set(rows.method) == {"coop", "zeroshot"}  # the zero-shot reference for Fig. 2d comes along

    figs = run_json(capsys, "figures", "--results", str(tmp_path / "depth"), "--out", str(tmp_path / "figs"))
    assert any(Path(p).name.startswith("fig2d-tiny-colours-") for p in figs["written"])


def test_depth_outside_the_tower_fails_before_training(capsys, micro_dirs, tiny_dataset, tmp_path):
    src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
    code, out, err = run_cli(capsys, "analyze", "depth", "--dataset", tiny_dataset, "--layers", "0,3",
                             "--source", src, "--target", tgt, *COOP_FAST, "--results", str(tmp_path / "r"))
    assert code == 2 and "Depth 3" in err and "0-2" in err and "Traceback" not in err
    assert not list(tmp_path.glob("**/*.safetensors"))
    code, out, err = run_cli(capsys, "analyze", "depth", "--dataset", tiny_dataset, "--layers", "1",
                             "--config", "depth=2", "--results", str(tmp_path / "r"))
    assert code == 2 and "conflicts with --layers" in err


def test_compat_table_marks_an_average_over_fewer_datasets(tmp_path):
    from upgradebench.analysis.compatibility import compat_table
    from upgradebench.metrics import read_ledgers

    from .test_cli_tables import _pattern, _run

    folder = tmp_path / "res"
    for ds in ("ds-a", "ds-b"):
        _run(folder, "zeroshot", 1, ds, _pattern(40, 10), _pattern(40, 15))
        _run(folder, "coop", 1, ds, _pattern(40, 20), _pattern(40, 18))
    _run(folder, "contcoop", 1, "ds-b", _pattern(40, 25), _pattern(40, 22))
    (table,) = compat_table(read_results(folder), read_ledgers(folder)).tables
    assert [row[0] for row in table.rows] == ["zeroshot", "contcoop*", "coop"]
    assert table.heading.endswith("(* average over fewer datasets: contcoop)")

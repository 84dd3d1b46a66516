"""Submissions: ``leaderboard check``, complete-only ranking in ``leaderboard build``, re-scoring on held-out
models, and the held-out toy target built on demand."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from upgradebench.integrity import with_digest
from upgradebench.results import read_results, write_rows
from upgradebench.runner import Runner, RunSpec

from .cli_helpers import run_cli, run_json
from .conftest import MICRO_EVA, make_micro
from .test_figures import result_rows
from .test_leaderboard import Tables

COOP = {"epochs": "2", "n_ctx": "4"}


@pytest.fixture
def models(micro_dirs, tmp_path) -> tuple[str, str, str]:
    """Source, target and a held-out third model (another micro EVA-style model no run was fitted for)."""
    held_out = make_micro(tmp_path / "held-out", MICRO_EVA, 7)
    return f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}", f"local-dir:{held_out}"


def _runs(folder: Path, models, dataset: str, seeds: list[int]) -> Path:
    """CoOp (a short config) on ``dataset`` for ``seeds``, with the zero-shot rows every run writes."""
    runner = Runner(folder, device="cpu")
    for seed in seeds:
        runner.run(RunSpec(method="coop", source=models[0], targets=[models[1]], dataset=dataset, shots=2, seed=seed,
                           config=COOP, views=2))
    return folder


@pytest.fixture
def reference(models, tiny_dataset, tmp_path) -> Path:
    return _runs(tmp_path / "reference", models, tiny_dataset, [1, 2])


def _check(capsys, submission: Path, against: Path) -> tuple[int, dict]:
    code, out, _ = run_cli(capsys, "leaderboard", "check", str(submission), "--against", str(against), "--json")
    return code, json.loads(out)


def test_check_complete_incomplete_and_foreign(capsys, models, tiny_dataset, reference, tmp_path):
    complete = _runs(tmp_path / "complete", models, tiny_dataset, [1, 2])
    code, report = _check(capsys, complete, reference)
    assert code == 0 and report["ok"], report
    assert {e["label"] for e in report["entries"]} == {"coop[epochs=2,n_ctx=4]", "zeroshot"}
    assert all(e["covered"] == e["expected"] == 2 for e in report["entries"])
    assert report["entries"][0]["origin"] == ["upgradebench==" + report["entries"][0]["upgradebench_version"][0]]

    incomplete = _runs(tmp_path / "incomplete", models, tiny_dataset, [1])
    code, incomplete_report = _check(capsys, incomplete, reference)
    assert code == 1 and not incomplete_report["ok"]
    assert {e["label"]: e["missing"] for e in incomplete_report["entries"]} == {
        label: [f"{models[0]}->{models[1]} {tiny_dataset} k2 s2"] for label in ("coop[epochs=2,n_ctx=4]", "zeroshot")}

    # other weights under the target's name: every row on it carries another fingerprint
    foreign = tmp_path / "foreign"
    shutil.copytree(complete, foreign)
    for path in foreign.glob("*/*--*.parquet"):
        rows = read_results(path)
        rows.loc[rows.eval_model == models[1], "eval_fingerprint"] = "0123456789ab"
        write_rows(rows.to_dict(orient="records"), path)
    code, report = _check(capsys, foreign, reference)
    assert code == 1 and all(e["complete"] and not e["matching"] for e in report["entries"])
    assert report["entries"][0]["foreign_fingerprints"][0]["found"] == "0123456789ab"

    # the table view says the same and names the missing cell, under the entry's whole label (not read as markup)
    code, out, _ = run_cli(capsys, "leaderboard", "check", str(incomplete), "--against", str(reference))
    out = " ".join(out.split())
    assert code == 1 and "not accepted" in out
    assert f"coop[epochs=2,n_ctx=4]: missing {models[0]}->{models[1]} k2 seed 2: {tiny_dataset}" in out

    # each gap comes with the command that fills it, and running those commands makes the submission complete
    fills = [command for e in incomplete_report["entries"] for command in e["fill"]]
    assert len(fills) == 2 and all(f"to fill: {command}" in out for command in fills)
    assert "--config epochs=2 --config n_ctx=4" in fills[0]
    for command in fills:
        code, _, err = run_cli(capsys, *shlex.split(command)[1:])
        assert code == 0, err
    code, report = _check(capsys, incomplete, reference)
    assert code == 0 and report["ok"], report


def test_missing_cells_are_summarised_by_pair_shots_and_seeds():
    from upgradebench.leaderboard.submission import missing_summary

    cells = [("s", "t", d, 16, seed) for d in ("b", "a") for seed in (1, 2)] + [("s", "t", "c", 16, 3),
                                                                              ("s", "u", "a", 4, 1)]
    assert missing_summary(cells) == ["s->t k16 seeds 1, 2: a, b", "s->t k16 seed 3: c", "s->u k4 seed 1: a"]


def test_check_reports_damaged_and_missing_modules(capsys, models, tiny_dataset, reference, tmp_path):
    broken = shutil.copytree(reference, tmp_path / "broken")
    coop_run = next(p for p in broken.iterdir() if p.name.startswith("coop"))
    config = json.loads((coop_run / "module" / "module.json").read_text())
    config["tensors"].append("ghost")
    (coop_run / "module" / "module.json").write_text(json.dumps(config))
    zs_runs = sorted(p for p in broken.iterdir() if p.name.startswith("zeroshot"))
    shutil.rmtree(zs_runs[0] / "module")
    # a module fitted by a plugin that is not installed here: consistent, with its own content hash
    config = json.loads((zs_runs[1] / "module" / "module.json").read_text())
    identity = {**config["provenance"]["run_identity"], "method": "plugin-not-here"}
    config = {**config, "method": "plugin-not-here", "provenance": {**config["provenance"], "run_identity": identity}}
    (zs_runs[1] / "module" / "module.json").write_text(json.dumps(with_digest(config)))
    code, report = _check(capsys, broken, reference)
    assert code == 1
    problems = {}
    for m in report["module_problems"]:
        problems[m["run_id"]] = problems.get(m["run_id"], "") + " | " + m["problem"]
    assert set(problems) == {coop_run.name, *(p.name for p in zs_runs)}
    assert "ghost" in problems[coop_run.name] and "content hash" in problems[coop_run.name]
    assert "no saved module" in problems[zs_runs[0].name]
    assert "'plugin-not-here' is not installed" in problems[zs_runs[1].name]
    assert "upgradebench==" in problems[zs_runs[1].name]


def test_check_against_a_grid_checks_coverage(capsys, models, tiny_dataset, reference, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"source: {models[0]}\ntargets: [{models[1]}]\nmethods: [coop]\ndatasets: [{tiny_dataset}]\n"
                    "seeds: [1, 2, 3]\nshots: [2]\n")
    code, report = _check(capsys, reference, grid)
    assert code == 1 and all(e["covered"] == 2 and e["expected"] == 3 for e in report["entries"])


def _synthetic(folder: Path, method: str, datasets, fingerprint: str | None = None) -> None:
    rows = []
    for seed in (1, 2, 3):
        for d, dataset in enumerate(datasets):
            rows += result_rows(method, dataset, seed, "toy-clip", "toy-eva", 70 + d, 60 + d)
    for row in rows:
        if fingerprint and row["eval_model"] == "toy-eva":
            row["eval_fingerprint"] = fingerprint
    write_rows(rows, folder / f"{method}.parquet")


def test_build_ranks_only_complete_matching_entries(capsys, tmp_path):
    datasets = ("toy-pattern", "toy-shape", "toy-texture")
    reference, submission = tmp_path / "reference", tmp_path / "submission"
    for method in ("zeroshot", "coop"):
        _synthetic(reference, method, datasets)
    _synthetic(submission, "plugin-complete", datasets)
    _synthetic(submission, "plugin-partial", datasets[:2])
    _synthetic(submission, "plugin-foreign", datasets, fingerprint="other-weights")
    run_json(capsys, "leaderboard", "build", "--results", str(reference), "--results", str(submission),
             "--out", str(tmp_path / "site"))
    html = (tmp_path / "site" / "index.html").read_text()
    tables = Tables(html)
    ranked = [r["cells"][1].replace(" reference", "") for r in tables.with_class("ranking")[0]["rows"]]
    # ranked, but marked: these rows have no ledgers, and the submission's were not re-computed
    assert sorted(ranked) == ["coop unverified", "plugin-complete unverified", "zeroshot unverified"]
    assert "submission were not re-computed" in html and "reference were not re-computed" not in html
    unranked = {r["cells"][0]: r["cells"] for r in tables.with_class("unranked")[0]["rows"]}
    # runs on other weights than the reference folder's under the same name are an entry of their own
    assert set(unranked) == {"plugin-partial", "plugin-foreign@submission"}
    assert unranked["plugin-partial"][2] == "6 / 9" and "3 missing" in unranked["plugin-partial"][3]
    assert "other-weights" in unranked["plugin-foreign@submission"][5]
    # no average over fewer datasets anywhere: the partial entry has no per-dataset rows either
    assert "plugin-partial" not in {r["cells"][0] for r in tables.with_class("per-dataset")[0]["rows"]}


def test_rescore_equals_eval_module_and_leaves_the_submission_alone(capsys, models, tiny_dataset, reference,
                                                                    tmp_path):
    before = sorted(p.relative_to(reference) for p in reference.rglob("*"))
    site, rescored = tmp_path / "site", tmp_path / "rescored"
    args = ["leaderboard", "build", "--results", str(reference), "--out", str(site), "--rescore-on", models[2],
            "--rescored", str(rescored), "--device", "cpu"]
    run_json(capsys, *args)
    assert sorted(p.relative_to(reference) for p in reference.rglob("*")) == before
    rows = read_results(rescored)
    assert set(rows.role) == {"rescore"} and set(rows.eval_model) == {models[2]} and len(rows) == 4  # 2 runs x 2 seeds
    for row in rows.itertuples():
        ev = run_json(capsys, "eval", "--module", str(reference / row.run_id / "module"), "--model", models[2],
                      "--dataset", tiny_dataset, "--device", "cpu")
        assert ev["top1"] == row.top1 and ev["n_test"] == row.n_test
    assert (rescored / rows.run_id.iloc[0] / "ledger").is_dir()
    tables = Tables((site / "index.html").read_text())
    ranking = tables.with_class("variants")[0]["rows"] + tables.with_class("ranking")[0]["rows"]
    shown = {r["cells"][1].replace(" reference", ""): r["cells"][8] for r in ranking}
    expect = rows.assign(label=[f"{m}[{v}]" if v else m for m, v in zip(rows.method, rows.method_variant)])
    assert shown == {k: f"{v:.2f}" for k, v in expect.groupby("label").top1.mean().items()}
    # resumable: a second build reuses every re-scored row
    run_json(capsys, *args)
    assert read_results(rescored).created_at.tolist() == rows.created_at.tolist()
    # a re-scored row of other weights under the same name is refused, never replaced
    path = next(rescored.glob("*/*--*.parquet"))
    write_rows(read_results(path).assign(eval_fingerprint="0123456789ab").to_dict(orient="records"), path)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "other weights" in " ".join(err.split()) and "Traceback" not in err


def test_held_out_target_is_built_on_demand_only(monkeypatch):
    from safetensors.torch import load_file

    from upgradebench.world import zoo

    assert "toy-eva-text" not in zoo.default_models()
    zoo.build_models()
    assert zoo.is_built("toy-eva") and not zoo.is_built("toy-eva-text")
    folder = zoo.ensure_model("toy-eva-text")
    assert zoo.build_record("toy-eva-text")["parent"]["name"] == "toy-eva"
    text = load_file(str(folder / "open_clip_model.safetensors"))
    eva = load_file(str(zoo.model_dir("toy-eva") / "open_clip_model.safetensors"))
    # an independently initialised text tower: no tensor of it starts from (or stays at) toy-eva's
    shared = [k for k in text if k.startswith("text.") and k in eva and text[k].shape == eva[k].shape]
    assert shared and not any(torch.equal(text[k], eva[k]) for k in shared)


def test_a_variant_the_reference_ran_is_held_to_the_reference_cells_of_that_variant():
    """Ablations run on fewer datasets than the main protocol: the same variant is complete on those cells,
    a new variant or a new method needs the whole protocol."""
    from upgradebench.leaderboard.submission import check_entries, protocol_of

    def rows(method, datasets, **config):
        return [r for seed in (1, 2) for d in datasets
                for r in result_rows(method, d, seed, "toy-clip", "toy-eva", 70, 60, **config)]

    datasets = ["toy-pattern", "toy-shape", "toy-texture"]
    reference = pd.DataFrame(rows("zeroshot", datasets) + rows("contcoop", datasets)
                             + rows("contcoop", datasets[:1], kd_weight=0.3))
    protocol = protocol_of(reference, "reference")
    submitted = pd.DataFrame(rows("contcoop", datasets[:1], kd_weight=0.3) + rows("contcoop", datasets[:1], n_ctx=8)
                             + rows("plugin", datasets[:1]))
    found = {e["label"]: (e["complete"], e["covered"], e["expected"]) for e in check_entries(submitted, protocol)}
    assert found == {"contcoop[kd_weight=0.3]": (True, 2, 2), "contcoop[n_ctx=8]": (False, 2, 6),
                     "plugin": (False, 2, 6)}


def test_a_protocol_grid_keeps_another_studys_targets_out_of_the_ranking(tmp_path):
    """A reference folder that also holds the upgrade matrix (zero-shot on more targets, on fewer tasks): with the
    main grid as the protocol, an entry complete on the main grid is complete; without it, it would miss cells."""
    from upgradebench.leaderboard.submission import check_entries, protocol_of, within_grid

    def rows(method, target, datasets, **config):
        return [r for seed in (1, 2) for d in datasets
                for r in result_rows(method, d, seed, "toy-clip", target, 70, 60, **config)]

    datasets = ["toy-pattern", "toy-shape"]
    reference = pd.DataFrame(rows("zeroshot", "toy-eva", datasets) + rows("coop", "toy-eva", datasets)
                             + rows("zeroshot", "toy-clip-wide", datasets[:1]))
    grid = tmp_path / "main.yaml"
    grid.write_text("source: toy-clip\ntargets: [toy-eva]\nmethods: [coop]\ndatasets: [toy-pattern, toy-shape]\n"
                    "seeds: [1, 2]\nshots: [16]\n")
    entry = pd.DataFrame(rows("coop", "toy-eva", datasets))
    assert [e["complete"] for e in check_entries(entry, protocol_of(reference, "ref"))] == [False]
    protocol = within_grid(protocol_of(reference, "ref"), grid)
    assert len(protocol.cells) == 4 and protocol.models == protocol_of(reference, "ref").models
    assert [e["complete"] for e in check_entries(entry, protocol)] == [True]

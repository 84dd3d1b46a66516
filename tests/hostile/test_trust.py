"""Hostile cases of trust: numbers that were forged, are not numbers, conflict, or come from other weights.

One test per family: a forged row whose hash was recomputed (only re-evaluating its module finds it), a NaN
top-1, two ledgers of one evaluation that disagree, folders of other weights or other seeds read together, and
rows or modules that no hash covers (unverified); plus every committed module carrying its content hash.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from upgradebench.errors import UserError
from upgradebench.integrity import DIGEST_KEY, json_intact, tensors_digest
from upgradebench.leaderboard.submission import sample_runs
from upgradebench.ledger import LEDGER_SCHEMA, check_against_rows, ledger_path
from upgradebench.metrics import read_ledgers
from upgradebench.results import read_results, write_rows

from ..cli_helpers import run_cli, run_json
from ..test_figures import result_rows
from ..test_leaderboard import Tables
from ..test_submissions import _runs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(micro_dirs) -> tuple[str, str]:
    return f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"


@pytest.fixture
def reference(models, tiny_dataset, tmp_path) -> Path:
    """CoOp (short config) for seeds 1 and 2 with its zero-shot rows, ledgers and modules."""
    return _runs(tmp_path / "reference", models, tiny_dataset, [1, 2])


def _check(capsys, submission: Path, against: Path, *extra: str) -> tuple[int, dict]:
    code, out, err = run_cli(capsys, "leaderboard", "check", str(submission), "--against", str(against),
                             "--device", "cpu", "--json", *extra)
    assert "Traceback" not in err
    return code, json.loads(out)


def _entry(report: dict, method: str) -> dict:
    return next(e for e in report["entries"] if e["method"] == method)


def _row_file(run: Path, model: str) -> Path:
    return next(p for p in run.glob("*--*.parquet") if read_results(p).eval_model.iloc[0] == model)


def test_a_forged_row_with_a_recomputed_hash_is_caught_by_re_evaluation(capsys, models, reference, tmp_path):
    submission = shutil.copytree(reference, tmp_path / "submission")
    # the run the default sample re-evaluates: forging it, the row and its ledger agree and both hashes hold
    coop = read_results(submission)
    coop = coop[coop.method == "coop"]
    run_id = next(r for r in sample_runs(coop))
    path = _row_file(submission / run_id, models[1])
    ledger = LEDGER_SCHEMA.read(ledger_path(path))
    wrong = ledger.index[~ledger.correct][:2]
    assert len(wrong), "the micro target is right on every item: nothing to forge"
    ledger.loc[wrong, "pred"] = ledger.label[wrong]
    ledger.loc[wrong, "correct"] = True
    LEDGER_SCHEMA.write(ledger, ledger_path(path))
    row = read_results(path)
    forged = 100 * ledger.correct.mean()
    write_rows(row.assign(top1=forged).to_dict(orient="records"), path)  # write_rows recomputes row_hash
    assert read_results(path).top1.iloc[0] == forged  # the hashes hold: only re-computation can tell

    code, report = _check(capsys, submission, reference)
    assert code == 1 and not report["ok"]
    entry = _entry(report, "coop")
    assert entry["verification"] == "mismatch"
    [mismatch] = entry["mismatches"]
    assert mismatch["run_id"] == run_id and mismatch["model"] == models[1]
    assert mismatch["row_top1"] == pytest.approx(forged)
    assert mismatch["recomputed_top1"] == pytest.approx(row.top1.iloc[0])
    assert "forgery" in report["trust"]
    # the table view names the run, the model and both numbers, and says what hashes do not prove
    code, out, _ = run_cli(capsys, "leaderboard", "check", str(submission), "--against", str(reference),
                           "--device", "cpu")
    out = " ".join(out.split())
    assert code == 1 and f"MISMATCH run {run_id} on {models[1]}" in out and f"{forged:.4f}" in out
    assert "find damage, not forgery" in out
    # leaderboard build --verify re-evaluates the same sample: the forged entry is left out, with the numbers
    site = tmp_path / "site"
    run_json(capsys, "leaderboard", "build", "--results", str(submission), "--against", str(reference), "--verify",
             "--device", "cpu", "--out", str(site))
    tables = Tables((site / "index.html").read_text())
    ranked = [r["cells"][1] for t in ("ranking", "variants") for table in tables.with_class(t) for r in table["rows"]]
    assert ranked == ["zeroshot reference"]  # re-computed and matching: ranked, not marked
    unranked = {r["cells"][0]: r["cells"] for r in tables.with_class("unranked")[0]["rows"]}
    assert f"re-computed run {run_id} on {models[1]}" in unranked["coop[epochs=2,n_ctx=4]"][5]
    # the untouched reference passes, every module re-computed with --all
    code, report = _check(capsys, reference, reference, "--all")
    assert code == 0 and all(e["verification"] == "verified" for e in report["entries"]), report


def test_a_nan_top1_never_passes(capsys, models, reference, tmp_path):
    submission = shutil.copytree(reference, tmp_path / "submission")
    path = _row_file(next(submission.glob("coop-*")), models[1])
    row = read_results(path)
    write_rows(row.assign(top1=math.nan).to_dict(orient="records"), path)  # its hash recomputed: not damage
    code, _, err = run_cli(capsys, "results", "show", str(submission))
    err = " ".join(err.split())
    assert code == 2 and "top-1 nan" in err and str(path) in err and "Traceback" not in err
    code, report = _check(capsys, submission, reference)
    assert code == 1 and "top-1 nan" in report["schema_problems"][0]
    # the ledger check on its own: a NaN top-1 is a mismatch (|NaN - x| > tolerance is False)
    ledgers = read_ledgers(submission)
    with pytest.raises(UserError, match="its row says nan"):
        check_against_rows(ledgers, row.assign(top1=math.nan))


def test_two_ledgers_of_one_evaluation_that_disagree_are_a_conflict(capsys, models, reference, tmp_path):
    submission = shutil.copytree(reference, tmp_path / "submission")
    path = ledger_path(_row_file(next(submission.glob("coop-*")), models[1]))
    ledger = LEDGER_SCHEMA.read(path)
    # same key, same top-1, other answers: one wrong item made right and one right item made wrong
    right, wrong = ledger.index[ledger.correct][0], ledger.index[~ledger.correct][0]
    n_classes = int(ledger.label.max()) + 1
    ledger.loc[wrong, ["pred", "correct"]] = [ledger.label[wrong], True]
    ledger.loc[right, ["pred", "correct"]] = [(ledger.label[right] + 1) % n_classes, False]
    extra = next(p for p in submission.glob("zeroshot-*")) / "ledger" / "extra.parquet"
    LEDGER_SCHEMA.write(ledger, extra)
    code, _, err = run_cli(capsys, "results", "show", str(submission))
    err = " ".join(err.split())
    assert code == 2 and "different predictions" in err and "Traceback" not in err
    assert str(path) in err and str(extra) in err
    # the same ledger reached twice (a folder given twice) is one ledger, not a conflict
    assert read_ledgers(reference, reference).keys() == read_ledgers(reference).keys()


def _synthetic(folder: Path, method: str, seeds, new: float, eval_fingerprint: str | None = None) -> None:
    rows = [r for seed in seeds for d in ("toy-pattern", "toy-shape")
            for r in result_rows(method, d, seed, "toy-clip", "toy-eva", 70, new)]
    for r in rows:
        if eval_fingerprint and r["eval_model"] == "toy-eva":
            r["eval_fingerprint"] = eval_fingerprint
    write_rows(rows, folder / f"{method}-{min(seeds)}.parquet")


def test_folders_on_other_weights_or_seeds_are_never_merged_silently(capsys, tmp_path):
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    for method, new in (("zeroshot", 60), ("coop", 50)):
        _synthetic(a, method, (1, 2, 3), new)
        _synthetic(b, method, (1, 2, 3), 10, eval_fingerprint="other-weights")  # toy-eva of other weights
    _synthetic(c, "coop", range(4, 10), 0)  # the same weights, seeds the protocol does not ask for

    code, out, err = run_cli(capsys, "results", "show", str(a), str(b), "--json")
    assert code == 0
    summary = pd.DataFrame(json.loads(out))
    avg = summary[summary.dataset == "Average"].set_index("label")
    assert avg.loc["coop", "new"] == 50 and avg.loc["coop", "seeds"] == 3  # not averaged with B's 10
    assert avg.loc["coop@B", "new"] == 10 and avg.loc["zeroshot@B", "new"] == 10
    err = " ".join(err.split())
    assert "warning:" in err and "other-weights" in err and "coop@B" in err

    site = tmp_path / "site"
    run_json(capsys, "leaderboard", "build", "--results", str(a), "--results", str(c), "--results", str(b),
             "--out", str(site))
    tables = Tables((site / "index.html").read_text())
    ranking = {r["cells"][1].split()[0]: r["cells"] for r in tables.with_class("ranking")[0]["rows"]}
    assert set(ranking) == {"coop", "zeroshot"}
    assert ranking["coop"][3] == "50.00" and ranking["coop"][6] == "3"  # New and seeds of A's runs alone
    unranked = {r["cells"][0]: r["cells"] for r in tables.with_class("unranked")[0]["rows"]}
    assert set(unranked) == {"coop", "coop@B", "zeroshot@B"}
    assert "12 more" in unranked["coop"][4]  # C's seeds 4-9 on two datasets: shown apart, not counted
    assert "other-weights" in unranked["coop@B"][5]


def test_rows_and_modules_no_hash_covers_are_unverified(capsys, models, reference, tmp_path):
    submission = shutil.copytree(reference, tmp_path / "submission")
    coop_runs = sorted(submission.glob("coop-*"))
    config_path = coop_runs[0] / "module" / "module.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k not in (DIGEST_KEY, "tensors_sha256")}))
    zs_run = next(submission.glob("zeroshot-*"))
    ledger_path(_row_file(zs_run, models[1])).unlink()
    code, report = _check(capsys, submission, reference, "--all")
    assert code == 1 and not report["ok"]
    coop, zeroshot = _entry(report, "coop"), _entry(report, "zeroshot")
    assert coop["verification"] == zeroshot["verification"] == "unverified"
    assert any(str(config_path) in u and "no content hash" in u for u in coop["unverified"])
    assert any(zs_run.name in u and "no prediction ledger" in u for u in zeroshot["unverified"])
    # leaderboard build marks them, even in the reference folder
    site = tmp_path / "site"
    run_json(capsys, "leaderboard", "build", "--results", str(submission), "--out", str(site))
    tables = Tables((site / "index.html").read_text())
    ranking = tables.with_class("ranking")[0]["rows"] + tables.with_class("variants")[0]["rows"]
    assert sorted(r["cells"][1] for r in ranking) == ["coop[epochs=2,n_ctx=4] unverified",
                                                      "zeroshot reference unverified"]
    # the untouched reference builds with no mark
    run_json(capsys, "leaderboard", "build", "--results", str(reference), "--out", str(tmp_path / "clean"))
    assert "badge unverified" not in (tmp_path / "clean" / "index.html").read_text()


def test_every_committed_module_carries_its_content_hashes():
    configs = sorted((REPO / "results").rglob("module/module.json"))
    assert len(configs) >= 360
    for path in configs:
        config = json.loads(path.read_text())
        assert json_intact(config) is True, path
        tensors = load_file(str(path.parent / "module.safetensors")) if config.get("tensors") else {}
        assert config.get("tensors_sha256") == tensors_digest(tensors), path


def test_re_computation_tolerates_near_ties_only():
    """Re-computing the committed results from a cold cache flipped 6 items whose logit margins were ~1e-5 from a
    tie (not from the image features, which are the same bits in any batch and thread count; the cause is not
    pinned down): a tie may fall either way, a forged answer may not."""
    from upgradebench.leaderboard.submission import items_differing

    def frame(pred, correct, margin):
        return pd.DataFrame({"item": ["a", "b", "c"], "pred": pred, "correct": correct, "margin": margin})

    ledger = frame([0, 1, 2], [True, False, False], [1e-5, -0.5, -2.0])
    assert items_differing(ledger, frame([3, 1, 2], [False, False, False], [-1e-5, -0.5, -2.0])) == 0  # a tie
    # two wrong, tied
    assert items_differing(ledger, frame([0, 3, 2], [True, False, False], [1e-5, -0.50002, -2.0])) == 0
    # a right answer the module does not give (whatever margin the ledger claims), a wrong one swapped for another
    assert items_differing(ledger, frame([0, 1, 0], [True, False, False], [1e-5, -0.5, -1.0])) == 1
    assert items_differing(frame([0, 1, 1], [True, False, True], [1e-5, -0.5, 1e-4]),
                           frame([0, 1, 2], [True, False, False], [1e-5, -0.5, -2.0])) == 1

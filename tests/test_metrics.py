"""Compatibility metrics with known answers, bootstrap coverage, McNemar, and `results compare` / `show`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from upgradebench.errors import UserError
from upgradebench.guard import safe_name
from upgradebench.ledger import ledger_path, write_ledger
from upgradebench.metrics import (
    Cell,
    cell_metrics,
    class_flips,
    compare,
    compat_summary,
    interval,
    mcnemar,
    read_ledgers,
    resampling_weights,
    summarize_with_intervals,
)
from upgradebench.results import SCHEMA_VERSION, read_results, write_rows

from .cli_helpers import run_cli, run_json
from .rows import blank_row
from .test_figures import result_rows

SRC, TGT, DS = "src", "tgt", "ds"


def write_run(folder, method: str, seed: int, correct: dict[str, list[int]], role_of=None, ledger: bool = True,
              labels=None, dataset: str = DS, shots: int = 16, train_dataset: str = DS) -> None:
    """One run's row files (and ledgers) on ``dataset`` (an OOD test set unless it is DS): ``correct[model]``
    is the per-item correctness on that model."""
    run_id = safe_name(f"{method}-s{seed}-{next(iter(correct))}" + ("" if shots == 16 else f"-k{shots}"))
    for model, right in correct.items():
        n = len(right)
        label = np.asarray(labels if labels is not None else [i % 2 for i in range(n)], dtype="int16")
        pred = np.where(np.asarray(right, bool), label, 1 - label).astype("int16")
        role = (role_of or {}).get(model, "base" if model == SRC else "new")
        row = blank_row(schema_version=SCHEMA_VERSION, run_id=run_id, method=method, method_variant="", dataset=dataset,
                        train_dataset=train_dataset, shots=shots, seed=seed, source=SRC if role != "oracle" else TGT,
                        eval_model=model, role=role, top1=100 * float(np.mean(right)), n_test=n, fit_seconds=2.0,
                        eval_seconds=0.1, trainable_params=10, needs_image_encoder=False, device="cpu")
        path = folder / run_id / f"{model}--{dataset}.parquet"
        write_rows([row], path)
        if ledger:
            preds = pd.DataFrame({"item": [f"{dataset}/test/{i}" for i in range(n)], "label": label, "pred": pred,
                                  "correct": pred == label, "margin": np.where(pred == label, 1.0, -1.0)})
            write_ledger(preds, ledger_path(path), run_id, model, dataset)


# item:             0  1  2  3  4
MODULE_SRC = [1, 1, 0, 0, 1]
MODULE_TGT = [1, 0, 1, 0, 0]
ZS_TGT = [0, 1, 1, 0, 1]
ORACLE = [1, 1, 1, 1, 0]


def known_folder(tmp_path, ledger: bool = True):
    folder = tmp_path / "res"
    write_run(folder, "m", 1, {SRC: MODULE_SRC, TGT: MODULE_TGT}, ledger=ledger)
    write_run(folder, "zeroshot", 1, {SRC: [1, 1, 1, 0, 0], TGT: ZS_TGT}, ledger=ledger)
    write_run(folder, "m", 1, {TGT: ORACLE}, role_of={TGT: "oracle"}, ledger=ledger)
    return folder


def test_nfr_pfr_btc_reuse_and_recovery_on_a_hand_built_table(tmp_path):
    folder = known_folder(tmp_path)
    rows = read_results(folder)
    s = compat_summary(rows, read_ledgers(folder), n_boot=50)
    m = s[(s.label == "m") & (s.dataset == DS)].iloc[0]
    assert m.base == pytest.approx(60) and m.new == pytest.approx(40)
    assert m.nfr == pytest.approx(40)        # items 1 and 4: right on the source, wrong on the target
    assert m.pfr == pytest.approx(20)        # item 2
    assert m.btc == pytest.approx(100 / 3)   # item 0 of the three the source gets right
    assert m.nfr_zs == pytest.approx(40)     # items 1 and 4: zero-shot on the target right, module wrong
    assert m.reuse_gain == pytest.approx(40 - 60)
    assert m.recovery == pytest.approx((40 - 60) / (80 - 60))
    zs = s[(s.label == "zeroshot") & (s.dataset == DS)].iloc[0]
    assert zs.reuse_gain == 0 and zs.nfr == pytest.approx(20)  # the upgrade itself flips item 0
    assert not s.label.isin(["m[oracle]"]).any() and len(s[s.dataset == DS]) == 2  # the oracle is no method


def test_per_class_flips_count_what_the_upgrade_breaks(tmp_path):
    cell = Cell(seeds=[1, 2], items=np.arange(4), labels=np.array([0, 1, 0, 1]),
                base=np.array([[1, 1, 1, 0], [1, 0, 1, 1]], bool), new=np.array([[0, 1, 0, 1], [1, 0, 0, 1]], bool),
                zs=None, oracle=None)
    flips = class_flips(cell, ["cat", "dog"])
    assert flips.to_dict(orient="list") == {"label": [0, 1], "class": ["cat", "dog"], "items": [4, 4],
                                            "negative_flips": [3, 0], "positive_flips": [0, 1]}


def test_schema_1_rows_show_ledger_metrics_as_missing_not_zero(tmp_path, capsys):
    folder = known_folder(tmp_path, ledger=False)
    s = summarize_with_intervals(read_results(folder), read_ledgers(folder), n_boot=50)
    m = s[(s.label == "m") & (s.dataset == DS)].iloc[0]
    assert m.new == pytest.approx(40) and math.isnan(m.nfr) and math.isnan(m.btc) and math.isnan(m.new_lo)
    assert m.reuse_gain == pytest.approx(-20) and m.recovery == pytest.approx(-1)  # from the rows' top-1 alone
    code, out, _ = run_cli(capsys, "results", "show", str(folder))
    assert code == 0
    nfr_line = next(line for line in out.splitlines() if "NFR" in line)
    assert "-" in nfr_line and "0.00" not in nfr_line


def _many_methods(tmp_path):
    """Nine methods with long labels, two seeds, 4 and 16 shots: too wide for a column per method at 80."""
    folder = tmp_path / "res"
    rng = np.random.default_rng(0)
    for k, method in enumerate(["zeroshot"] + [f"method-with-a-long-name-{i}" for i in range(8)]):
        for seed in (1, 2):
            src, tgt = ((rng.random(200) < p).astype(int).tolist() for p in (0.3 + 0.05 * k, 0.8 - 0.05 * k))
            for shots in (4, 16):
                write_run(folder, method, seed, {SRC: src, TGT: tgt}, shots=shots)
    return folder


def test_results_show_fits_the_terminal_and_never_breaks_a_number(tmp_path, capsys, monkeypatch):
    from upgradebench.cli._common import console

    folder = _many_methods(tmp_path)
    summary = run_json(capsys, "results", "show", str(folder))
    numbers = {f"{r[m + s]:.2f}" for r in summary for m in ("base", "new", "H", "nfr", "btc", "reuse_gain")
               for s in ("", "_lo", "_hi")}

    def shown(width: int, *args: str) -> tuple[str, set[str]]:
        monkeypatch.setattr(console, "width", width)
        code, out, err = run_cli(capsys, "results", "show", str(folder), *args)
        assert code == 0, err
        return out, {t.strip("[],│┃") for t in out.split()}

    out, tokens = shown(80)
    assert numbers <= tokens  # each mean and bound whole: wrapped at its space, never folded inside
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "┃ method" in out and "┃ dataset" not in out  # a table per dataset, a row per method
    assert "src -> tgt, 4 shots, ds" in out and "src -> tgt, 16 shots, ds" in out  # shots never mixed
    assert "src -> tgt, 16 shots, ds, compatibility" in out  # 80 columns: accuracies, then compatibility

    out, tokens = shown(300)
    assert numbers <= tokens and "┃ dataset" in out  # the paper's layout where it fits

    out, _ = shown(80, "--layout", "wide")
    assert "┃ method" not in out  # asked for: a column per method, however narrow

    a, b = "method-with-a-long-name-0", "zeroshot"
    diffs = run_json(capsys, "results", "compare", a, b, "--results", str(folder))
    numbers = {f"{r[f'd_{m}{s}']:.2f}" for r in diffs for m in ("base", "new", "H", "nfr") for s in ("", "_lo", "_hi")}
    numbers |= {f"{r['mcnemar_p']:.3g}" for r in diffs}
    code, out, err = run_cli(capsys, "results", "compare", a, b, "--results", str(folder))
    assert code == 0, err
    assert numbers <= {t.strip("[],│┃") for t in out.split()}
    code, _, err = run_cli(capsys, "results", "show", str(folder), "--layout", "tall")
    assert code == 2 and "Unknown layout 'tall'" in err and "auto, wide, long" in err
    code, out, err = run_cli(capsys, "results", "show", str(folder), "--dataset", "elsewhere")
    assert code == 0 and out == "" and f"no paired results that pass the filters in {folder}" in err


def test_results_show_reads_the_home_results_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UPGRADEBENCH_HOME", str(tmp_path))
    folder = known_folder(tmp_path).rename(tmp_path / "results")  # where `run` writes without --results
    assert run_json(capsys, "results", "show") == run_json(capsys, "results", "show", str(folder)) != []


def test_bootstrap_interval_covers_the_true_accuracy():
    """200 synthetic Bernoulli tables (3 seeds x 200 items, p = 0.7): the 95% interval holds p in >= 90%."""
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        base = rng.random((3, 200)) < 0.7
        cell = Cell(seeds=[1, 2, 3], items=np.arange(200), base=base, new=base, zs=None, oracle=None,
                    labels=np.zeros(200, int))
        values = cell_metrics(cell, resampling_weights("synthetic", cell.items, cell.seeds, 400, seed=trial))
        lo, hi = interval(values["base"][1:])
        hits += lo <= 70 <= hi
    assert hits >= 180, hits


def test_mcnemar_exact_and_asymptotic():
    a = np.array([1] * 10 + [0] * 2 + [1] * 5, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5, bool)
    assert mcnemar(a, b) == (10, 2, pytest.approx(2 * (1 + 12 + 66) / 4096))
    big_a, big_b = np.array([1] * 60 + [0] * 40, bool), np.array([0] * 60 + [1] * 40, bool)
    assert mcnemar(big_a, big_b)[2] == pytest.approx(math.erfc(math.sqrt((20 - 1) ** 2 / 100 / 2)))
    assert mcnemar(a, a) == (0, 0, 1.0)


def _two_methods(tmp_path, b_target):
    folder = tmp_path / "res"
    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        src = (rng.random(300) < 0.8).astype(int).tolist()
        good = (rng.random(300) < 0.75).astype(int).tolist()
        write_run(folder, "a", seed, {SRC: src, TGT: good})
        write_run(folder, "b", seed, {SRC: src, TGT: b_target(good)})
    return folder


def test_compare_finds_a_difference_built_in(tmp_path, capsys):
    # b is a with every third item of the target broken: a - b is exactly what was broken, and significant
    folder = _two_methods(tmp_path, lambda good: [0 if i % 3 == 0 else g for i, g in enumerate(good)])
    rows, ledgers = read_results(folder), read_ledgers(folder)
    out = compare(rows, ledgers, "a", "b", n_boot=300).set_index("dataset")
    a_new = rows[(rows.method == "a") & (rows.role == "new")].top1.mean()
    b_new = rows[(rows.method == "b") & (rows.role == "new")].top1.mean()
    assert out.loc[DS, "d_new"] == pytest.approx(a_new - b_new) and out.loc[DS, "d_new_lo"] > 0
    assert out.loc[DS, "d_base"] == 0 and out.loc[DS, "b_only_right"] == 0 and out.loc[DS, "mcnemar_p"] < 1e-6
    assert out.loc[DS, "d_nfr"] < 0  # b breaks more of what the source got right
    cli = run_json(capsys, "results", "compare", "a", "b", "--results", str(folder))
    assert [r["dataset"] for r in cli] == [DS, "Average"] and cli[0]["d_new"] == pytest.approx(a_new - b_new)


def test_compare_average_leaves_ood_test_sets_out(tmp_path):
    folder = _two_methods(tmp_path, lambda good: good)  # identical in distribution
    for seed in (1, 2, 3):  # on an OOD test set a is right everywhere, b nowhere
        write_run(folder, "a", seed, {SRC: [1] * 50, TGT: [1] * 50}, dataset="ds-ood")
        write_run(folder, "b", seed, {SRC: [1] * 50, TGT: [0] * 50}, dataset="ds-ood")
    out = compare(read_results(folder), read_ledgers(folder), "a", "b", n_boot=100).set_index("dataset")
    assert out.loc["ds-ood", "d_new"] == 100 and out.loc["ds-ood", "d_H"] == pytest.approx(100)
    assert out.loc["Average", ["d_new", "d_H", "d_nfr"]].tolist() == [0, 0, 0]
    assert out.loc["Average", "b_only_right"] + out.loc["Average", "a_only_right"] == 0


def test_compare_of_identical_runs_finds_no_difference(tmp_path):
    folder = _two_methods(tmp_path, lambda good: good)
    out = compare(read_results(folder), read_ledgers(folder), "a", "b", n_boot=300)
    for m in ("base", "new", "H", "nfr"):
        assert (out[f"d_{m}"] == 0).all() and (out[f"d_{m}_lo"] == 0).all() and (out[f"d_{m}_hi"] == 0).all()
    assert (out.mcnemar_p == 1).all()


def test_compare_names_the_labels_it_has(tmp_path, capsys):
    folder = _two_methods(tmp_path, lambda good: good)
    code, _, err = run_cli(capsys, "results", "compare", "a", "c", "--results", str(folder))
    assert code == 2 and "'c'" in err and "a, b, zeroshot" not in err and "a, b" in err


def test_intervals_are_reproducible_and_paired_across_calls(tmp_path):
    folder = _two_methods(tmp_path, lambda good: good)
    rows, ledgers = read_results(folder), read_ledgers(folder)
    one = compat_summary(rows, ledgers, n_boot=200)
    two = compat_summary(rows, ledgers, n_boot=200)
    pd.testing.assert_frame_equal(one, two)
    a, b = (one[(one.label == m) & (one.dataset == DS)].iloc[0] for m in ("a", "b"))
    assert (a.new_lo, a.new_hi, a.base_lo) == (b.new_lo, b.new_hi, b.base_lo)  # same data, same replicates


def test_duckdb_reads_rows_and_ledgers_with_the_documented_globs(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    folder = known_folder(tmp_path)
    old = folder / "old-run" / f"{SRC}--{DS}.parquet"  # a schema-1 row: no cost columns, no ledger
    old.parent.mkdir()
    pd.read_parquet(next(folder.glob("m-*/src--ds.parquet"))).drop(
        columns=["trainable_params", "needs_image_encoder"]).assign(schema_version=1, run_id="old").to_parquet(old)
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*/*.parquet', union_by_name = true)").df()
    assert len(rows) == len(read_results(folder)) == 6 and rows.trainable_params.isna().sum() == 1
    ledgers = duckdb.sql(f"SELECT run_id, eval_model, avg(correct::INT) * 100 AS top1 FROM "
                         f"read_parquet('{folder}/*/ledger/*.parquet') GROUP BY ALL").df()
    joined = ledgers.merge(rows, on=["run_id", "eval_model"], suffixes=("_ledger", ""))
    assert len(joined) == 5 and np.allclose(joined.top1_ledger, joined.top1)


def test_figures_show_the_ledger_metrics_with_intervals(tmp_path, capsys):
    folder = known_folder(tmp_path)
    out = run_json(capsys, "figures", "--results", str(folder), "--out", str(tmp_path / "f"))
    assert {"compat.md", "fig-base-new-src--tgt-16shot.png"} <= {p.split("/")[-1] for p in out["written"]}
    line = next(row for row in (tmp_path / "f" / "compat.md").read_text().splitlines() if row.startswith("| m |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "m" and cells[4].startswith("40.00 [") and cells[8].startswith("-1.000 [")  # NFR, recovery


def test_average_recovery_uses_only_the_datasets_with_oracle_runs():
    """A recovery ratio over datasets where only some have an oracle must not divide the average gain of all of
    them by the oracle room of a few: it is the ratio over the oracle datasets alone."""
    rows = []
    for dataset, zs, new, oracle in (("toy-a", 50.0, 60.0, 70.0), ("toy-b", 50.0, 10.0, None),
                                     ("toy-c", 50.0, 48.0, 45.0), ("toy-d", 50.0, 49.0, 50.5)):
        rows += result_rows("zeroshot", dataset, 1, "src", "tgt", 40.0, zs)
        rows += result_rows("coop", dataset, 1, "src", "tgt", 40.0, new)
        if oracle is not None:
            row = dict(result_rows("coop", dataset, 1, "tgt", "tgt", oracle, oracle)[0], role="oracle")
            rows.append(row)
    out = summarize_with_intervals(pd.DataFrame(rows), {})
    coop = out[out.method == "coop"].set_index("dataset")
    assert coop.loc["toy-a", "recovery"] == pytest.approx(0.5)     # (60 - 50) / (70 - 50)
    assert math.isnan(coop.loc["toy-b", "recovery"])                # no oracle on toy-b
    assert math.isnan(coop.loc["toy-c", "recovery"])                # the oracle does not beat zero-shot
    assert math.isnan(coop.loc["toy-d", "recovery"])                # by less than a point: -1 / 0.5 is noise
    # over toy-a, toy-c, toy-d only (the datasets with oracles): gain (10 - 2 - 1) / 3, room (20 - 5 + 0.5) / 3
    assert coop.loc["Average", "recovery"] == pytest.approx(7 / 15.5)


def test_average_recovery_from_ledgers_is_the_mean_gain_over_the_mean_room(tmp_path):
    """With ledgers too, an Average's recovery is its mean gain over its mean room (the rows' definition), not a
    mean of per-dataset ratios, which a dataset whose oracle barely beats zero-shot sends anywhere; and its
    interval contains it (it did not, once every task had an oracle: -0.08 over [-3.83, -1.30])."""
    folder, n, rng = tmp_path / "res", 200, np.random.default_rng(0)

    def draw(p: float) -> list[int]:
        return (rng.random(n) < p).astype(int).tolist()

    for ds, (zs, new, oracle) in {"a": (0.5, 0.6, 0.9), "b": (0.5, 0.45, 0.52)}.items():
        write_run(folder, "m", 1, {SRC: draw(0.6), TGT: draw(new)}, dataset=ds, train_dataset=ds)
        write_run(folder, "zeroshot", 1, {SRC: draw(0.5), TGT: draw(zs)}, dataset=ds, train_dataset=ds)
        write_run(folder, "m", 1, {TGT: draw(oracle)}, role_of={TGT: "oracle"}, dataset=ds, train_dataset=ds)
    rows = read_results(folder)
    top1 = {(m, r, d): t for m, r, d, t in zip(rows.method, rows.role, rows.dataset, rows.top1) if r != "base"}
    gain = [top1[("m", "new", d)] - top1[("zeroshot", "new", d)] for d in "ab"]
    room = [top1[("m", "oracle", d)] - top1[("zeroshot", "new", d)] for d in "ab"]
    avg = compat_summary(rows, read_ledgers(folder), n_boot=200).set_index(["label", "dataset"]).loc[("m", "Average")]
    assert avg.recovery == pytest.approx(np.mean(gain) / np.mean(room))
    assert avg.recovery_lo <= avg.recovery <= avg.recovery_hi
    assert summarize_with_intervals(rows, read_ledgers(folder)).set_index(["label", "dataset"]).loc[
        ("m", "Average"), "recovery"] == pytest.approx(avg.recovery)


def test_a_ledger_that_disagrees_with_its_row_is_reported_not_used(tmp_path):
    """Rows carry a content hash, ledgers are tied to them: a ledger edited consistently (pred and correct
    flipped together) changes the top-1 it gives and is named; one edited inconsistently fails when read."""
    folder = known_folder(tmp_path)
    path = ledger_path(folder / "m-s1-src" / f"{TGT}--{DS}.parquet")
    ledger = pd.read_parquet(path)
    ledger.loc[1, "pred"] = ledger.loc[1, "label"]  # item 1 turned right on the target: new 40 -> 60
    ledger.loc[1, "correct"] = True
    ledger.to_parquet(path)
    with pytest.raises(UserError, match=r"ledger of run m-s1-src on tgt / ds gives top-1 60\.0000 but its row says 40"):
        compat_summary(read_results(folder), read_ledgers(folder), n_boot=10)

    ledger.iloc[:4].to_parquet(path)  # an item dropped: 3 of 4 right, and one item short of its row
    with pytest.raises(UserError, match=r"ledger of run m-s1-src on tgt / ds holds 4 items but its row says n_test=5"):
        compat_summary(read_results(folder), read_ledgers(folder), n_boot=10)

    ledger.loc[1, "pred"] = 1 - ledger.loc[1, "label"]  # pred put back, correct left flipped
    ledger.to_parquet(path)
    with pytest.raises(UserError, match="disagrees with 'pred' == 'label'"):
        read_ledgers(folder)

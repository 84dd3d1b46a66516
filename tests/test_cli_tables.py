"""Text in a narrow terminal: names and numbers stay whole while a column with spaces wraps instead; labels
such as coop[n_ctx=4] are never read as rich markup."""

from __future__ import annotations

from upgradebench.cli._common import _capped_widths, console, print_table

from .cli_helpers import run_cli, run_json


def test_capped_widths_keep_narrow_columns_whole_and_cap_the_wide_ones():
    # room 25: the narrow column gets its whole 10, the wide one what is left, never less than its word (3)
    assert _capped_widths([5, 3], [10, 30], 25) == [10, 15]
    # room 12: both at the cap 6 would be 12, so they share the room; the longest word (5) is kept
    assert _capped_widths([5, 3], [10, 30], 12) == [6, 6]
    # no room for the longest words: an even cap, short columns first (what show_table does when words break)
    assert _capped_widths([1, 1, 1], [4, 20, 20], 20) == [4, 8, 8]
    assert sum(_capped_widths([1, 1, 1], [4, 20, 21], 21)) == 21  # rounding: all the room is used


def test_a_narrow_table_wraps_the_description_not_the_names(capsys, monkeypatch):
    monkeypatch.setattr(console, "width", 60)
    names = ["ViT-B-16-quickgelu", "merged2b_s8b_b131k"]
    description = "a description long enough that it has to wrap at the spaces between its many words"
    print_table("t", ["arch", "tag", "description"], [[*names, description]])
    out = capsys.readouterr().out
    tokens = {t.strip("│┃") for t in out.split()}
    assert set(names) <= tokens and set(description.split()) <= tokens
    assert max(len(line) for line in out.splitlines()) <= 60


def test_models_list_fits_80_columns_with_every_name_whole(capsys, monkeypatch):
    from upgradebench.models import alias_names, describe_model

    monkeypatch.setattr(console, "width", 80)
    code, out, err = run_cli(capsys, "models", "list")
    assert code == 0, err
    tokens = {t.strip("│┃") for t in out.split()}
    for name in alias_names():
        info = describe_model(name)
        assert {info["alias"], info["arch"], info["pretrained"] or name} <= tokens


def test_progress_descriptions_are_text_not_markup():
    from upgradebench.features import progress_bar

    bar = progress_bar(transient=False)
    bar.add_task("sweep: coop[n_ctx=4] toy-shape k=16 seed=1", total=1)
    assert bar.columns[0].render(bar.tasks[0]).plain == "sweep: coop[n_ctx=4] toy-shape k=16 seed=1"


# ---- results show / compare: what an Average covers, seeds, NaN, intervals that stay whole ----

def _run(folder, method: str, seed: int, dataset: str, base: list[int], new: list[int], ledger: bool = True,
         train: str | None = None) -> None:
    """One run of ``method`` on ``dataset`` (an OOD test set of ``train`` when given): rows (and ledgers) of
    the source ``src`` and the target ``tgt`` with the given per-item correctness."""
    import numpy as np
    import pandas as pd

    from upgradebench.ledger import ledger_path, write_ledger
    from upgradebench.results import SCHEMA_VERSION, write_rows

    from .rows import blank_row

    run_id = f"{method}-{train or dataset}-s{seed}"
    for model, right, role in (("src", base, "base"), ("tgt", new, "new")):
        label = np.arange(len(right), dtype="int16") % 2
        pred = np.where(np.asarray(right, bool), label, 1 - label).astype("int16")
        path = folder / run_id / f"{model}--{dataset}.parquet"
        write_rows([blank_row(schema_version=SCHEMA_VERSION, run_id=run_id, method=method, method_variant="",
                              dataset=dataset, train_dataset=train or dataset, shots=16, seed=seed, source="src",
                              eval_model=model, role=role, top1=100 * float(np.mean(right)), n_test=len(right),
                              fit_seconds=1.0, eval_seconds=0.1, trainable_params=1, needs_image_encoder=False,
                              device="cpu")], path)
        if ledger:
            write_ledger(pd.DataFrame({"item": [f"{dataset}/test/{i}" for i in range(len(right))], "label": label,
                                       "pred": pred, "correct": pred == label,
                                       "margin": np.where(pred == label, 1.0, -1.0)}),
                         ledger_path(path), run_id, model, dataset)


def _pattern(n: int, k: int, shift: int = 0) -> list[int]:
    """``n`` items, ``k`` of them right (spread evenly, rotated by ``shift``)."""
    return [int((i + shift) * k // n != (i + shift + 1) * k // n) for i in range(n)]


def test_average_over_fewer_datasets_or_missing_ledgers_is_marked_and_intervals_hold_their_means(
        tmp_path, capsys, monkeypatch):
    """zeroshot and coop on three datasets, contcoop on one; one zeroshot dataset lost its ledgers (issue 24:
    the Average's Base was 56.29 over [58.25, 63.67], the interval taken over the other datasets only)."""
    folder = tmp_path / "res"
    for seed in (1, 2, 3):
        for i, ds in enumerate(("ds-a", "ds-b", "ds-c")):
            _run(folder, "zeroshot", seed, ds, _pattern(60, 10 + 20 * i), _pattern(60, 15 + 20 * i),
                 ledger=ds != "ds-a")
            _run(folder, "coop", seed, ds, _pattern(60, 20 + 10 * i + seed, 1), _pattern(60, 25 + 5 * i + seed, 2))
        _run(folder, "contcoop", seed, "ds-b", _pattern(60, 40 + seed), _pattern(60, 45 - seed))
    summary = run_json(capsys, "results", "show", str(folder))
    for r in summary:  # every interval holds its mean; a missing one is null, never NaN
        for m in ("base", "new", "H", "nfr", "btc"):
            if r[f"{m}_lo"] is not None:
                assert r[f"{m}_lo"] - 1e-9 <= r[m] <= r[f"{m}_hi"] + 1e-9, (r["label"], r["dataset"], m)
    avg = {r["label"]: r for r in summary if r["dataset"] == "Average"}
    assert avg["zeroshot"]["ledger_datasets"] == 2 and avg["zeroshot"]["datasets"] == 3
    assert avg["zeroshot"]["base_lo"] is None and avg["zeroshot"]["nfr"] is None  # not over 2 of its 3 datasets
    assert avg["coop"]["base_lo"] is not None and avg["coop"]["seeds"] == 3
    assert avg["contcoop"]["datasets"] == 1

    monkeypatch.setattr(console, "width", 120)
    code, out, err = run_cli(capsys, "results", "show", str(folder))  # the paper's layout: marked in the header
    assert code == 0, err
    assert "contcoop *" in out and "zeroshot †" in out
    code, out, err = run_cli(capsys, "results", "show", str(folder), "--layout", "long")
    assert code == 0, err
    assert "mean over 3 seeds" in out and "Average of 3: mean over ds-a, ds-b, ds-c" in out
    average = out[out.index("src -> tgt, 16 shots, Average of 3"):]
    assert "│ contcoop * " in average and "│ zeroshot † " in average and "│ coop " in average
    assert "* Average over 1 of 3 datasets (ds-b), not comparable with the other Averages: contcoop" in out
    assert "† 1 of 3 datasets without prediction ledgers" in " ".join(out.split()) and "nan" not in out.lower()


def test_results_show_and_compare_fit_80_and_120_columns_with_every_interval_whole(tmp_path, capsys, monkeypatch):
    """Eleven methods with names as long as the built-ins', three tasks and an OOD set, as on the reference
    results: every line within the terminal, every '[lo, hi]' on one line of its cell, OOD rows marked."""
    import re

    folder = tmp_path / "res"
    methods = ["zeroshot", "linear-probe", "clip-adapter", "tip-adapter-f", "coop", "cocoop", "kgcoop", "prograd",
               "tcp", "clip-lora", "contcoop"]
    for k, method in enumerate(methods):
        for seed in (1, 2):
            for i, ds in enumerate(("toy-shape", "toy-colour", "toy-colour-shape")):
                _run(folder, method, seed, ds, _pattern(80, 8 + 5 * k + i, seed), _pattern(80, 70 - 6 * k, i))
            _run(folder, method, seed, "toy-shape-sketch", _pattern(80, 30 + k), _pattern(80, 5 + 3 * k),
                 train="toy-shape")
    summary = run_json(capsys, "results", "show", str(folder))
    intervals = {(f"{r[m + '_lo']:.2f}", f"{r[m + '_hi']:.2f}") for r in summary
                 for m in ("base", "new", "H", "nfr", "btc", "reuse_gain") if r[m + "_lo"] is not None}
    for width in (80, 120):
        monkeypatch.setattr(console, "width", width)
        for args in (("results", "show", str(folder)),
                     ("results", "compare", "contcoop", "coop", "--results", str(folder))):
            code, out, err = run_cli(capsys, *args)
            assert code == 0, err
            assert max(len(line) for line in out.splitlines()) <= width, (width, args)
            whole = set(re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", out))
            assert not re.search(r"\[-?\d+\.\d+,\s*│", out), (width, args)  # no interval cut after its comma
            if args[1] == "show":
                assert intervals <= whole
                assert "toy-shape-sketch (OOD of toy-shape)" in out and "Average of 3" in out
            else:
                assert "toy-shape-sketch (OOD)" in out and "Average of 3: mean over toy-colour, toy-colour-shape, " \
                       "toy-shape; OOD test sets are compared one by one" in " ".join(out.split())


def test_a_missing_number_is_a_dash_never_nan():
    from upgradebench.cli.results import cell

    nan = float("nan")
    assert cell(nan) == "-" and cell(nan, 1.0, 2.0) == "-"
    assert cell(50.0, 45.0, nan) == "50.00" and cell(50.0, nan, nan, nan) == "50.00"
    assert cell(50.0, 45.0, 55.0) == "50.00\n[45.00, 55.00]" and cell(50.0, std=1.5) == "50.00 ± 1.50"

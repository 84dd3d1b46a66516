"""Figures and tables from parquet alone: synthetic result rows written with ``write_rows``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from upgradebench.analysis.drift import DRIFT_SCHEMA, DRIFT_SCHEMA_VERSION, write_drift
from upgradebench.analysis.tables import main_table, ranks, table2, table3, to_latex, to_markdown
from upgradebench.guard import safe_name
from upgradebench.results import SCHEMA_VERSION, read_results, summarize, write_rows

from .cli_helpers import run_cli, run_json
from .rows import blank_row

COOP = {"n_ctx": 16, "depth": 0, "epochs": None}
CONTCOOP = {"n_ctx": 16, "attention": True, "heads": 1, "kd": True, "kd_weight": 1.0, "condition": "{}"}
DEFAULTS = {"zeroshot": {}, "linear-probe": {"C": None}, "coop": COOP, "contcoop": CONTCOOP}
DATASETS = ("toy-pattern", "toy-shape", "toy-texture")
PAIRS = (("toy-clip", "toy-eva"), ("toy-clip-l", "toy-eva-l"))


def result_rows(method: str, dataset: str, seed: int, source: str, target: str, base: float, new: float,
                train_dataset: str | None = None, **config) -> list[dict]:
    """The base and new rows of one run, as the runner writes them (variant = keys off the defaults; the run id
    a folder name, whatever the method and dataset are called)."""
    defaults = DEFAULTS.get(method, {})
    full = {**defaults, **config}
    variant = ",".join(f"{k}={full[k]}" for k in sorted(full) if full[k] != defaults.get(k))
    train = train_dataset or dataset
    out = []
    for role, model, acc in (("base", source, base), ("new", target, new)):
        row = blank_row()
        row.update(schema_version=SCHEMA_VERSION, run_id=safe_name(f"{method}-{variant}-{train}-s{seed}-{source}"),
                   method=method, method_version="1", method_origin="upgradebench==0.1.0",
                   method_config=json.dumps(full, sort_keys=True), method_variant=variant, dataset=dataset,
                   train_dataset=train, shots=16, seed=seed, views="10", source=source, eval_model=model, role=role,
                   top1=float(acc), n_test=100, fit_seconds=1.0, eval_seconds=0.5, upgradebench_version="0.1.0",
                   source_fingerprint=f"fp-{source}", eval_fingerprint=f"fp-{model}", torch_version="2.x",
                   open_clip_version="3.x", git_sha="abc123", device="cpu")
        out.append(row)
    return out


def synthetic_results(folder: Path, pairs=PAIRS, methods=("zeroshot", "linear-probe", "coop", "contcoop"),
                      full: bool = True) -> Path:
    """A results folder like a paper sweep: the main table, and with ``full`` also OOD rows, ContCoOp
    ablations and the CoOp depth study."""
    rng = random.Random(0)
    quality = {"zeroshot": (60, 65), "linear-probe": (78, 5), "coop": (75, 70), "contcoop": (76, 74)}
    rows = []
    for p, (source, target) in enumerate(pairs):
        for seed in (1, 2, 3):
            for method in methods:
                base, new = quality.get(method, (70, 60))
                for d, dataset in enumerate(DATASETS):
                    rows += result_rows(method, dataset, seed, source, target, base + d + p + rng.random(),
                                        new - d + p + rng.random())
                if full and method in ("zeroshot", "coop", "contcoop"):  # OOD: trained on toy-pattern, tested elsewhere
                    for o, ood in enumerate(("toy-pattern-v2", "toy-pattern-sketch")):
                        rows += result_rows(method, ood, seed, source, target, base - 5 - o + rng.random(),
                                            new - 6 - o + rng.random(), train_dataset="toy-pattern")
            if p or not full:
                continue  # sweeps only on the main pair, as in the paper
            for attention in (False, True):
                for kd in (False, True):
                    if attention and kd:
                        continue  # the reference config is already there
                    rows += result_rows("contcoop", "toy-texture", seed, source, target, 70 + attention + kd,
                                        65 + 3 * attention + kd + rng.random(), attention=attention, kd=kd)
            for weight in (0.0, 0.3, 0.5, 0.7):
                rows += result_rows("contcoop", "toy-shape", seed, source, target, 75 + weight,
                                    70 + 3 * weight + rng.random(), kd_weight=weight)
            for heads in (2, 4, 8):
                rows += result_rows("contcoop", "toy-texture", seed, source, target, 72, 73 - heads / 4, heads=heads)
            rows += result_rows("contcoop", "toy-texture", seed, source, target, 71, 70,
                                condition="a photo of a {}.")
            for n_ctx in (4, 8):
                rows += result_rows("contcoop", "toy-shape", seed, source, target, 74 + n_ctx / 8,
                                    73 + rng.random(), n_ctx=n_ctx)
            for depth in range(1, 6):
                rows += result_rows("coop", "toy-texture", seed, source, target, 75 - depth / 2,
                                    70 - 4 * depth + rng.random(), depth=depth)
    frame = pd.DataFrame(rows)
    for run, part in frame.groupby("run_id"):
        write_rows(part.to_dict(orient="records"), folder / f"{run}.parquet")
    return folder


def synthetic_drift(path: Path, layers: int = 4) -> Path:
    """A drift file for one source and two targets."""
    names = ["token_embedding", "positional_embedding", *(f"block_{i}" for i in range(layers)), "ln_final",
             "text_projection"]
    rows = []
    for t, target in enumerate(("toy-eva", "toy-eva-drift")):
        for kind in ("parameters", "features"):
            for i, layer in enumerate(names):
                row = {c: "" for c in DRIFT_SCHEMA.columns}
                row.update(schema_version=DRIFT_SCHEMA_VERSION, kind=kind, layer=layer, layer_index=i,
                           source="toy-clip", target=target, mean_abs_change=0.01 * (i + 1) * (t + 1),
                           relative_change=0.05 * (i + 1) * (t + 1), n_values=100, n_prompts=10 * (kind == "features"))
                rows.append(row)
    return write_drift(pd.DataFrame(rows), path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return synthetic_results(tmp_path_factory.mktemp("synthetic") / "results")


def test_figures_command_writes_every_figure_and_table(capsys, synthetic, tmp_path):
    drift = synthetic_drift(tmp_path / "drift.parquet")
    out = run_json(capsys, "figures", "--results", str(synthetic), "--drift", str(drift), "--out", str(tmp_path / "f"))
    names = {Path(p).name for p in out["written"]}
    assert set(out["skipped"]) == {"paper-vs-measured"}  # toy models have no published numbers
    for stem in ("fig2a-toy-clip--toy-eva-16shot", "fig2a-toy-clip-l--toy-eva-l-16shot", "fig2b-toy-clip",
                 "fig2c-toy-clip", "fig2d-toy-texture-toy-clip--toy-eva-16shot",
                 "fig4-toy-shape-toy-clip--toy-eva-16shot"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    for table in ("table2", "table3", "table4", "table5", "table6", "table7", "table8", "compat"):
        assert {f"{table}.md", f"{table}.tex"} <= names, table
    assert {"fig-base-new-toy-clip--toy-eva-16shot.png", "fig-base-new-toy-clip-l--toy-eva-l-16shot.pdf"} <= names
    coop = next(line for line in (tmp_path / "f" / "compat.md").read_text().splitlines() if line.startswith("| coop"))
    assert coop.count("–") == 4 and "[" not in coop  # no ledgers (NFR, BTC, NFR vs ZS, intervals), no oracle
    for path in out["written"]:
        assert Path(path).stat().st_size > 0
    assert (tmp_path / "f" / "fig2a-toy-clip--toy-eva-16shot.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_inputs_skip_only_their_items(capsys, tmp_path):
    results = synthetic_results(tmp_path / "r", pairs=PAIRS[:1], methods=("zeroshot", "coop"), full=False)
    out = run_json(capsys, "figures", "--results", str(results), "--out", str(tmp_path / "f"))
    names = {Path(p).name for p in out["written"]}
    assert {"table2.md", "fig2a-toy-clip--toy-eva-16shot.png"} <= names
    assert set(out["skipped"]) == {"fig2b", "fig2c", "fig2d", "fig4", "table3", "table4", "table5", "table6",
                                   "table7", "table8", "paper-vs-measured"}
    assert "--drift" in out["skipped"]["fig2b"] and "second" in out["skipped"]["table8"]
    code, text, err = run_cli(capsys, "figures", "--results", str(results), "--out", str(tmp_path / "g"))
    assert code == 0 and "skipped" in text + err and "table8" in text + err


def test_table2_matches_summarize_and_marks_best_and_second(synthetic):
    df = read_results(synthetic)
    doc = table2(df)
    md, tex = to_markdown(doc), to_latex(doc)
    s = summarize(df[(df.method_variant == "") & (df.dataset == df.train_dataset)])
    s = s[(s.source == "toy-clip") & (s.target == "toy-eva")]
    avg = s[s.dataset == "Average"].set_index("label")
    assert f"{avg.loc['contcoop', 'H']:.2f}" in md
    best_new = avg.new.idxmax()
    second_new = avg.new.drop(best_new).idxmax()
    new_row = next(line for line in md.splitlines() if line.startswith("|  | New |"))
    assert f"**{avg.loc[best_new, 'new']:.2f}**" in new_row
    assert f"<u>{avg.loc[second_new, 'new']:.2f}</u>" in new_row
    assert f"\\textbf{{{avg.loc[best_new, 'new']:.2f}}}" in tex and "\\underline{" in tex
    assert md.index("Average over 3 datasets") < md.index("toy-pattern")  # Average first, as in the paper
    assert "linear-probe" in md and "coop[" not in md  # reference configurations only


def test_ranks_ignore_lone_numbers_and_handle_ties():
    from upgradebench.analysis.tables import Table

    t = Table("h", ["a", "b", "c", "d"], [["x", 1.0, 3.0, 3.0], ["y", 5.0, None, None]], rank="row")
    assert ranks(t) == {(0, 2): 1, (0, 3): 1, (0, 1): 2}


def test_strings_from_results_are_escaped_in_tables(tmp_path):
    rows = result_rows("zeroshot", "a_b|c", 1, "s&1", "t<2>", 50, 40)
    rows += result_rows("coop", "a_b|c", 1, "s&1", "t<2>", 60, 30)
    write_rows(rows, tmp_path / "r.parquet")
    summary = summarize(read_results(tmp_path))
    table = main_table(summary, "s&1", "t<2>", 16)
    from upgradebench.analysis.tables import TableDoc

    doc = TableDoc("t", "T", "c", [table])
    assert "a_b\\|c" in to_markdown(doc) and "t&lt;2&gt;" in to_markdown(doc)
    tex = to_latex(doc)
    assert "a\\_b|c" in tex and "s\\&1" in tex and "t\\textless{}2\\textgreater{}" in tex


def test_bad_results_folder_is_a_user_error(capsys, tmp_path):
    code, out, err = run_cli(capsys, "figures", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "f"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "figures", "--results", str(tmp_path), "--drift", str(tmp_path / "d.parquet"),
                             "--out", str(tmp_path / "f"))
    assert code == 2 and "Drift file" in err


def test_table3_averages_the_ood_datasets(synthetic):
    doc = table3(read_results(synthetic))
    assert doc.tables and all(t.header[-1] == "Avg." for t in doc.tables)
    for table in doc.tables:
        for row in table.rows:  # [method, training dataset, OOD datasets..., Avg.]
            assert row[-1] == pytest.approx(sum(row[2:-1]) / len(row[2:-1])), row

"""The upgrade matrix (issue 25 point 4): known answers on a hand-built world, the figure's absent cells, the drift
predictors' statistics, `analyze matrix` and the leaderboard's section."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from upgradebench.analysis.matrix import fig_matrix, kind_of, matrix_grid, matrix_table, ordered_kinds, panel_order
from upgradebench.analysis.predictors import (
    fig_predictors,
    identity_gains,
    linear_cka,
    model_measures,
    predictor_table,
    spearman,
    spearman_interval,
    zeroshot_agreement,
)
from upgradebench.leaderboard.build import build_site

from .cli_helpers import run_cli, run_json
from .matrix_world import CHAINED, DRIFT, RETUNE, SRC, TEXT, TGT, VOCAB, in_memory, matrix_world, write_world
from .test_leaderboard import Tables


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return matrix_table(*in_memory(matrix_world()), n_boot=50)


def cell(table: pd.DataFrame, target: str, mapper: str, method: str = "m") -> pd.Series:
    hit = table[(table.target == target) & (table.mapper == mapper) & (table.method == method)]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_identity_row_new_nfr_reuse_gain_and_recovery(table):
    r = cell(table, TGT, "identity")
    assert (r.kind, r.budget, r.seeds, r.datasets) == ("inherited-text-tower", "none", 1, 1)
    assert r.new == pytest.approx(40)
    assert r.nfr == pytest.approx(40)                      # items 1 and 4: right on the source, wrong here
    assert r.reuse_gain == pytest.approx(40 - 60)          # zero-shot on toy-eva: 60
    assert r.recovery == pytest.approx((40 - 60) / (80 - 60))  # oracle: 80
    assert r.map_seconds == 0 and r.mapper_shots == 0
    zs = cell(table, TGT, "identity", "zeroshot")
    assert zs.reuse_gain == 0 and zs.nfr == pytest.approx(20)  # what the upgrade alone flips


def test_mapped_rows_are_their_own_rows_with_their_cost(table):
    r = cell(table, TGT, "vocab-map")
    assert (r.new, r.nfr, r.reuse_gain, r.recovery) == pytest.approx((60, 20, 0, 0))
    assert (r.budget, r.map_seconds, r.mapper_shots) == ("none", VOCAB[4], 0)
    r = cell(table, TEXT, "vocab-map")
    assert r.kind == "independent-retraining"
    assert (r.new, r.nfr, r.reuse_gain) == pytest.approx((80, 20, 20))
    assert math.isnan(r.recovery)                           # no oracle on toy-eva-text: missing, not 0
    r = cell(table, TGT, "retune")
    assert (r.new, r.nfr, r.reuse_gain, r.recovery) == pytest.approx((100, 0, 40, 2))
    assert (r.budget, r.mapper_shots, r.map_seconds) == ("labeled", RETUNE[3], RETUNE[4])
    r = cell(table, DRIFT, f"vocab-map via {TGT}")
    assert (r.new, r.nfr, r.reuse_gain, r.map_seconds) == pytest.approx((60, 0, 20, CHAINED[4]))
    # zero-shot has no module to map; identity was refused on toy-eva-text: no row, never a 0
    assert not ((table.mapper != "identity") & (table.method == "zeroshot")).any()
    assert table[(table.target == TEXT) & (table.mapper == "identity") & (table.method == "m")].empty


def test_matrix_without_mapped_rows_is_the_identity_rows():
    t = matrix_table(*in_memory(matrix_world(mapped=False)), n_boot=20)
    assert set(t.mapper) == {"identity"} and set(t.method) == {"m", "zeroshot"}
    assert kind_of(SRC, TEXT) == "independent-retraining" and kind_of("my-model", "my-upgrade") == "unknown"


def test_figure_hatches_absent_cells_and_orders_panels_by_budget(table, tmp_path):
    assert panel_order(table) == ["identity", "vocab-map", f"vocab-map via {TGT}", "retune"]
    kinds = ordered_kinds(list(table.kind))
    grid = matrix_grid(table, "identity", ["m"], kinds)
    inherited, independent = kinds.index("inherited-text-tower"), kinds.index("independent-retraining")
    assert np.isnan(grid[0, independent])                   # absent: hatched, not 0
    assert grid[0, inherited] == pytest.approx(-20)         # toy-eva: the one such pair under identity
    written = fig_matrix(table, tmp_path)
    assert sorted(p.name for p in written) == ["fig-matrix-16shot.pdf", "fig-matrix-16shot.png"]


def test_spearman_of_a_monotone_relation_is_one_with_an_interval_in_bounds():
    x = [0.1, 0.4, 0.2, 0.9, 0.5, 0.7]
    y = [np.exp(v) - 3 for v in x]                          # monotone, not linear
    assert spearman(x, y) == pytest.approx(1.0)
    assert spearman(x, [-v for v in y]) == pytest.approx(-1.0)
    lo, hi = spearman_interval(x, y, n_boot=200, seed=3)
    assert -1.0 <= lo <= hi <= 1.0 and hi == pytest.approx(1.0)
    assert spearman_interval(x, y, n_boot=200, seed=3) == (lo, hi)  # seeded: the same interval again
    assert math.isnan(spearman(x[:2], y[:2])) and math.isnan(spearman(x, [1.0] * len(x)))


def test_predictor_table_correlates_each_measure_with_the_identity_gain():
    pairs = [("s", f"t{i}") for i in range(5)]
    gains = pd.DataFrame({"source": [s for s, _ in pairs], "target": [t for _, t in pairs], "kind": "unknown",
                          "reuse_gain": [-10.0, -4.0, 0.0, 3.0, 8.0], "methods": 2})
    measures = pd.DataFrame({"source": [s for s, _ in pairs], "target": [t for _, t in pairs],
                             "embedding_residual": [0.9, 0.7, 0.5, 0.2, 0.1],   # more drift, less gain
                             "zeroshot_agreement": [20.0, 40.0, 50.0, 80.0, 90.0]})
    stats = predictor_table(measures, gains, n_boot=100).set_index("measure")
    assert list(stats.index) == ["embedding_residual", "zeroshot_agreement"]
    assert stats.loc["embedding_residual", "rho"] == pytest.approx(-1.0)
    assert stats.loc["zeroshot_agreement", "rho"] == pytest.approx(1.0)
    assert (stats.pairs == 5).all() and stats.rho_lo.between(-1, 1).all() and stats.rho_hi.between(-1, 1).all()


def test_zeroshot_agreement_and_identity_gain_from_the_hand_built_world(table):
    rows, ledgers, _ = in_memory(matrix_world(seeds=(1, 2)))
    agreement = zeroshot_agreement(rows, ledgers).set_index("target").zeroshot_agreement
    # labels alternate 0, 1: two models predict alike where both are right or both wrong (two classes)
    assert agreement.to_dict() == pytest.approx({TGT: 60.0, TEXT: 20.0, DRIFT: 40.0})
    gains = identity_gains(table)
    assert gains[["target", "reuse_gain", "methods"]].values.tolist() == [[TGT, -20.0, 1]]  # zero-shot left out


def test_linear_cka_is_one_under_rotation_and_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(12, 7))) < 0.9


def _page(rows: pd.DataFrame, ledgers: dict, mapped: dict, out) -> tuple[str, Tables]:
    """The page of ``rows`` on toy-eva alone, so that m covers the protocol and is ranked (its other targets have
    only mapped rows); mapped rows on the other targets stay."""
    rows = rows[(rows.role == "mapped") | rows.eval_model.isin([SRC, TGT])]
    build_site(rows, out, ledgers=ledgers, mapped_ledgers=mapped)
    html = (out / "index.html").read_text()
    return html, Tables(html)


def test_leaderboard_lists_mapped_modules_apart_and_never_ranks_them(tmp_path):
    with_mapped = in_memory(matrix_world(seeds=(1, 2)))
    without = in_memory(matrix_world(seeds=(1, 2), mapped=False))
    html, tables = _page(*with_mapped, tmp_path / "mapped")
    plain_html, plain = _page(*without, tmp_path / "plain")
    assert "Upgrade matrix" in html and 'id="upgrade-matrix"' in html
    assert "never ranked against" in html
    assert "Upgrade matrix" not in plain_html and "never ranked against" not in plain_html
    # the ranking reads the unmapped rows only: the same with and without mapped rows
    assert tables.with_class("ranking")[0]["rows"] == plain.with_class("ranking")[0]["rows"]
    m = next(r["cells"] for r in tables.with_class("ranking")[0]["rows"] if r["cells"][1].startswith("m"))
    assert m[3] == "40.00"                                   # New of m unchanged, not a mapped row's 60 or 100
    matrix = tables.with_class("matrix")[0]["rows"]
    mappers = {(r["cells"][1], r["cells"][2], r["cells"][3]) for r in matrix}
    assert (f"toy-clip → {TEXT}", "m", "vocab-map") in mappers and (f"toy-clip → {TGT}", "m", "retune") in mappers
    assert (f"toy-clip → {TEXT}", "m", "identity") not in mappers  # refused: no row


def test_analyze_matrix_on_a_folder_without_mapped_rows_is_a_user_error_naming_it(capsys, tmp_path):
    folder = tmp_path / "plain"
    write_world(matrix_world(mapped=False), folder)
    code, out, err = run_cli(capsys, "analyze", "matrix", "--results", str(folder))
    assert code == 2 and not out
    assert str(folder) in err and "No rows of modules carried by a mapper" in err and "Traceback" not in err


def test_analyze_matrix_json_table_and_figures(capsys, tmp_path):
    folder = tmp_path / "results"
    write_world(matrix_world(seeds=(1, 2)), folder)
    got = run_json(capsys, "analyze", "matrix", "--results", str(folder), "--out", str(tmp_path / "figs"))
    rows = {(r["target"], r["method"], r["mapper"]): r for r in got["rows"]}
    assert rows[(TGT, "m", "vocab-map")]["nfr"] == pytest.approx(20)
    assert rows[(TGT, "m", "identity")]["reuse_gain"] == pytest.approx(-20)
    assert rows[(TEXT, "m", "vocab-map")]["recovery"] is None  # no oracle: null, never NaN or 0
    agreement = {p["target"]: p["zeroshot_agreement"] for p in got["pairs"]}
    assert agreement[TGT] == pytest.approx(60)
    assert {p["measure"] for p in got["predictors"]} == {"zeroshot_agreement"}  # models not loaded
    assert sorted(Path(p).name for p in got["written"]) == ["fig-matrix-16shot.pdf", "fig-matrix-16shot.png",
                                                             "fig-predictors.pdf", "fig-predictors.png"]
    code, out, err = run_cli(capsys, "analyze", "matrix", "--results", str(folder))
    assert code == 0 and "Upgrade matrix" in out and "vocab-map via toy-eva" in out and "Drift predictors" in out


def test_figures_command_draws_the_matrix_only_with_mapped_rows(capsys, tmp_path):
    mapped, plain = tmp_path / "mapped", tmp_path / "plain"
    write_world(matrix_world(), mapped)
    write_world(matrix_world(mapped=False), plain)
    got = run_json(capsys, "figures", "--results", str(mapped), "--out", str(tmp_path / "f1"))
    assert any(Path(p).name == "fig-matrix-16shot.png" for p in got["written"])
    got = run_json(capsys, "figures", "--results", str(plain), "--out", str(tmp_path / "f2"))
    assert not any("matrix" in p for p in got["written"]) and "fig-matrix" not in got["skipped"]  # silently


def test_predictor_figure_names_each_pair(tmp_path):
    pairs = pd.DataFrame({"source": "s", "target": ["a", "b", "c"]})
    measures = pairs.assign(zeroshot_agreement=[10.0, 50.0, 90.0])
    gains = pairs.assign(kind="unknown", reuse_gain=[-5.0, 0.0, 5.0], methods=1)
    stats = predictor_table(measures, gains, n_boot=50)
    written = fig_predictors(measures, gains, stats, tmp_path)
    assert [p.name for p in written] == ["fig-predictors.png", "fig-predictors.pdf"]


def test_leaderboard_build_ranks_an_entry_without_marks_from_its_mapped_rows(capsys, tmp_path):
    world = [w for w in matrix_world(seeds=(1, 2)) if w[1]["role"] == "mapped" or w[1]["eval_model"] in (SRC, TGT)]
    write_world(world, tmp_path / "results")
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(tmp_path / "results"),
                           "--out", str(tmp_path / "site"))
    assert code == 0, err
    html = (tmp_path / "site" / "index.html").read_text()
    ranking = Tables(html).with_class("ranking")[0]["rows"]
    # m's mapped rows on toy-eva-text have no unmapped ledger there: they are not ranked, so they mark nothing
    assert [r["cells"][1] for r in ranking] == ["zeroshot reference", "m"]
    matrix = Tables(html).with_class("matrix")[0]["rows"]
    retune = next(r["cells"] for r in matrix if r["cells"][3] == "retune")
    assert retune[8].startswith("+40.00") and retune[9].startswith("2.00")  # reuse gain, recovery from its ledgers


def test_model_measures_of_a_model_against_itself_and_another(pair):
    source, target = pair
    task = SimpleNamespace(classnames=["cat", "dog", "red car", "blue boat", "tree"], template="a photo of a {}.")
    same = model_measures(source, source, [task])
    assert same["embedding_residual"] == pytest.approx(0.0, abs=1e-4) and same["text_cka"] == pytest.approx(1.0)
    other = model_measures(source, target, [task, task])
    assert other["embedding_residual"] > 0.1 and 0.0 <= other["text_cka"] < 1.0


def test_the_permutation_p_value_of_a_perfect_order_of_four_pairs_is_two_in_twenty_four() -> None:
    from upgradebench.analysis.predictors import spearman_p

    assert spearman_p([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(2 / 24)
    assert spearman_p([1, 2, 3, 4, 5], [3, 1, 4, 1, 5]) > 0.2  # a weak relation is not called significant

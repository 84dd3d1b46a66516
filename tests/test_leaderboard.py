"""The static leaderboard: self-contained, escaped, sorted by its script, no console errors in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from upgradebench.cli import main
from upgradebench.results import read_results, summarize, write_rows

from .cli_helpers import run_cli, run_json
from .test_figures import PAIRS, result_rows, synthetic_results

EVIL = "<script>alert(1)</script>"
EVIL_DATASET = 'toy"><img src=x onerror=alert(2)>'
CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Three methods on three datasets x 3 seeds, a variant, and a plugin with a hostile name and dataset."""
    folder = synthetic_results(tmp_path_factory.mktemp("board") / "results", pairs=PAIRS[:1],
                               methods=("zeroshot", "coop", "contcoop"), full=False)
    source, target = PAIRS[0]
    rows = result_rows(EVIL, "toy-pattern", 1, source, target, 90, 10)
    rows += result_rows(EVIL, EVIL_DATASET, 1, source, target, 50, 45)
    write_rows(rows, folder / "evil.parquet")
    write_rows(result_rows("contcoop", "toy-shape", 1, source, target, 70, 71, n_ctx=4), folder / "variant.parquet")
    return folder


@pytest.fixture(scope="module")
def site(results, tmp_path_factory) -> Path:
    figures = tmp_path_factory.mktemp("figs")
    Image.new("RGB", (40, 20), (0, 114, 178)).save(figures / "fig2a-demo.png")
    out = tmp_path_factory.mktemp("site")
    with pytest.raises(SystemExit) as exc:  # module-scoped, so the CLI is called without capsys
        main(["leaderboard", "build", "--results", str(results), "--out", str(out), "--figures", str(figures)])
    assert exc.value.code in (0, None)
    return out


class Tables(HTMLParser):
    """Every table of a page: its attributes and, per body row, the row's attributes and cell texts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self._cell: list[str] | None = None
        self._body = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"attrs": dict(attrs), "rows": []})
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.tables[-1]["rows"].append({"attrs": dict(attrs), "cells": []})
        elif tag == "td" and self._body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[-1]["rows"][-1]["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tbody":
            self._body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def with_class(self, name: str) -> list[dict]:
        return [t for t in self.tables if name in t["attrs"].get("class", "").split()]


def test_page_is_self_contained(site):
    html = (site / "index.html").read_text()
    assert not re.search(r"(https?:)?//[a-z0-9]", html, re.I)  # no CDN, no absolute or protocol-relative URL
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert {"assets/style.css", "assets/sort.js", "figures/fig2a-demo.png"} <= set(links)
    for link in links:
        assert (site / link).is_file(), link


def test_strings_from_results_are_escaped(site):
    html = (site / "index.html").read_text()
    assert EVIL not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "toy&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html


def test_ranking_matches_summarize(site, results):
    tables = Tables((site / "index.html").read_text())
    ranking = tables.with_class("ranking")[0]["rows"]
    df = read_results(results)
    s = summarize(df[(df.method_variant == "") & (df.dataset == df.train_dataset)])
    avg = s[s.dataset == "Average"].set_index("label")
    # rows without prediction ledgers: ranked, each marked unverified
    assert all(r["cells"][1].endswith(" unverified") for r in ranking)
    shown = {r["cells"][1].replace(" reference", "").replace(" unverified", ""): r["cells"] for r in ranking}
    assert set(shown) == set(avg.index) - {EVIL}  # the plugin covers 1 of the 9 cells: listed apart, not ranked
    for label, cells in shown.items():
        assert cells[2:5] == [f"{avg.loc[label, m]:.2f}" for m in ("base", "new", "H")]
    assert shown["coop"][6:8] == ["3", "9"]  # seeds, runs
    assert [r["cells"][0] for r in ranking] == ["1", "2", "3"]
    unranked = tables.with_class("unranked")[0]["rows"]
    assert [r["cells"][0] for r in unranked] == [EVIL] and unranked[0]["cells"][2] == "1 / 9"
    assert tables.with_class("variants")[0]["rows"][0]["cells"][1] == "contcoop[n_ctx=4] unverified"


def test_leaderboard_without_results_is_a_user_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "leaderboard", "build", "--results", str(tmp_path / "empty"),
                             "--out", str(tmp_path / "site"))
    assert code == 2 and "nothing to rank" in err and "Traceback" not in err


@pytest.mark.parametrize("out, message", [("", "--out is empty"), ("/", "is the filesystem root")])
def test_output_folder_must_be_a_folder_of_its_own(capsys, results, tmp_path, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)  # an empty --out used to write into the current folder
    for command in (["leaderboard", "build", "--results", str(results)], ["figures", "--results", str(results)]):
        code, _, err = run_cli(capsys, *command, "--out", out)
        assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_json_output_has_null_not_nan(capsys, results):
    """A missing number (e.g. the std of a single seed) is JSON null: NaN is not JSON."""
    code, text, _ = run_cli(capsys, "results", "show", str(results), "--json")
    assert code == 0 and "NaN" not in text and "null" in text  # one-seed cells have no std
    json.loads(text, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))


def test_build_json_lists_the_files(capsys, results, tmp_path):
    out = run_json(capsys, "leaderboard", "build", "--results", str(results), "--out", str(tmp_path / "s"))
    assert out["index"].endswith("index.html") and any(p.endswith("sort.js") for p in out["written"])


def render(page: Path, profile: Path, *flags: str) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the console messages Chromium logged for it."""
    proc = subprocess.run([CHROMIUM, *FLAGS, *flags, f"--user-data-dir={profile}", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


CONTROL = """<!DOCTYPE html><html><head><script src="assets/sort.js" defer></script>
<script>console.error("control-error");</script></head><body>
<table class="sortable" data-sort-column="1" data-sort-order="desc"><thead><tr>
<th data-type="text"><button>name</button></th><th data-type="num"><button>H</button></th></tr></thead>
<tbody><tr><td>b</td><td data-value="9.5">9.5</td></tr><tr><td>a</td><td data-value="70.25">70.25</td></tr>
<tr><td>c</td><td data-value="10">10</td></tr><tr><td>d</td><td data-value="">-</td></tr></tbody></table>
</body></html>"""


@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium is not installed (Debian package `chromium`; .ci/run installs it)")
def test_page_in_headless_chromium(site, tmp_path):
    # control page: proves that console messages are captured and that the sort script orders numerically
    (site / "control.html").write_text(CONTROL)
    dom, console = render(site / "control.html", tmp_path / "profile")
    assert any("control-error" in line for line in console), console
    control = Tables(dom).tables[0]
    assert control["attrs"].get("data-sorted") == "1:desc"
    assert [r["cells"][0] for r in control["rows"]] == ["a", "c", "b", "d"]

    dom, console = render(site / "index.html", tmp_path / "profile")
    assert console == []  # no errors, no warnings, nothing logged
    tables = Tables(dom)
    ranking = tables.with_class("ranking")[0]
    assert ranking["attrs"].get("data-sorted") == "4:desc"  # the script ran and sorted by H
    h = [float(r["cells"][4]) for r in ranking["rows"]]
    assert h == sorted(h, reverse=True) and len(h) == 3
    reference = [r for r in ranking["rows"] if r["attrs"].get("class") == "reference"]
    assert [r["cells"][1] for r in reference] == ["zeroshot reference unverified"]
    unranked = tables.with_class("unranked")[0]["rows"]
    assert [r["cells"][0] for r in unranked] == [EVIL]  # shown as text, never run
    assert EVIL_DATASET in unranked[0]["cells"][4]  # its cell outside the protocol, as text
    per_dataset = tables.with_class("per-dataset")[0]
    assert per_dataset["attrs"].get("data-sorted") == "1:asc"
    datasets = [r["cells"][1] for r in per_dataset["rows"]]
    assert datasets == sorted(datasets)
    assert len(per_dataset["rows"]) == 3 * 3

    # a phone-sized window: wide tables scroll in their own box, the page never sideways
    probe = ('<script>window.addEventListener("load", function () { var e = document.documentElement; '
             'document.body.setAttribute("data-overflow", String(e.scrollWidth > e.clientWidth)); });</script>')
    (site / "narrow.html").write_text((site / "index.html").read_text().replace("</body>", probe + "</body>"))
    dom, _ = render(site / "narrow.html", tmp_path / "profile", "--window-size=400,800")
    assert 'data-overflow="false"' in dom


@pytest.fixture(scope="module")
def ledger_site(tmp_path_factory) -> tuple[Path, Path]:
    """Results with prediction ledgers (a hostile method name among them) and the page built from them."""
    from .test_metrics import MODULE_SRC, MODULE_TGT, SRC, TGT, ZS_TGT, write_run

    folder = tmp_path_factory.mktemp("ledgers") / "results"
    for seed in (1, 2):
        write_run(folder, "m", seed, {SRC: MODULE_SRC, TGT: MODULE_TGT})
        write_run(folder, EVIL, seed, {SRC: [1, 1, 1, 1, 1], TGT: [0, 0, 0, 0, 0]})
        write_run(folder, "zeroshot", seed, {SRC: [1, 1, 1, 0, 0], TGT: ZS_TGT})
    out = tmp_path_factory.mktemp("ledger-site")
    with pytest.raises(SystemExit) as exc:
        main(["leaderboard", "build", "--results", str(folder), "--out", str(out)])
    assert exc.value.code in (0, None)
    return folder, out


def test_flips_of_a_method_the_results_lack_is_a_user_error_not_a_missing_section(capsys, ledger_site, tmp_path):
    folder, _ = ledger_site
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(folder), "--out", str(tmp_path / "site"),
                           "--flips", "nonexistent[x=1]")
    assert code == 2 and "nonexistent[x=1]" in err and "m, zeroshot" in err
    assert not (tmp_path / "site" / "index.html").exists()
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(folder), "--out", str(tmp_path / "ok"),
                           "--flips", "m")
    assert code == 0, err


def test_compatibility_table_shows_the_ledger_metrics_and_cost(ledger_site):
    from upgradebench.metrics import compat_summary, read_ledgers

    folder, site = ledger_site
    html = (site / "index.html").read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    rows = {r["cells"][0]: r["cells"] for r in Tables(html).with_class("compatibility")[0]["rows"]}
    s = compat_summary(read_results(folder), read_ledgers(folder))
    m = s[(s.label == "m") & (s.dataset == "Average")].iloc[0]
    assert rows["m"][2] == f"{m.nfr:.2f} [{m.nfr_lo:.2f}, {m.nfr_hi:.2f}]" and rows["m"][2].startswith("40.00")
    assert rows["m"][3].startswith("33.33") and rows["m"][5].startswith("-20.00")  # BTC, reuse gain
    assert rows["m"][6] == "–"  # no oracle runs: recovery is missing, not 0
    assert rows["m"][7:11] == ["10", "2.00", "cpu", "no (cached features)"]
    # the flip view shows the method with the largest NFR: the hostile one, which breaks everything
    flips = Tables(html).with_class("flips")
    assert len(flips) == 1 and "Per-class flips of &lt;script&gt;" in html
    assert sorted(r["cells"][3] for r in flips[0]["rows"]) == ["4", "6"]  # labels 0/1 of 5 items x 2 seeds


@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium is not installed (Debian package `chromium`; .ci/run installs it)")
def test_compatibility_view_in_headless_chromium(ledger_site, tmp_path):
    _, site = ledger_site
    dom, console = render(site / "index.html", tmp_path / "profile")
    assert console == []
    table = Tables(dom).with_class("compatibility")[0]
    assert table["attrs"].get("data-sorted") == "2:asc"  # sorted by NFR, lowest first
    assert [r["cells"][0] for r in table["rows"]] == ["zeroshot", "m", EVIL]

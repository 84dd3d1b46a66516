"""Hostile names, paths and text: what a submission, a results folder or a plugin hands upgradebench must not
reach outside the folder it belongs to, replace files it does not own, or reach a terminal or a page raw.

One test per family (issue 24): run ids that are paths, output options that name the wrong place, symbolic
links out of an input folder, damaged figures, control characters in shown text, and writes that are not
atomic, overwrite other files or get the wrong mode. Each runs on synthetic rows and loads no model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from upgradebench.atomic import write_json
from upgradebench.errors import UserError
from upgradebench.guard import check_run_id, clean_text
from upgradebench.results import read_results, write_rows

from ..cli_helpers import run_cli
from ..test_figures import PAIRS, synthetic_drift, synthetic_results

ESCAPES = ["\x1b[2J\x1b[H", "\x1b]0;owned\x07", "\x1b]52;c;ZWNobyBwd25lZA==\x07", "\x9b31m", "\x1b]8;;http://x\x1b\\",
           "\r", "\u202e"]
"""Clear screen and home, window title, clipboard write (OSC 52), 8-bit CSI, hyperlink, carriage return,
right-to-left override."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return synthetic_results(tmp_path_factory.mktemp("ref") / "results", pairs=PAIRS[:1],
                             methods=("zeroshot", "coop"), full=False)


def _rewritten(source: Path, target: Path, **values) -> Path:
    """The rows of ``source`` with ``values`` put in, written (with a valid row hash) to ``target``."""
    rows = read_results(source).drop(columns="row_hash").assign(**values)
    write_rows(rows.to_dict(orient="records"), target)
    return target


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- 1. run ids are names, never paths ------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["/etc", "../../ref/run", "..", "a/b", "a\\b", "", " ", "run\x1b[2J", "C:run"])
def test_run_id_that_is_a_path_is_refused_everywhere(capsys, no_model_loads, reference, tmp_path, run_id):
    with pytest.raises(UserError, match="is not a run name"):
        check_run_id(run_id, "rows.parquet")
    one = next(reference.glob("coop-*.parquet"))
    forged = _rewritten(one, tmp_path / "sub" / "x" / "rows.parquet", run_id=run_id)
    before = _files(reference)
    # results reading, `leaderboard check`, `leaderboard build --rescore-on/--rescored` (re-scoring)
    code, _, err = run_cli(capsys, "results", "show", str(tmp_path / "sub"))
    assert code == 2 and str(forged) in err and repr(run_id) in err and "Traceback" not in err
    code, out, _ = run_cli(capsys, "leaderboard", "check", str(tmp_path / "sub"), "--against", str(reference))
    assert code == 1 and str(forged) in out and "not accepted" in out
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(tmp_path / "sub"), "--against",
                           str(reference), "--out", str(tmp_path / "site"), "--rescore-on", "toy-eva-text",
                           "--rescored", str(tmp_path / "rescored"))
    assert code == 2 and str(forged) in err and "is not a run name" in err
    assert _files(reference) == before and not list(tmp_path.glob("rescored/**/*.parquet"))
    assert check_run_id("coop-toy-shape-k16-s1-toy-clip-0123456789", "rows.parquet")  # a real one passes


# ---- 2. one guard for every output ----------------------------------------------------------------------------
DRIFT = ["analyze", "drift", "--source", "toy-clip", "--target", "toy-eva"]
RESCORE = ["leaderboard", "build", "--results", "RESULTS", "--out", "TMP/site", "--rescore-on", "toy-eva-text"]


@pytest.mark.parametrize("home, args, message", [
    (None, ["run", "--method", "coop", "--results", ""], "--results is empty"),
    (None, ["run", "--method", "coop", "--results", "/"], "--results '/' is the filesystem root"),
    (None, ["run", "--method", "coop", "--results", "FILE"], "is a file, not a folder"),
    (None, ["sweep", "--method", "coop", "--dry-run", "--results", ""], "--results is empty"),
    (None, ["analyze", "depth", "--dataset", "toy-shape", "--layers", "0", "--results", "/"], "filesystem root"),
    (None, [*DRIFT, "--out", ""], "--out is empty"),
    (None, [*DRIFT, "--out", "TMP"], "is a folder"),
    (None, [*DRIFT, "--out", "RESULTS/drift.parquet"], "is inside the results folder"),
    (None, [*DRIFT, "--out", "RESULTS/run/drift.parquet"], "is inside the results folder"),
    (None, [*DRIFT, "--out", "FILE/drift.parquet"], "is a file, not a folder"),
    (None, ["figures", "--results", "RESULTS", "--out", "/"], "is the filesystem root"),
    (None, [*RESCORE, "--rescored", ""], "--rescored is empty"),
    (None, [*RESCORE, "--rescored", "RESULTS/rescored"], "overlaps the input folder"),
    ("", ["cache"], "UPGRADEBENCH_HOME is empty"),
    ("FILE", ["cache"], "is a file, not a folder"),
    ("FILE/home", ["cache"], "is a file, not a folder"),
])
def test_output_options_refuse_the_wrong_place(capsys, no_model_loads, monkeypatch, tmp_path, home, args, message):
    results = tmp_path / "results"
    (results / "run" / "ledger").mkdir(parents=True)  # a results folder: one run's folder, with a ledger
    (results / "run" / "ledger" / "m--d.parquet").write_bytes(b"")
    file = tmp_path / "notes.txt"
    file.write_text("mine")

    def fill(text: str) -> str:
        return text.replace("RESULTS", str(results)).replace("FILE", str(file)).replace("TMP", str(tmp_path))

    if home is not None:
        monkeypatch.setenv("UPGRADEBENCH_HOME", fill(home))
    before = _files(tmp_path)
    code, _, err = run_cli(capsys, *map(fill, args))
    assert code == 2 and message in err and "fix:" in err and "Traceback" not in err
    assert file.read_text() == "mine"
    assert set(_files(tmp_path)) - set(before) <= {"site", "site/.upgradebench-output"}  # nothing else written


# ---- 3. symbolic links out of an input folder -----------------------------------------------------------------
def test_links_out_of_an_input_folder_are_refused_and_links_inside_followed(capsys, reference, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    # a folder of linked runs: refused by name, never read as empty
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "run").symlink_to(reference)
    code, _, err = run_cli(capsys, "results", "show", str(linked))
    assert code == 2 and f"{linked / 'run'} is a symbolic link to {reference}" in err and "outside" in err
    code, out, _ = run_cli(capsys, "leaderboard", "check", str(linked), "--against", str(reference))
    assert code == 1 and "symbolic link" in out
    # a run folder whose module is a link out of the submission
    sub = tmp_path / "sub"
    shutil.copytree(reference, sub)
    (sub / "run" / "module").mkdir(parents=True)
    (sub / "run" / "module" / "module.json").symlink_to(secret)
    code, out, _ = run_cli(capsys, "leaderboard", "check", str(sub), "--against", str(reference))
    assert code == 1 and "symbolic link" in out and "password" not in out
    # figures: a PNG name linked to any file is not published
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "innocent.png").symlink_to(secret)
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(reference), "--out", str(tmp_path / "site"),
                           "--figures", str(figures))
    assert code == 2 and "innocent.png is a symbolic link" in err
    assert not (tmp_path / "site" / "figures").exists() and not (tmp_path / "site" / "index.html").exists()
    # links that stay inside the folder are followed, and a file reached twice is read once
    inside = tmp_path / "inside"
    shutil.copytree(reference, inside / "real")
    (inside / "alias").symlink_to(inside / "real")
    assert len(read_results(inside)) == len(read_results(reference))


# ---- 4. damaged figures are not published ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "not a png"])
def test_damaged_png_is_refused_by_name(capsys, reference, tmp_path, damage):
    figures = tmp_path / "figures"
    figures.mkdir()
    Image.new("RGB", (200, 100), (0, 114, 178)).save(figures / "fig2a.png")
    good = (figures / "fig2a.png").read_bytes()
    bad = figures / "fig2b.png"
    bad.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"GIF89a" + good[6:])
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(reference), "--out",
                           str(tmp_path / "site"), "--figures", str(figures))
    assert code == 2 and f"{bad} is not a complete PNG image" in err and "Traceback" not in err
    assert not (tmp_path / "site" / "figures").exists()
    bad.unlink()
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(reference), "--out",
                           str(tmp_path / "site"), "--figures", str(figures))
    assert code == 0 and (tmp_path / "site" / "figures" / "fig2a.png").read_bytes() == good


# ---- 5. control characters never reach a terminal or a page ---------------------------------------------------
def test_control_characters_from_rows_are_stripped(capsys, reference, tmp_path):
    for sequence in ESCAPES:
        assert clean_text(f"co{sequence}op\n") == "coop\n"
    evil = "".join(f"coop{s}" for s in ESCAPES)
    sub = tmp_path / "sub"
    for one in reference.glob("*.parquet"):
        rows = read_results(one)
        evil_method = rows.method.iloc[0] == "coop"
        _rewritten(one, sub / one.name, **({"method": evil} if evil_method else {}),
                   dataset_fingerprint="fp\x1b]0;title\x07")
    shown = [run_cli(capsys, "results", "show", str(sub)),
             run_cli(capsys, "leaderboard", "check", str(sub), "--against", str(reference)),
             run_cli(capsys, "leaderboard", "build", "--results", str(sub), "--out", str(tmp_path / "site"))]
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    damaged = tmp_path / "damaged"  # an error message that names a file whose name holds escapes
    damaged.mkdir()
    (damaged / "x\x1b]0;title\x07\x1b[2J.parquet").write_bytes(b"not parquet")
    shown.append(run_cli(capsys, "results", "show", str(damaged)))
    assert shown[-1][0] == 2 and "is not a readable parquet file" in shown[-1][2]
    texts = [out + err for _, out, err in shown] + [html]
    assert all("coopcoop" in texts[i] for i in (0, 1, 4))  # the entry is shown, cleaned
    for text in texts:
        assert not any(c in text for c in "\x1b\x07\x9b\r\u202e"), repr(text[:300])


# ---- 6. writes: atomic, never over other files, the umask's mode ----------------------------------------------
def test_writes_are_atomic_respect_other_files_and_get_the_umask_mode(capsys, no_model_loads, monkeypatch, reference,
                                                                     tmp_path):
    from matplotlib.figure import Figure

    from upgradebench.analysis.figures import save
    from upgradebench.leaderboard.build import build_site

    # the umask's mode (mkstemp alone would leave 0600)
    old = os.umask(0o027)
    try:
        assert (os.stat(write_json(tmp_path / "a.json", {})).st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    site = tmp_path / "site"
    code, _, err = run_cli(capsys, "leaderboard", "build", "--results", str(reference), "--out", str(site))
    assert code == 0, err
    expected = 0o666 & ~old
    assert {os.stat(p).st_mode & 0o777 for p in site.rglob("*") if p.is_file()} == {expected}
    # a disk that fills mid-write leaves the previous page and figure whole
    page = (site / "index.html").read_bytes()
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    save(fig, tmp_path / "figs", "demo")
    png = (tmp_path / "figs" / "demo.png").read_bytes()

    write_text = Path.write_text

    def half_then_full(self, data, *args, **kwargs):  # the page's write fails halfway, the assets' succeed
        if "index.html" not in self.name:
            return write_text(self, data, *args, **kwargs)
        write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    def savefig_then_full(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", half_then_full)
        with pytest.raises(OSError):
            build_site(read_results(reference), site)
        patch.setattr(Figure, "savefig", savefig_then_full)
        with pytest.raises(OSError):
            save(fig, tmp_path / "figs", "demo")
    assert (site / "index.html").read_bytes() == page and (tmp_path / "figs" / "demo.png").read_bytes() == png
    assert not [p for p in [*site.rglob(".*.tmp"), *tmp_path.glob("figs/.*.tmp")]]  # no leftovers
    # an existing file upgradebench did not write is replaced only with --force; its own drift table is
    thesis = tmp_path / "thesis.tex"
    thesis.write_text("chapter 1")
    code, _, err = run_cli(capsys, *DRIFT, "--out", str(thesis))
    assert code == 2 and "exists and upgradebench did not write it" in err and "--force" in err
    assert thesis.read_text() == "chapter 1"
    drift = synthetic_drift(tmp_path / "drift.parquet")
    with pytest.raises(AssertionError, match="a model was loaded"):  # accepted: it goes on to load the models
        run_cli(capsys, *DRIFT, "--out", str(drift))
    with pytest.raises(AssertionError, match="a model was loaded"):
        run_cli(capsys, *DRIFT, "--out", str(thesis), "--force")

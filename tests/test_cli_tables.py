"""Text in a narrow terminal: names and numbers stay whole while a column with spaces wraps instead; labels
such as coop[n_ctx=4] are never read as rich markup."""

from __future__ import annotations

from upgradebench.cli._common import _capped_widths, console, print_table

from .cli_helpers import run_cli


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

"""Every ``upgradebench ...`` command in the README's (and the plugin guide's) code blocks names a real command
and uses only real options of it: checked against the typer app itself, without running anything."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from upgradebench.cli import app

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", ROOT / "docs" / "plugins.md", ROOT / "docs" / "mappers.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)  # every block, so that a closing fence never opens one
SHELL = {"bash", "sh", "console", ""}


def commands(markdown: str) -> list[str]:
    """The ``upgradebench`` command lines of ``markdown``'s shell code blocks (continuation lines joined,
    comments dropped)."""
    found = []
    for language, block in FENCE.findall(markdown):
        if language not in SHELL:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "upgradebench":
                found.append(shlex.join(words))
    return found


def problems(command_line: str, root) -> list[str]:
    """What in ``command_line`` the CLI does not have: an unknown command or sub-command, an option that is
    not one of its command's; empty when everything exists. ``root`` is the app's click command (typer may
    vendor its own click, so commands and options are recognised by what they have, not by their class)."""
    words = shlex.split(command_line)[1:]
    command, path, found = root, ["upgradebench"], []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            option = next((p for p in command.params if getattr(p, "param_type_name", "") == "option" and
                           name in p.opts + p.secondary_opts), None)
            if name == "--help" and command.add_help_option:
                pass
            elif option is None:
                found.append(f"{' '.join(path)}: no option {name}")
            elif "=" not in word and not option.is_flag and not option.count:
                i += 1  # the option's value
        elif hasattr(command, "commands"):  # a group: the word names a sub-command
            if word not in command.commands:
                found.append(f"{' '.join(path)}: no command {word!r}")
                return found
            command, path = command.commands[word], path + [word]
        i += 1
    if hasattr(command, "commands") and "--help" not in words:
        found.append(f"{' '.join(path)}: a command group, not a command")
    return found


@pytest.fixture(scope="module")
def cli():
    return typer.main.get_command(app)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_documented_command_and_option_exists(guide, cli):
    lines = commands(guide.read_text())
    assert lines, f"no upgradebench command found in {guide.name}'s code blocks"
    bad = {line: problems(line, cli) for line in lines}
    assert not {line: p for line, p in bad.items() if p}


def test_the_readme_shows_the_steps_a_user_needs(cli):
    """The README's commands cover the guide's steps: a first run, real weights (which need --download), a
    sweep of a paper grid, reading results, figures and the leaderboard."""
    lines = commands((ROOT / "README.md").read_text())
    assert "upgradebench run --method contcoop" in lines
    assert any(line.startswith("upgradebench run") and "--source clip" in line and "--download" in line
               for line in lines)
    assert any("sweep --grid paper:" in line for line in lines)
    for step in ("results show", "results compare", "figures", "leaderboard build", "leaderboard check"):
        assert any(line.startswith(f"upgradebench {step}") for line in lines), step


def test_the_checker_finds_what_does_not_exist(cli):
    """The checker is not vacuous: a wrong sub-command, an unknown flag, a flag of another command and a bare
    group are each reported; a value that looks like a sub-command is not."""
    assert problems("upgradebench results shwo", cli) == ["upgradebench results: no command 'shwo'"]
    assert problems("upgradebench run --method coop --colour red", cli) == ["upgradebench run: no option --colour"]
    assert problems("upgradebench sweep --grid g.yaml --oracle", cli) == ["upgradebench sweep: no option --oracle"]
    assert problems("upgradebench leaderboard", cli) == ["upgradebench leaderboard: a command group, not a command"]
    assert problems("upgradebench --threads 1 run --method run --seed 1 --seed=2 --oracle", cli) == []
    assert commands("```sql\nSELECT 'it''s';\n```\n```bash\nupgradebench run \\\n    --seed 1   # a comment\n"
                    "pip install x\n```\n") == ["upgradebench run --seed 1"]


@pytest.mark.parametrize("guide", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(guide):
    """Links of the guide and the docs (files, and #headings of Markdown files) point at what exists: moving a
    section into docs/ must not leave a link behind."""
    text = guide.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text):
        link = target[0] or target[1]
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto
        path, _, anchor = link.partition("#")
        file = (guide.parent / path).resolve() if path else guide
        assert file.exists(), f"{guide.name}: {link}"
        if anchor and file.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
            assert anchor in headings, f"{guide.name}: {link}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

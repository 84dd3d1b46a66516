"""Upgrade kinds as data: every known pair names real models, its declared widths and tokenizers are the
architectures', and every real pair resolves in a sweep's dry run as the paper's pair does."""

from __future__ import annotations

import json

import open_clip
import pytest

from upgradebench.models import builtin_aliases, parse_model
from upgradebench.models.upgrades import known_upgrades, upgrade_kinds, upgrade_of

from .cli_helpers import run_json

REAL_KINDS = {"inherited-text-tower", "continued-training", "independent-retraining", "width-change"}


def _text_side(alias: str) -> tuple[int, str]:
    """(text width, tokenizer family) of a real alias, from open_clip's architecture config."""
    cfg = open_clip.get_model_config(parse_model(alias).arch)
    text = cfg["text_cfg"]
    tokenizer = "nllb" if "nllb" in text.get("hf_tokenizer_name", "") else text.get("hf_tokenizer_name") or "clip"
    width = text.get("width") or cfg["embed_dim"]  # an HF text tower's width is its projection's output
    return width, tokenizer


def test_every_pair_names_known_models_and_a_declared_kind():
    aliases = builtin_aliases()
    for upgrade in known_upgrades():
        assert upgrade.source in aliases and upgrade.target in aliases, upgrade
        assert upgrade.kind in upgrade_kinds() and upgrade.sources, upgrade
    assert upgrade_of("clip", "eva-clip").kind == "inherited-text-tower"
    assert upgrade_of("eva-clip", "clip") is None  # a pair is directed


def test_each_of_the_first_four_kinds_has_a_real_pair_with_tags_open_clip_knows():
    real = [u for u in known_upgrades() if not u.source.startswith("toy-")]
    assert REAL_KINDS <= {u.kind for u in real}
    for upgrade in real:
        for alias in (upgrade.source, upgrade.target):
            spec = parse_model(alias)
            assert open_clip.get_pretrained_cfg(spec.arch, spec.pretrained), alias


@pytest.mark.parametrize("upgrade", [u for u in known_upgrades() if not u.source.startswith("toy-")],
                         ids=lambda u: f"{u.source}->{u.target}")
def test_declared_widths_and_tokenizers_are_the_architectures(upgrade):
    (source_width, source_tok), (target_width, target_tok) = _text_side(upgrade.source), _text_side(upgrade.target)
    if upgrade.tokenizer[1] != "nllb":  # NLLB's text tower is a Hugging Face model: its width is not in the config
        assert upgrade.text_width == (source_width, target_width)
    assert upgrade.tokenizer == (source_tok, target_tok)
    assert (upgrade.kind == "width-change") == (upgrade.text_width[0] != upgrade.text_width[1])


def test_toy_pairs_widths_are_the_shipped_models():
    from importlib import resources

    shipped = resources.files("upgradebench.world").joinpath("shipped", "default")
    for upgrade in (u for u in known_upgrades() if u.source.startswith("toy-")):
        widths = tuple(json.loads(shipped.joinpath(f"{m}.json").read_text())["open_clip_config"]["model_cfg"]
                       ["text_cfg"]["width"] for m in (upgrade.source, upgrade.target))
        assert widths == upgrade.text_width, upgrade


def test_the_embedded_world_has_a_pair_of_each_real_kind():
    """Every kind of the real pairs can be studied offline: toy-clip -> toy-clip-wide is the width change,
    toy-clip -> toy-clip-cont the continued training (docs/world.md)."""
    toy = {(u.source, u.target): u.kind for u in known_upgrades() if u.source.startswith("toy-")}
    assert REAL_KINDS <= set(toy.values())
    assert toy["toy-clip", "toy-clip-wide"] == "width-change"
    assert toy["toy-clip", "toy-clip-cont"] == "continued-training"
    assert upgrade_of("toy-clip", "toy-clip-wide").text_width == (128, 192)


@pytest.mark.parametrize("upgrade", [u for u in known_upgrades() if not u.source.startswith("toy-")],
                         ids=lambda u: f"{u.source}->{u.target}")
def test_real_pairs_resolve_in_a_dry_run_like_the_papers(capsys, tmp_path, upgrade):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"source: {upgrade.source}\ntargets: [{upgrade.target}]\nmethods: [coop]\n"
                    "datasets: [toy-shape]\nseeds: [1]\nshots: [4]\n")
    out = run_json(capsys, "sweep", "--grid", str(grid), "--dry-run")
    assert len(out["runs"]) >= 1
    # only the real weights are missing here, and for exactly the two models of the pair
    assert {m["kind"] for m in out["missing"]} <= {"model"}
    assert {m["name"] for m in out["missing"]} == {upgrade.source, upgrade.target}


def test_models_list_gives_each_sources_upgrades_and_their_kinds(capsys):
    rows = {r["alias"]: r for r in run_json(capsys, "models", "list")}
    kinds = {u["target"]: u["kind"] for u in rows["clip"]["upgrades"]}
    assert kinds == {"eva-clip": "inherited-text-tower", "openclip-b16-laion": "independent-retraining",
                     "openclip-b16-datacomp": "independent-retraining", "clip-l": "width-change"}
    assert rows["clip-l"]["upgrades"][1]["title"] == "continued training" and rows["eva-clip"]["upgrades"] == []

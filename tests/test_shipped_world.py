"""The shipped world: packing built models into content-hashed shards, installing them without training,
damage found and named, and ``zoo build`` telling whether this machine reproduces the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from upgradebench.errors import UserError
from upgradebench.world import shipped, zoo
from upgradebench.world.recipes import recipe_table
from upgradebench.world.worlds import world_name

from .test_world import micro_home  # noqa: F401  (the session's micro world, reused as a packing source)


@pytest.fixture
def packed(micro_home, tmp_path, monkeypatch):  # noqa: F811
    """Every model of the micro world packed into a shipped folder of its own, which the package then reads."""
    monkeypatch.setenv("UPGRADEBENCH_HOME", str(micro_home))
    root = tmp_path / "shipped" / world_name()
    for name in recipe_table():
        zoo.ensure_model(name)
        shipped.pack(zoo.model_dir(name), world_name(), root)
    monkeypatch.setattr(shipped, "shipped_root", lambda world: tmp_path / "shipped" / world)
    monkeypatch.setenv("UPGRADEBENCH_HOME", str(tmp_path / "fresh-home"))
    return root


def _weights(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(zoo.model_dir(name) / "open_clip_model.safetensors"))


def test_packing_stores_moved_token_rows_only_and_shares_identical_parts(packed):
    records = {p.stem: json.loads(p.read_text()) for p in packed.glob("*.json")}
    table = records["toy-clip"]["token_table"]
    assert table["shape"] == [49408, 32] and 0 < table["stored_rows"] < 1000
    assert records["toy-eva"]["token_table"]["stored_rows"] == table["stored_rows"]  # frozen: the same rows
    listed = {s["file"] for r in records.values() for s in r["shards"]}
    assert listed == {f"shards/{p.name}" for p in (packed / "shards").glob("*.safetensors")}
    # toy-eva-drift and toy-eva-text keep toy-eva's vision tower frozen: its shards are stored once
    shards = {name: {s["file"] for s in r["shards"]} for name, r in records.items()}
    assert shards["toy-eva"] & shards["toy-eva-drift"] & shards["toy-eva-text"]
    # toy-clip-wide's new, wider table starts from its own seed; toy-clip-cont keeps toy-clip's fill and moves its rows
    assert records["toy-clip-wide"]["token_table"]["shape"] == [49408, 48]
    seeds = {name: records[name]["token_table"]["seed"] for name in ("toy-clip", "toy-clip-wide", "toy-clip-cont")}
    assert seeds["toy-clip-wide"] != seeds["toy-clip"] == seeds["toy-clip-cont"]
    assert not shards["toy-clip"] & shards["toy-clip-cont"]  # every part trained further: nothing shared
    assert all(s["bytes"] <= shipped.SHARD_BYTES + 100_000 for r in records.values() for s in r["shards"])


def test_first_use_installs_the_shipped_bits_without_training(packed, micro_home, monkeypatch):  # noqa: F811
    def no_training(*args, **kwargs):
        raise AssertionError("a shipped model was trained")

    monkeypatch.setattr(zoo, "build_models", no_training)
    for name in ["toy-eva-drift", "toy-clip"]:
        assert zoo.ships(name)
        zoo.ensure_model(name)
        ours = _weights(name)
        built = load_file(str(micro_home / "world" / world_name() / "models" / name / "open_clip_model.safetensors"))
        assert set(ours) == set(built) and all(torch.equal(ours[k], built[k]) for k in built), name
    assert not zoo.is_built("toy-eva")  # a shipped model needs nothing it inherits from


def test_a_damaged_shard_is_named_and_a_damaged_install_is_repaired(packed):
    zoo.ensure_model("toy-clip")
    weights = zoo.model_dir("toy-clip") / "open_clip_model.safetensors"
    tensors = _weights("toy-clip")
    tensors["logit_scale"] = tensors["logit_scale"] + 1
    from safetensors.torch import save_file

    save_file(tensors, str(weights))
    assert zoo.weights_problem("toy-clip")
    zoo.ensure_model("toy-clip")  # installed again from the shipped shards
    assert zoo.weights_problem("toy-clip") is None

    record = json.loads((packed / "toy-eva.json").read_text())
    shard = packed / record["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged") as err:
        zoo.ensure_model("toy-eva")
    assert shard.name in str(err.value)


def test_an_install_whose_config_is_cut_short_is_installed_again(packed):
    """A truncated ``open_clip_config.json`` (a disk that filled, an interrupted copy) is a damaged install: the
    listing says the model is not built, and first use installs it again instead of raising a JSON traceback."""
    zoo.ensure_model("toy-clip")
    config = zoo.model_dir("toy-clip") / "open_clip_config.json"
    whole = config.read_text()
    config.write_text(whole[:100])
    assert not zoo.is_built("toy-clip")
    zoo.ensure_model("toy-clip")
    assert config.read_text() == whole and zoo.weights_problem("toy-clip") is None


def test_an_edited_recipe_is_trained_not_installed(packed, monkeypatch):
    assert zoo.ships("toy-eva-drift")
    monkeypatch.setattr(zoo, "build_key", lambda name: "edited")
    assert not zoo.ships("toy-eva-drift")


def test_rebuild_reports_bit_for_bit_or_the_largest_difference(packed):
    (report,) = zoo.rebuild_and_compare(["toy-eva-drift"])
    assert report["identical"] and report["max_abs_diff"] == 0.0  # this machine built them: the same bits
    assert Path(report["path"]) == zoo.rebuilt_dir("toy-eva-drift") and zoo.is_built("toy-eva")

    ours = load_file(str(zoo.rebuilt_dir("toy-eva-drift") / "open_clip_model.safetensors"))
    theirs = shipped.shipped_tensors(world_name(), "toy-eva-drift")
    key = next(k for k in ours if k.startswith("text.transformer"))
    ours[key] = ours[key] + 1e-3
    diff = zoo.compare_weights(ours, theirs)
    assert not diff["identical"] and diff["tensor"] == key and diff["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.world
def test_every_recipe_of_the_default_world_ships_current_weights_that_install(tmp_path, monkeypatch):
    """The package's own shipped folder: every recipe (the on-demand ones too) ships weights for its current build
    key, and each installs (shard hashes and weight fingerprint checked) to the fingerprint its record holds; no
    file is over 5 MB (docs/world.md, "Shipped weights, installing and rebuilding")."""
    from upgradebench.models.fingerprint import file_fingerprint

    monkeypatch.setenv("UPGRADEBENCH_WORLD", "default")
    root = shipped.shipped_root("default")
    assert sorted(p.stem for p in root.glob("*.json")) == sorted(recipe_table())
    for name in recipe_table():
        assert zoo.ships(name), name
        folder = shipped.install("default", name, tmp_path / name)
        recorded = shipped.shipped_record("default", name)["open_clip_config"]["upgradebench"]["fingerprint"]
        assert file_fingerprint(folder / "open_clip_model.safetensors") == recorded, name
    sizes = [p.stat().st_size for p in root.rglob("*") if p.is_file()]
    assert max(sizes) < 5_000_000

"""Model names: aliases as data, open_clip names and tags, the Hugging Face cache, local weights files."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from upgradebench.errors import UnknownNameError, UserError
from upgradebench.models import describe_model, load_vlm, parse_model
from upgradebench.world.modelio import create_model

from .cli_helpers import run_json
from .conftest import MICRO_CLIP


def test_paper_aliases_name_the_right_architectures_and_tags():
    clip, eva = parse_model("clip"), parse_model("eva-clip")
    assert (clip.arch, clip.pretrained, clip.quick_gelu) == ("ViT-B-16-quickgelu", "openai", True)
    assert (eva.arch, eva.pretrained, eva.quick_gelu) == ("EVA02-B-16", "merged2b_s8b_b131k", False)
    assert parse_model("clip-l").arch == "ViT-L-14-quickgelu"
    assert parse_model("eva-clip-l").pretrained == "merged2b_s4b_b131k"
    for spec in (clip, eva, parse_model("clip-l"), parse_model("eva-clip-l")):
        assert open_clip.get_pretrained_cfg(spec.arch, spec.pretrained), spec  # a tag open_clip knows
    assert parse_model("open_clip:ViT-B-16/laion2b_s34b_b88k").pretrained == "laion2b_s34b_b88k"
    assert parse_model("clip", pretrained="/w.pt").pretrained == "/w.pt"
    assert parse_model("hf-hub:org/repo").kind == "hf-hub"


def test_unknown_names_suggest_and_list():
    with pytest.raises(UnknownNameError) as err:
        parse_model("eva-clp")
    assert "eva-clip" in err.value.close and "toy-clip" in str(err.value)
    with pytest.raises(UnknownNameError):
        parse_model("open_clip:ViT-B-99/openai")


def test_a_weights_file_alone_asks_for_the_architecture(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="--pretrained"):
        parse_model(str(f))


def test_weights_are_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    assert not describe_model("clip")["present"]
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"weights")
    info = describe_model("clip")
    assert info["present"] and info["weights"] == str(snap / "open_clip_model.safetensors")
    assert not describe_model("eva-clip")["present"]


def test_pretrained_path_points_an_architecture_at_local_weights(tmp_path):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "ub-test-micro.json").write_text(json.dumps(MICRO_CLIP))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(5)
    model = create_model(MICRO_CLIP)
    weights = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    vlm = load_vlm("open_clip:ub-test-micro", pretrained=str(weights), device="cpu")
    ref = load_vlm(open_clip_model_dir(tmp_path, model), device="cpu")
    assert vlm.fingerprint == ref.fingerprint
    with torch.no_grad():
        assert torch.equal(vlm.model.token_embedding.weight, model.token_embedding.weight)


def open_clip_model_dir(tmp_path, model):
    from upgradebench.world.modelio import save_local_dir

    return "local-dir:" + str(save_local_dir(model, MICRO_CLIP, tmp_path / "dir"))


def test_models_cli_json(capsys):
    rows = {r["alias"]: r for r in run_json(capsys, "models", "list")}
    assert {"clip", "eva-clip", "clip-l", "eva-clip-l", "toy-clip", "toy-eva"} <= set(rows)
    assert rows["clip"]["quick_gelu"] is True and rows["clip"]["present"] is False
    show = run_json(capsys, "models", "show", "eva-clip")
    assert show["arch"] == "EVA02-B-16" and show["searched"]

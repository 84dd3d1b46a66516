"""The VLM's truncated text path must equal open_clip's own encode_text, on CLIP and CustomTextCLIP."""

from __future__ import annotations

import open_clip
import pytest
import torch

from upgradebench.models import VLM, ModelSpec, load_vlm

PROMPTS = ["a photo of a dog.", "a centered satellite photo of annual crop land.", "x", "striped texture."]


@pytest.fixture(scope="module", params=["clip", "eva"])
def vlm(request, micro_dirs) -> VLM:
    return load_vlm(f"local-dir:{micro_dirs[request.param]}", device="cpu")


def test_micro_models_have_the_two_tower_layouts(micro_dirs):
    clip = load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu")
    eva = load_vlm(f"local-dir:{micro_dirs['eva']}", device="cpu")
    assert type(clip.model).__name__ == "CLIP" and not hasattr(clip.model, "text")
    assert type(eva.model).__name__ == "CustomTextCLIP" and hasattr(eva.model, "text")
    assert type(eva.model.visual.trunk).__name__ == "Eva"


def _check_encode_text_matches_open_clip(vlm: VLM, atol: float = 1e-5) -> None:
    tokens = vlm.tokenize(PROMPTS)
    with torch.no_grad():
        ref = vlm.model.encode_text(tokens)
        ours = vlm.encode_text(tokens)
        emb = vlm.encode_text_embeddings(vlm.token_embeddings(tokens), vlm.eot_index(tokens))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= atol
    assert (emb - ref).abs().max().item() <= atol


def test_truncated_text_path_equals_open_clip(vlm):
    _check_encode_text_matches_open_clip(vlm)


def test_start_at_block_k_with_given_hidden_states(vlm):
    tokens = vlm.tokenize(PROMPTS)
    with torch.no_grad():
        ref = vlm.encode_text(tokens)
        for k in range(1, vlm.num_text_layers + 1):
            hidden = vlm.hidden_states_at(tokens, k)
            out = vlm.encode_text_embeddings(hidden, vlm.eot_index(tokens), start_layer=k)
            assert (out - ref).abs().max().item() <= 1e-5, k


def test_hidden_states_per_layer(vlm):
    tokens = vlm.tokenize(PROMPTS)
    with torch.no_grad():
        states = vlm.text_hidden_states(tokens)
        ref = vlm.model.encode_text(tokens)
    assert len(states) == vlm.num_text_layers + 2
    length = int(tokens.argmax(-1).max()) + 1
    assert states[0].shape == (len(PROMPTS), length, vlm.text_width)
    assert torch.allclose(states[-1], ref, atol=1e-5)
    # the input of block k is the output of block k-1
    assert torch.allclose(states[2], vlm.hidden_states_at(tokens, 2), atol=1e-6)


def test_images_transforms_scale_and_fingerprint(vlm, micro_dirs):
    from PIL import Image

    img = Image.new("RGB", (50, 40), (200, 30, 30))
    x = vlm.test_transform(img).unsqueeze(0)
    assert x.shape == (1, 3, 32, 32)
    assert vlm.train_transform(img).shape == (3, 32, 32)
    feats = vlm.encode_images(x)
    assert feats.shape == (1, vlm.embed_dim)
    assert vlm.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init: exp(log(1/0.07))
    again = load_vlm(vlm.spec, device="cpu")
    assert again.fingerprint == vlm.fingerprint
    other = "eva" if vlm.spec.arch.endswith("clip") else "clip"
    assert load_vlm(f"local-dir:{micro_dirs[other]}", device="cpu").fingerprint != vlm.fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-16-quickgelu", "EVA02-B-16"])
def test_real_architectures_random_weights(arch):
    """The real ViT-B/16 and EVA02-B/16 architectures (random weights: none can be downloaded here)."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None, device="cpu")
    vlm = VLM(model, open_clip.get_tokenizer(arch), ModelSpec(arch, "open_clip", arch, None))
    assert (type(model).__name__ == "CustomTextCLIP") == arch.startswith("EVA")
    _check_encode_text_matches_open_clip(vlm)

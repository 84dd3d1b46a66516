"""Correctness of the built-in methods: equivalences that would break if a formula were wrong."""

from __future__ import annotations

import pytest
import torch

from upgradebench import get_method, load_vlm, text_embedding
from upgradebench.data import get_dataset
from upgradebench.features import FeatureCache
from upgradebench.methods.contcoop import ClassConditioner, ContCoOpModule
from upgradebench.methods.coop import CoOpModule
from upgradebench.methods.zeroshot import ZeroShotModule

from .conftest import fewshot_task
from .conftest import random_features as _feats

NAMES = ["red", "green", "blue", "yellow", "sea_lion", "annual crop land"]


def test_coop_with_photo_context_equals_zeroshot(vlm):
    ctx = text_embedding(vlm, "a photo of a")
    assert ctx.shape == (4, vlm.text_width)
    coop = CoOpModule(ctx).logits(vlm, _feats(vlm), NAMES)
    zs = ZeroShotModule("a photo of a {}.").logits(vlm, _feats(vlm), NAMES)
    assert (coop - zs).abs().max().item() <= 1e-4


def test_contcoop_with_zero_output_projection_equals_coop(vlm):
    torch.manual_seed(0)
    ctx = torch.randn(16, vlm.text_width) * 0.02
    cond = ClassConditioner(vlm.text_width, heads=1)
    torch.nn.init.zeros_(cond.o.weight)
    cont = ContCoOpModule(ctx, cond.requires_grad_(False)).logits(vlm, _feats(vlm), NAMES)
    coop = CoOpModule(ctx).logits(vlm, _feats(vlm), NAMES)
    assert (cont - coop).abs().max().item() <= 1e-5
    # and a non-zero W_O really changes the prompts, so the test above is not vacuous
    torch.nn.init.normal_(cond.o.weight, std=0.5)
    assert (ContCoOpModule(ctx, cond).logits(vlm, _feats(vlm), NAMES) - coop).abs().max().item() > 1e-3


def test_contcoop_reads_class_embeddings_from_the_model_in_use(micro_dirs):
    vlm = load_vlm(f"local-dir:{micro_dirs['eva']}", device="cpu")
    torch.manual_seed(0)
    module = ContCoOpModule(torch.randn(16, vlm.text_width) * 0.02,
                            ClassConditioner(vlm.text_width).requires_grad_(False))
    before = module.prompt_context(vlm, NAMES).clone()
    coop = CoOpModule(module.ctx)
    coop_before = coop.logits(vlm, _feats(vlm), NAMES)
    token = int(vlm.tokenize(["red"])[0, 1])  # the BPE id of "red"
    with torch.no_grad():
        vlm.model.text.token_embedding.weight[token] += 0.5  # "upgrade" the target's embedding of that token
    after = module.prompt_context(vlm, NAMES)
    changed = (after - before).abs().amax(dim=(1, 2))
    assert changed[0] > 1e-3  # the class "red" got a different context
    assert torch.all(changed[1:] < 1e-6)  # the other classes did not
    # CoOp's context is fixed; only the class-name tokens inside its prompt changed
    assert torch.equal(coop.ctx, module.ctx)
    assert (coop.logits(vlm, _feats(vlm), NAMES) - coop_before)[:, 1:].abs().max() < 1e-5


def test_multi_head_conditioner_shapes_and_padding_mask(vlm):
    cond = ClassConditioner(vlm.text_width, heads=2)
    ctx = torch.randn(4, vlm.text_width)
    emb = torch.randn(3, 5, vlm.text_width)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = cond(ctx, emb, mask)
    assert out.shape == (3, 4, vlm.text_width)
    garbage = emb.clone()
    garbage[~mask] = 1e3  # padding must not leak into the attention
    assert torch.allclose(cond(ctx, garbage, mask), out, atol=1e-5)


def test_linear_probe_collapses_on_a_rotated_feature_space(micro_dirs, tiny_dataset):
    source = load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu")
    dataset = get_dataset(tiny_dataset)
    module = get_method("linear-probe")().fit(source, fewshot_task(source, tiny_dataset, 8),
                                              get_method("linear-probe").Config(), 1)
    test = dataset.split("test")
    feats = FeatureCache().get(source, dataset, "test", test, source.test_transform_spec)
    labels = torch.tensor([y for _, y in test])
    q, _ = torch.linalg.qr(torch.randn(feats.shape[1], feats.shape[1], generator=torch.Generator().manual_seed(0)))
    base = (module.logits(source, feats, dataset.classnames).argmax(1) == labels).float().mean().item()
    new = (module.logits(source, feats @ q, dataset.classnames).argmax(1) == labels).float().mean().item()
    assert base >= 0.9  # colours are separable even in a random network's features
    assert new <= 0.25 + 0.2  # about chance (4 classes) on a rotated feature space


# ---- the contract, for every registered method (as timm parametrises over its registry) ---------------------------
def _registered() -> list[str]:
    from upgradebench.discovery import METHODS, discover_methods

    discover_methods()
    return METHODS.names()


@pytest.mark.parametrize("name", _registered())
def test_every_registered_method_keeps_the_contract(name, pair, tiny_dataset):
    from upgradebench.testing import check_method

    check_method(name, *pair, tiny_dataset)


def test_the_contract_check_catches_a_method_that_reads_the_test_split(pair, tiny_dataset, monkeypatch):
    from upgradebench.methods.zeroshot import ZeroShot
    from upgradebench.testing import check_method

    def peeking(self, source, task, config, seed):
        task.dataset.split("test")  # e.g. to pick a hyper-parameter on test accuracy
        return original(self, source, task, config, seed)

    original = ZeroShot.fit
    monkeypatch.setattr(ZeroShot, "fit", peeking)
    with pytest.raises(AssertionError, match="read the test split"):
        check_method("zeroshot", *pair, tiny_dataset)


# ---- config ranges live on each config's fields --------------------------------------------------------------------
def test_every_numeric_field_of_every_builtin_config_has_a_range():
    import dataclasses
    import typing

    from upgradebench.config import field_range, is_numeric
    from upgradebench.discovery import METHODS

    unranged = [f"{name}.{f.name}" for name in _registered() if METHODS.entry(name).builtin
                for f in dataclasses.fields(get_method(name).Config)
                if is_numeric(typing.get_type_hints(get_method(name).Config)[f.name]) and field_range(f) is None]
    assert unranged == []


@pytest.mark.parametrize("override,message", [
    ({"n_ctx": "100"}, "coop.n_ctx=100 is out of range"),  # class names would be cut out of a 77-token context
    ({"depth": "100"}, "coop.depth=100 is out of range"),
    ({"n_ctx": "-3"}, ">= 1"),
    ({"lr": "nan"}, "coop.lr=nan"),
    ({"momentum": "1.5"}, "<= 1"),
])
def test_config_values_out_of_range_are_refused_before_any_model_loads(override, message):
    from upgradebench import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        get_method("coop").make_config(override)


def test_tuple_fields_are_read_and_checked_element_by_element():
    from upgradebench import UserError

    tip = get_method("tip-adapter-f")
    assert tip.make_config({"search_steps": "20,10"}).search_steps == (20, 10)
    assert tip.make_config({"crop_scale": "[0.3, 1.0]"}).crop_scale == (0.3, 1.0)
    with pytest.raises(UserError, match="each element"):
        tip.make_config({"crop_scale": "[0.5, 2.0]"})


def test_prompts_that_cut_a_class_name_and_depths_beyond_the_tower_are_refused(vlm):
    from upgradebench import UserError, class_prompts, encode_prompts
    from upgradebench.prompting import MAX_N_CTX

    prompts = class_prompts(vlm, ["red"], MAX_N_CTX)  # the longest context that a one-token name fits beside
    assert int(prompts.name_lengths[0]) == 1
    with pytest.raises(UserError, match="no room"):
        class_prompts(vlm, ["red", "annual crop land"], MAX_N_CTX)
    with pytest.raises(UserError, match="text tower"):
        encode_prompts(vlm, prompts, torch.zeros(MAX_N_CTX, vlm.text_width), depth=vlm.num_text_layers)

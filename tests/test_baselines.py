"""CLIP-Adapter, Tip-Adapter-F, CoCoOp and KgCoOp: reductions to simpler methods, batching, save/load, transplant."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from upgradebench import class_prompts, encode_prompts, get_method, load_module, text_embedding, zeroshot_text_features
from upgradebench.data import get_dataset
from upgradebench.methods.clip_adapter import CLIPAdapterModule, VisualAdapter
from upgradebench.methods.cocoop import CoCoOpModule, MetaNet
from upgradebench.methods.coop import CoOpModule
from upgradebench.methods.tip_adapter import TipAdapterModule, search_alpha_beta, tip_logits
from upgradebench.methods.zeroshot import ZeroShotModule

from .conftest import fewshot_task as _task
from .conftest import random_features as _feats

NAMES = ["red", "green", "blue", "yellow", "sea_lion", "annual crop land"]
TEMPLATE = "a photo of a {}."
def _zeroshot(vlm, feats):
    return ZeroShotModule(TEMPLATE).logits(vlm, feats, NAMES)


# ---- reductions to zero-shot / CoOp ---------------------------------------------------------------------------
def test_clip_adapter_with_ratio_zero_equals_zeroshot(vlm):
    torch.manual_seed(0)
    adapter = VisualAdapter(vlm.embed_dim, vlm.embed_dim // 4).requires_grad_(False)
    feats = _feats(vlm)
    assert torch.allclose(CLIPAdapterModule(adapter, 0.0, TEMPLATE).logits(vlm, feats, NAMES), _zeroshot(vlm, feats),
                          atol=1e-5)
    # the default ratio really mixes the adapter in, so the check above is not vacuous
    mixed = CLIPAdapterModule(adapter, 0.2, TEMPLATE).logits(vlm, feats, NAMES)
    assert (mixed - _zeroshot(vlm, feats)).abs().max() > 1e-3


def test_tip_adapter_with_alpha_zero_equals_zeroshot(vlm):
    keys = F.normalize(_feats(vlm, 12, seed=4), dim=-1)
    labels = torch.arange(12) % len(NAMES)
    feats = _feats(vlm)
    tip = TipAdapterModule(keys, labels, len(NAMES), alpha=0.0, beta=5.0, template=TEMPLATE)
    assert torch.allclose(tip.logits(vlm, feats, NAMES), _zeroshot(vlm, feats), atol=1e-5)
    tip.alpha = 1.0
    assert (tip.logits(vlm, feats, NAMES) - _zeroshot(vlm, feats)).abs().max() > 1e-3


def test_tip_logits_follow_the_cache_formula_elementwise():
    gen = torch.Generator().manual_seed(0)
    f, text, keys = (F.normalize(torch.randn(n, 8, generator=gen), dim=-1) for n in (5, 3, 6))
    labels = torch.tensor([0, 2, 1, 2, 0, 1])
    out = tip_logits(f, text, keys, F.one_hot(labels, 3).float(), alpha=1.7, beta=4.0, scale=50.0)
    for i, c in itertools.product(range(5), range(3)):
        cache = sum(torch.exp(-4.0 * (1 - f[i] @ keys[n])) for n in range(6) if labels[n] == c)
        assert out[i, c].item() == pytest.approx((50.0 * f[i] @ text[c] + 1.7 * cache).item(), rel=1e-5)


def test_tip_search_equals_the_reference_double_loop():
    gen = torch.Generator().manual_seed(1)
    feats, text, keys = (F.normalize(torch.randn(n, 8, generator=gen), dim=-1) for n in (40, 4, 16))
    labels, cache_labels = torch.randint(0, 4, (40,), generator=gen), torch.arange(16) % 4
    values = F.one_hot(cache_labels, 4).float()
    scales, steps = (7.0, 3.0), (30, 10)
    best, expected = 0.0, (0.0, 0.0)
    for i in range(steps[0]):  # the reference's search_hp, verbatim in structure: beta outer, strict ">"
        beta = i * (scales[0] - 0.1) / steps[0] + 0.1
        for j in range(steps[1]):
            alpha = j * (scales[1] - 0.1) / steps[1] + 0.1
            acc = float((tip_logits(feats, text, keys, values, alpha, beta, 10.0).argmax(1) == labels).float().mean())
            if acc > best:
                best, expected = acc, (alpha, beta)
    assert search_alpha_beta(feats, labels, text, keys, values, 10.0, scales, steps) == pytest.approx(expected)


def test_cocoop_with_a_zero_meta_net_equals_coop(vlm):
    torch.manual_seed(0)
    ctx = torch.randn(4, vlm.text_width) * 0.02
    meta_net = MetaNet(vlm.embed_dim, 2, vlm.text_width).requires_grad_(False)
    feats = _feats(vlm)
    coop = CoOpModule(ctx).logits(vlm, feats, NAMES)
    assert (CoCoOpModule(ctx, meta_net).logits(vlm, feats, NAMES) - coop).abs().max() > 1e-3  # not vacuous
    torch.nn.init.zeros_(meta_net.linear2.weight)
    torch.nn.init.zeros_(meta_net.linear2.bias)
    assert torch.allclose(CoCoOpModule(ctx, meta_net).logits(vlm, feats, NAMES), coop, atol=1e-5)


def test_cocoop_batched_text_path_equals_a_per_image_loop(vlm):
    torch.manual_seed(0)
    ctx = torch.randn(4, vlm.text_width) * 0.02
    meta_net = MetaNet(vlm.embed_dim, 2, vlm.text_width).requires_grad_(False)
    torch.nn.init.normal_(meta_net.linear2.weight, std=0.5)  # per-image contexts that differ clearly
    feats = _feats(vlm, 9)
    batched = CoCoOpModule(ctx, meta_net).logits(vlm, feats, NAMES)
    # the reference's loop: one text-encoder call per image, with that image's context (here through CoOp's path)
    loop = torch.cat([CoOpModule(ctx + meta_net(F.normalize(f, dim=-1))).logits(vlm, f[None], NAMES) for f in feats])
    assert torch.allclose(batched, loop, atol=1e-4)
    # chunking over images (here 2 images per text-encoder call) changes nothing either
    chunked = CoCoOpModule(ctx, meta_net, max_prompts=2 * len(NAMES) + 1).logits(vlm, feats, NAMES)
    assert torch.allclose(chunked, batched, atol=1e-5)


def test_kgcoop_with_zero_weight_trains_exactly_like_coop(pair, tiny_dataset):
    source = pair[0]
    recipe = {"n_ctx": "4", "ctx_init": "a photo of a", "epochs": "3", "batch_size": "4"}
    coop = get_method("coop")
    kgcoop = get_method("kgcoop")
    a = coop().fit(source, _task(source, tiny_dataset), coop.make_config(recipe), seed=1)
    b = kgcoop().fit(source, _task(source, tiny_dataset), kgcoop.make_config({**recipe, "kg_weight": "0"}), seed=1)
    assert torch.equal(a.ctx, b.ctx)
    assert (a.ctx - text_embedding(source, "a photo of a")).abs().max() > 1e-4  # training did move the context
    # and the knowledge-guidance term pulls the prompts towards the zero-shot features
    c = kgcoop().fit(source, _task(source, tiny_dataset), kgcoop.make_config({**recipe, "kg_weight": "8"}), seed=1)
    names = get_dataset(tiny_dataset).classnames
    zs = F.normalize(zeroshot_text_features(source, names, get_dataset(tiny_dataset).template), dim=-1)

    def closeness(ctx):
        text = encode_prompts(source, class_prompts(source, names, 4), ctx)
        return (F.normalize(text, dim=-1) * zs).sum(-1).mean().item()

    assert not torch.equal(b.ctx, c.ctx)
    assert closeness(c.ctx) > closeness(b.ctx)


# ---- save / load of a module shared by two methods; Tip-Adapter's selection ------------------------------------------
def test_kgcoop_module_is_coop_context_under_its_own_name(pair, tmp_path):
    ctx = torch.randn(4, pair[0].text_width)
    folder = CoOpModule(ctx).save(tmp_path / "m", "kgcoop")
    loaded = load_module(folder)
    assert json.loads((folder / "module.json").read_text())["method"] == "kgcoop"
    assert isinstance(loaded, CoOpModule) and torch.equal(loaded.ctx, ctx)
    feats = _feats(pair[1])
    assert torch.equal(loaded.logits(pair[1], feats, NAMES), CoOpModule(ctx).logits(pair[1], feats, NAMES))


def test_tip_adapter_selects_on_validation_and_keeps_the_source_cache(pair, tiny_dataset):
    source = pair[0]
    task = _task(source, tiny_dataset, shots=4)
    method = get_method("tip-adapter-f")
    module = method().fit(source, task, method.make_config({"epochs": "3", "search_steps": "[20,10]"}), seed=1)
    alphas = [0.1 + j * (3.0 - 0.1) / 10 for j in range(10)]  # ImageNet's scales for a dataset without a config
    betas = [0.1 + i * (7.0 - 0.1) / 20 for i in range(20)]
    assert module.alpha in alphas and module.beta in betas
    assert module.keys.shape == (len(task.train_labels), source.embed_dim)
    assert torch.equal(module.labels, task.train_labels)

"""TCP, ProGrad and CLIP-LoRA: equivalence with direct transcriptions of their reference forward passes,
ProGrad's projection formula, and the LoRA module's transplant onto another model of the same text architecture."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from upgradebench import VLM, ModelSpec, UserError, clean_name, get_method, load_module, text_embedding
from upgradebench.methods.clip_lora import (
    CLIPLoRAConfig,
    CLIPLoRAModule,
    LoRAFactors,
    attention_blocks,
    training_dropout,
    with_lora,
)
from upgradebench.methods.coop import CoOpModule
from upgradebench.methods.prograd import prograd_losses, project_gradient, template_context
from upgradebench.methods.tcp import KnowledgeEmbedding, TCPModule
from upgradebench.methods.zeroshot import ZeroShotModule

from .conftest import fewshot_task
from .conftest import random_features as _feats_seeded

NAMES = ["red", "green", "blue", "sea_lion", "annual crop land"]
TEMPLATE = "a photo of a {}."


def _real(arch: str) -> VLM:
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None, device="cpu")
    return VLM(model, open_clip.get_tokenizer(arch), ModelSpec(arch, "open_clip", arch, None))


@pytest.fixture(scope="module", params=["ViT-B-16-quickgelu", "EVA02-B-16"])
def real(request):
    """The real ViT-B/16 CLIP and EVA02-B/16 architectures with random weights."""
    return _real(request.param)


def _feats(vlm, n=6, seed=3):
    return _feats_seeded(vlm, n, seed)


def _tower(vlm):
    return vlm.model.text if hasattr(vlm.model, "text") else vlm.model


def _reference_text(vlm, embeds, tokens, replace=None):
    """The references' TextEncoder: full 77-token context, every block, pooled at argmax(tokens).

    ``replace=(layer, tokens [C, N, D])`` does TCP's ``ResidualAttentionBlock_MaPLe``: at the input of block
    ``layer`` the hidden states of positions 1..N are replaced (weight 1.0)."""
    tower = _tower(vlm)
    x = embeds + tower.positional_embedding
    mask = tower.attn_mask
    for i, block in enumerate(tower.transformer.resblocks):
        if replace is not None and i == replace[0]:
            n = replace[1].shape[1]
            x = torch.cat([x[:, :1], replace[1], x[:, 1 + n:]], dim=1)
        x = block(x, attn_mask=mask)
    x = tower.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)]
    proj = tower.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _reference_logits(vlm, feats, text):
    return vlm.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).T


def _coop_embeds(vlm, ctx):
    """The reference PromptLearner: ``[SOS] ctx classname . [EOS] pad`` over the full context."""
    n = ctx.shape[0]
    tokens = vlm.tokenize([" ".join(["X"] * n) + " " + clean_name(c) + "." for c in NAMES])
    emb = vlm.token_embeddings(tokens)
    return torch.cat([emb[:, :1], ctx.expand(len(NAMES), -1, -1), emb[:, 1 + n:]], dim=1), tokens


# ---- TCP --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tcp_logits_equal_the_reference_forward(real):
    torch.manual_seed(1)
    ctx = torch.randn(4, real.text_width) * 0.02
    meta_net = KnowledgeEmbedding(real.embed_dim, 4, real.text_width).requires_grad_(False)
    module = TCPModule(ctx, meta_net, 8, TEMPLATE)
    with torch.no_grad():
        zs = F.normalize(real.encode_text(real.tokenize([TEMPLATE.format(clean_name(c)) for c in NAMES])), dim=-1)
        class_tokens = meta_net.linear2(meta_net.act(meta_net.linear1(zs))).reshape(len(NAMES), -1, real.text_width)
        embeds, tokens = _coop_embeds(real, ctx)
        expected = _reference_logits(real, _feats(real), _reference_text(real, embeds, tokens, (8, class_tokens)))
    got = module.logits(real, _feats(real), NAMES)
    assert (got - expected).abs().max().item() <= 1e-3
    # the class-aware tokens matter: inserting other tokens changes the logits
    torch.nn.init.normal_(meta_net.linear2.bias, std=1.0)
    assert (TCPModule(ctx, meta_net, 8, TEMPLATE).logits(real, _feats(real), NAMES) - got).abs().max() > 1e-2


def test_tcp_reads_the_knowledge_of_the_model_in_use_and_refuses_too_shallow_towers(pair, tmp_path):
    source, target = pair
    torch.manual_seed(0)
    module = TCPModule(torch.randn(4, source.text_width) * 0.02,
                       KnowledgeEmbedding(source.embed_dim, 4, source.text_width).requires_grad_(False), 1, TEMPLATE)
    loaded = load_module(module.save(tmp_path / "m", "tcp"))
    for vlm in pair:
        assert torch.equal(loaded.logits(vlm, _feats(vlm), NAMES), module.logits(vlm, _feats(vlm), NAMES))
    module.layer = source.num_text_layers + 1
    with pytest.raises(UserError, match="text blocks"):
        module.logits(target, _feats(target), NAMES)


# ---- ProGrad ----------------------------------------------------------------------------------------------------
def test_prograd_projection_follows_the_formula_on_a_hand_built_example():
    g = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    g_kl = torch.tensor([[0.0, -1.0], [0.0, 0.0]])  # cos(g, g_kl) = -2 / sqrt(6) < 0: conflict
    # unit = g_kl (norm 1); g . unit = -2; g - 1.0 * (-2) * unit = g + 2 g_kl
    assert torch.allclose(project_gradient(g, g_kl, 1.0), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    assert torch.allclose(project_gradient(g, g_kl, 0.5), torch.tensor([[1.0, 1.0], [0.0, -1.0]]))
    # the projected gradient is orthogonal to g_kl when lambda = 1
    assert torch.dot(project_gradient(g, g_kl, 1.0).flatten(), g_kl.flatten()).abs() < 1e-6
    # no conflict: unchanged
    assert torch.equal(project_gradient(g, -g_kl, 1.0), g)


def test_prograd_soft_loss_is_the_cross_entropy_to_the_teacher():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 2, 1, 1])
    ce, kl = prograd_losses(logits, teacher, labels, temperature=2.0)
    p = teacher.div(2).softmax(-1)
    expected = sum(-(p[i] * logits[i].div(2).log_softmax(-1)).sum() for i in range(4)) / 4 * 4.0
    assert ce.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert kl.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.slow
def test_prograd_logits_equal_the_reference_forward(real):
    ctx = template_context(real, 16, "a photo of a")
    assert torch.equal(ctx[:12], torch.zeros(12, real.text_width))  # zeros, then the template's words
    with torch.no_grad():
        embeds, tokens = _coop_embeds(real, ctx)
        expected = _reference_logits(real, _feats(real), _reference_text(real, embeds, tokens))
    assert (CoOpModule(ctx).logits(real, _feats(real), NAMES) - expected).abs().max().item() <= 1e-3


# ---- CLIP-LoRA --------------------------------------------------------------------------------------------------
def _random_factors(vlm, params="qkv", std=0.05, seed=0):
    factors = LoRAFactors.init(vlm, CLIPLoRAConfig(params=params), seed)
    gen = torch.Generator().manual_seed(seed)
    factors.tensors = {k: (torch.randn(v.shape, generator=gen) * std if k.endswith(".B") else v)
                       for k, v in factors.tensors.items()}
    return factors


def _reference_lora_attention(attn, x, mask, factors, i):
    """CLIP-LoRA's ``PlainMultiheadAttentionLoRA`` at evaluation (no dropout): separate q/k/v/o LinearLoRA
    layers ``W x + b + scaling * (x A^T) B^T``, scaled dot-product attention, batch first."""
    d, h = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias

    def lora_linear(inp, weight, bias, p):
        out = F.linear(inp, weight, bias)
        if f"{i}.{p}.A" in factors.tensors:
            out = out + (inp @ factors.tensors[f"{i}.{p}.A"].T) @ factors.tensors[f"{i}.{p}.B"].T * factors.scaling
        return out

    q, k, v = (lora_linear(x, w[j * d:(j + 1) * d], b[j * d:(j + 1) * d], p) for j, p in enumerate("qkv"))
    bsz, length = x.shape[:2]
    q, k, v = (t.view(bsz, length, h, d // h).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).reshape(bsz, length, d)
    return lora_linear(out, attn.out_proj.weight, attn.out_proj.bias, "o")


@pytest.mark.slow
def test_lora_logits_equal_the_reference_forward(real):
    factors = _random_factors(real, params="qkvo")
    tower = _tower(real)
    tokens = real.tokenize([TEMPLATE.format(clean_name(c)) for c in NAMES])
    with torch.no_grad():
        x = real.token_embeddings(tokens) + tower.positional_embedding
        mask = tower.attn_mask
        for i, block in enumerate(tower.transformer.resblocks):  # open_clip's block with the reference's attention
            x = x + block.ls_1(_reference_lora_attention(block.attn, block.ln_1(x), mask, factors, i))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = tower.ln_final(x)[torch.arange(len(NAMES)), tokens.argmax(-1)]
        proj = tower.text_projection
        text = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        expected = _reference_logits(real, _feats(real), text)
    got = CLIPLoRAModule(factors, TEMPLATE).logits(real, _feats(real), NAMES)
    assert (got - expected).abs().max().item() <= 1e-3
    assert (got - ZeroShotModule(TEMPLATE).logits(real, _feats(real), NAMES)).abs().max().item() > 1e-2


def test_lora_with_zero_b_leaves_zero_shot_logits_unchanged(pair):
    for vlm in pair:
        factors = LoRAFactors.init(vlm, CLIPLoRAConfig(), seed=1)  # the reference init: B = 0
        assert all(v.abs().sum() > 0 for k, v in factors.tensors.items() if k.endswith(".A"))
        feats = _feats(vlm)
        got = CLIPLoRAModule(factors, TEMPLATE).logits(vlm, feats, NAMES)
        assert torch.allclose(got, ZeroShotModule(TEMPLATE).logits(vlm, feats, NAMES), atol=1e-5)


def test_lora_saved_and_plugged_into_another_model_changes_exactly_the_intended_weights(pair, tmp_path):
    source, target = pair
    factors = _random_factors(source, params="qv")
    loaded = load_module(CLIPLoRAModule(factors, TEMPLATE).save(tmp_path / "lora", "clip-lora"))
    assert isinstance(loaded, CLIPLoRAModule)
    before = {n: p.detach().clone() for n, p in target.model.named_parameters()}
    overrides = loaded.factors.overrides(target)
    tower = "text." if hasattr(target.model, "text") else ""
    assert sorted(overrides) == sorted(f"{tower}transformer.resblocks.{i}.attn.in_proj_weight"
                                       for i in range(target.num_text_layers))
    d = target.text_width
    for i in range(target.num_text_layers):
        name = f"{tower}transformer.resblocks.{i}.attn.in_proj_weight"
        delta = overrides[name] - before[name]
        a, b = loaded.factors.tensors[f"{i}.q.A"], loaded.factors.tensors[f"{i}.q.B"]
        assert torch.allclose(delta[:d], b @ a / math.sqrt(2), atol=1e-6)  # q: alpha / sqrt(r) * B A
        assert torch.equal(delta[d:2 * d], torch.zeros(d, d))  # k: not adapted
        assert delta[2 * d:].abs().max() > 0  # v: adapted
    logits = loaded.logits(target, _feats(target), NAMES)
    assert (logits - ZeroShotModule(TEMPLATE).logits(target, _feats(target), NAMES)).abs().max() > 1e-3
    # the target itself is left as it was
    assert all(torch.equal(p, before[n]) for n, p in target.model.named_parameters())


@pytest.mark.slow
def test_lora_refuses_a_text_tower_of_another_shape(pair):
    real = _real("ViT-B-16-quickgelu")
    module = CLIPLoRAModule(_random_factors(pair[0]), TEMPLATE)
    with pytest.raises(UserError) as err:
        module.logits(real, _feats(real), NAMES)
    message = err.value.message
    assert f"{pair[0].num_text_layers} blocks x width {pair[0].text_width}" in message
    assert "12 blocks x width 512" in message


# ---- fits ------------------------------------------------------------------------------------------------------------
def test_prograd_with_lambda_zero_trains_exactly_like_coop_and_projects_otherwise(pair, tiny_dataset):
    source = pair[0]

    def fit(name, overrides):
        task = fewshot_task(source, tiny_dataset)
        method = get_method(name)
        return method().fit(source, task, method.make_config({"epochs": "3", "batch_size": "4", "n_ctx": "4",
                                                              "ctx_init": "a photo of a", **overrides}), seed=1)

    coop = fit("coop", {})
    assert torch.equal(fit("prograd", {"lambda_": "0"}).ctx, coop.ctx)  # same init, same CE gradients
    projected = fit("prograd", {})
    assert (projected.ctx - coop.ctx).abs().max() > 1e-6  # lambda = 1: some step had a conflicting gradient


def test_lora_training_forward_without_dropout_equals_the_merged_forward_and_leaves_no_hooks(pair):
    vlm = pair[0]
    factors = _random_factors(vlm, params="qkvo")
    tokens = vlm.tokenize([TEMPLATE.format(clean_name(c)) for c in NAMES])
    merged = with_lora(vlm, factors, vlm.encode_text, tokens)
    with training_dropout(vlm, factors, 0.0, torch.Generator()):
        branched = vlm.encode_text(tokens)
    assert (branched - merged).abs().max().item() <= 1e-5  # the reference's unmerged forward = the merged one
    with training_dropout(vlm, factors, 0.25, torch.Generator().manual_seed(0)):
        dropped_once = vlm.encode_text(tokens)
    assert (dropped_once - merged).abs().max().item() > 1e-4  # dropout reaches the LoRA branches
    assert torch.equal(with_lora(vlm, factors, vlm.encode_text, tokens), merged)  # own forward restored afterwards
    assert all("forward" not in vars(attn) for attn in attention_blocks(vlm))



def test_lora_fit_keeps_the_last_partial_batch_and_its_dropout_changes_the_fit(pair, tiny_dataset, monkeypatch):
    import upgradebench.methods.clip_lora as clip_lora

    source = pair[0]
    task = fewshot_task(source, tiny_dataset)  # 8 items
    method = get_method("clip-lora")
    sizes, batches = [], clip_lora.minibatches

    def recorded(*args, **kwargs):
        for idx in batches(*args, **kwargs):
            sizes.append(len(idx))
            yield idx

    monkeypatch.setattr(clip_lora, "minibatches", recorded)

    def fit(**cfg):
        config = method.make_config({"iters_per_shot": "3", "batch_size": "3", "lr": "0.01", **cfg})
        return method().fit(source, task, config, seed=1)

    with_dropout = fit()
    assert sizes == [3, 3, 2, 3, 3, 2]  # 6 steps over 8 items in batches of 3: the partial batch of 2 is used
    without = fit(dropout="0")
    assert any(not torch.equal(v, without.factors.tensors[k]) for k, v in with_dropout.factors.tensors.items())
    # dropout only while fitting: no module keeps the shadowing forward (or any hook) afterwards
    assert all("forward" not in vars(attn) and not attn._forward_hooks for attn in attention_blocks(source))


def test_tcp_fits_with_adam_eps_from_its_readme(pair, tiny_dataset, monkeypatch):
    import upgradebench.training as training

    made = []
    real_optimizer = training.dassl_optimizer

    def spy(*args, **kwargs):
        made.append(real_optimizer(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(training, "dassl_optimizer", spy)
    source = pair[0]
    task = fewshot_task(source, tiny_dataset, views=1)
    method = get_method("tcp")
    method().fit(source, task, method.make_config({"epochs": "1", "batch_size": "8"}), seed=1)
    assert [type(o).__name__ for o in made] == ["Adam"] and made[0].defaults["eps"] == 1e-3


def test_prograd_init_counts_the_phrase_in_words_not_tokens(pair):
    vlm = pair[0]
    phrase = "a type of pet, a photo of a"  # 8 words, 9 tokens (the comma is one)
    tokens = text_embedding(vlm, phrase).float()
    assert len(tokens) == 9
    ctx = template_context(vlm, 10, phrase)
    assert torch.equal(ctx[:2], torch.zeros(2, vlm.text_width))
    assert torch.equal(ctx[2:], tokens[:8])  # the reference's embedding[0, 1:1 + n_words]
    with pytest.raises(UserError, match="8 words but n_ctx is 7"):
        template_context(vlm, 7, phrase)

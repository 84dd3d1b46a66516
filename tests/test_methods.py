"""Correctness of the built-in methods: equivalences that would break if a formula were wrong."""

from __future__ import annotations

import pytest
import torch

from upgradebench.data import load_fewshot, get_dataset
from upgradebench.features import FeatureCache
from upgradebench.method import get_method
from upgradebench.models import load_vlm
from upgradebench.prompting import text_embedding
from upgradebench.task import FewShotTask

from upgradebench.methods.contcoop import ClassConditioner, ContCoOpModule
from upgradebench.methods.coop import CoOpModule
from upgradebench.methods.zeroshot import ZeroShotModule

NAMES = ["red", "green", "blue", "yellow", "sea_lion", "annual crop land"]


@pytest.fixture(scope="module", params=["clip", "eva"])
def vlm(request, micro_dirs):
    return load_vlm(f"local-dir:{micro_dirs[request.param]}", device="cpu")


def _feats(vlm, n=7):
    return torch.randn(n, vlm.embed_dim, generator=torch.Generator().manual_seed(3))


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
    module = ContCoOpModule(torch.randn(16, vlm.text_width) * 0.02, ClassConditioner(vlm.text_width).requires_grad_(False))
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


def _task(vlm, dataset, shots=4, seed=1):
    return FewShotTask(dataset, load_fewshot(dataset, shots, seed), vlm, FeatureCache(), views=2)


def test_linear_probe_collapses_on_a_rotated_feature_space(micro_dirs, tiny_dataset):
    source = load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu")
    dataset = get_dataset(tiny_dataset)
    module = get_method("linear-probe")().fit(source, _task(source, dataset, 8), get_method("linear-probe").Config(), 1)
    test = dataset.split("test")
    feats = FeatureCache().get(source, dataset, "test", test, source.test_transform_spec)
    labels = torch.tensor([y for _, y in test])
    q, _ = torch.linalg.qr(torch.randn(feats.shape[1], feats.shape[1], generator=torch.Generator().manual_seed(0)))
    base = (module.logits(source, feats, dataset.classnames).argmax(1) == labels).float().mean().item()
    new = (module.logits(source, feats @ q, dataset.classnames).argmax(1) == labels).float().mean().item()
    assert base >= 0.9  # colours are separable even in a random network's features
    assert new <= 0.25 + 0.2  # about chance (4 classes) on a rotated feature space

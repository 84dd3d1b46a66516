"""The text encoder's training-memory model and its chunked calls: the model matches what autograd keeps, and
chunking changes neither logits nor gradients nor a fitted module."""

from __future__ import annotations

import pytest
import torch

from upgradebench import memory
from upgradebench.data import get_dataset, load_fewshot
from upgradebench.discovery import get_method
from upgradebench.features import FeatureCache
from upgradebench.memory import TextShape, encode_text_bounded, saved_activation_bytes
from upgradebench.methods.cocoop import MetaNet, conditional_logits, image_contexts
from upgradebench.models import load_vlm
from upgradebench.prompting import class_prompts
from upgradebench.task import FewShotTask

NAMES = ["red", "green", "blue", "sea_lion", "annual crop land"]


@pytest.fixture(scope="module")
def pair(micro_dirs):
    """The micro CLIP (QuickGELU) and the micro EVA-style model (GELU)."""
    return (load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu"),
            load_vlm(f"local-dir:{micro_dirs['eva']}", device="cpu"))


@pytest.mark.parametrize("which", [0, 1])
def test_memory_model_is_what_autograd_keeps(pair, which):
    vlm = pair[which]
    shape = TextShape.of(vlm)
    assert shape.activation_saves == (2 if which == 0 else 1)  # QuickGELU keeps its input and its sigmoid
    for rows, length in ((3, 7), (6, 12)):
        measured, modelled = saved_activation_bytes(vlm, rows, length), shape.saved_bytes(rows, length)
        # the model counts the blocks; the rest is ln_final's input and statistics, the causal mask (a view of
        # the tower's context x context buffer) and the pooling indices (two int64 per row)
        extra = rows * length * (shape.width + 2) * 4 + vlm.context_length ** 2 * 4 + rows * 16
        assert modelled <= measured <= modelled + extra, (rows, length, measured, modelled)


def test_rows_per_call_follow_the_budget():
    shape = TextShape(width=768, layers=12, heads=12, mlp_width=3072, activation_saves=2)
    per_row = shape.saved_bytes(1, 16)
    assert memory.rows_per_call(shape, 16, budget=10 * per_row + 1) == 10
    assert memory.rows_per_call(shape, 16, budget=1) == 1
    chunked = memory.training_peak_bytes(shape, 0, 4000, 16, budget=1000 * per_row)
    assert chunked < memory.training_peak_bytes(shape, 0, 4000, 16, chunked=False) / 3


def test_chunked_cocoop_gives_the_same_logits_and_gradients(pair, monkeypatch):
    vlm = pair[0]
    prompts = class_prompts(vlm, NAMES, 4)
    feats = torch.randn(3, vlm.embed_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 4])
    calls = []
    encode = vlm.encode_text_embeddings
    monkeypatch.setattr(vlm, "encode_text_embeddings", lambda e, t, *a: calls.append(len(e)) or encode(e, t, *a))

    def run(max_rows):
        torch.manual_seed(0)
        ctx = torch.nn.Parameter(0.02 * torch.randn(4, vlm.text_width))
        meta_net = MetaNet(vlm.embed_dim, 4, vlm.text_width)
        logits = conditional_logits(vlm, prompts, image_contexts(ctx, meta_net, feats), feats, max_rows)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), [ctx.grad, *(p.grad for p in meta_net.parameters())]

    plain_logits, plain_grads = run(None)
    assert calls == [15]  # 3 images x 5 classes in one call
    calls.clear()
    chunked_logits, chunked_grads = run(4)
    assert max(calls) == 4 and len(calls) == 8  # 4 forward calls, recomputed in backward
    torch.testing.assert_close(chunked_logits, plain_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["cocoop", "contcoop"])
def test_a_fit_does_not_depend_on_the_memory_budget(name, pair, tiny_dataset, monkeypatch):
    source = pair[0]
    dataset = get_dataset(tiny_dataset)
    method = get_method(name)
    config = method.make_config({"epochs": "2", "batch_size": "4"})

    def fit():
        task = FewShotTask(dataset, load_fewshot(dataset, 2, 1), source, FeatureCache(), views=2)
        return method().fit(source, task, config, seed=1).tensors()

    plain = fit()
    rows = []
    original = encode_text_bounded

    def spy(vlm, embeds, eot, max_rows=None):  # one prompt per call, as under a tiny budget
        rows.append(len(embeds))
        return original(vlm, embeds, eot, 1 if max_rows is None else max_rows)

    monkeypatch.setattr(f"upgradebench.methods.{name}.encode_text_bounded", spy)
    chunked = fit()
    assert rows and max(rows) > 1  # the steps had several prompts, each now encoded alone
    for key, value in plain.items():
        torch.testing.assert_close(chunked[key], value, rtol=1e-4, atol=1e-6)


def test_a_step_too_large_for_the_gpu_fails_early_with_both_sizes(pair, monkeypatch):
    from types import SimpleNamespace

    from upgradebench.errors import UserError

    vlm = pair[0]
    monkeypatch.setattr(vlm, "device", torch.device("cuda"))
    need = memory.training_peak_bytes(TextShape.of(vlm), memory.model_bytes(vlm), 50, 9)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=need))
    memory.check_fits(vlm, 50, 9, "CoCoOp")  # exactly enough
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=need - 1))
    with pytest.raises(UserError, match="50 prompts of 9 tokens"):
        memory.check_fits(vlm, 50, 9, "CoCoOp")

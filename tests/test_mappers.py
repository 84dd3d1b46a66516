"""Mappers (issue 25 point 5): each would catch a wrong map, a silent drop or a budget overrun."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from upgradebench import UserError, get_mapper
from upgradebench.mapping import Refused, TargetData, carry
from upgradebench.methods.contcoop import ClassConditioner, ContCoOpModule
from upgradebench.methods.coop import CoOpModule
from upgradebench.methods.linear_probe import LinearProbeModule
from upgradebench.models import load_vlm
from upgradebench.spaces import JOINT, TOKEN, fit_map, shared_vocabulary, token_map

from .cli_helpers import run_cli, run_json
from .conftest import MICRO_CLIP, MICRO_TEXT, make_micro, random_features


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> str:
    """A micro CLIP of another width (text 48, joint 24): an upgrade across a width change."""
    cfg = copy.deepcopy(MICRO_CLIP)
    cfg["embed_dim"] = 24
    cfg["text_cfg"] = {**MICRO_TEXT, "width": 48}
    return f"local-dir:{make_micro(tmp_path_factory.mktemp('wide') / 'wide', cfg, 5)}"


@pytest.fixture(scope="module")
def rotated(pair):
    """The micro CLIP with its token-embedding table rotated by a known orthogonal ``Q`` (``(model, Q)``)."""
    source = pair[0]
    target = copy.deepcopy(source)
    q = _orthogonal(source.text_width, 7)
    emb = target._tower.token_embedding.weight
    with torch.no_grad():
        emb.copy_(emb @ q.T)
    return target, q


def test_procrustes_and_lstsq_recover_known_maps() -> None:
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    q = _orthogonal(16, 1)
    fitted = fit_map(x, 2.5 * x @ q.T, "procrustes", ridge=0.0)
    assert torch.allclose(fitted.matrix, 2.5 * q, atol=1e-4) and fitted.residual < 1e-5
    a = torch.randn(24, 16, generator=torch.Generator().manual_seed(2))
    wide = fit_map(x, x @ a.T, "auto", ridge=0.0)  # widths differ: least squares
    assert wide.kind == "lstsq" and torch.allclose(wide.matrix, a, atol=1e-3)
    with pytest.raises(UserError, match="equal widths"):
        fit_map(x, x @ a.T, "procrustes")


def test_fewer_anchors_than_dimensions_keep_unpinned_directions() -> None:
    """With 5 anchors in 16 dimensions, identical tables must map by the identity, not an arbitrary rotation."""
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    for kind in ("procrustes", "lstsq"):
        assert torch.allclose(fit_map(x, x.clone(), kind).matrix, torch.eye(16), atol=1e-5), kind


def test_vocab_map_recovers_a_known_rotation_of_the_token_table(pair, rotated) -> None:
    source, (target, q) = pair[0], rotated
    found = token_map(source, target, ridge=0.0)
    assert found.kind == "procrustes" and found.residual < 1e-5
    assert torch.allclose(found.matrix, q, atol=1e-4)
    # a prompt made of real token vectors lands on the rotated ones
    ids = torch.tensor([320, 1125, 539, 320])  # "a photo of a" in CLIP's tokenizer
    module = CoOpModule(source.token_embeddings(ids.unsqueeze(0))[0].detach())
    mapper = get_mapper("vocab-map")()
    mapped = mapper.map(module, source, target, None, mapper.make_config({"ridge": 0.0}), 1)  # type: ignore[arg-type]
    assert torch.allclose(mapped.ctx, target.token_embeddings(ids.unsqueeze(0))[0], atol=1e-4)


def test_identity_is_todays_transplant_and_refuses_a_width_change(pair, wide) -> None:
    source, target = pair
    module = CoOpModule(torch.randn(4, source.text_width, generator=torch.Generator().manual_seed(0)))
    identity = get_mapper("identity")
    feats = random_features(target)
    classes = ["red", "green", "blue"]
    carried = identity().map(module, source, target, None, identity.make_config({}), 1)  # type: ignore[arg-type]
    assert carried is module
    assert torch.equal(carried.logits(target, feats, classes), module.logits(target, feats, classes))
    other = load_vlm(wide, device="cpu")
    reason = identity().supports(module, source, other, identity.make_config({}))
    assert reason is not None and "64" in reason and "48" in reason  # both widths named


def test_carry_transforms_vectors_and_covectors_consistently() -> None:
    """A probe scores the mapped features of the target as it scored the source's: W' (M f) = W f."""
    m = torch.randn(24, 16, generator=torch.Generator().manual_seed(4))
    fitted = fit_map(torch.randn(100, 16), torch.randn(100, 24), "lstsq")
    fitted.matrix = m
    probe = LinearProbeModule(torch.randn(3, 16, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 1.0)

    class Target:
        name, text_width, embed_dim = "t", 8, 24

    mapped = carry(probe, {JOINT: fitted}, Target(), "test")  # type: ignore[arg-type]
    f = torch.randn(5, 16, dtype=torch.float64)
    assert torch.allclose(mapped.weight @ (m.double() @ f.T), probe.weight @ f.T, atol=1e-4)


def test_an_axis_that_meets_only_unit_vectors_is_carried_without_the_maps_scale() -> None:
    """A meta-net reading normalised features (CoCoOp's, TCP's): W' normalize(M f) = W normalize(f) for M = s Q."""
    from dataclasses import dataclass

    from upgradebench import COVECTOR, UNIT, Module

    @dataclass
    class Reader(Module):
        spaces = {"w": (None, JOINT + COVECTOR + UNIT)}
        w: torch.Tensor

        def logits(self, vlm, image_features, class_names):
            return torch.nn.functional.normalize(image_features, dim=-1) @ self.w.T

    q = _orthogonal(16, 9)
    fitted = fit_map(torch.randn(50, 16), torch.randn(50, 16), "procrustes")
    fitted.matrix = 3.0 * q

    class Target:
        name, text_width, embed_dim = "t", 8, 16

    module = Reader(torch.randn(4, 16))
    mapped = carry(module, {JOINT: fitted}, Target(), "test")  # type: ignore[arg-type]
    f = torch.randn(5, 16)
    assert torch.allclose(mapped.logits(None, f @ (3.0 * q).T, []), module.logits(None, f, []), atol=1e-5)


def test_attention_inside_the_token_space_is_refused_under_a_non_orthogonal_map(pair, wide) -> None:
    source = pair[0]
    other = load_vlm(wide, device="cpu")
    module = ContCoOpModule(torch.zeros(4, source.text_width), ClassConditioner(source.text_width))
    vocab = get_mapper("vocab-map")
    reason = vocab().supports(module, source, other, vocab.make_config({}))
    assert reason is not None and "attn" in reason and "acts inside the token space" in reason
    # never silently dropped: carrying it anyway is refused too
    with pytest.raises(Refused, match="acts inside"):
        carry(module, {TOKEN: token_map(source, other)}, other, "vocab-map")


def test_module_kinds_a_mapper_does_not_support_say_why(pair) -> None:
    source, target = pair
    probe = LinearProbeModule(torch.zeros(3, source.embed_dim), torch.zeros(3), 1.0)
    vocab = get_mapper("vocab-map")
    assert "no axis in the token space" in vocab().supports(probe, source, target, vocab.make_config({}))
    feature = get_mapper("feature-map")
    coop = CoOpModule(torch.zeros(4, source.text_width))
    assert "no axis in the joint" in feature().supports(coop, source, target, feature.make_config({}))


def test_another_tokenizer_is_a_clear_error(pair) -> None:
    source, target = pair
    other = copy.copy(target)
    other.tokenizer = lambda texts: torch.zeros(len(texts), 77, dtype=torch.long)  # every text one token
    with pytest.raises(UserError, match="different tokenizers"):
        shared_vocabulary(source, other)
    vocab = get_mapper("vocab-map")
    coop = CoOpModule(torch.zeros(4, source.text_width))
    assert "different tokenizers" in vocab().supports(coop, source, other, vocab.make_config({}))


def test_budgets_are_enforced_and_the_test_split_is_never_offered(tiny_dataset) -> None:
    from upgradebench.data import get_dataset
    from upgradebench.features import FeatureCache

    data = TargetData(get_dataset(tiny_dataset), 1, FeatureCache(), "none", "greedy")
    with pytest.raises(UserError, match="budget 'none'.*needs budget 'unlabeled'"):
        data.unlabeled_features(None)  # type: ignore[arg-type]
    unlabeled = TargetData(get_dataset(tiny_dataset), 1, FeatureCache(), "unlabeled", "greedy")
    with pytest.raises(UserError, match="needs budget 'labeled'"):
        unlabeled.labeled_shots(None, 2)  # type: ignore[arg-type]
    assert not [name for name in dir(TargetData) if "test" in name]


def _run_mapped(capsys, pair_names, tiny_dataset, results, *mappers):
    src, tgt = pair_names
    extra = [a for m in mappers for a in ("--mapper", m)]
    return run_json(capsys, "run", "--method", "coop", "--source", src, "--target", tgt, "--dataset", tiny_dataset,
                    "--shots", "2", "--views", "2", "--config", "epochs=2", "--config", "n_ctx=4",
                    "--results", str(results), *extra)


@pytest.fixture
def pair_names(micro_dirs):
    return f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"


def test_retune_with_zero_steps_is_its_start_and_rows_record_the_mapper(capsys, pair_names, tiny_dataset,
                                                                          tmp_path) -> None:
    from upgradebench.results import read_results

    out = _run_mapped(capsys, pair_names, tiny_dataset, tmp_path / "r", "vocab-map",
                      "retune:steps=0,start=vocab-map,shots=2")
    df = read_results(tmp_path / "r")
    coop = df[df.method == "coop"]
    assert sorted(coop.role) == ["base", "mapped", "mapped", "new"]
    mapped = coop[coop.role == "mapped"].set_index("mapper")
    assert mapped.loc["vocab-map", "mapper_budget"] == "none" and mapped.loc["vocab-map", "mapper_shots"] == 0
    assert mapped.loc["retune", "mapper_budget"] == "labeled" and mapped.loc["retune", "mapper_shots"] == 2
    assert json.loads(mapped.loc["retune", "mapper_config"])["resolved_start"] == "vocab-map"
    assert mapped.loc["retune", "top1"] == mapped.loc["vocab-map", "top1"]  # zero steps: the start module itself
    shown = out["rows"][0][f"retune:steps=0,start=vocab-map,shots=2 {pair_names[1]}"]
    assert shown == pytest.approx(mapped.loc["retune", "top1"], abs=0.01)
    new = coop[coop.role == "new"].iloc[0]
    assert new.mapper == "identity" and new.mapper_config == "{}"
    # its ledger is keyed apart from the unchanged module's, under the row's mapper label
    from upgradebench.metrics import read_ledgers, read_mapped_ledgers
    from upgradebench.plan import mapper_label

    run = mapped.loc["retune", "run_id"]
    label = mapper_label("retune", mapped.loc["retune", "mapper_config"])
    ledger = read_mapped_ledgers(tmp_path / "r")[(run, pair_names[1], tiny_dataset, label)]
    assert 100 * ledger.correct.mean() == pytest.approx(mapped.loc["retune", "top1"])
    assert (run, pair_names[1], tiny_dataset) in read_ledgers(tmp_path / "r")  # the identity row's, unmixed
    # resumable: the mapped rows are reused, not mapped again
    before = read_results(tmp_path / "r").created_at.tolist()
    _run_mapped(capsys, pair_names, tiny_dataset, tmp_path / "r", "vocab-map", "retune:steps=0,start=vocab-map,shots=2")
    assert read_results(tmp_path / "r").created_at.tolist() == before


def test_a_refused_mapper_is_reported_and_writes_no_row(capsys, micro_dirs, tiny_dataset, wide, tmp_path) -> None:
    from upgradebench.results import read_results

    src = f"local-dir:{micro_dirs['clip']}"
    code, _, err = run_cli(capsys, "run", "--method", "linear-probe", "--source", src, "--target", wide, "--dataset",
                           tiny_dataset, "--shots", "2", "--mapper", "vocab-map", "--results", str(tmp_path / "r"))
    assert code == 2  # a user error, as every other
    assert "refused: identity on" in err and "refused: vocab-map on" in err and "no axis in the token space" in err
    assert "Traceback" not in err
    df = read_results(tmp_path / "r")
    assert not df[(df.method == "linear-probe")].role.isin(["new", "mapped"]).any()


def test_unknown_mapper_and_bad_config_fail_before_any_fit(capsys, pair_names, tiny_dataset, tmp_path) -> None:
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--source", pair_names[0], "--target", pair_names[1],
                           "--dataset", tiny_dataset, "--mapper", "vocab-mop", "--results", str(tmp_path / "r"))
    assert code != 0 and "vocab-map" in err and "Traceback" not in err  # did you mean
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--source", pair_names[0], "--target", pair_names[1],
                           "--dataset", tiny_dataset, "--mapper", "retune:steps=-1", "--results", str(tmp_path / "r"))
    assert code != 0 and "steps" in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_mappers_list_gives_budgets(capsys) -> None:
    out = run_json(capsys, "mappers", "list")
    budgets = {row["name"]: row["budget"] for row in out["mappers"]}
    assert budgets == {"identity": "none", "vocab-map": "none", "feature-map": "unlabeled", "retune": "labeled"}
    assert [row["name"] for row in out["mappers"]][-1] == "retune"  # ordered by budget


def test_the_mapper_plugin_of_the_guide_runs(capsys, micro_dirs, tiny_dataset, tmp_path, monkeypatch) -> None:
    """docs/mappers.md's example, registered as its entry point would register it, carries a linear probe."""
    import re
    import types
    from pathlib import Path

    from upgradebench.discovery import MAPPERS, discover_mappers
    from upgradebench.results import read_results

    guide = (Path(__file__).resolve().parents[1] / "docs" / "mappers.md").read_text()
    (code,) = re.findall(r"```python\n(# my_mappers/__init__.py\n.*?)```", guide, re.S)
    plugin = types.ModuleType("my_mappers")
    monkeypatch.setitem(__import__("sys").modules, "my_mappers", plugin)  # as an installed package would be
    exec(compile(code, "docs/mappers.md", "exec"), plugin.__dict__)
    discover_mappers()
    MAPPERS.register("norm-scale", plugin.NormScale, origin="my-mappers", builtin=False)
    try:
        src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
        run_json(capsys, "run", "--method", "linear-probe", "--source", src, "--target", tgt, "--dataset",
                 tiny_dataset, "--shots", "2", "--mapper", "norm-scale", "--results", str(tmp_path / "r"))
        listed = run_json(capsys, "mappers", "list")
    finally:
        MAPPERS.unregister("norm-scale")
    df = read_results(tmp_path / "r")
    row = df[(df.method == "linear-probe") & (df.role == "mapped")].iloc[0]
    assert (row.mapper, row.mapper_budget, row.eval_model) == ("norm-scale", "unlabeled", tgt)
    assert {"name": "norm-scale", "budget": "unlabeled"}.items() <= next(
        m for m in listed["mappers"] if m["name"] == "norm-scale").items()


def test_a_module_that_declares_no_spaces_is_refused_by_its_own_check_not_failed(capsys, micro_dirs, tiny_dataset,
                                                                                wide, tmp_path) -> None:
    """CLIP-LoRA declares no spaces, so identity cannot tell beforehand that its factors do not fit a wider tower:
    its own check says so while evaluating, and the run reports a refusal (no row), never a failed run."""
    from upgradebench.results import read_results

    src, tgt = f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"
    code, _, err = run_cli(capsys, "run", "--method", "clip-lora", "--source", src, "--target", tgt, "--target",
                           wide, "--dataset", tiny_dataset, "--shots", "2", "--config", "iters_per_shot=1",
                           "--results", str(tmp_path / "r"))
    assert code == 0, err
    assert f"refused: identity on {wide}" in err and "Traceback" not in err
    lora = read_results(tmp_path / "r").query("method == 'clip-lora'")
    assert sorted(lora.role) == ["base", "new"] and set(lora[lora.role == "new"].eval_model) == {tgt}


def test_eval_with_a_mapper_finds_the_source_and_reproduces_the_mapped_row(capsys, pair_names, tiny_dataset,
                                                                           tmp_path) -> None:
    from upgradebench.results import read_results

    _run_mapped(capsys, pair_names, tiny_dataset, tmp_path / "r", "vocab-map")
    rows = read_results(tmp_path / "r").query("method == 'coop' and role == 'mapped'")
    module = tmp_path / "r" / rows.run_id.iloc[0] / "module"
    out = run_json(capsys, "eval", "--module", str(module), "--model", pair_names[1], "--dataset", tiny_dataset,
                   "--mapper", "vocab-map")
    assert out["source"] == pair_names[0] and out["mapper"] == "vocab-map"  # the source its run's rows name
    assert out["top1"] == pytest.approx(rows.top1.iloc[0])
    code, _, err = run_cli(capsys, "eval", "--module", str(module), "--model", pair_names[1], "--dataset",
                           tiny_dataset, "--mapper", "vocab-map", "--source", pair_names[1])
    assert code == 2 and "was fitted on weights" in err and "--source" in err

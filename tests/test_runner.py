"""The runner and the run / eval / results commands, on micro models and a tiny dataset."""

from __future__ import annotations

import json
import os
import stat

import pytest

from upgradebench.data import get_dataset, load_fewshot
from upgradebench.features import FeatureCache
from upgradebench.models import load_vlm
from upgradebench.results import read_results, summarize

from .cli_helpers import run_cli, run_json
from .rows import blank_row


@pytest.fixture
def models(micro_dirs):
    return f"local-dir:{micro_dirs['clip']}", f"local-dir:{micro_dirs['eva']}"


def _run(capsys, models, tiny_dataset, results, *extra):
    src, tgt = models
    return run_json(capsys, "run", "--method", "coop", "--source", src, "--target", tgt, "--dataset", tiny_dataset,
                    "--shots", "2", "--views", "2", "--config", "epochs=3", "--config", "n_ctx=4",
                    "--results", str(results), *extra)


def test_run_writes_rows_module_and_zeroshot_reference(capsys, models, tiny_dataset, tmp_path):
    out = _run(capsys, models, tiny_dataset, tmp_path / "res", "--seed", "1")
    row = out["rows"][0]
    assert set(row) >= {"dataset", "Base", f"New {models[1]}", f"H {models[1]}", f"ZS {models[0]}"}
    df = read_results(tmp_path / "res")
    assert set(df.method) == {"coop", "zeroshot"}
    coop = df[df.method == "coop"]
    assert sorted(coop.role) == ["base", "new"]
    assert coop.n_test.tolist() == [120, 120]
    assert set(coop.method_variant) == {"epochs=3,n_ctx=4"}
    assert coop.source_fingerprint.iloc[0] == load_vlm(models[0], device="cpu").fingerprint
    new = coop[coop.role == "new"]
    assert new.eval_fingerprint.iloc[0] != new.source_fingerprint.iloc[0]
    module_dir = tmp_path / "res" / coop.run_id.iloc[0] / "module"
    assert sorted(p.name for p in module_dir.iterdir()) == ["module.json", "module.safetensors"]
    # the eval command reproduces the stored New accuracy from the saved module alone
    ev = run_json(capsys, "eval", "--module", str(module_dir), "--model", models[1], "--dataset", tiny_dataset)
    assert ev["top1"] == pytest.approx(new.top1.iloc[0])


def test_same_seed_same_accuracy_and_resume(capsys, models, tiny_dataset, tmp_path):
    a = _run(capsys, models, tiny_dataset, tmp_path / "a")["rows"][0]
    b = _run(capsys, models, tiny_dataset, tmp_path / "b")["rows"][0]
    assert a == b  # same seed, fresh results folders, same numbers
    before = read_results(tmp_path / "a")
    again = _run(capsys, models, tiny_dataset, tmp_path / "a")["rows"][0]
    assert again == a
    after = read_results(tmp_path / "a")
    assert len(after) == len(before) and after.created_at.tolist() == before.created_at.tolist()  # nothing redone


def test_different_seeds_sample_different_shots(tiny_dataset):
    ds = get_dataset(tiny_dataset)
    one, two = load_fewshot(ds, 4, 1), load_fewshot(ds, 4, 2)
    assert one.train != two.train
    assert load_fewshot(ds, 4, 1) == one  # reread from JSON, identical
    assert (ds.fewshot_dir / "shot_4-seed_1.json").is_file()
    assert len(one.val) == 4 * 4 and len(load_fewshot(ds, 2, 1).val) == 2 * 4  # min(K, 4) per class


def test_feature_cache_computes_once_and_views_do_not_depend_on_batch(micro_dirs, tiny_dataset):
    vlm = load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu")
    ds = get_dataset(tiny_dataset)
    items = ds.split("train")[:10]
    cache = FeatureCache()
    spec = vlm.train_transform_spec
    full = cache.get(vlm, ds, "train", items, spec, view=3)
    assert cache.computed == 10
    again = FeatureCache().get(vlm, ds, "train", items[4:6], spec, view=3)
    assert torch_equal(again, full[4:6])
    alone = FeatureCache(root=cache.root.parent / "other").get(vlm, ds, "train", items[5:6], spec, view=3)
    assert torch_equal(alone, full[5:6])  # view 3 of an item is the same whatever else is encoded
    other_view = cache.get(vlm, ds, "train", items[5:6], spec, view=4)
    assert not torch_equal(other_view, full[5:6])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-6))


def test_results_show_table2_layout(capsys, models, tiny_dataset, tmp_path):
    for seed in ("1", "2"):
        _run(capsys, models, tiny_dataset, tmp_path / "r", "--seed", seed)
    summary = run_json(capsys, "results", "show", str(tmp_path / "r"))
    coop = [r for r in summary if r["label"] == "coop[epochs=3,n_ctx=4]" and r["dataset"] == tiny_dataset][0]
    df = read_results(tmp_path / "r")
    c = df[df.method == "coop"]
    base = c[c.role == "base"].top1.mean()
    new = c[c.role == "new"].top1.mean()
    assert coop["base"] == pytest.approx(base) and coop["new"] == pytest.approx(new)
    assert coop["H"] == pytest.approx(2 * base * new / (base + new))
    assert coop["seeds"] == 2
    code, out, err = run_cli(capsys, "results", "show", str(tmp_path / "r"))
    assert code == 0 and "Average" in out and "Base" in out
    labels = {r["label"] for r in run_json(capsys, "results", "show", str(tmp_path / "r"), "--reference")}
    assert labels == {"zeroshot"}  # the coop runs above are a variant (epochs=3, n_ctx=4)
    labels = {r["label"] for r in run_json(capsys, "results", "show", str(tmp_path / "r"), "--method", "coop")}
    assert labels == {"zeroshot", "coop[epochs=3,n_ctx=4]"}
    assert run_json(capsys, "results", "show", str(tmp_path / "r"), "--dataset", "elsewhere") == []


def test_summarize_averages_per_dataset_means_of_in_distribution_datasets():
    import pandas as pd

    from upgradebench.results import COLUMNS

    rows = []
    # "a-ood" is a test set of the module trained on "a" (--ood): shown per dataset, kept out of the average
    for ds, seeds in {"a": [(80, 60), (90, 70)], "b": [(50, 50)], "a-ood": [(0, 0)]}.items():
        for seed, (b, n) in enumerate(seeds):
            for role, acc in (("base", b), ("new", n)):
                row = blank_row()
                row.update(schema_version=1, run_id=f"{ds[0]}{seed}", method="m", method_variant="", dataset=ds,
                           train_dataset=ds[0], shots=16, seed=seed, source="s", role=role, top1=float(acc), n_test=1,
                           eval_model="s" if role == "base" else "t", fit_seconds=0.0, eval_seconds=0.0)
                rows.append(row)
    s = summarize(pd.DataFrame(rows).astype({c: col.dtype for c, col in COLUMNS.items()}))
    avg = s[s.dataset == "Average"].iloc[0]
    assert avg.base == pytest.approx((85 + 50) / 2) and avg.new == pytest.approx((65 + 50) / 2)
    assert avg.H == pytest.approx(2 * 67.5 * 57.5 / 125)
    a = s[s.dataset == "a"].iloc[0]
    assert a.base_std == pytest.approx(7.0710678) and a.seeds == 2
    assert s[s.dataset == "a-ood"].iloc[0].base == 0 and avg.datasets == 2


@pytest.mark.parametrize("args,expect", [
    (["--method", "cop"], "Did you mean 'coop'"),
    (["--method", "coop", "--config", "nctx=4"], "n_ctx"),
    (["--method", "coop", "--config", "n_ctx=four"], "cannot read 'four'"),
    (["--method", "coop", "--source", "clipp"], "Did you mean 'clip'"),
    (["--method", "coop", "--dataset", "toy-nope"], "Unknown dataset"),
    (["--method", "coop", "--views", "0", "--dataset", "tiny-colours"], "--views"),
    (["--method", "coop", "--shots", "abc"], "Invalid value for '--shots'"),  # parse errors of (vendored) click
    (["--method", "coop", "--no-such-option"], "No such option"),
    (["--method", "coop", "--device", "junk"], "--device 'junk' is not a device"),
])
def test_bad_input_is_one_line_no_traceback(capsys, tiny_dataset, args, expect):
    code, out, err = run_cli(capsys, "run", *args)
    assert code == 2
    assert expect in err and "Traceback" not in err + out


def test_unwritable_results_fail_before_training(capsys, models, tiny_dataset, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IREAD | stat.S_IEXEC)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who can write anywhere (root); covered by the file case below")
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--dataset", tiny_dataset, "--results", str(locked))
    assert code == 2 and "not writable" in err


def test_results_path_that_is_a_file_fails_before_training(capsys, models, tiny_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    src, tgt = models
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--source", src, "--target", tgt,
                           "--dataset", tiny_dataset, "--results", str(blocker / "sub"))
    assert code == 2 and "not writable" in err
    assert not list(tmp_path.glob("**/*.safetensors"))  # nothing was computed


def test_missing_real_weights_fail_fast_with_the_fix(capsys, tiny_dataset):
    code, out, err = run_cli(capsys, "run", "--method", "coop", "--source", "clip", "--target", "eva-clip",
                             "--dataset", tiny_dataset)
    assert code == 2 and "Traceback" not in err
    for needle in ("'clip'", "ViT-B-16-quickgelu", "openai", "Hugging Face cache", "--pretrained"):
        assert needle in err, needle


def test_module_json_has_no_pickle(capsys, models, tiny_dataset, tmp_path):
    _run(capsys, models, tiny_dataset, tmp_path / "r")
    module_json = next((tmp_path / "r").glob("coop-*/module/module.json"))
    meta = json.loads(module_json.read_text())
    assert meta["method"] == "coop" and meta["tensors"] == ["ctx"]
    assert meta["provenance"]["run_identity"]["shots"] == 2


def test_threads_option_sets_torch_threads(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the option sets it for a torch not yet imported
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    calls: list[int] = []
    run_json(capsys, "--threads", "3", "methods", "list")
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("UPGRADEBENCH_THREADS", "2")
    run_json(capsys, "methods", "list")
    assert calls == [3, 2]
    code, _, err = run_cli(capsys, "--threads", "100000", "methods", "list", "--json")
    assert code == 0 and calls[-1] == 4 and "more than the 4 CPU cores" in err  # capped, not 100000 threads
    code, _, err = run_cli(capsys, "--threads", "0", "methods", "list")
    assert code == 2 and "--threads" in err


def _to_schema_1(results):
    """Make a results folder look as upgradebench wrote it before the ledger (schema 1)."""
    import shutil

    import pandas as pd

    for path in results.glob("*/*.parquet"):
        df = pd.read_parquet(path).drop(columns=["trainable_params", "needs_image_encoder"]).assign(schema_version=1)
        df.to_parquet(path, index=False)
        assert read_results(path).trainable_params.isna().all()  # migrated: unknown, not 0
    for ledger in results.glob("*/ledger"):
        shutil.rmtree(ledger)


def test_every_evaluation_writes_a_ledger_that_pairs_items_across_models(capsys, models, tiny_dataset, tmp_path):
    from upgradebench.guard import safe_name
    from upgradebench.ledger import ledger_path, read_ledger

    _run(capsys, models, tiny_dataset, tmp_path / "res")
    df = read_results(tmp_path / "res")
    assert len(df) == 4 and not df.trainable_params.isna().any()  # coop and zero-shot, base and new
    assert df[df.method == "coop"].trainable_params.tolist() == [4 * 64] * 2  # n_ctx=4 vectors of width 64
    assert df[df.method == "zeroshot"].trainable_params.tolist() == [0, 0]
    assert not df.needs_image_encoder.any()
    ledgers = {}
    for row in df.itertuples():
        path = ledger_path(tmp_path / "res" / row.run_id / f"{safe_name(row.eval_model)}--{row.dataset}.parquet")
        ledger = read_ledger(path, row.n_test, row.top1)
        assert ledger.eval_model.iloc[0] == row.eval_model and ledger.run_id.iloc[0] == row.run_id
        assert (ledger.correct == (ledger.label == ledger.pred)).all()
        assert (ledger.margin[ledger.correct] >= 0).all() and (ledger.margin[~ledger.correct] <= 0).all()
        ledgers[(row.method, row.role)] = ledger
    items = [ledger.item.tolist() for ledger in ledgers.values()]
    assert all(i == items[0] for i in items) and len(set(items[0])) == 120  # same ids, same order, all distinct


def test_old_rows_are_backfilled_from_the_saved_module_without_refitting(capsys, models, tiny_dataset, tmp_path):
    _run(capsys, models, tiny_dataset, tmp_path / "res")
    before = read_results(tmp_path / "res")
    fitted = before[before.method == "coop"].fit_seconds.max()
    weights = next((tmp_path / "res").glob("coop-*/module/module.safetensors"))
    stamp = weights.stat().st_mtime_ns
    _to_schema_1(tmp_path / "res")
    _run(capsys, models, tiny_dataset, tmp_path / "res")
    after = read_results(tmp_path / "res")
    assert weights.stat().st_mtime_ns == stamp  # the saved module was reused, not refitted
    assert after.top1.tolist() == before.top1.tolist() and after.created_at.tolist() == before.created_at.tolist()
    assert after[after.method == "coop"].fit_seconds.max() == fitted  # kept, not the 0 of a reused module
    assert after.trainable_params.tolist() == before.trainable_params.tolist()
    assert len(list((tmp_path / "res").glob("*/ledger/*.parquet"))) == 4


def test_schema_2_rows_are_rewritten_with_their_hash_and_the_same_values(capsys, models, tiny_dataset, tmp_path):
    import pandas as pd

    from upgradebench.results import has_row_hash

    _run(capsys, models, tiny_dataset, tmp_path / "res")
    before = read_results(tmp_path / "res")
    files = list((tmp_path / "res").glob("*/*.parquet"))
    for path in files:
        pd.read_parquet(path).drop(columns=["row_hash"]).assign(schema_version=2).to_parquet(path, index=False)
    assert not any(has_row_hash(p) for p in files)
    _run(capsys, models, tiny_dataset, tmp_path / "res")
    assert all(has_row_hash(p) for p in files)
    pd.testing.assert_frame_equal(read_results(tmp_path / "res"), before)


def test_backfill_refuses_a_row_its_module_does_not_reproduce(capsys, models, tiny_dataset, tmp_path):
    import pandas as pd

    from upgradebench.errors import UserError
    from upgradebench.runner import Runner, RunSpec

    _run(capsys, models, tiny_dataset, tmp_path / "res")
    _to_schema_1(tmp_path / "res")
    row_file = next(p for p in (tmp_path / "res").glob("coop-*/*.parquet"))
    pd.read_parquet(row_file).assign(top1=12.5).to_parquet(row_file, index=False)
    spec = RunSpec(method="coop", source=models[0], targets=[models[1]], dataset=tiny_dataset, shots=2, views=2,
                   config={"epochs": "3", "n_ctx": "4"})
    with pytest.raises(UserError, match=str(row_file.name)):
        Runner(tmp_path / "res").run(spec)
    assert read_results(row_file).top1.tolist() == [12.5]  # never silently overwritten


def test_oracle_fits_once_more_on_each_target(capsys, models, tiny_dataset, tmp_path):
    _run(capsys, models, tiny_dataset, tmp_path / "res", "--oracle")
    df = read_results(tmp_path / "res")
    oracle = df[df.role == "oracle"]
    assert oracle.method.tolist() == ["coop"] and oracle.source.tolist() == oracle.eval_model.tolist() == [models[1]]
    assert df[df.method == "coop"].run_id.nunique() == 2
    assert sorted(df[df.method == "coop"].role) == ["base", "new", "oracle"]


def test_a_changed_ood_test_set_is_evaluated_again_and_the_other_rows_reused(capsys, models, tiny_dataset, tmp_path):
    """An OOD test set is not part of the run id, so a row is reused only while its test set's fingerprint holds."""
    from upgradebench.data import DATASETS

    from .tiny_data import TinyColours

    class Ood(TinyColours):
        name = "tiny-colours-ood"

    class ChangedOod(Ood):
        template = "a picture of a {}."

    key = ["run_id", "eval_model", "dataset"]
    try:
        DATASETS.register(Ood.name, lambda root: Ood(root), num_classes=4, kind="test", replace=True)
        _run(capsys, models, tiny_dataset, tmp_path / "res", "--ood", Ood.name)
        before = read_results(tmp_path / "res").set_index(key)
        DATASETS.register(Ood.name, lambda root: ChangedOod(root), num_classes=4, kind="test", replace=True)
        _run(capsys, models, tiny_dataset, tmp_path / "res", "--ood", Ood.name)
        after = read_results(tmp_path / "res").set_index(key).loc[before.index]
    finally:
        DATASETS.unregister(Ood.name)
    ood = after.index.get_level_values("dataset") == Ood.name
    assert ood.sum() == 4  # coop and its zero-shot reference, each on the source and the target
    assert after[~ood].equals(before[~ood])  # the other rows reused as written
    assert set(before[ood].dataset_fingerprint) == {Ood().fingerprint}
    assert set(after[ood].dataset_fingerprint) == {ChangedOod().fingerprint} != {Ood().fingerprint}  # evaluated again
    assert len(read_results(tmp_path / "res")) == len(before)  # replaced, not added beside the stale rows


def test_run_says_what_it_did_fitted_then_reused(capsys, models, tiny_dataset, tmp_path):
    """`run` names each run folder and says fitted vs reused and whether rows were written (a resumed run that
    wrote nothing never says "rows written")."""
    src, tgt = models
    args = ["run", "--method", "coop", "--source", src, "--target", tgt, "--dataset", tiny_dataset, "--shots", "2",
            "--views", "2", "--config", "epochs=3", "--results", str(tmp_path / "res"), "--json"]
    code, out, err = run_cli(capsys, *args)
    first = json.loads(out)
    assert code == 0 and [(r["run"].split()[0], r["status"], r["rows_written"]) for r in first["runs"]] == [
        ("coop[epochs=3]", "fitted", 2), ("zeroshot", "fitted", 2)]
    assert first["rows_written"] == 4 and all((tmp_path / "res").joinpath(r["folder"]).is_dir() for r in first["runs"])
    assert all(f"{r['folder']}" in err for r in first["runs"])  # the run folders are named on stderr
    assert f"4 rows written under {tmp_path / 'res'}" in err
    code, out, err = run_cli(capsys, *args)
    again = json.loads(out)
    assert code == 0 and [r["status"] for r in again["runs"]] == ["reused", "reused"] and again["rows_written"] == 0
    assert "rows written" not in err and "nothing written" in err
    assert again["rows"] == first["rows"]


def test_the_planner_lists_every_run_and_the_runner_executes_only_the_plan_it_is_given(models, tiny_dataset,
                                                                                       tmp_path):
    from upgradebench.runner import Runner, RunSpec

    runner = Runner(tmp_path / "res", device="cpu")
    spec = RunSpec(method="coop", source=models[0], targets=[models[1]], dataset=tiny_dataset, shots=1000, views=2,
                   config={"epochs": "1", "n_ctx": "4"}, oracle=True)
    plans = runner.plan(spec)
    assert [(p.method.name, p.role, p.source, p.targets) for p in plans] == [
        ("coop", "base", models[0], (models[1],)), ("coop", "oracle", models[1], ()),
        ("zeroshot", "base", models[0], (models[1],))]
    largest = max(sum(y == c for _, y in get_dataset(tiny_dataset).split("train")) for c in range(4))
    # capped once, by the planner, for every run of the list
    assert largest < 1000 and {p.shots for p in plans} == {largest}
    outcome = runner.execute(plans[0])
    assert outcome.status == "fitted" and outcome.written == 2
    df = read_results(tmp_path / "res")
    assert set(df.method) == {"coop"} and set(df.role) == {"base", "new"}  # no zero-shot or oracle run added
    assert [p.name for p in (tmp_path / "res").iterdir()] == [outcome.folder.name]

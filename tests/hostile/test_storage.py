"""Hostile cases of the storage layer, met through the CLI as a user would meet them.

Each case damages or misuses a stored artefact (rows, modules, feature-cache and few-shot files, toy models,
temporary files, overlapping folders, concurrent writers) and asserts the exit code, the message, and that
no row was lost, duplicated or wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from upgradebench.paths import features_dir
from upgradebench.results import read_results

from ..cli_helpers import run_cli, run_json
from ..conftest import MICRO_EVA, make_micro

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(micro_dirs, tmp_path):
    """The micro source, and a copy of the micro target that a case may damage."""
    target = tmp_path / "eva"
    shutil.copytree(micro_dirs["eva"], target)
    return f"local-dir:{micro_dirs['clip']}", f"local-dir:{target}"


def _run(capsys, models, dataset, results, *extra) -> tuple[int, str, str]:
    src, tgt = models
    return run_cli(capsys, "run", "--method", "coop", "--source", src, "--target", tgt, "--dataset", dataset,
                   "--shots", "2", "--views", "1", "--config", "epochs=1", "--config", "n_ctx=2",
                   "--results", str(results), *extra)


def _rows(results: Path) -> pd.DataFrame:
    """The rows of a folder in a stable order, without the time they were written."""
    df = read_results(results)
    return df.sort_values(["run_id", "eval_model", "dataset"]).reset_index(drop=True)


@pytest.fixture
def finished(capsys, models, tiny_dataset, tmp_path):
    """A finished run: (results folder, its rows)."""
    results = tmp_path / "res"
    code, _, err = _run(capsys, models, tiny_dataset, results)
    assert code == 0, err
    return results, _rows(results)


def _coop_dir(results: Path) -> Path:
    return next(results.glob("coop-*"))


def _garble(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + 16] = bytes(b ^ 0x5A for b in data[i:i + 16])
    path.write_bytes(bytes(data))


# ---- integrity ---------------------------------------------------------------------------------------------------
def test_changed_target_weights_never_overwrite_rows(capsys, models, tiny_dataset, finished):
    results, before = finished
    make_micro(Path(models[1].split(":", 1)[1]), MICRO_EVA, seed=7)  # other weights under the same name
    code, _, err = _run(capsys, models, tiny_dataset, results)
    assert code == 2 and "model changed" in err and "--replace" in err and "Traceback" not in err
    pd.testing.assert_frame_equal(_rows(results), before)  # nothing lost or rewritten
    code, _, err = _run(capsys, models, tiny_dataset, results, "--replace")
    assert code == 0, err
    after = _rows(results)
    assert len(after) == len(before)  # replaced, not duplicated
    changed = after.eval_model == models[1]
    assert (after.eval_fingerprint[changed] != before.eval_fingerprint[changed]).all()
    assert after[~changed].equals(before[~changed])


def test_changed_source_weights_never_count_a_run_twice(capsys, micro_dirs, tiny_dataset, tmp_path):
    from ..conftest import MICRO_CLIP

    source = tmp_path / "clip"
    shutil.copytree(micro_dirs["clip"], source)
    models = f"local-dir:{source}", f"local-dir:{micro_dirs['eva']}"
    results = tmp_path / "res"
    assert _run(capsys, models, tiny_dataset, results)[0] == 0
    before = _rows(results)
    make_micro(source, MICRO_CLIP, seed=7)
    code, _, err = _run(capsys, models, tiny_dataset, results)
    assert code == 2 and "model changed" in err and "--replace" in err
    pd.testing.assert_frame_equal(_rows(results), before)
    code, _, err = _run(capsys, models, tiny_dataset, results, "--replace")
    assert code == 0, err
    after = _rows(results)
    assert len(after) == len(before) and set(after.run_id).isdisjoint(before.run_id)  # replaced, not added
    assert after.source_fingerprint.nunique() == 1 and (after.source_fingerprint != before.source_fingerprint).all()


def test_edited_row_is_reported_with_its_file(capsys, finished):
    results, before = finished
    path = next(_coop_dir(results).glob("*.parquet"))
    pd.read_parquet(path).assign(top1=99.0).to_parquet(path, index=False)  # row_hash kept, value changed
    code, out, err = run_cli(capsys, "results", "show", str(results))
    assert code == 2 and "row hash" in err and path.name in err and out == ""


def test_garbled_feature_cache_is_rebuilt_with_a_warning(capsys, models, tiny_dataset, finished):
    results, before = finished
    module = _coop_dir(results) / "module"
    ev = run_json(capsys, "eval", "--module", str(module), "--model", models[1], "--dataset", tiny_dataset)
    files = list(features_dir().rglob("test-*.safetensors"))
    assert files
    for f in files:
        _garble(f, 0.9)
    code, out, err = run_cli(capsys, "eval", "--module", str(module), "--model", models[1], "--dataset",
                             tiny_dataset, "--json")
    assert code == 0 and "computed again" in err
    assert json.loads(out)["top1"] == ev["top1"]  # the same number as from the intact cache
    assert ev["top1"] == before[(before.method == "coop") & (before.eval_model == models[1])].top1.iloc[0]


@pytest.mark.parametrize("damage", ["weights", "relabel", "config"])
def test_damaged_module_is_refused_and_rows_kept(capsys, models, tiny_dataset, finished, damage):
    results, before = finished
    module = _coop_dir(results) / "module"
    if damage == "weights":
        _garble(module / "module.safetensors", 0.9)
        expect = "module.safetensors"
    else:
        config = json.loads((module / "module.json").read_text())
        if damage == "relabel":
            config["method"] = "kgcoop"
            expect = "relabelled"
        else:
            config["meta"]["edited"] = True
            expect = "content hash"
        (module / "module.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "eval", "--module", str(module), "--model", models[1], "--dataset", tiny_dataset)
    assert code == 2 and expect in err and "fix:" in err and "Traceback" not in err
    for path in _coop_dir(results).glob("*.parquet"):
        path.unlink()  # a resume has to evaluate the module again: it must refuse it, not use it
    code, _, err = _run(capsys, models, tiny_dataset, results)
    assert code == 2 and expect in err
    kept = _rows(results)
    assert len(kept) == len(before) - 2 and set(kept.method) == {"zeroshot"}  # no wrong row written


def test_garbled_fewshot_file_is_sampled_again(capsys, models, tiny_dataset, finished, tmp_path):
    results, before = finished
    fewshot = next((Path(os.environ["UPGRADEBENCH_HOME"]) / "fewshot").rglob("*.json"))
    data = json.loads(fewshot.read_text())
    data["train"] = data["train"][::-1][:1] * len(data["train"])  # one image repeated: a silent wrong sample
    fewshot.write_text(json.dumps(data))
    code, _, err = _run(capsys, models, tiny_dataset, tmp_path / "again")
    assert code == 0 and "sampled again" in err
    again = _rows(tmp_path / "again")
    assert again.top1.tolist() == before.top1.tolist()


def test_damaged_toy_model_is_reported_by_zoo_and_never_used(capsys, tiny_dataset, tmp_path):
    from upgradebench.world.worlds import world_root

    killed = world_root() / "models" / ".toy-clip.4242.tmp"  # a build killed before it was renamed into place
    killed.mkdir(parents=True)
    (killed / "open_clip_model.safetensors").write_bytes(b"half")
    code, _, err = run_cli(capsys, "zoo", "build", "toy-clip")
    assert code == 0, err
    assert not killed.exists()
    assert run_json(capsys, "zoo", "verify")[0]["damaged"] is None
    weights = Path(run_json(capsys, "zoo", "list")[0]["path"]) / "open_clip_model.safetensors"
    _garble(weights)
    listing = run_json(capsys, "zoo", "list")
    assert "not the" in listing[0]["damaged"] or "unreadable" in listing[0]["damaged"]
    code, _, err = run_cli(capsys, "zoo", "verify")
    assert code == 2 and "toy-clip" in err and "--force" in err
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--source", "toy-clip", "--target",
                           "toy-eva", "--dataset", tiny_dataset, "--results", str(tmp_path / "res"))
    assert code == 2 and "damaged" in err and "Traceback" not in err
    assert not list((tmp_path / "res").rglob("*.parquet"))


def test_a_weights_file_that_is_no_checkpoint_is_a_one_line_error(capsys, tiny_dataset, tmp_path):
    """``--pretrained`` pointing at something open_clip cannot load (not a checkpoint, truncated) is named in one
    line with the fix, not a traceback from torch.load; nothing is written."""
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--source", "open_clip:ViT-B-32", "--pretrained",
                           str(bad), "--target", "toy-eva", "--dataset", tiny_dataset, "--results", str(tmp_path / "r"))
    assert code == 2 and "Traceback" not in err
    assert f"from {bad}" in " ".join(err.split()) and "checkpoint" in err
    assert not list((tmp_path / "r").rglob("*.parquet"))


def test_a_full_disk_is_a_one_line_error_and_the_same_command_resumes(capsys, models, tiny_dataset, tmp_path,
                                                                      monkeypatch):
    import errno

    from upgradebench import runner

    def full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runner, "write_rows", full)
    code, _, err = _run(capsys, models, tiny_dataset, tmp_path / "res")
    assert code == 2 and "Traceback" not in err
    assert "No space left on device" in err and str(tmp_path / "res") in " ".join(err.split()) and "resumes" in err
    monkeypatch.undo()
    code, out, err = _run(capsys, models, tiny_dataset, tmp_path / "res")
    assert code == 0, err
    assert len(_rows(tmp_path / "res")) == 4  # coop and zero-shot, each on source and target


# ---- ordinary use that gave wrong numbers -----------------------------------------------------------------------
def test_more_shots_than_images_takes_all_without_replacement(capsys, models, tiny_dataset, tmp_path):
    src, tgt = models
    args = ["run", "--method", "coop", "--source", src, "--target", tgt, "--dataset", tiny_dataset,
            "--views", "1", "--config", "epochs=1", "--config", "n_ctx=2", "--results", str(tmp_path / "res")]
    code, _, err = run_cli(capsys, *args, "--shots", "1000")
    assert code == 0 and "24 at most" in err and "without replacement" in err
    many = _rows(tmp_path / "res")
    assert set(many.shots) == {24}  # what was drawn, not what was asked
    code, _, err = run_cli(capsys, *args, "--shots", "24")
    assert code == 0, err
    assert _rows(tmp_path / "res").equals(many)  # the same run: nothing refitted or duplicated


def test_overlapping_folders_count_each_row_once(capsys, finished):
    results, before = finished
    once = run_json(capsys, "results", "show", str(results))
    code, out, err = run_cli(capsys, "results", "show", str(results), str(results), str(_coop_dir(results)),
                             "--json")
    assert code == 0 and "counted once" in err
    assert json.loads(out) == once
    copy = results.parent / "copy"
    shutil.copytree(results, copy)
    code, out, err = run_cli(capsys, "results", "show", str(results), str(copy), "--json")
    assert code == 0 and "counted once" in err and json.loads(out) == once
    path = next(_coop_dir(copy).glob("*.parquet"))
    from upgradebench.results import write_rows

    write_rows([read_results(path).iloc[0].to_dict() | {"top1": 1.0}], path)  # a valid row, another number
    code, _, err = run_cli(capsys, "results", "show", str(results), str(copy))
    assert code == 2 and "different top-1" in err and path.name in err


# ---- housekeeping --------------------------------------------------------------------------------------------------
def test_temporary_files_of_killed_writes_are_cleaned(capsys, models, tiny_dataset, finished):
    results, before = finished
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    from upgradebench.integrity import tmp_prefix

    run_dir = _coop_dir(results)
    prefix = tmp_prefix(run_dir / "x.parquet").replace(str(os.getpid()), dead)
    stale = run_dir / f"{prefix}abc.tmp"
    stale.write_bytes(b"half a parquet")
    live = run_dir / f"{tmp_prefix(run_dir / 'y.parquet')}abc.tmp"  # this process is alive: kept
    live.write_bytes(b"being written")
    cache_tmp = next(features_dir().rglob("*.safetensors")).parent / f"{prefix}def.tmp"
    cache_tmp.write_bytes(b"half a cache file")
    code, _, err = _run(capsys, models, tiny_dataset, results)
    assert code == 0, err
    assert not stale.exists() and live.exists()
    pd.testing.assert_frame_equal(_rows(results), before)
    prune = run_json(capsys, "cache", "prune", "--older-than", "1000")
    assert prune["tmp_files"] == 1 and prune["removed"] == [] and not cache_tmp.exists()


def test_cache_shows_sizes_and_prunes(capsys, models, tiny_dataset, finished, tmp_path):
    results, before = finished
    shown = run_json(capsys, "cache")
    assert shown["bytes"] == sum(p.stat().st_size for p in features_dir().rglob("*.safetensors")) > 0
    assert {e["model"] for e in shown["entries"]} == set(models) and {e["dataset"] for e in shown["entries"]} == {
        tiny_dataset}
    from upgradebench.data import get_dataset

    assert {e["dataset_fingerprint"] for e in shown["entries"]} == {get_dataset(tiny_dataset).fingerprint}
    # a toy model's features whose fingerprint is no longer built are pruned by --unbuilt; the others stay
    assert run_cli(capsys, "zoo", "build", "toy-clip")[0] == 0
    fake = features_dir() / "0123456789abcdef" / f"{tiny_dataset}-x" / "test.safetensors"
    fake.parent.mkdir(parents=True)
    source = next(features_dir().rglob("*.safetensors"))
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        save_file({"features": f.get_tensor("features")}, str(fake), metadata={**f.metadata(), "model": "toy-clip"})
    # so are a toy dataset's features from before its definition changed; its current ones stay
    from upgradebench.world.datasets import ToyDataset

    old, current = "0123456789abcdef", ToyDataset("toy-shape").fingerprint
    toy = {fp: source.parent.parent / f"toy-shape-{fp}" for fp in (old, current)}
    for folder in toy.values():
        folder.mkdir()
        shutil.copy(source, folder / source.name)
    pruned = run_json(capsys, "cache", "prune", "--unbuilt")
    assert sorted(pruned["removed"]) == sorted([str(fake.parent), str(toy[old])])
    assert not fake.parent.parent.exists() and not toy[old].exists() and toy[current].exists()
    shutil.rmtree(toy[current])
    assert run_json(capsys, "cache", "prune", "--all", "--dry-run")["bytes"] == shown["bytes"]
    assert run_json(capsys, "cache")["bytes"] == shown["bytes"]
    run_json(capsys, "cache", "prune", "--all")
    assert run_json(capsys, "cache")["entries"] == []
    code, _, err = _run(capsys, models, tiny_dataset, tmp_path / "fresh")
    assert code == 0, err
    assert _rows(tmp_path / "fresh").top1.tolist() == before.top1.tolist()  # recomputed, same numbers
    code, _, err = run_cli(capsys, "cache", "prune")
    assert code == 2 and "--all" in err


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from upgradebench.data import DATASETS, dataset_names, get_dataset
    from upgradebench.features import FeatureCache
    from upgradebench.models import load_vlm
    from tests.tiny_data import TinyColours

    dataset_names()
    DATASETS.register("tiny-colours", lambda root: TinyColours(root), num_classes=4, kind="test", replace=True)
    model, half, barrier = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    vlm, ds = load_vlm(model, device="cpu"), get_dataset("tiny-colours")
    items = ds.split("test")[half::2]
    compute = FeatureCache._compute

    def in_step(self, *args):  # both processes have read the (empty) file before either writes
        (barrier / str(half)).touch()
        while len(list(barrier.iterdir())) < 2:
            time.sleep(0.01)
        return compute(self, *args)

    FeatureCache._compute = in_step
    FeatureCache(workers=0).get(vlm, ds, "test", items, vlm.test_transform_spec)
""")


def test_concurrent_writers_of_one_cache_key_lose_nothing(models, tiny_dataset, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(CONCURRENT)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "UPGRADEBENCH_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), models[0], str(h), str(barrier)], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for h in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    from safetensors import safe_open

    (path,) = features_dir().rglob("test-*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        refs, feats = json.loads(f.metadata()["refs"]), f.get_tensor("features")
    assert sorted(refs) == sorted(f"test/{i}" for i in range(120)) and len(feats) == 120

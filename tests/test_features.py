"""Feature extraction: one decode per image for all views, parallel decoding identical to one process,
resumable cache files, and ``upgradebench features``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from upgradebench import features as feature_module
from upgradebench.data import DATASETS, get_dataset, load_fewshot
from upgradebench.errors import UserError
from upgradebench.features import FeatureCache, encode_views
from upgradebench.models import load_vlm
from upgradebench.paths import features_dir

from .cli_helpers import run_cli, run_json
from .coop_fixtures import build, truncated_jpeg
from .tiny_data import TinyColours


class CountingColours(TinyColours):
    """TinyColours with ``n`` train items, counting decodes, and optionally failing at one item."""

    def __init__(self, n: int = 40, fail_at: int | None = None) -> None:
        super().__init__()
        self.n, self.fail_at, self.decoded = n, fail_at, 0

    def split(self, name):
        return [(f"train/{i}", i % 4) for i in range(self.n)] if name == "train" else super().split(name)

    def load_image(self, ref):
        if self.fail_at is not None and ref == f"train/{self.fail_at}":
            raise UserError(f"Image {ref} is unreadable.", "replace it")
        self.decoded += 1
        return super().load_image(ref)


@pytest.fixture(scope="module")
def vlm(micro_dirs):
    return load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu")


def reference_features(vlm, dataset, items, spec, view):
    """What extraction did before workers: decode per view, seed by (item, view), full transform, batches of 128
    (a short one padded to 128)."""
    tf, out = spec.build(), []
    for start in range(0, len(items), 128):
        images = []
        for ref, _ in items[start:start + 128]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(feature_module._seed_of(ref, view or 0))
                images.append(tf(dataset.load_image(ref)))
        batch = torch.stack(images)
        padded = torch.cat([batch, torch.zeros(128 - len(batch), *batch.shape[1:])])
        out.append(vlm.encode_images(padded)[:len(batch)].float())
    return torch.cat(out)


@pytest.mark.parametrize("train", [True, False])
def test_pixels_then_normalize_is_bit_identical_to_the_full_transform(vlm, train):
    spec = vlm.train_transform_spec if train else vlm.test_transform_spec
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        full = spec.build()(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        pixels = spec.pixels()(image)
    assert pixels.dtype == torch.uint8
    assert torch.equal(spec.normalize(pixels.unsqueeze(0))[0], full)


def test_get_views_decodes_once_and_equals_the_one_view_path(vlm, tmp_path):
    dataset = CountingColours(n=140)  # more than one encoding batch
    items, spec = dataset.split("train"), vlm.train_transform_spec
    cache = FeatureCache(root=tmp_path, workers=0)
    views = cache.get_views(vlm, dataset, "train", items, spec, views=range(3))
    assert dataset.decoded == len(items)  # one decode per image for its 3 views
    assert cache.computed == 3 * len(items)
    for v in range(3):
        assert torch.equal(views[v], reference_features(vlm, dataset, items, spec, v))
    again = FeatureCache(root=tmp_path, workers=0)
    assert torch.equal(again.get(vlm, dataset, "train", items[5:9], spec, view=2), views[2, 5:9])
    assert again.computed == 0  # each view has its own cache file, read back as it was written


def test_get_views_computes_only_what_each_view_misses(vlm, tmp_path):
    dataset = CountingColours(n=20)
    items, spec = dataset.split("train"), vlm.train_transform_spec
    FeatureCache(root=tmp_path, workers=0).get_views(vlm, dataset, "train", items[:10], spec, views=[0, 1])
    cache = FeatureCache(root=tmp_path, workers=0)
    feats = cache.get_views(vlm, dataset, "train", items, spec, views=[0, 1, 2])
    assert cache.computed == 10 * 2 + 20  # views 0, 1: the last 10 items; view 2: all 20
    assert torch.equal(feats[2], reference_features(vlm, dataset, items, spec, 2))


def test_parallel_extractor_gives_the_features_of_one_process(vlm, tmp_path):
    dataset = CountingColours(n=60)
    refs = [ref for ref, _ in dataset.split("train")]
    for spec, views in ((vlm.train_transform_spec, [0, 4, 7]), (vlm.test_transform_spec, [None])):
        # batches of 20 items regroup chunks of 8 across chunk boundaries
        one = list(encode_views(vlm, dataset, refs, spec, views, workers=0, batch_size=20))
        two = list(encode_views(vlm, dataset, refs, spec, views, workers=2, batch_size=20))
        assert [f.shape for f in one] == [(len(views), 20, vlm.embed_dim)] * 3
        assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_an_unreadable_image_in_a_worker_is_a_user_error_with_its_fix(vlm, tmp_path):
    build(tmp_path, "dtd")
    (tmp_path / "dtd" / "images" / "braided" / "braided_0007.jpg").write_bytes(truncated_jpeg())
    dataset = get_dataset("dtd", tmp_path)
    refs = [ref for split in ("train", "val", "test") for ref, _ in dataset.split(split)]
    assert len(refs) >= 2 * feature_module.CHUNK  # so that two workers do start
    with pytest.raises(UserError, match="braided_0007.jpg is unreadable") as info:
        list(encode_views(vlm, dataset, refs, vlm.test_transform_spec, [None], workers=2))
    assert "--skip-corrupt" in info.value.fix


def test_an_interrupted_extraction_resumes_from_the_last_write(vlm, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_module, "FLUSH_EVERY", 1)  # write after every batch of 128
    spec = vlm.test_transform_spec
    broken = CountingColours(n=300, fail_at=200)
    with pytest.raises(UserError):
        FeatureCache(root=tmp_path, workers=0).get(vlm, broken, "train", broken.split("train"), spec)
    healthy = CountingColours(n=300)
    cache = FeatureCache(root=tmp_path, workers=0)
    feats = cache.get(vlm, healthy, "train", healthy.split("train"), spec)
    assert cache.computed == 300 - 128  # the first batch was on disk before the failure
    assert torch.equal(feats, reference_features(vlm, healthy, healthy.split("train"), spec, None))


@pytest.fixture
def counting_dataset():
    DATASETS.register("counting-colours", lambda root: CountingColours(), num_classes=4, kind="test", replace=True)
    yield "counting-colours"
    DATASETS.unregister("counting-colours")


def test_features_command_precomputes_what_a_run_needs_and_resumes(capsys, micro_dirs, counting_dataset):
    model = f"local-dir:{micro_dirs['clip']}"
    args = ["features", "--model", model, "--dataset", counting_dataset, "--shots", "2", "--seed", "1",
            "--seed", "2", "--views", "3", "--workers", "0"]
    (row,) = run_json(capsys, *args)["rows"]
    dataset = get_dataset(counting_dataset)
    shots = [load_fewshot(dataset, 2, seed) for seed in (1, 2)]
    train = {ref for split in shots for ref, _ in split.train}
    val = {ref for split in shots for ref, _ in split.val}
    assert row["test"] == 120 and row["train"] == 2 * 8 and row["val"] == 2 * 8
    assert row["encoded"] == 120 + len(train) * (3 + 1) + len(val)  # 3 views and the test transform of train
    assert run_json(capsys, *args)["rows"][0]["encoded"] == 0  # everything is cached: nothing recomputed

    source_files = {p: p.stat().st_mtime_ns for p in features_dir().glob("*/*/*.safetensors")}
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--source", model, "--target",
                           f"local-dir:{micro_dirs['eva']}", "--dataset", counting_dataset, "--shots", "2",
                           "--views", "3", "--config", "epochs=1", "--workers", "0", "--json")
    assert code == 0, err
    # the run found every source feature it needed under the keys the command wrote
    assert {p: p.stat().st_mtime_ns for p in source_files} == source_files
    assert len(list(features_dir().glob("*/"))) == 2  # and computed the target's test features only


@pytest.mark.parametrize("option, value, message", [("--model", "toy-clp", "Unknown model"),
                                                    ("--dataset", "toy-shap", "Unknown dataset")])
def test_features_command_rejects_unknown_names(capsys, option, value, message):
    args = {"--model": "toy-clip", "--dataset": "toy-shape", option: value}
    code, _, err = run_cli(capsys, "features", "--model", args["--model"], "--dataset", args["--dataset"])
    assert code == 2 and message in err and "Traceback" not in err


def test_dataset_all_is_every_dataset_found(tmp_path):
    from upgradebench.cli.features import _datasets
    from upgradebench.runner import Runner

    build(tmp_path, "dtd", "eurosat")
    names = {ds.name for ds in _datasets(Runner(tmp_path / "results", data_root=tmp_path), ["all"], tmp_path)}
    assert {"dtd", "eurosat", "toy-shape", "toy-shape-sketch"} <= names  # on disk, and the procedural world
    assert "oxford_pets" not in names and "imagenet" not in names  # registered but not under this root


def test_an_items_features_do_not_depend_on_what_else_was_computed_with_it(vlm, tmp_path):
    dataset = CountingColours(n=12)
    items, spec = dataset.split("train"), vlm.train_transform_spec
    together = FeatureCache(root=tmp_path / "together", workers=0).get(vlm, dataset, "train", items, spec, view=1)
    grown = FeatureCache(root=tmp_path / "grown", workers=0)
    for i in (5, 2, 11):  # a cache grown by a few items at a time, as few-shot seeds grow it
        grown.get(vlm, dataset, "train", items[i:i + 1], spec, view=1)
    grown.get(vlm, dataset, "train", items[:3], spec, view=1)
    assert torch.equal(grown.get(vlm, dataset, "train", items, spec, view=1), together)


def test_a_feature_file_copied_over_another_keys_is_computed_again(vlm, micro_dirs, tmp_path, caplog):
    """The file name holds only part of the key: the key recorded inside is compared with the one it is read for."""
    eva = load_vlm(f"local-dir:{micro_dirs['eva']}", device="cpu")
    dataset = CountingColours(n=12)
    items, cache = dataset.split("train"), FeatureCache(root=tmp_path, workers=0)
    own = cache.get(eva, dataset, "train", items, eva.test_transform_spec)
    other = cache.get(vlm, dataset, "train", items, vlm.test_transform_spec, view=None)
    # another model's features (same width, same items) copied over this model's file
    eva_file = cache.path(eva, dataset, "train", eva.test_transform_spec, None)
    eva_file.write_bytes(cache.path(vlm, dataset, "train", vlm.test_transform_spec, None).read_bytes())
    assert not torch.equal(own, other)
    again = FeatureCache(root=tmp_path, workers=0)
    assert torch.equal(again.get(eva, dataset, "train", items, eva.test_transform_spec), own)
    assert again.computed == len(items)  # computed again, not read
    assert "was computed for another key: model_fingerprint" in caplog.text

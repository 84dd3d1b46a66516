"""CoOp-format loaders on miniature copies of the 15 layouts: class-name rules, labels, split sizes,
few-shot sampling, bad input, and the ``upgradebench datasets`` commands."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from upgradebench.cli import main
from upgradebench.data import DATASETS, dataset_names, get_dataset, load_fewshot
from upgradebench.data.coop import SKIP_FILE
from upgradebench.data.coop_spec import coop_classname, coop_specs
from upgradebench.errors import UserError

from .coop_fixtures import A_SUBSET, EXPECTED, FULL_CLASSES, IMAGENET_CLASSES, R_SUBSET, build, truncated_jpeg

# docs/methods.md, "Templates" (CoOp's table).
TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.", "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.", "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
}
FULL_SIZES = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102,
              "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101,
              "imagenet_v2": 1000, "imagenet_sketch": 1000, "imagenet_a": 200, "imagenet_r": 200}
OOD = {"imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory) -> Path:
    """All 15 miniature layouts, shared read-only by the tests of this module."""
    return build(tmp_path_factory.mktemp("coop"))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``upgradebench ARGS``; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return exit_info.value.code, out, err


def split_file(root: Path, name: str) -> Path:
    spec = coop_specs()[name]
    return root / spec.folder / spec.split_file


# --- the table ------------------------------------------------------------------------------------------

def test_all_15_datasets_are_registered_with_their_metadata():
    dataset_names()
    for name, size in FULL_SIZES.items():
        meta = DATASETS.entry(name).meta
        assert meta["kind"] == "coop" and meta["num_classes"] == size and meta["folder"]
        assert meta["ood_of"] == ("imagenet" if name in OOD else None)


def test_templates_follow_methods_md():
    for name in FULL_SIZES:
        assert coop_specs()[name].template == TEMPLATES.get(name, "a photo of a {}.")


def test_class_name_rules():
    caltech, eurosat, ucf = (coop_specs()[n] for n in ("caltech101", "eurosat", "ucf101"))
    assert [coop_classname(n, caltech) for n in ("airplanes", "Faces", "Leopards", "Motorbikes", "face")] == \
        ["airplane", "face", "leopard", "motorbike", "face"]
    assert coop_classname("AnnualCrop", eurosat) == "Annual Crop Land"
    assert coop_classname("SeaLake", eurosat) == "Sea or Lake"
    assert coop_classname("Highway or Road", eurosat) == "Highway or Road"
    for raw in ("ApplyEyeMakeup", "Apply_Eye_Makeup"):
        assert coop_classname(raw, ucf) == "Apply Eye Makeup"
    assert coop_classname("YoYo", ucf) == "Yo Yo"
    assert coop_classname("apple_pie", coop_specs()["food101"]) == "apple pie"


# --- loading every layout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_loads_with_coop_class_names_labels_and_sizes(coop_root, name):
    dataset = get_dataset(name, coop_root)
    expected = EXPECTED[name]
    assert dataset.classnames == expected["classnames"]
    assert dataset.template == coop_specs()[name].template
    assert [s for s in ("train", "val", "test") if dataset.has_split(s)] == list(expected["per_class"])
    for split, per_class in expected["per_class"].items():
        items = dataset.split(split)
        assert Counter(y for _, y in items) == {y: per_class for y in range(len(expected["classnames"]))}
        assert len({ref for ref, _ in items}) == len(items)
    ref = dataset.split("test")[0][0]
    image = dataset.load_image(ref)
    assert image.mode == "RGB" and image.size == (8, 8)
    assert dataset.fewshot_dir == coop_root / coop_specs()[name].folder / "split_fewshot"


def test_imagenet_val_is_held_out_of_train_and_test_is_the_official_val(coop_root):
    dataset = get_dataset("imagenet", coop_root)
    train, val, test = (dataset.split(s) for s in ("train", "val", "test"))
    assert not {r for r, _ in train} & {r for r, _ in val}
    assert all(r.startswith("train/") for r, _ in train + val) and all(r.startswith("val/") for r, _ in test)
    # the held-out image is the last of its class in sorted order
    assert ("train/n01440764/n01440764_1004.JPEG", 0) in val


def test_ood_variants_map_to_imagenet_labels(coop_root):
    for name, subset in (("imagenet_a", A_SUBSET), ("imagenet_r", R_SUBSET)):
        dataset = get_dataset(name, coop_root)
        assert dataset.num_classes == 200 and dataset.parent_labels == subset
        assert [y for _, y in dataset.split("test")] == list(range(200))  # re-indexed over sorted folders
        assert dataset.classnames[0] == FULL_CLASSES[subset[0]][1]
        assert all("_" not in c for c in dataset.classnames)
    assert get_dataset("imagenet_a", coop_root).classnames[0] == "tench"
    for name in ("imagenet_v2", "imagenet_sketch"):
        assert get_dataset(name, coop_root).parent_labels == list(range(len(IMAGENET_CLASSES)))
    with pytest.raises(UserError, match="no 'train' split"):
        get_dataset("imagenet_a", coop_root).split("train")


def test_fgvc_reads_variants_and_image_ids(coop_root):
    dataset = get_dataset("fgvc_aircraft", coop_root)
    assert dataset.classnames[3] == "F/A-18"
    assert dataset.split("train")[0] == ("1025794.jpg", 0)


def test_caltech_split_with_raw_folder_names_drops_ignored_classes_and_renames(tmp_path):
    build(tmp_path, "caltech101")
    raw = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes"]
    entries = [[f"{c}/image_0001.jpg", y, c] for y, c in enumerate(raw)]
    split_file(tmp_path, "caltech101").write_text(json.dumps({"train": entries, "val": entries, "test": entries}))
    dataset = get_dataset("caltech101", tmp_path)
    assert dataset.classnames == ["face", "leopard", "motorbike", "accordion", "airplane"]
    assert dataset.split("train") == [("Faces/image_0001.jpg", 0), ("Leopards/image_0001.jpg", 1),
                                      ("Motorbikes/image_0001.jpg", 2), ("accordion/image_0001.jpg", 3),
                                      ("airplanes/image_0001.jpg", 4)]


def test_eurosat_split_with_folder_names_gets_coop_long_names(tmp_path):
    build(tmp_path, "eurosat")
    entries = [["SeaLake/SeaLake_1.jpg", 0, "SeaLake"], ["PermanentCrop/PermanentCrop_1.jpg", 1, "PermanentCrop"]]
    split_file(tmp_path, "eurosat").write_text(json.dumps({"train": entries, "val": entries, "test": entries}))
    assert get_dataset("eurosat", tmp_path).classnames == ["Sea or Lake", "Permanent Crop Land"]


def test_fingerprint_is_stable_and_follows_the_splits(tmp_path):
    build(tmp_path, "dtd")
    first = get_dataset("dtd", tmp_path).fingerprint
    assert get_dataset("dtd", tmp_path).fingerprint == first
    path = split_file(tmp_path, "dtd")
    data = json.loads(path.read_text())
    data["test"].pop()
    path.write_text(json.dumps(data))
    assert get_dataset("dtd", tmp_path).fingerprint != first


# --- few-shot sampling --------------------------------------------------------------------------------------

def test_fewshot_is_deterministic_written_as_json_and_reused(tmp_path, monkeypatch):
    build(tmp_path, "dtd")
    split = load_fewshot(get_dataset("dtd", tmp_path), 2, 1)
    path = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    stored = json.loads(path.read_text())
    assert [tuple(i) for i in stored["train"]] == split.train and [tuple(i) for i in stored["val"]] == split.val
    assert Counter(y for _, y in split.train) == {0: 2, 1: 2, 2: 2}
    assert Counter(y for _, y in split.val) == {0: 2, 1: 2, 2: 2}
    train_refs = {r for r, _ in get_dataset("dtd", tmp_path).split("train")}
    assert {r for r, _ in split.train} <= train_refs and not {r for r, _ in split.val} & train_refs

    # reused: a fresh dataset object reads the file instead of sampling again
    def no_sampling(*args):
        raise AssertionError("sampled again")

    # the package exports a function named like the module, so reach the module through sys.modules
    monkeypatch.setattr(sys.modules["upgradebench.data.fewshot"], "sample_fewshot", no_sampling)
    assert load_fewshot(get_dataset("dtd", tmp_path), 2, 1) == split
    monkeypatch.undo()

    path.unlink()
    assert load_fewshot(get_dataset("dtd", tmp_path), 2, 1) == split  # a pure function of (dataset, K, seed)
    assert load_fewshot(get_dataset("dtd", tmp_path), 2, 2).train != split.train


def test_a_fewshot_file_copied_over_another_seeds_is_sampled_again(tmp_path, caplog):
    """The key a sample records (dataset, fingerprint, K, seed) is compared with the key it is read for."""
    build(tmp_path, "dtd")
    dataset = get_dataset("dtd", tmp_path)
    seed1, seed2 = load_fewshot(dataset, 2, 1), load_fewshot(dataset, 2, 2)
    folder = tmp_path / "dtd" / "split_fewshot"
    (folder / "shot_2-seed_2.json").write_text((folder / "shot_2-seed_1.json").read_text())
    assert seed1.train != seed2.train
    assert load_fewshot(get_dataset("dtd", tmp_path), 2, 2) == seed2
    assert "was drawn for seed 1 (not 2)" in caplog.text


def test_fewshot_val_has_min_k_4_per_class(tmp_path):
    build(tmp_path, "dtd", "imagenet")
    eight = load_fewshot(get_dataset("dtd", tmp_path), 8, 1)
    # 3 per class on disk: all of them, without replacement (Dassl), and K is recorded as 3
    assert eight.shots == 3 and Counter(y for _, y in eight.train) == {0: 3, 1: 3, 2: 3}
    assert len(set(eight.train)) == len(eight.train)
    assert Counter(y for _, y in eight.val) == {0: 2, 1: 2, 2: 2}  # min(K, 4) asked, 2 per class on disk
    imagenet = get_dataset("imagenet", tmp_path)
    one = load_fewshot(imagenet, 1, 1)
    assert Counter(y for _, y in one.val) == {y: 1 for y in range(5)}
    assert not {r for r, _ in one.val} & {r for r, _ in imagenet.split("train")}


def test_damaged_fewshot_file_is_sampled_again_with_a_warning(tmp_path, caplog):
    build(tmp_path, "dtd")
    dataset = get_dataset("dtd", tmp_path)
    path = tmp_path / "dtd" / "split_fewshot" / "shot_1-seed_1.json"
    split = load_fewshot(dataset, 1, 1)
    for damage in ("[]", path.read_text().replace(split.train[0][0], split.train[1][0])):
        path.write_text(damage)
        assert load_fewshot(dataset, 1, 1) == split
        assert str(path) in caplog.text
        caplog.clear()


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_ref", ["../../etc/passwd", "/etc/passwd", "banded/../../x.jpg"])
def test_split_paths_escaping_the_dataset_are_rejected(tmp_path, capsys, bad_ref):
    build(tmp_path, "oxford_pets")
    path = split_file(tmp_path, "oxford_pets")
    data = json.loads(path.read_text())
    data["val"][1][0] = bad_ref
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as info:
        get_dataset("oxford_pets", tmp_path).split("train")
    assert str(path) in info.value.message and "val[1]" in info.value.message and bad_ref in info.value.message
    code, _, err = cli(capsys, "datasets", "show", "oxford_pets", "--data-root", str(tmp_path))
    assert code == 2 and "escapes" in err and "val[1]" in err
    code, out, _ = cli(capsys, "datasets", "check", "oxford_pets", "--data-root", str(tmp_path))
    assert code == 1 and "escapes" in out


def test_fgvc_image_ids_escaping_the_dataset_are_rejected(tmp_path):
    build(tmp_path, "fgvc_aircraft")
    path = tmp_path / "fgvc_aircraft" / "images_variant_test.txt"
    path.write_text("../secret 707-320\n")
    with pytest.raises(UserError, match=r"images_variant_test\.txt:1.*escapes"):
        get_dataset("fgvc_aircraft", tmp_path).split("test")


def test_load_image_rejects_escaping_references(coop_root):
    with pytest.raises(UserError, match="escapes"):
        get_dataset("dtd", coop_root).load_image("../dtd/images/banded/banded_0001.jpg")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"train": [], "val": []}', 'lists "train", "val" and "test"'),
    ('{"train": [["a.jpg", "0", "banded"]], "val": [], "test": []}', "train[0]"),
    ('{"train": [["a.jpg", 1, "banded"]], "val": [], "test": []}', "label 0 has no entry"),
    ('{"train": [["a.jpg", 0, "banded"], ["b.jpg", 0, "blotchy"]], "val": [], "test": []}', "'blotchy' here"),
])
def test_malformed_split_file_names_the_file_and_the_problem(tmp_path, capsys, content, problem):
    build(tmp_path, "dtd")
    path = split_file(tmp_path, "dtd")
    path.write_text(content)
    with pytest.raises(UserError) as info:
        _ = get_dataset("dtd", tmp_path).classnames
    assert str(path) in info.value.message and problem in info.value.message
    code, _, err = cli(capsys, "datasets", "show", "dtd", "--data-root", str(tmp_path))
    assert code == 2 and path.name in err and "fix:" in err


def test_malformed_classnames_and_missing_class_folders(tmp_path):
    build(tmp_path, "imagenet", "imagenet_a")
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\nn01443537\n")
    with pytest.raises(UserError, match=r"classnames\.txt:2: expected '<wnid> <class name>'"):
        _ = get_dataset("imagenet", tmp_path).classnames
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\nn09999999 unicorn\n")
    with pytest.raises(UserError, match=r"1 of 2 class folders are missing under .*train: n09999999"):
        _ = get_dataset("imagenet", tmp_path).classnames
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "n09999999").mkdir()
    with pytest.raises(UserError, match="'n09999999' is not a wnid"):
        _ = get_dataset("imagenet_a", tmp_path).classnames


def test_corrupt_and_truncated_images(tmp_path, capsys):
    build(tmp_path, "dtd")
    images = tmp_path / "dtd" / "images"
    (images / "banded" / "banded_0001.jpg").write_bytes(truncated_jpeg())
    (images / "blotchy" / "blotchy_0006.jpg").write_bytes(b"not an image")
    dataset = get_dataset("dtd", tmp_path)
    for ref in ("banded/banded_0001.jpg", "blotchy/blotchy_0006.jpg"):
        with pytest.raises(UserError, match="unreadable") as info:
            dataset.load_image(ref)
        assert str(images / ref) in info.value.message and "--skip-corrupt" in info.value.fix

    code, out, _ = cli(capsys, "datasets", "check", "dtd", "--data-root", str(tmp_path), "--json")
    report = json.loads(out)[0]
    assert code == 1 and not report["complete"]
    by_split = {s["split"]: s for s in report["splits"]}
    assert list(by_split["train"]["unreadable_examples"]) == ["banded/banded_0001.jpg"]
    assert "truncated" in by_split["train"]["unreadable_examples"]["banded/banded_0001.jpg"]
    assert list(by_split["test"]["unreadable_examples"]) == ["blotchy/blotchy_0006.jpg"]
    assert (by_split["train"]["unreadable"], by_split["val"]["unreadable"]) == (1, 0)

    code, out, _ = cli(capsys, "datasets", "check", "dtd", "--data-root", str(tmp_path), "--skip-corrupt")
    assert code == 0 and "now left out" in out
    skipped = json.loads((tmp_path / "dtd" / SKIP_FILE).read_text())["images"]
    assert set(skipped) == {"banded/banded_0001.jpg", "blotchy/blotchy_0006.jpg"}
    dataset = get_dataset("dtd", tmp_path)
    assert len(dataset.split("train")) == 8 and len(dataset.split("test")) == 5
    code, _, _ = cli(capsys, "datasets", "check", "dtd", "--data-root", str(tmp_path))
    assert code == 0


def test_check_reports_absent_images_missing_files_and_folders(tmp_path, capsys):
    build(tmp_path, "food101", "fgvc_aircraft", "imagenet")
    (tmp_path / "food-101" / "images" / "baklava" / "1005675.jpg").unlink()
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").unlink()
    os.rename(tmp_path / "imagenet" / "images" / "val", tmp_path / "imagenet" / "images" / "val_")

    code, out, _ = cli(capsys, "datasets", "check", "food101", "fgvc_aircraft", "imagenet", "sun397",
                       "--data-root", str(tmp_path))
    assert code == 1
    assert "test: 1 of 6 images are absent" in out and "baklava/1005675.jpg" in out
    assert "images_variant_val.txt is missing" in out
    assert "test folder" in out and "images/val is missing" in out
    assert "SUN397 folder" in out and "fix:" in out

    code, out, _ = cli(capsys, "datasets", "check", "food101", "--data-root", str(tmp_path), "--exists-only", "--json")
    assert code == 1 and json.loads(out)[0]["splits"][2]["absent_examples"] == ["baklava/1005675.jpg"]


def test_check_without_names_checks_what_is_on_disk(tmp_path, capsys):
    build(tmp_path, "dtd", "ucf101")
    code, out, err = cli(capsys, "datasets", "check", "--data-root", str(tmp_path), "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["dtd", "ucf101"]
    assert all(r["complete"] and r["num_classes"] == 3 for r in json.loads(out))
    code, out, _ = cli(capsys, "datasets", "check", "dtd", "--data-root", str(tmp_path))
    assert code == 0 and "ok" in out and "where the full DescribableTextures has 47" in out
    code, _, err = cli(capsys, "datasets", "check", "--data-root", str(tmp_path / "empty"))
    assert code == 2 and "No CoOp-format dataset" in err


def test_list_shows_every_dataset_with_classes_and_presence(tmp_path, capsys, monkeypatch):
    build(tmp_path, "dtd", "imagenet_r")
    monkeypatch.setenv("UPGRADEBENCH_DATA", str(tmp_path))
    code, out, _ = cli(capsys, "datasets", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == set(dataset_names()) and set(FULL_SIZES) <= set(rows)
    assert {n for n, r in rows.items() if r["kind"] == "coop" and r["found"]} == {"dtd", "imagenet_r"}
    assert rows["imagenet_r"]["num_classes"] == 200 and rows["imagenet_r"]["ood_of"] == "imagenet"
    assert rows["toy-pattern"]["num_classes"] == get_dataset("toy-pattern").num_classes and rows["toy-pattern"]["found"]
    code, out, _ = cli(capsys, "datasets", "list", "--data-root", str(tmp_path))
    assert code == 0 and "imagenet_sketch" in out


def test_show_and_unknown_names(coop_root, capsys):
    code, out, _ = cli(capsys, "datasets", "show", "ucf101", "--data-root", str(coop_root), "--json")
    info = json.loads(out)
    assert code == 0 and info["classnames"] == ["Apply Eye Makeup", "Yo Yo", "Tai Chi"]
    assert info["splits"] == {"train": 9, "val": 6, "test": 6}
    code, _, err = cli(capsys, "datasets", "check", "eurosatt", "--data-root", str(coop_root))
    assert code == 2 and "Did you mean 'eurosat'" in err


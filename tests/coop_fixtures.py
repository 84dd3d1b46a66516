"""Miniature copies of the 15 CoOp layouts: real folder and file names, real split-file formats.

Each builder writes a few tiny JPEGs per class under ``root`` and returns nothing; ``EXPECTED`` says
what the loader must find (class names after CoOp's rules, split sizes). Split-file datasets get 3
train, 2 val and 2 test images per class; ImageNet gets 5 train images per class (one is held out as
val) and 2 val images (its test split).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path

from PIL import Image

PER_SPLIT = {"train": 3, "val": 2, "test": 2}

# Real first lines of CoOp's ImageNet classnames.txt.
IMAGENET_CLASSES = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
                    ("n01491361", "tiger shark"), ("n01494475", "hammerhead")]
# 1000 classes for ImageNet-A/-R: the 5 real ones first (they sort first), then well-formed fake wnids.
FULL_CLASSES = IMAGENET_CLASSES + [(f"n{2000000 + 1000 * i:08d}", f"synthetic_class_{i}") for i in range(995)]
A_SUBSET = list(range(0, 1000, 5))
R_SUBSET = list(range(2, 1000, 5))


@cache
def jpeg(shade: int, size: int = 8) -> bytes:
    """A tiny JPEG of one colour (``size=64`` gives noise, large enough to truncate meaningfully)."""
    if size > 8:
        rng = random.Random(shade)
        image = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    else:
        image = Image.new("RGB", (size, size), (shade % 256, (7 * shade) % 256, (13 * shade) % 256))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image(path: Path, shade: int = 0) -> None:
    """Write a tiny JPEG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(shade))


def _split_json(root: Path, folder: str, images: str, split_file: str, classnames: list[str],
                path_of: Callable[[int, int], str]) -> None:
    """A split_zhou dataset: PER_SPLIT images per class written under ``images``, listed in the JSON."""
    split: dict[str, list] = {s: [] for s in PER_SPLIT}
    for label, name in enumerate(classnames):
        i = 0
        for s, n in PER_SPLIT.items():
            for _ in range(n):
                rel = path_of(label, i)
                write_image(root / folder / images / rel, label * 10 + i)
                split[s].append([rel, label, name])
                i += 1
    (root / folder / split_file).write_text(json.dumps(split))


CALTECH_FOLDERS = ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes"]


def caltech101(root: Path) -> None:
    """caltech-101/101_ObjectCategories + split_zhou_Caltech101.json (CoOp's renamed names; the two
    ignored folders exist on disk but are not in the split, as in the real download)."""
    names = ["face", "leopard", "motorbike", "accordion", "airplane"]
    _split_json(root, "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", names,
                lambda y, i: f"{CALTECH_FOLDERS[y]}/image_{i + 1:04d}.jpg")
    for ignored in ("BACKGROUND_Google", "Faces_easy"):
        write_image(root / "caltech-101" / "101_ObjectCategories" / ignored / "image_0001.jpg")


PET_BREEDS = ["Abyssinian", "american_bulldog", "Bengal"]


def oxford_pets(root: Path) -> None:
    """oxford_pets/images/<Breed>_<n>.jpg + split_zhou_OxfordPets.json (lower-case breed names)."""
    _split_json(root, "oxford_pets", "images", "split_zhou_OxfordPets.json", [b.lower() for b in PET_BREEDS],
                lambda y, i: f"{PET_BREEDS[y]}_{i + 1}.jpg")


def stanford_cars(root: Path) -> None:
    """stanford_cars/{cars_train,cars_test}/<n>.jpg, paths relative to the dataset folder itself."""
    names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"]
    _split_json(root, "stanford_cars", ".", "split_zhou_StanfordCars.json", names,
                lambda y, i: f"cars_{'test' if i >= 5 else 'train'}/{10 * y + i + 1:05d}.jpg")


def oxford_flowers(root: Path) -> None:
    """oxford_flowers/jpg/image_<n>.jpg + split_zhou_OxfordFlowers.json."""
    names = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    _split_json(root, "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", names,
                lambda y, i: f"image_{10 * y + i + 1:05d}.jpg")


FOODS = ["apple_pie", "baby_back_ribs", "baklava"]


def food101(root: Path) -> None:
    """food-101/images/<dish>/<id>.jpg + split_zhou_Food101.json (names with underscores)."""
    _split_json(root, "food-101", "images", "split_zhou_Food101.json", FOODS,
                lambda y, i: f"{FOODS[y]}/{1005649 + 10 * y + i}.jpg")


SUN_DIRS = ["a/abbey", "a/airplane_cabin", "a/apartment_building/outdoor"]


def sun397(root: Path) -> None:
    """sun397/SUN397/<letter>/<scene>[/<in|outdoor>]/sun_*.jpg + split_zhou_SUN397.json."""
    names = ["abbey", "airplane_cabin", "outdoor apartment_building"]
    _split_json(root, "sun397", "SUN397", "split_zhou_SUN397.json", names,
                lambda y, i: f"{SUN_DIRS[y]}/sun_a{y}b{i}qrimafwbiv.jpg")


DTD_CLASSES = ["banded", "blotchy", "braided"]


def dtd(root: Path) -> None:
    """dtd/images/<texture>/<texture>_<n>.jpg + split_zhou_DescribableTextures.json."""
    _split_json(root, "dtd", "images", "split_zhou_DescribableTextures.json", DTD_CLASSES,
                lambda y, i: f"{DTD_CLASSES[y]}/{DTD_CLASSES[y]}_{i + 1:04d}.jpg")


EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway"]
EUROSAT_NAMES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road"]


def eurosat(root: Path) -> None:
    """eurosat/2750/<Class>/<Class>_<n>.jpg + split_zhou_EuroSAT.json (CoOp's long names)."""
    _split_json(root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_NAMES,
                lambda y, i: f"{EUROSAT_FOLDERS[y]}/{EUROSAT_FOLDERS[y]}_{i + 1}.jpg")


UCF_ACTIONS = ["ApplyEyeMakeup", "YoYo", "TaiChi"]
UCF_FOLDERS = ["Apply_Eye_Makeup", "Yo_Yo", "Tai_Chi"]


def ucf101(root: Path) -> None:
    """ucf101/UCF-101-midframes/<Split_Action>/v_<Action>_gXX_cYY.jpg + split_zhou_UCF101.json."""
    _split_json(root, "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", UCF_FOLDERS,
                lambda y, i: f"{UCF_FOLDERS[y]}/v_{UCF_ACTIONS[y]}_g{8 + i:02d}_c01.jpg")


FGVC_VARIANTS = ["707-320", "727-200", "A300B4", "F/A-18"]


def fgvc_aircraft(root: Path) -> None:
    """fgvc_aircraft/images/<id>.jpg + variants.txt + images_variant_{train,val,test}.txt."""
    base = root / "fgvc_aircraft"
    base.mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("\n".join(FGVC_VARIANTS) + "\n")
    image_id = 1025794
    for s, n in PER_SPLIT.items():
        lines = []
        for variant in FGVC_VARIANTS:
            for _ in range(n):
                write_image(base / "images" / f"{image_id:07d}.jpg", image_id)
                lines.append(f"{image_id:07d} {variant}")
                image_id += 1
        (base / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")


def _classnames_txt(path: Path, classes: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in classes))


def imagenet(root: Path) -> None:
    """imagenet/classnames.txt + images/train/<wnid>/<wnid>_<n>.JPEG (5) + images/val/<wnid>/ (2)."""
    base = root / "imagenet"
    _classnames_txt(base / "classnames.txt", IMAGENET_CLASSES)
    for y, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for i in range(5):
            write_image(base / "images" / "train" / wnid / f"{wnid}_{1000 + i}.JPEG", y)
        for i in range(2):
            write_image(base / "images" / "val" / wnid / f"ILSVRC2012_val_{10 * y + i + 1:08d}.JPEG", y)


def imagenet_v2(root: Path) -> None:
    """imagenetv2/classnames.txt + imagenetv2-matched-frequency-format-val/<line index>/<hash>.jpeg (2)."""
    base = root / "imagenetv2"
    _classnames_txt(base / "classnames.txt", IMAGENET_CLASSES)
    for y in range(len(IMAGENET_CLASSES)):
        for i in range(2):
            write_image(base / "imagenetv2-matched-frequency-format-val" / str(y) / f"{y}f{i}e3a9.jpeg", y)


def imagenet_sketch(root: Path) -> None:
    """imagenet-sketch/classnames.txt + images/<wnid>/sketch_<n>.JPEG (2)."""
    base = root / "imagenet-sketch"
    _classnames_txt(base / "classnames.txt", IMAGENET_CLASSES)
    for y, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for i in range(2):
            write_image(base / "images" / wnid / f"sketch_{i}.JPEG", y)


def _subset(root: Path, folder: str, images: str, subset: list[int]) -> None:
    base = root / folder
    _classnames_txt(base / "classnames.txt", FULL_CLASSES)
    for c in subset:
        write_image(base / images / FULL_CLASSES[c][0] / f"0.{c:06d}.jpg", c)
    (base / images / "README.txt").write_text("200 of the 1000 ImageNet classes\n")


def imagenet_a(root: Path) -> None:
    """imagenet-adversarial/classnames.txt (1000 lines) + imagenet-a/<wnid>/ for 200 classes + README.txt."""
    _subset(root, "imagenet-adversarial", "imagenet-a", A_SUBSET)


def imagenet_r(root: Path) -> None:
    """imagenet-rendition/classnames.txt (1000 lines) + imagenet-r/<wnid>/ for another 200 classes."""
    _subset(root, "imagenet-rendition", "imagenet-r", R_SUBSET)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "imagenet": imagenet, "caltech101": caltech101, "oxford_pets": oxford_pets, "stanford_cars": stanford_cars,
    "oxford_flowers": oxford_flowers, "food101": food101, "fgvc_aircraft": fgvc_aircraft, "sun397": sun397,
    "dtd": dtd, "eurosat": eurosat, "ucf101": ucf101, "imagenet_v2": imagenet_v2,
    "imagenet_sketch": imagenet_sketch, "imagenet_a": imagenet_a, "imagenet_r": imagenet_r,
}

_SPLIT_SIZES = {"train": 3, "val": 2, "test": 2}
_TEST_ONLY = {"test": 2}

EXPECTED: dict[str, dict] = {
    "imagenet": {"classnames": [n for _, n in IMAGENET_CLASSES], "per_class": {"train": 4, "val": 1, "test": 2}},
    "caltech101": {"classnames": ["face", "leopard", "motorbike", "accordion", "airplane"], "per_class": _SPLIT_SIZES},
    "oxford_pets": {"classnames": ["abyssinian", "american bulldog", "bengal"], "per_class": _SPLIT_SIZES},
    "stanford_cars": {"classnames": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"],
                      "per_class": _SPLIT_SIZES},
    "oxford_flowers": {"classnames": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
                       "per_class": _SPLIT_SIZES},
    "food101": {"classnames": ["apple pie", "baby back ribs", "baklava"], "per_class": _SPLIT_SIZES},
    "fgvc_aircraft": {"classnames": FGVC_VARIANTS, "per_class": _SPLIT_SIZES},
    "sun397": {"classnames": ["abbey", "airplane cabin", "outdoor apartment building"], "per_class": _SPLIT_SIZES},
    "dtd": {"classnames": DTD_CLASSES, "per_class": _SPLIT_SIZES},
    "eurosat": {"classnames": EUROSAT_NAMES, "per_class": _SPLIT_SIZES},
    "ucf101": {"classnames": ["Apply Eye Makeup", "Yo Yo", "Tai Chi"], "per_class": _SPLIT_SIZES},
    "imagenet_v2": {"classnames": [n for _, n in IMAGENET_CLASSES], "per_class": _TEST_ONLY},
    "imagenet_sketch": {"classnames": [n for _, n in IMAGENET_CLASSES], "per_class": _TEST_ONLY},
    "imagenet_a": {"classnames": [FULL_CLASSES[c][1].replace("_", " ") for c in A_SUBSET], "per_class": {"test": 1}},
    "imagenet_r": {"classnames": [FULL_CLASSES[c][1].replace("_", " ") for c in R_SUBSET], "per_class": {"test": 1}},
}
"""Per dataset: class names after CoOp's rules, and images per class in each split."""


def build(root: Path, *names: str) -> Path:
    """Build the miniature layouts ``names`` (default: all 15) under ``root``; return ``root``."""
    for name in names or BUILDERS:
        BUILDERS[name](root)
    return root


def truncated_jpeg() -> bytes:
    """The first half of a 64x64 noise JPEG: the header parses, the pixel data ends early."""
    data = jpeg(1, size=64)
    return data[: len(data) // 2]

"""Shared fixtures: an isolated UPGRADEBENCH_HOME and micro open_clip models saved in local-dir format."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from upgradebench.world.modelio import create_model, save_local_dir

# Tests use tiny models: one intra-op thread avoids OpenMP spin-waiting, which on a loaded 2-core machine
# turned every micro op into a scheduler time slice (10 ms) and the suite into minutes.
torch.set_num_threads(1)

MICRO_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3}
MICRO_CLIP = {"embed_dim": 32, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
              "text_cfg": MICRO_TEXT}
MICRO_EVA = {"embed_dim": 32, "custom_text": True,
             "vision_cfg": {"image_size": 32, "timm_model_name": "ub_eva_micro_s32", "timm_model_pretrained": False,
                            "timm_pool": "token", "timm_proj": None},
             "text_cfg": MICRO_TEXT}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes under its own UPGRADEBENCH_HOME, never the user's cache, in the micro world.

    The micro world builds in about a second; a test that needs the default world (shipped weights, installed in
    seconds) says so.
    """
    monkeypatch.setenv("UPGRADEBENCH_HOME", str(tmp_path_factory.mktemp("ubhome")))
    monkeypatch.setenv("UPGRADEBENCH_WORLD", "micro")
    monkeypatch.delenv("UPGRADEBENCH_DATA", raising=False)


def make_micro(folder: Path, cfg: dict, seed: int) -> Path:
    """Save a randomly initialised micro model (deterministic in ``seed``) to ``folder``."""
    torch.manual_seed(seed)
    model = create_model(copy.deepcopy(cfg))
    return save_local_dir(model, cfg, folder)


@pytest.fixture(scope="session")
def micro_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders of a micro CLIP and a micro EVA-style CustomTextCLIP (local-dir format)."""
    root = tmp_path_factory.mktemp("micro_models")
    return {"clip": make_micro(root / "clip", MICRO_CLIP, 0), "eva": make_micro(root / "eva", MICRO_EVA, 1)}


@pytest.fixture(scope="session")
def _committed_rows_once():
    from upgradebench.results import read_results

    return read_results(Path(__file__).resolve().parents[1] / "results" / "runs")


@pytest.fixture
def committed_rows(_committed_rows_once):
    """The committed reference rows (``results/runs``), read once per session (seconds: two thousand files); each
    test gets its own copy."""
    return _committed_rows_once.copy()


@pytest.fixture
def tiny_dataset():
    """Register the tiny colour dataset for one test."""
    from upgradebench.data import DATASETS, dataset_names

    from .tiny_data import TinyColours

    dataset_names()  # load the built-ins first so the registry is complete
    DATASETS.register("tiny-colours", lambda root: TinyColours(root), num_classes=4, kind="test", replace=True)
    yield "tiny-colours"
    DATASETS.unregister("tiny-colours")


@pytest.fixture(scope="module", params=["clip", "eva"])
def vlm(request, micro_dirs):
    """Each micro model in turn: the micro CLIP, then the micro EVA-style CustomTextCLIP."""
    from upgradebench.models import load_vlm

    return load_vlm(f"local-dir:{micro_dirs[request.param]}", device="cpu")


@pytest.fixture(scope="module")
def pair(micro_dirs):
    """(source, target): the micro CLIP and the micro EVA-style CustomTextCLIP (same widths, same text architecture)."""
    from upgradebench.models import load_vlm

    return (load_vlm(f"local-dir:{micro_dirs['clip']}", device="cpu"),
            load_vlm(f"local-dir:{micro_dirs['eva']}", device="cpu"))


def random_features(vlm, n: int = 7, seed: int = 3) -> torch.Tensor:
    """``n`` random image features of ``vlm``'s width (deterministic in ``seed``)."""
    return torch.randn(n, vlm.embed_dim, generator=torch.Generator().manual_seed(seed))


def fewshot_task(vlm, dataset_name: str, shots: int = 2, seed: int = 1, views: int = 2):
    """A ``shots``-shot task of a registered dataset on ``vlm``, with a fresh feature cache."""
    from upgradebench import FewShotTask
    from upgradebench.data import get_dataset, load_fewshot
    from upgradebench.features import FeatureCache

    dataset = get_dataset(dataset_name)
    return FewShotTask(dataset, load_fewshot(dataset, shots, seed), vlm, FeatureCache(), views=views)

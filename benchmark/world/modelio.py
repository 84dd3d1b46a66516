"""Creating open_clip models from config dicts and saving them in open_clip's ``local-dir:`` format.

A saved folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_model.safetensors``, so plain ``open_clip.create_model_and_transforms("local-dir:...")`` loads it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path, write_json

if TYPE_CHECKING:  # reading a config (zoo list) needs no torch
    from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def create_model(model_cfg: dict[str, Any]) -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` or (``custom_text: true``) ``CustomTextCLIP``."""
    from open_clip.model import CLIP, CustomTextCLIP

    from .trunks import register_trunks

    register_trunks()
    cfg = copy.deepcopy(model_cfg)
    custom = cfg.pop("custom_text", False)
    return (CustomTextCLIP if custom else CLIP)(**cfg)


def save_local_dir(model: nn.Module, model_cfg: dict[str, Any], folder: str | Path, extra: dict | None = None) -> Path:
    """Save ``model`` into ``folder`` in open_clip's local-dir format (weights first, config last)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    size = model_cfg["vision_cfg"].get("image_size", 224)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    if extra:
        config["upgradebench"] = extra
    write_json(folder / "open_clip_config.json", config)
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``open_clip_config.json`` of a local-dir folder."""
    return json.loads((Path(folder) / "open_clip_config.json").read_text())

"""A module's files: ``module.safetensors`` + ``module.json`` (never a pickle), written with content hashes and
checked against them, and against the method that fitted the module, when read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, write_json
from .discovery import get_method
from .errors import UserError
from .integrity import json_intact, tensors_digest, with_digest

if TYPE_CHECKING:
    from .contract import Module

MODULE_WEIGHTS = "module.safetensors"
MODULE_CONFIG = "module.json"


def save_module(module: Module, folder: str | Path, method: str, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``module.safetensors`` and ``module.json`` into ``folder``; ``method`` is the one that fitted it.

    ``module.json`` records the content hash of the tensors and its own (``integrity.py``); the weights
    are written first, so a kill between the two leaves no ``module.json`` and the module counts as absent.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.tensors().items()}
    if tensors:
        with atomic_path(folder / MODULE_WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
    write_json(folder / MODULE_CONFIG, with_digest({
        "method": method, "meta": module.meta(), "tensors": sorted(tensors),
        "tensors_sha256": tensors_digest(tensors), "provenance": provenance or {}}))
    return folder


def load_module(folder: str | Path, device: str | torch.device = "cpu") -> Module:
    """Load a saved module: the JSON names its method, whose Module class rebuilds it. Never unpickles.

    The module is checked before use: ``module.json`` and the tensors against their content hashes (modules
    saved before hashes existed have none to check), and the method named in ``module.json`` against the one
    that fitted it (its provenance) and against what its Module class can rebuild.
    """
    folder = Path(folder)
    config_path = folder / MODULE_CONFIG
    if not config_path.is_file():
        raise UserError(f"{folder} is not a saved module ({MODULE_CONFIG} is missing).",
                        "pass the module/ folder of a run, e.g. RESULTS/<run_id>/module")
    refit = (f"restore {folder} from a copy, or delete its run folder {folder.parent} and re-run the run "
             "to fit it again")
    try:
        config = json.loads(config_path.read_text())
        name = config["method"]
        fitted_by = (config.get("provenance") or {}).get("run_identity", {}).get("method", name)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{config_path} is malformed ({exc}).", refit) from None
    if fitted_by != name:
        raise UserError(f"{config_path} names method {name!r}, but the module was fitted by {fitted_by!r} "
                        "(relabelled).", refit)
    if json_intact(config) is False:
        raise UserError(f"{config_path} does not match its content hash (damaged or edited).", refit)
    method = get_method(name)
    weights = folder / MODULE_WEIGHTS
    try:
        tensors = load_file(str(weights), device="cpu") if config.get("tensors") else {}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise UserError(f"{weights} is unreadable ({type(exc).__name__}: {exc}).", refit) from None
    if "tensors_sha256" in config and tensors_digest(tensors) != config["tensors_sha256"]:
        raise UserError(f"{weights} does not match the content hash recorded in {config_path} (damaged or "
                        "replaced).", refit)
    try:
        module = method.module_class.from_state({k: v.to(device) for k, v in tensors.items()}, config["meta"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise UserError(f"{folder} does not hold a {name!r} module ({type(exc).__name__}: {exc}).", refit) from None
    return module

"""upgradebench: do plug-in modules fine-tuned on one vision-language model survive its upgrade?

The public API that methods and plugins use is re-exported here (``__all__``): the contract (``Method``,
``Module``, ``transient``; ``contract.py``), what ``fit`` receives (``FewShotTask``, ``VLM``), config ranges
(``ranged``; ``config.py``), the mapper contract (``Mapper``, ``TargetData``, ``carry``; ``mapping.py``) and
the spaces it maps (``TOKEN``, ``JOINT``, ``fit_map``; ``spaces.py``), CoOp's training recipe (``training.py``),
the prompt building blocks (``prompting.py``), the registry (``discovery.py``), saved modules
(``module_io.py``) and the method test kit (``check_method``; ``testing.py``). Every name is imported on first
use, so that ``upgradebench --help`` starts without torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("upgradebench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

import importlib
from typing import TYPE_CHECKING, Any

from .errors import UnknownNameError, UserError

if TYPE_CHECKING:
    from .config import Range, ranged
    from .contract import COVECTOR, REPEATED, UNIT, Method, Module, transient
    from .discovery import available_mappers, available_methods, get_mapper, get_method
    from .mapping import BUDGETS, LABELED, NONE, UNLABELED, Mapper, Refused, TargetData, carry, width_problem
    from .models import VLM, ModelSpec, load_vlm
    from .module_io import load_module
    from .prompting import (
        ClassPrompts,
        assemble,
        class_prompts,
        clean_name,
        condition_embeddings,
        encode_prompts,
        text_embedding,
        zeroshot_text_features,
    )
    from .spaces import JOINT, TOKEN, LinearMap, fit_map, token_map
    from .task import FewShotTask
    from .testing import check_method
    from .training import SGDRecipe, coop_epochs, fit_epochs, fit_recipe

# public name -> the module that defines it; these import torch, so they load on first access (PEP 562)
_LAZY = {
    **dict.fromkeys(["COVECTOR", "REPEATED", "UNIT", "Method", "Module", "transient"], "contract"),
    **dict.fromkeys(["Range", "ranged"], "config"),
    **dict.fromkeys(["available_mappers", "available_methods", "get_mapper", "get_method"], "discovery"),
    **dict.fromkeys(["BUDGETS", "LABELED", "NONE", "UNLABELED", "Mapper", "Refused", "TargetData", "carry",
                     "width_problem"], "mapping"),
    **dict.fromkeys(["JOINT", "TOKEN", "LinearMap", "fit_map", "token_map"], "spaces"),
    **dict.fromkeys(["VLM", "ModelSpec", "load_vlm"], "models"),
    "load_module": "module_io",
    **dict.fromkeys(["ClassPrompts", "assemble", "class_prompts", "clean_name", "condition_embeddings",
                     "encode_prompts", "text_embedding", "zeroshot_text_features"], "prompting"),
    "FewShotTask": "task",
    "check_method": "testing",
    **dict.fromkeys(["SGDRecipe", "coop_epochs", "fit_epochs", "fit_recipe"], "training"),
}


def __getattr__(name: str) -> Any:
    """The public names of the harness's modules, imported on first access (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUDGETS", "COVECTOR", "JOINT", "LABELED", "NONE", "REPEATED", "TOKEN", "UNIT", "UNLABELED", "LinearMap", "Mapper",
    "Refused", "TargetData", "available_mappers", "carry", "fit_map", "get_mapper", "token_map", "width_problem",
    "VLM", "ClassPrompts", "FewShotTask", "Method", "ModelSpec", "Module", "Range", "SGDRecipe", "UnknownNameError",
    "UserError", "__version__", "assemble", "available_methods", "check_method", "class_prompts", "clean_name",
    "condition_embeddings", "coop_epochs", "encode_prompts", "fit_epochs", "fit_recipe", "get_method", "load_module",
    "load_vlm", "ranged", "text_embedding", "transient", "zeroshot_text_features",
]

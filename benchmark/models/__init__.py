"""The model layer: aliases (data), checkpoint resolution, fingerprints and the :class:`VLM` wrapper."""

from .loader import describe_model, load_vlm, resolve_device, weights_problem
from .spec import ModelSpec, alias_names, builtin_aliases, parse_model
from .vlm import VLM

__all__ = ["VLM", "ModelSpec", "alias_names", "builtin_aliases", "describe_model", "load_vlm", "parse_model", "resolve_device", "weights_problem"]

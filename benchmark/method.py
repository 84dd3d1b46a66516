"""Kept so that ``from upgradebench.method import ...`` in code written before the contract's split still works.

The contract now lives in ``upgradebench.contract`` (``Method``, ``Module``), ``upgradebench.module_io`` (saving and
loading modules), ``upgradebench.config`` (config ranges and parsing) and ``upgradebench.discovery`` (the registry);
plugins import all of it from ``upgradebench`` itself. Remove this module once nothing imports it.
"""

from __future__ import annotations

from .contract import Method, Module, transient
from .discovery import METHODS, available_methods, discover_methods, get_method, method_entry
from .module_io import MODULE_CONFIG, MODULE_WEIGHTS, load_module

__all__ = ["METHODS", "MODULE_CONFIG", "MODULE_WEIGHTS", "Method", "Module", "available_methods",
           "discover_methods", "get_method", "load_module", "method_entry", "transient"]

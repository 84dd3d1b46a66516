"""Method discovery through the ``upgradebench.methods`` entry points, and the contract check of a loaded method.

Built-in methods are registered through the same entry-point group as third-party ones; built-ins win a name
clash, and a plugin that fails to import, or breaks the contract (``upgradebench.contract``), is reported with its
distribution and the fix, and skipped by ``methods list``. The entry point's name is the method's name: the
registry holds it (:func:`registered_name`, what ``SomeMethod.name`` reads); no class is ever written to.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .config import check_ranges
from .contract import Method, Module
from .errors import UserError
from .registry import Entry, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "upgradebench.methods"


def _plugin(entry: Entry) -> str:
    """How an error names a registered method: its name, its class and its distribution."""
    version = f" {entry.origin_version}" if entry.origin_version else ""
    return f"method {entry.name!r} ({entry.target} from {entry.origin}{version})"


def check_contract(entry: Entry, cls: Any) -> None:
    """Refuse a method class that breaks the plugin contract (``upgradebench.contract.Method``), naming the plugin
    and the fix: ``fit`` implemented, a ``version``, a dataclass ``Config`` whose defaults are complete and within
    its fields' ranges, a dataclass ``module_class`` subclassing ``Module``, and no ``name`` attribute that
    disagrees with the entry point's."""
    who = _plugin(entry)
    if cls.__dict__.get("name", entry.name) != entry.name:
        raise UserError(f"{who} has a name attribute {cls.__dict__['name']!r}.",
                        f"drop the name attribute of {entry.target}: the entry point names the method")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise UserError(f"{who} does not implement {missing}.",
                        "implement fit(self, source: VLM, task: FewShotTask, config: Config, seed: int) -> Module")
    version = getattr(cls, "version", None)
    if not isinstance(version, str) or not version:
        raise UserError(f"{who} has no version.", 'add a class attribute version = "1" (bump it whenever its results '
                        "would change)")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise UserError(f"{who} has no dataclass Config.", "add a class attribute Config: a @dataclass whose field "
                        "defaults are the reference values (upgradebench.ranged(...) declares a numeric range)")
    required = [f.name for f in dataclasses.fields(config)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise UserError(f"{who}: Config fields {', '.join(required)} have no default.",
                        "give every Config field its reference value as its default")
    try:
        check_ranges(entry.name, config())
    except UserError as exc:
        raise UserError(f"{who}: a default of its Config is out of its own range: {exc.message}",
                        "fix the default or the range (upgradebench.ranged) in its Config") from None
    module = getattr(cls, "module_class", None)
    if not (isinstance(module, type) and issubclass(module, Module) and dataclasses.is_dataclass(module)):
        raise UserError(f"{who} has no module_class that is a dataclass subclassing upgradebench.Module.",
                        "add a class attribute module_class: a @dataclass subclass of upgradebench.Module whose "
                        "fields are the module's state")


METHODS: Registry[type[Method]] = Registry("method", base=Method, check=check_contract)
_discovered = False
_broken: dict[str, str] = {}


def discover_methods(force: bool = False) -> Registry[type[Method]]:
    """Fill the method registry from the ``upgradebench.methods`` entry points (once).

    Built-ins (distribution ``upgradebench``) are registered first and win a name clash. Third-party
    plugins are skipped when ``UPGRADEBENCH_NO_PLUGINS=1``.
    """
    global _discovered
    if _discovered and not force:
        return METHODS
    _broken.clear()
    no_plugins = os.environ.get("UPGRADEBENCH_NO_PLUGINS", "") not in ("", "0")
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: _dist_name(ep) != "upgradebench")
    for ep in eps:
        dist, version = _dist_name(ep), _dist_version(ep)
        builtin = dist == "upgradebench"
        if not builtin and no_plugins:
            continue
        if ep.name in METHODS:
            existing = METHODS.entry(ep.name)
            if existing.origin != dist or existing.target != ep.value:
                log.warning("method %r from %s is ignored: the name is already taken by %s", ep.name, dist,
                            existing.origin)
                _broken[f"{ep.name} ({dist})"] = f"name already taken by {existing.origin}"
            continue
        METHODS.register(ep.name, ep.value, origin=dist, origin_version=version, builtin=builtin)
    _discovered = True
    return METHODS


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if getattr(ep, "dist", None) is not None else "unknown"  # type: ignore[union-attr]


def _dist_version(ep: EntryPoint) -> str:
    return ep.dist.version if getattr(ep, "dist", None) is not None else ""  # type: ignore[union-attr]


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``, its contract checked; a plugin that fails to import or breaks the
    contract is a clear error naming its distribution."""
    registry = discover_methods()
    entry = registry.entry(name)
    try:
        return registry.get(name)
    except UserError:
        raise
    except Exception as exc:  # a broken plugin must not look like a bug of upgradebench
        raise UserError(f"{_plugin(entry)} failed to load: {exc!r}",
                        f"fix or uninstall the package {entry.origin}") from None


_NO_DEFAULT = object()


def registered_name(cls: type, default: Any = _NO_DEFAULT) -> str:
    """The name ``cls`` is registered under (what ``cls.name`` reads), or ``default`` for a class that is not."""
    names = discover_methods().names_of(cls)
    if len(names) == 1:
        return names[0]
    if not names and default is not _NO_DEFAULT:
        return str(default)
    what = "is registered under several names: " + ", ".join(names) if names else "is not a registered method"
    raise UserError(f"{cls.__module__}.{cls.__qualname__} {what}.",
                    f"register the class once, under the {ENTRY_POINT_GROUP!r} entry-point group")


def method_entry(name: str) -> Entry:
    """The registry entry of ``name`` (origin distribution and version)."""
    return discover_methods().entry(name)


def available_methods() -> tuple[list[tuple[Entry, type[Method]]], dict[str, str]]:
    """Every method that loads, with its entry, and the ones that failed (name -> reason), warned once."""
    ok: list[tuple[Entry, type[Method]]] = []
    broken = dict(_broken)
    for entry in list(discover_methods().entries()):
        try:
            ok.append((entry, get_method(entry.name)))
        except UserError as exc:
            broken[entry.name] = exc.message
            log.warning("%s (skipped)", exc.message)
    return ok, broken

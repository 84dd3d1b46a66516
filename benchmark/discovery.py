"""Plugin discovery: methods through the ``upgradebench.methods`` entry points, mappers through
``upgradebench.mappers``, and the contract check of each loaded class.

Built-ins are registered through the same entry-point groups as third-party plugins; built-ins win a name
clash, and a plugin that fails to import, or breaks its contract (``upgradebench.contract``,
``upgradebench.mapping``), is reported with its distribution and the fix, and skipped by ``methods list`` /
``mappers list``. The entry point's name is the plugin's name: the registry holds it (:func:`registered_name`,
what ``SomeMethod.name`` reads); no class is ever written to.
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
from .mapping import BUDGETS, Mapper
from .registry import Entry, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "upgradebench.methods"
MAPPER_GROUP = "upgradebench.mappers"


def _plugin(entry: Entry, kind: str = "method") -> str:
    """How an error names a registered plugin: its kind, name, class and distribution."""
    version = f" {entry.origin_version}" if entry.origin_version else ""
    return f"{kind} {entry.name!r} ({entry.target} from {entry.origin}{version})"


def _check_config(who: str, name: str, config: Any) -> None:
    """A plugin's ``Config``: a dataclass whose fields all have defaults within their ranges."""
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise UserError(f"{who} has no dataclass Config.", "add a class attribute Config: a @dataclass whose field "
                        "defaults are the reference values (upgradebench.ranged(...) declares a numeric range)")
    required = [f.name for f in dataclasses.fields(config)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise UserError(f"{who}: Config fields {', '.join(required)} have no default.",
                        "give every Config field its reference value as its default")
    try:
        check_ranges(name, config())
    except UserError as exc:
        raise UserError(f"{who}: a default of its Config is out of its own range: {exc.message}",
                        "fix the default or the range (upgradebench.ranged) in its Config") from None


def _check_common(entry: Entry, cls: Any, kind: str, fix: str) -> str:
    """What every plugin class needs: no ``name`` attribute of its own, its abstract methods implemented (``fix``
    says which), a ``version``, a valid ``Config``. Returns how errors name it."""
    who = _plugin(entry, kind)
    if cls.__dict__.get("name", entry.name) != entry.name:
        raise UserError(f"{who} has a name attribute {cls.__dict__['name']!r}.",
                        f"drop the name attribute of {entry.target}: the entry point names the {kind}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise UserError(f"{who} does not implement {missing}.", fix)
    version = getattr(cls, "version", None)
    if not isinstance(version, str) or not version:
        raise UserError(f"{who} has no version.", 'add a class attribute version = "1" (bump it whenever its results '
                        "would change)")
    _check_config(who, entry.name, getattr(cls, "Config", None))
    return who


def check_contract(entry: Entry, cls: Any) -> None:
    """Refuse a method class that breaks the plugin contract (``upgradebench.contract.Method``), naming the plugin
    and the fix: ``fit`` implemented, a ``version``, a dataclass ``Config`` whose defaults are complete and within
    its fields' ranges, a dataclass ``module_class`` subclassing ``Module``, and no ``name`` attribute that
    disagrees with the entry point's."""
    who = _check_common(entry, cls, "method",
                        "implement fit(self, source: VLM, task: FewShotTask, config: Config, seed: int) -> Module")
    module = getattr(cls, "module_class", None)
    if not (isinstance(module, type) and issubclass(module, Module) and dataclasses.is_dataclass(module)):
        raise UserError(f"{who} has no module_class that is a dataclass subclassing upgradebench.Module.",
                        "add a class attribute module_class: a @dataclass subclass of upgradebench.Module whose "
                        "fields are the module's state")


def check_mapper_contract(entry: Entry, cls: Any) -> None:
    """Refuse a mapper class that breaks the mapper contract (``upgradebench.mapping.Mapper``), naming the plugin
    and the fix: ``supports`` and ``map`` implemented, a ``version``, a ``budget`` among
    :data:`~upgradebench.mapping.BUDGETS`, a dataclass ``Config`` whose defaults are complete and within range."""
    who = _check_common(entry, cls, "mapper", "implement supports(self, module, source, target, config) -> str | None "
                                              "and map(self, module, source, target, data, config, seed) -> Module")
    if getattr(cls, "budget", None) not in BUDGETS:
        raise UserError(f"{who} has budget {getattr(cls, 'budget', None)!r}.",
                        f"declare a class attribute budget, one of {', '.join(map(repr, BUDGETS))}")


METHODS: Registry[type[Method]] = Registry("method", base=Method, check=check_contract)
MAPPERS: Registry[type[Mapper]] = Registry("mapper", base=Mapper, check=check_mapper_contract)
_discovered: set[str] = set()
_broken: dict[str, dict[str, str]] = {ENTRY_POINT_GROUP: {}, MAPPER_GROUP: {}}


def _discover(registry: Registry[Any], group: str, force: bool) -> Registry[Any]:
    """Fill ``registry`` from the entry points of ``group`` (once): built-ins (distribution ``upgradebench``) first,
    winning a name clash; third-party plugins skipped when ``UPGRADEBENCH_NO_PLUGINS=1``."""
    if group in _discovered and not force:
        return registry
    broken = _broken[group]
    broken.clear()
    no_plugins = os.environ.get("UPGRADEBENCH_NO_PLUGINS", "") not in ("", "0")
    eps = sorted(entry_points(group=group), key=lambda ep: _dist_name(ep) != "upgradebench")
    for ep in eps:
        dist, version = _dist_name(ep), _dist_version(ep)
        builtin = dist == "upgradebench"
        if not builtin and no_plugins:
            continue
        if ep.name in registry:
            existing = registry.entry(ep.name)
            if existing.origin != dist or existing.target != ep.value:
                log.warning("%s %r from %s is ignored: the name is already taken by %s", registry.kind, ep.name, dist,
                            existing.origin)
                broken[f"{ep.name} ({dist})"] = f"name already taken by {existing.origin}"
            continue
        registry.register(ep.name, ep.value, origin=dist, origin_version=version, builtin=builtin)
    _discovered.add(group)
    return registry


def discover_methods(force: bool = False) -> Registry[type[Method]]:
    """Fill the method registry from the ``upgradebench.methods`` entry points (once)."""
    return _discover(METHODS, ENTRY_POINT_GROUP, force)


def discover_mappers(force: bool = False) -> Registry[type[Mapper]]:
    """Fill the mapper registry from the ``upgradebench.mappers`` entry points (once)."""
    return _discover(MAPPERS, MAPPER_GROUP, force)


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if getattr(ep, "dist", None) is not None else "unknown"  # type: ignore[union-attr]


def _dist_version(ep: EntryPoint) -> str:
    return ep.dist.version if getattr(ep, "dist", None) is not None else ""  # type: ignore[union-attr]


def _get(registry: Registry[Any], name: str) -> Any:
    entry = registry.entry(name)
    try:
        return registry.get(name)
    except UserError:
        raise
    except Exception as exc:  # a broken plugin must not look like a bug of upgradebench
        raise UserError(f"{_plugin(entry, registry.kind)} failed to load: {exc!r}",
                        f"fix or uninstall the package {entry.origin}") from None


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``, its contract checked; a plugin that fails to import or breaks the
    contract is a clear error naming its distribution."""
    return _get(discover_methods(), name)  # type: ignore[no-any-return]


def get_mapper(name: str) -> type[Mapper]:
    """The mapper class registered as ``name``, its contract checked (errors as :func:`get_method`'s)."""
    return _get(discover_mappers(), name)  # type: ignore[no-any-return]


_NO_DEFAULT = object()


def _registered(registry: Registry[Any], group: str, cls: type, default: Any) -> str:
    names = registry.names_of(cls)
    if len(names) == 1:
        return names[0]
    if not names and default is not _NO_DEFAULT:
        return str(default)
    what = "is registered under several names: " + ", ".join(names) if names else f"is not a registered {registry.kind}"
    raise UserError(f"{cls.__module__}.{cls.__qualname__} {what}.",
                    f"register the class once, under the {group!r} entry-point group")


def registered_name(cls: type, default: Any = _NO_DEFAULT) -> str:
    """The name ``cls`` is registered under (what ``cls.name`` reads), or ``default`` for a class that is not."""
    return _registered(discover_methods(), ENTRY_POINT_GROUP, cls, default)


def registered_mapper_name(cls: type, default: Any = _NO_DEFAULT) -> str:
    """The name mapper class ``cls`` is registered under (what ``cls.name`` reads)."""
    return _registered(discover_mappers(), MAPPER_GROUP, cls, default)


def method_entry(name: str) -> Entry:
    """The registry entry of ``name`` (origin distribution and version)."""
    return discover_methods().entry(name)


def _available(registry: Registry[Any], group: str) -> tuple[list[tuple[Entry, Any]], dict[str, str]]:
    ok: list[tuple[Entry, Any]] = []
    broken = dict(_broken[group])
    for entry in list(registry.entries()):
        try:
            ok.append((entry, _get(registry, entry.name)))
        except UserError as exc:
            broken[entry.name] = exc.message
            log.warning("%s (skipped)", exc.message)
    return ok, broken


def available_methods() -> tuple[list[tuple[Entry, type[Method]]], dict[str, str]]:
    """Every method that loads, with its entry, and the ones that failed (name -> reason), warned once."""
    return _available(discover_methods(), ENTRY_POINT_GROUP)


def available_mappers() -> tuple[list[tuple[Entry, type[Mapper]]], dict[str, str]]:
    """Every mapper that loads, with its entry, and the ones that failed (name -> reason), warned once."""
    return _available(discover_mappers(), MAPPER_GROUP)


def mapper_entry(name: str) -> Entry:
    """The registry entry of mapper ``name`` (origin distribution and version)."""
    return discover_mappers().entry(name)

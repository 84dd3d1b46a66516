"""One typed registry class for methods and datasets.

Targets may be objects or lazy ``"module:attr"`` strings that are imported on first use; a base-class
check, and the registry's own ``check`` of its contract, run when a target is resolved; unknown names raise
:class:`UnknownNameError` with a "did you mean"; every entry remembers where it came from (built-in, a
distribution, the user).
Built-in entries may be registered from data on first use of the registry (``builtins``), so no module has to
be imported for its registrations to exist.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError, UserError

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    """One registered name: its target (object or ``"module:attr"``) and its provenance."""

    name: str
    target: Any
    origin: str = "upgradebench"
    origin_version: str = ""
    builtin: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


def import_target(ref: str) -> Any:
    """Import ``"package.module:attr"`` and return ``attr``."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> targets of one kind, resolved lazily and checked against ``base``."""

    def __init__(self, kind: str, base: type | None = None,
                 builtins: Callable[[Registry[T]], None] | None = None,
                 check: Callable[[Entry[T], Any], None] | None = None) -> None:
        """``builtins(registry)``, if given, registers the built-in entries once, before the registry is first used;
        ``check(entry, target)``, if given, raises a :class:`UserError` for a target that breaks the contract of its
        kind (it runs once per name, when the name is first resolved)."""
        self.kind = kind
        self.base = base
        self._check = check
        self._builtins = builtins
        self._entries: dict[str, Entry[T]] = {}
        self._resolved: dict[str, T] = {}

    def _load_builtins(self) -> None:
        # the built-ins go first, so that a later registration of one of their names is refused as a duplicate
        loader, self._builtins = self._builtins, None
        if loader is not None:
            loader(self)

    def register(
        self,
        name: str,
        target: Any,
        *,
        origin: str = "upgradebench",
        origin_version: str = "",
        builtin: bool = True,
        replace: bool = False,
        **meta: Any,
    ) -> None:
        """Register ``target`` under ``name``. A second registration of a name is refused unless ``replace``."""
        self._load_builtins()
        if name in self._entries and not replace:
            raise UserError(
                f"{self.kind} {name!r} is already registered (from {self._entries[name].origin}).",
                "choose another name",
            )
        self._entries[name] = Entry(name, target, origin, origin_version, builtin, dict(meta))
        self._resolved.pop(name, None)

    def decorator(self, name: str, **meta: Any):
        """``@registry.decorator("name")`` registers the decorated class or function."""

        def wrap(obj: T) -> T:
            self.register(name, obj, **meta)
            return obj

        return wrap

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``, or an error that lists the valid names and the closest ones."""
        self._load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def get(self, name: str) -> T:
        """Resolve ``name`` to its target, importing lazy targets and checking the base class."""
        if name in self._resolved:
            return self._resolved[name]
        entry = self.entry(name)
        target = import_target(entry.target) if isinstance(entry.target, str) else entry.target
        if self.base is not None and not (isinstance(target, type) and issubclass(target, self.base)):
            raise UserError(
                f"{self.kind} {name!r} from {entry.origin} is {target!r}, not a subclass of {self.base.__name__}.",
                f"make it subclass {self.base.__module__}.{self.base.__name__}",
            )
        if self._check is not None:
            self._check(entry, target)
        self._resolved[name] = target
        return target

    def names_of(self, target: Any) -> list[str]:
        """The names registered for ``target``: resolved to it, or naming it lazily as ``"module:qualname"``."""
        self._load_builtins()
        ref = f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', '')}"
        return sorted(name for name, entry in self._entries.items()
                      if self._resolved.get(name) is target or entry.target is target or entry.target == ref)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        """All entries, sorted by name."""
        for name in self.names():
            yield self._entries[name]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by users who replace a dataset definition)."""
        self._load_builtins()
        self._entries.pop(name, None)
        self._resolved.pop(name, None)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)

"""Method configs: valid ranges declared on the config's own fields, and ``--config key=value`` parsing.

A method's ``Config`` is a dataclass whose defaults are the reference values. A numeric field declares its valid
range with :func:`ranged` (``n_ctx: int = ranged(16, ge=1, le=MAX_N_CTX)``), so a plugin declares the ranges of
its own fields; :func:`parse_config` reads overrides (text from the command line, typed values from a grid's
YAML) to each field's type and refuses a value outside its field's range before any model loads. A tuple or list
of numbers is checked element by element; ``None`` (a field's "follow the default rule") is never checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UnknownNameError, UserError

RANGE = "upgradebench.range"


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric config value: ``ge`` / ``le`` included, ``gt`` / ``lt`` excluded; None is unbounded.
    ``why`` says where a bound comes from when that is not obvious (a refusal's fix shows it)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""

    def _bounds(self) -> list[tuple[str, float, Any]]:
        return [(op, bound, test) for op, bound, test in (
            (">=", self.ge, float.__ge__), (">", self.gt, float.__gt__), ("<=", self.le, float.__le__),
            ("<", self.lt, float.__lt__)) if bound is not None]

    def broken(self, value: float) -> str:
        """The bounds ``value`` breaks (``">= 1"``; every bound for a value that is not finite), or ``""``."""
        return " and ".join(f"{op} {bound:g}" for op, bound, test in self._bounds()
                            if not math.isfinite(value) or not test(value, float(bound)))

    def __str__(self) -> str:
        return " and ".join(f"{op} {bound:g}" for op, bound, _ in self._bounds())


def ranged(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, why: str = "",
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with a valid range, e.g. ``lr: float = ranged(0.002, gt=0)`` (for a tuple or list of numbers,
    the range of each element: ``default_factory`` gives a mutable default); ``why`` explains a bound."""
    if (ge, gt, le, lt) == (None, None, None, None):
        raise TypeError("ranged() needs at least one bound (ge, gt, le or lt)")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={RANGE: Range(ge, gt, le, lt, why)})


def field_range(f: dataclasses.Field) -> Range | None:
    """The range a config field declares, or None."""
    found = f.metadata.get(RANGE)
    return found if isinstance(found, Range) else None


def is_numeric(hint: Any) -> bool:
    """Whether a field annotated ``hint`` holds numbers (``int``, ``float``, optionally ``| None``, or a tuple or
    list of them); ``bool`` is not a number here."""
    if hint in (int, float):
        return True
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, tuple, list):
        return bool(args) and all(is_numeric(a) for a in args)
    return False


def check_ranges(what: str, config: Any) -> None:
    """Refuse a numeric value of ``config`` outside its field's range (``n_ctx=-3``); ``what`` names the method."""
    for f in dataclasses.fields(config):
        bounds = field_range(f)
        value = getattr(config, f.name)
        if bounds is None or value is None:
            continue
        several = isinstance(value, (tuple, list))
        for item in value if several else [value]:
            numeric = isinstance(item, (int, float)) and not isinstance(item, bool)
            broken = bounds.broken(float(item)) if numeric else str(bounds)
            if broken:
                why = f" ({bounds.why})" if bounds.why else ""
                raise UserError(f"{what}.{f.name}={value!r} is out of range (it must be {broken}"
                                f"{', each element' if several else ''}).",
                                f"pass --config {f.name}=VALUE with {'each element' if several else 'a value'} "
                                f"{bounds}{why}")


def parse_config(config_class: type, what: str, overrides: dict[str, Any] | None = None, **values: Any) -> Any:
    """``config_class`` with ``overrides`` (``--config key=value`` text or typed grid values) parsed to each field's
    type and ``values`` as given; unknown keys and values out of their field's range are errors naming ``what``."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    parsed: dict[str, Any] = dict(values)
    for key, raw in (overrides or {}).items():
        if key not in fields:
            raise UnknownNameError(f"config key of method {what!r}", key, fields,
                                   fix=f"valid keys: {', '.join(sorted(fields))}")
        parsed[key] = _parse_value(raw, hints[key], f"{what}.{key}")
    config = config_class(**parsed)
    check_ranges(what, config)
    return config


def _value_fix(what: str, hint: Any) -> str:
    key = what.rpartition(".")[2]
    return (f"pass --config {key}=VALUE, a value of type {getattr(hint, '__name__', hint)} "
            f"(a grid variant: {key}: VALUE)")


def _typed_value(value: Any, hint: Any, what: str) -> Any:
    """A value that arrives typed (a grid's YAML) as the field's type, without a round trip through text: an int
    is a float where a float is expected, a list a tuple where a tuple is; anything else of the wrong type is
    refused."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for arg in (a for a in typing.get_args(hint) if a is not type(None)):
            try:
                return _typed_value(value, arg, what)
            except UserError:
                continue
    elif origin is typing.Literal:
        for choice in typing.get_args(hint):
            if str(choice) == str(value):
                return choice
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is str and isinstance(value, (int, float)):
        return str(value)
    elif origin in (tuple, list) and isinstance(value, (tuple, list)):
        return origin(_parse_items(value, hint, what))
    raise UserError(f"{what}: {value!r} is not of type {getattr(hint, '__name__', hint)}.", _value_fix(what, hint))


def _parse_items(items: list | tuple, hint: Any, what: str) -> list:
    """The elements of a tuple or list value: one given as text (``search_steps=20,10``) is read as its element
    type; one already typed (JSON, YAML) is kept as it is, so a grid's values hash as they always did."""
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    return [_parse_value(item, args[min(i, len(args) - 1)], what) if isinstance(item, str) and args else item
            for i, item in enumerate(items)]


def _parse_value(raw: Any, hint: Any, what: str) -> Any:
    if not isinstance(raw, str):
        return _typed_value(raw, hint, what)
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null"):
            return None
        for arg in args:
            try:
                return _parse_value(raw, arg, what)
            except UserError:
                continue
        raise UserError(f"{what}: cannot read {raw!r} as {hint}.", _value_fix(what, hint))
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if str(choice) == raw:
                return choice
        raise UserError(f"{what}: {raw!r} is not one of {', '.join(map(str, choices))}.", _value_fix(what, hint))
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw)
        if origin in (tuple, list):
            return origin(_parse_items(json.loads(raw) if raw.startswith("[") else raw.split(","), hint, what))
    except ValueError:
        raise UserError(f"{what}: cannot read {raw!r} as {getattr(hint, '__name__', hint)}.",
                        _value_fix(what, hint)) from None
    return raw

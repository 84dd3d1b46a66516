"""Model specifications: what a model name means (alias table, ``open_clip:``, ``hf-hub:``, paths).

Aliases are data: ``aliases.json`` holds the real models and, under ``_providers``, the providers that build
their models on first use (the embedded world), each as lazy ``"module:attr"`` targets; this module only parses
and never imports a provider except through those targets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UnknownNameError, UserError
from ..registry import import_target


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    ``kind`` is ``"open_clip"`` (built-in architecture ``arch`` + ``pretrained`` tag or weights file),
    ``"hf-hub"`` (``arch`` holds ``ORG/REPO``), ``"local-dir"`` (``arch`` holds a folder in open_clip's
    ``local-dir:`` format) or the name of a provider of ``aliases.json``'s ``_providers`` (``"world"``: a model
    of the embedded offline world, built on first use; ``arch`` holds the provider's name for it).
    """

    alias: str
    kind: str
    arch: str
    pretrained: str | None = None
    description: str = ""

    @property
    def quick_gelu(self) -> bool:
        """Whether the architecture uses QuickGELU (OpenAI weights need it)."""
        return self.kind == "open_clip" and self.arch.endswith("-quickgelu")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON output and result rows)."""
        return {**asdict(self), "quick_gelu": self.quick_gelu}


@lru_cache(maxsize=1)
def _alias_file() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("aliases.json").read_text())


def providers() -> dict[str, dict[str, str]]:
    """The model providers of ``aliases.json`` (``_providers``), by name: their lazy targets and texts."""
    return {k: v for k, v in _alias_file()["_providers"].items() if not k.startswith("_")}


def provider_target(kind: str, role: str) -> Any:
    """Provider ``kind``'s ``role`` target (``folder``, ``location``, ``setup``), imported now."""
    return import_target(providers()[kind][role])


@lru_cache(maxsize=1)
def builtin_aliases() -> dict[str, dict[str, Any]]:
    """The alias table shipped with upgradebench (real models) merged with every provider's models."""
    table = {k: v for k, v in _alias_file().items() if not k.startswith("_")}
    for kind in providers():
        table.update(provider_target(kind, "aliases")())
    return table


def alias_names() -> list[str]:
    """All alias names."""
    return sorted(builtin_aliases())


def parse_model(name: str, pretrained: str | None = None) -> ModelSpec:
    """Turn a user-given model name into a :class:`ModelSpec`.

    Accepted: an alias; ``open_clip:ARCH/TAG`` (or ``open_clip:ARCH`` with ``pretrained``);
    ``hf-hub:ORG/REPO``; ``local-dir:PATH``; a folder holding ``open_clip_config.json``. ``pretrained``
    (``--pretrained PATH``) points an alias or architecture at a local weights file instead of its tag.
    """
    table = builtin_aliases()
    if name in table:
        entry = table[name]
        for kind, provider in providers().items():
            if kind in entry:
                if pretrained:
                    raise UserError(f"{name!r} is a model of {provider['title']}; --pretrained does not apply to it.")
                return ModelSpec(name, kind, entry[kind], None, entry.get("description", ""))
        return ModelSpec(name, "open_clip", entry["arch"], pretrained or entry["pretrained"],
                         entry.get("description", ""))
    if name.startswith("open_clip:"):
        tag: str | None
        arch, _, tag = name[len("open_clip:") :].partition("/")
        import open_clip

        if arch not in open_clip.list_models():
            raise UnknownNameError("open_clip architecture", arch, open_clip.list_models())
        tag = pretrained or tag or None
        if not tag:
            raise UserError(f"{name!r} names no pretrained tag.", f"use open_clip:{arch}/TAG or --pretrained PATH")
        return ModelSpec(name, "open_clip", arch, tag)
    if name.startswith("hf-hub:"):
        return ModelSpec(name, "hf-hub", name[len("hf-hub:") :])
    if name.startswith("local-dir:"):
        return ModelSpec(name, "local-dir", str(Path(name[len("local-dir:") :]).expanduser().resolve()))
    path = Path(name).expanduser()
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        return ModelSpec(name, "local-dir", str(path.resolve()))
    if path.is_file():
        raise UserError(
            f"{name!r} is a weights file, but a file alone does not say which architecture it holds.",
            f"use --model open_clip:ARCH --pretrained {name} (or an alias, e.g. --model clip --pretrained {name})",
        )
    raise UnknownNameError(
        "model",
        name,
        table,
        fix="use an alias, open_clip:ARCH/TAG, hf-hub:ORG/REPO, local-dir:PATH; see `upgradebench models list`",
    )

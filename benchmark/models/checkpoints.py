"""Finding pretrained weights on disk, never downloading behind the user's back.

For an ``(arch, tag)`` pair we look where open_clip itself would have put the file: the Hugging Face
cache (``HF_HUB_CACHE`` / ``HF_HOME``) for the tag's ``hf_hub`` repository, then open_clip's URL cache
(``~/.cache/clip``). Downloads happen only when the user allows them (``allow_download``), so a
machine without network fails fast with a message instead of hanging or falling back to random weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, WeightsNotFoundError
from .spec import ModelSpec

# The file names open_clip publishes on the Hub, safest first.
_HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class WeightsLocation:
    """The outcome of a look-up: the file found (or None) and every place that was searched."""

    path: Path | None
    searched: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def present(self) -> bool:
        """True when a weights file was found."""
        return self.path is not None


def _hub_repo_and_files(hf_hub: str) -> tuple[str, tuple[str, ...]]:
    """Split open_clip's ``ORG/REPO/[FILENAME]`` into the repository and the files to look for."""
    parts = hf_hub.split("/")
    repo = "/".join(parts[:2])
    filename = "/".join(parts[2:])
    if filename:
        stem = filename.rsplit(".", 1)[0]
        return repo, (stem + ".safetensors", filename)
    return repo, _HUB_FILENAMES


def locate_hub_file(repo: str, filenames: tuple[str, ...]) -> WeightsLocation:
    """Look for any of ``filenames`` of Hub repository ``repo`` in the local Hugging Face cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    searched = [f"Hugging Face cache {constants.HF_HUB_CACHE} (repo {repo}: {', '.join(filenames)})"]
    for filename in filenames:
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str) and os.path.isfile(hit):
            return WeightsLocation(Path(hit), searched, f"hf-hub:{repo}")
    return WeightsLocation(None, searched)


def locate_pretrained(arch: str, tag: str, cfg: dict[str, str] | None = None) -> WeightsLocation:
    """Find the weights of open_clip ``arch`` with pretrained ``tag`` (a known tag or a file path).

    ``cfg`` is open_clip's pretrained config of (arch, tag) where the caller holds it (an alias's ``weights`` in
    ``aliases.json``: ``hf_hub`` and ``url``), so that no open_clip import is needed; otherwise open_clip's is read.
    """
    if os.path.isfile(os.path.expanduser(tag)):
        return WeightsLocation(Path(tag).expanduser().resolve(), [tag], "file")
    if cfg is None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        import open_clip

        known = open_clip.list_pretrained_tags_by_model(arch)
        raise UserError(
            f"{tag!r} is neither a pretrained tag of open_clip model {arch!r} nor an existing file.",
            f"use one of the tags {', '.join(known) or '(none)'} or --pretrained PATH to a weights file",
        )
    searched: list[str] = []
    if cfg.get("hf_hub"):
        repo, files = _hub_repo_and_files(cfg["hf_hub"])
        loc = locate_hub_file(repo, files)
        if loc.present:
            return loc
        searched += loc.searched
    if cfg.get("url"):
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        searched.append(str(candidate))
        if candidate.is_file():
            return WeightsLocation(candidate, searched, cfg["url"])
    return WeightsLocation(None, searched)


def require_weights(spec: ModelSpec, allow_download: bool = False) -> Path | None:
    """The local weights file of ``spec`` (kind ``open_clip``), or a :class:`WeightsNotFoundError`.

    With ``allow_download`` a missing file is left to open_clip to fetch (returns None).
    """
    assert spec.kind == "open_clip" and spec.pretrained
    loc = locate_pretrained(spec.arch, spec.pretrained)
    if loc.present:
        return loc.path
    if allow_download:
        return None
    where = "; ".join(loc.searched)
    raise WeightsNotFoundError(
        f"No weights for model {spec.alias!r} (open_clip {spec.arch!r}, pretrained {spec.pretrained!r}) "
        f"on this machine. Looked in: {where}.",
        f"pass --pretrained PATH to a local weights file for {spec.arch}, populate the Hugging Face cache "
        f"(e.g. `huggingface-cli download` on a machine with network, then copy the cache), "
        f"or allow downloads with --download",
    )

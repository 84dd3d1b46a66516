"""Loading a model name into a :class:`VLM`, offline-first, and describing where its weights come from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import UserError
from .checkpoints import locate_hub_file, locate_pretrained, require_weights
from .spec import ModelSpec, builtin_aliases, parse_model, provider_target, providers

if TYPE_CHECKING:  # torch and the VLM are imported where a model is loaded: describing one needs neither
    import torch

    from .vlm import VLM


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a user error."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device.", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device.", "use --device cpu or auto")
    return device


def _local_dir_for(spec: ModelSpec, allow_download: bool) -> str | None:
    """The local-dir folder that holds ``spec`` (a provider's models, built if missing, and cached Hub repos), if
    any."""
    if spec.kind in providers():
        return str(provider_target(spec.kind, "folder")(spec.arch))
    if spec.kind == "local-dir":
        folder = Path(spec.arch)
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(
                f"{spec.alias!r}: {folder} holds no open_clip_config.json.",
                "point local-dir: at a folder saved in open_clip's format (open_clip_config.json + weights)",
            )
        return str(folder)
    if spec.kind == "hf-hub":
        cfg = locate_hub_file(spec.arch, ("open_clip_config.json",))
        weights = locate_hub_file(spec.arch, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
        # the casts: present means the path is not None
        if cfg.present and weights.present and cast(Path, cfg.path).parent == cast(Path, weights.path).parent:
            return str(cast(Path, cfg.path).parent)  # a Hub snapshot folder is exactly open_clip's local-dir layout
        if not allow_download:
            raise UserError(
                f"Model {spec.alias!r} is not in the Hugging Face cache ({'; '.join(cfg.searched)}).",
                "populate the Hugging Face cache on a machine with network, or pass --download",
            )
    return None


def weights_problem(name: str, pretrained: str | None = None) -> str | None:
    """Why model ``name`` cannot be loaded here without a download (the error a run would stop with), or None.
    A provider's models (the embedded world's) are never a problem: they are built on first use."""
    try:
        spec = parse_model(name, pretrained)
        if spec.kind == "open_clip":
            require_weights(spec)
        elif spec.kind not in providers():
            _local_dir_for(spec, allow_download=False)
    except UserError as exc:
        return exc.message
    return None


def _created(spec: ModelSpec, source: str, create: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``create()``'s model and tokenizer; a file or folder that open_clip cannot build them from (not a checkpoint,
    truncated, a config cut short) is a user error naming it, not a traceback from deep inside the loader."""
    try:
        return create()
    except UserError:
        raise
    except Exception as exc:  # torch.load, safetensors, json and open_clip raise many types for a bad file
        raise UserError(
            f"Could not build model {spec.alias!r} ({spec.arch}) from {source}: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0]}",
            "check that it is an open_clip / OpenAI checkpoint of that architecture (or a complete local-dir folder: "
            "open_clip_config.json + open_clip_model.safetensors); for the embedded world run "
            "`upgradebench zoo install --force`",
        ) from exc


def load_vlm(
    name: str | ModelSpec,
    pretrained: str | None = None,
    device: str | torch.device = "auto",
    allow_download: bool = False,
) -> VLM:
    """Load ``name`` (alias, ``open_clip:ARCH/TAG``, ``hf-hub:``, ``local-dir:`` or folder) as a frozen VLM.

    Weights must be on disk unless ``allow_download``; random weights are never substituted.
    """
    import open_clip

    from .vlm import VLM

    spec = name if isinstance(name, ModelSpec) else parse_model(name, pretrained)
    device = resolve_device(device)
    for kind in providers():  # local-dir configs may name a provider's timm trunks (the world's EVA-style ones)
        provider_target(kind, "setup")()
    folder = _local_dir_for(spec, allow_download)
    if folder is not None:
        name = f"local-dir:{folder}"
        model, tokenizer = _created(spec, str(folder), lambda: (
            open_clip.create_model(name, device="cpu"), open_clip.get_tokenizer(name)))
    elif spec.kind == "hf-hub":
        name = f"hf-hub:{spec.arch}"
        model, tokenizer = _created(spec, name, lambda: (
            open_clip.create_model(name, device="cpu"), open_clip.get_tokenizer(name)))
    else:
        weights = require_weights(spec, allow_download)
        # OpenAI weights need QuickGELU; a plain arch name with the openai tag would silently use GELU.
        force_quick = (bool(open_clip.get_pretrained_cfg(spec.arch, spec.pretrained).get("quick_gelu"))
                       and not spec.quick_gelu)
        source = str(weights) if weights is not None else spec.pretrained
        model, tokenizer = _created(spec, str(source), lambda: (
            open_clip.create_model(spec.arch, pretrained=source, device="cpu", force_quick_gelu=force_quick,
                                   load_weights=True),
            open_clip.get_tokenizer(spec.arch)))
    return VLM(model, tokenizer, spec, device, folder)


def describe_model(name: str, pretrained: str | None = None) -> dict[str, Any]:
    """What ``models show`` prints: the spec, where weights would come from, and whether they are present."""
    spec = parse_model(name, pretrained)
    info = spec.to_dict()
    if spec.kind == "open_clip":
        entry = builtin_aliases().get(spec.alias, {})
        known = entry.get("weights") if entry.get("pretrained") == spec.pretrained else None
        loc = locate_pretrained(spec.arch, spec.pretrained or "", known)
        info.update(weights=str(loc.path) if loc.path else None, present=loc.present, searched=loc.searched)
    elif spec.kind in providers():
        folder = Path(provider_target(spec.kind, "location")(spec.arch))
        built = (folder / "open_clip_config.json").is_file()
        info.update(weights=str(folder), present=built, searched=[str(folder)],
                    note=None if built else providers()[spec.kind]["note"])
    elif spec.kind == "local-dir":
        present = (Path(spec.arch) / "open_clip_config.json").is_file()
        info.update(weights=spec.arch, present=present, searched=[spec.arch])
    else:
        loc = locate_hub_file(spec.arch, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
        info.update(weights=str(loc.path) if loc.path else None, present=loc.present, searched=loc.searched)
    return info

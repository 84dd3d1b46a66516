"""The embedded world's weights as they ship: one set of bits for every machine.

Training is deterministic on one machine but not across CPUs (float kernels differ between AVX2, AVX-512,
ARM and torch's portable code), so a recipe does not pin the bits. The default world therefore ships its
trained weights inside the package, under ``shipped/<world size>/``:

- ``<model>.json``: the model's ``open_clip_config.json`` (its build record included: build key, fingerprint),
  the list of its shards with their SHA-256, and how its token table is stored;
- ``shards/<sha256>.safetensors``: content-addressed shards under :data:`SHARD_BYTES` each, so a part two models
  share bit for bit (a vision tower a target keeps frozen) is stored once.

The 49408-row token tables are stored compactly: a new text tower starts from :func:`seeded_token_table`, a fill
made only from integer hashing and correctly rounded float operations (the same bits on every CPU), and training
moves only the rows its captions use, so a model stores those rows and the seed. Installing a model checks every
shard's hash, rebuilds the table, checks the weights' fingerprint against the recorded one and writes the
ordinary open_clip ``local-dir:`` folder that the zoo loads; no training happens.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path, write_atomic, write_json
from ..errors import UserError

if TYPE_CHECKING:  # torch is imported by the functions that make tensors: reading a record (zoo list) needs none
    import torch

SHARD_BYTES = 4_000_000
"""The largest shard written (a tensor larger than this gets a shard of its own)."""

TOKEN_ROWS = ("token_rows.index", "token_rows.values")
"""Tensor names of the stored rows of a token table (the same in every model, so equal rows share a shard)."""

_TOKEN_KEYS = ("token_embedding.weight", "text.token_embedding.weight")
_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def seeded_token_table(seed: int, rows: int, width: int, std: float = 0.02) -> torch.Tensor:
    """A ``[rows, width]`` float32 table, uniform with standard deviation ``std``, the same bits on every machine.

    Element ``k`` is splitmix64 of ``(seed, k)`` (integer arithmetic, exact everywhere), its top 24 bits read as
    ``u`` in [0, 1) (exact in float64), and ``(2u - 1) * std * sqrt(3)`` rounded once to float32 (correctly
    rounded IEEE operations). torch's own ``normal_`` is not used: its vectorised and scalar paths differ.
    """
    import numpy as np
    import torch

    with np.errstate(over="ignore"):
        z = np.arange(rows * width, dtype=np.uint64) + np.uint64((seed * _SPLITMIX[0]) % 2**64)
        z = z * np.uint64(_SPLITMIX[0])
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_SPLITMIX[1])
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_SPLITMIX[2])
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    values = (2.0 * u - 1.0) * (std * math.sqrt(3.0))
    return torch.from_numpy(values.astype(np.float32).reshape(rows, width))


def shipped_root(world: str) -> Path:
    """The folder of ``world``'s shipped weights inside the package (it may not exist)."""
    return Path(str(resources.files(__package__).joinpath("shipped").joinpath(world)))


def shipped_record(world: str, name: str) -> dict[str, Any] | None:
    """The shipped record of toy model ``name`` in ``world``, or None when it does not ship."""
    path = shipped_root(world) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"The shipped record {path} is unreadable ({exc}).",
                        "reinstall upgradebench (the package's files are damaged)") from exc


def _token_key(tensors: dict[str, torch.Tensor]) -> str:
    (key,) = [k for k in _TOKEN_KEYS if k in tensors]
    return key


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Tensors in shards of at most :data:`SHARD_BYTES`, by part (vision, text, the rest), names sorted: the
    packing of a part depends on that part's tensors only, so a shared part gives identical shards."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted(tensors):
        part = key.split(".", 1)[0] if key.split(".", 1)[0] in ("visual", "text", "token_rows") else "rest"
        parts.setdefault(part, {})[key] = tensors[key]
    shards = []
    for part in sorted(parts):
        shard: dict[str, torch.Tensor] = {}
        size = 0
        for key, tensor in parts[part].items():
            nbytes = tensor.numel() * tensor.element_size()
            if shard and size + nbytes > SHARD_BYTES:
                shards.append(shard)
                shard, size = {}, 0
            shard[key] = tensor
            size += nbytes
        if shard:
            shards.append(shard)
    return shards


def pack(model_dir: Path, world: str, out_root: Path | None = None) -> dict[str, Any]:
    """Write the built model in ``model_dir`` (a local-dir folder with its build record) into the shipped
    weights of ``world`` (default: the package's own folder). Returns the record written."""
    import torch
    from safetensors.torch import load_file, save

    from ..models.fingerprint import tensors_fingerprint

    out_root = out_root or shipped_root(world)
    config = json.loads((model_dir / "open_clip_config.json").read_text())
    build = config["upgradebench"]
    tensors = load_file(str(model_dir / "open_clip_model.safetensors"))
    if tensors_fingerprint(tensors) != build["fingerprint"]:
        raise UserError(f"{model_dir} does not hold the weights its build recorded.", "rebuild it before packing")
    key = _token_key(tensors)
    table = tensors.pop(key)
    fill = seeded_token_table(build["token_table_seed"], *table.shape)
    moved = torch.nonzero((table != fill).any(dim=1)).flatten()
    tensors[TOKEN_ROWS[0]], tensors[TOKEN_ROWS[1]] = moved, table[moved].contiguous()
    (out_root / "shards").mkdir(parents=True, exist_ok=True)
    listed = []
    for shard in _shards(tensors):
        data = save({k: v.contiguous() for k, v in shard.items()})
        digest = hashlib.sha256(data).hexdigest()
        path = out_root / "shards" / f"{digest[:32]}.safetensors"
        if not path.is_file():

            def write(tmp: Path, data: bytes = data) -> None:  # binds this shard's bytes
                tmp.write_bytes(data)

            write_atomic(path, write)
        listed.append({"file": f"shards/{path.name}", "sha256": digest, "bytes": len(data)})
    record = {"open_clip_config": config, "token_table": {"key": key, "seed": build["token_table_seed"],
                                                          "shape": list(table.shape), "stored_rows": len(moved)},
              "shards": listed}
    write_json(out_root / f"{build['model']}.json", record)
    return record


def prune(world: str, out_root: Path | None = None) -> list[Path]:
    """Remove the shards of ``world`` that no shipped record lists; returns them."""
    out_root = out_root or shipped_root(world)
    used = {s["file"] for p in out_root.glob("*.json") for s in json.loads(p.read_text())["shards"]}
    unused = [p for p in sorted((out_root / "shards").glob("*.safetensors")) if f"shards/{p.name}" not in used]
    for path in unused:
        path.unlink()
    return unused


def shipped_tensors(world: str, name: str) -> dict[str, torch.Tensor]:
    """The full state dict of shipped model ``name``, every shard's hash and the weights' fingerprint checked."""
    from safetensors.torch import load

    from ..models.fingerprint import tensors_fingerprint

    record = shipped_record(world, name)
    if record is None:
        raise UserError(f"Toy model {name!r} does not ship with the {world} world.", "build it: upgradebench zoo build")
    root = shipped_root(world)
    fix = "reinstall upgradebench (pip install --force-reinstall upgradebench, or git checkout the file)"
    tensors: dict[str, torch.Tensor] = {}
    for shard in record["shards"]:
        path = root / shard["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"The shipped shard {path} of toy model {name!r} is missing ({exc.strerror}).",
                            fix) from exc
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise UserError(f"The shipped shard {path} of toy model {name!r} is damaged (its SHA-256 differs from "
                            f"the one {root / (name + '.json')} records).", fix)
        tensors.update(load(data))
    table = record["token_table"]
    full = seeded_token_table(table["seed"], *table["shape"])
    full[tensors.pop(TOKEN_ROWS[0])] = tensors.pop(TOKEN_ROWS[1])
    tensors[table["key"]] = full
    expected = record["open_clip_config"]["upgradebench"]["fingerprint"]
    if tensors_fingerprint(tensors) != expected:
        raise UserError(f"The shipped weights of toy model {name!r} do not give their recorded fingerprint "
                        f"{expected}.", fix)
    return tensors


def install(world: str, name: str, folder: Path) -> Path:
    """Write shipped model ``name`` into ``folder`` as an open_clip ``local-dir:`` model (weights first, config
    last, both atomically), ready for the zoo to load."""
    from safetensors.torch import save_file

    tensors = shipped_tensors(world, name)
    record = shipped_record(world, name)
    assert record is not None
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / "open_clip_config.json", {**record["open_clip_config"],
                                                  "upgradebench": {**record["open_clip_config"]["upgradebench"],
                                                                   "installed_from": "shipped"}})
    return folder

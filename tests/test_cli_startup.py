"""``upgradebench --help`` and every subcommand's ``--help`` start without torch, open_clip or timm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# In a fresh interpreter: walk the click tree of the app, print every command's --help, and report which of the
# heavy packages ended up imported.
_SCRIPT = r"""
import contextlib, io, json, sys
import typer.main
from upgradebench.cli import app, main

def paths(cmd, prefix):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from paths(sub, prefix + [name])

visited = []
for path in paths(typer.main.get_command(app), []):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main([*path, "--help"])
    assert "Usage" in out.getvalue(), (path, out.getvalue())
    visited.append(" ".join(path))
print(json.dumps({"visited": visited, "heavy": sorted(m for m in ("torch", "open_clip", "timm") if m in sys.modules)}))
"""


def test_help_of_every_command_imports_no_torch() -> None:
    # with --threads set too (UPGRADEBENCH_THREADS): the app's callback handles it before any subcommand's --help
    env = {**os.environ, "UPGRADEBENCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, env=env)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"run", "eval", "sweep", "analyze depth", "zoo build", "models show"} <= set(report["visited"])
    assert report["heavy"] == []


def test_help_reflows_docstring_paragraphs() -> None:
    """A docstring's line breaks are not the terminal's: at any width a help paragraph wraps as one text
    (typer's default rich mode printed each source line as a line of its own)."""
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", "from upgradebench.cli import main; main()",
                          "results", "show", "--help"],
                         capture_output=True, text=True, env=env).stdout
    assert "where the runs have prediction ledgers, mean ± std over seeds" in out, out


# ---- listings: methods list, models list, zoo list answer from data and metadata, without torch ----

_LISTING = r"""
import contextlib, io, json, sys
from upgradebench.cli import main

with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    main(sys.argv[1:] + ["--json"])
print(json.dumps({"out": json.loads(out.getvalue()),
                  "heavy": sorted(m for m in ("torch", "open_clip", "timm", "pandas") if m in sys.modules)}))
"""


def _listing(*args: str) -> dict:
    """``upgradebench ARGS --json`` in a fresh interpreter: its output and which heavy packages it imported."""
    out = subprocess.run([sys.executable, "-c", _LISTING, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_listings_import_no_torch_and_check_built_weights_without_it() -> None:
    from upgradebench.models import alias_names
    from upgradebench.world import zoo

    zoo.ensure_model("toy-clip")  # the micro world's (conftest): built in about a second
    methods = _listing("methods", "list")
    assert methods["heavy"] == [] and {"coop", "contcoop", "zeroshot"} <= {m["name"] for m in methods["out"]["methods"]}
    models = _listing("models", "list")
    assert models["heavy"] == [] and [m["alias"] for m in models["out"]] == alias_names()
    listed = _listing("zoo", "list")
    toy = next(r for r in listed["out"] if r["name"] == "toy-clip")
    assert listed["heavy"] == [] and toy["built"] and toy["damaged"] is None
    assert toy["fingerprint"] == zoo.build_record("toy-clip")["fingerprint"]

    weights = zoo.model_dir("toy-clip") / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of the last tensor: the fingerprint, not the loader, finds it
    weights.write_bytes(bytes(data))
    toy = next(r for r in _listing("zoo", "list")["out"] if r["name"] == "toy-clip")
    assert toy["damaged"] and "not the" in toy["damaged"]
    weights.write_bytes(bytes(data[:100]))  # truncated
    toy = next(r for r in _listing("zoo", "list")["out"] if r["name"] == "toy-clip")
    assert toy["damaged"] and "unreadable" in toy["damaged"]


def test_file_fingerprint_is_the_tensors_fingerprint(tmp_path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from upgradebench.models.fingerprint import file_fingerprint, tensors_fingerprint

    tensors = {"w": torch.randn(3, 4), "b16": torch.randn(5).to(torch.bfloat16), "h": torch.randn(2, 2).half(),
               "i": torch.arange(6, dtype=torch.int64).reshape(2, 3), "flag": torch.tensor([True, False]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 7), "u": torch.arange(4, dtype=torch.uint8)}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert file_fingerprint(tmp_path / "m.safetensors") == tensors_fingerprint(tensors) \
        == tensors_fingerprint(load_file(str(tmp_path / "m.safetensors")))


def test_method_catalog_is_what_the_classes_say() -> None:
    """``methods list`` answers from a generated copy: regenerate it (python -m upgradebench.cli._method_catalog)
    whenever a built-in method's version, description or config changes."""
    from upgradebench.cli._method_catalog import CATALOG, generate
    from upgradebench.cli.methods import _from_catalog, _from_classes

    assert CATALOG == generate()
    assert _from_catalog() == _from_classes()


def test_alias_weights_are_open_clips_pretrained_config() -> None:
    """``models list`` finds real models' weights from ``aliases.json``'s copy of open_clip's pretrained config."""
    import open_clip

    from upgradebench.models import builtin_aliases

    real = {name: e for name, e in builtin_aliases().items() if "arch" in e}
    assert {"clip", "eva-clip", "clip-l", "eva-clip-l"} <= set(real)  # and the other kinds' pairs (upgrades.json)
    for name, entry in real.items():
        cfg = open_clip.get_pretrained_cfg(entry["arch"], entry["pretrained"])
        assert entry["weights"] == {"hf_hub": cfg.get("hf_hub", ""), "url": cfg.get("url", "")}, name

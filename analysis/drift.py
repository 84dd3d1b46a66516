"""Text-encoder drift between a source and a target model, layer by layer (paper Fig. 2b and 2c).

For every layer of the text tower, in forward order (``VLM.text_modules``: token embedding, positional
embedding, each block, final LayerNorm, text projection), two kinds of change are measured:

- ``parameters``: the layer's parameters of source and target, flattened into one vector each;
  mean absolute change ``mean |W_t - W_s|`` and relative change ``||W_t - W_s|| / ||W_s||``.
- ``features``: the layer's output on a fixed prompt set (the class names of the given datasets written
  into each dataset's template). Per prompt, over its positions up to and including its own EOT (the
  padding after it is masked out) and the feature dimension: mean absolute change and
  ``||F_t - F_s|| / ||F_s||``; both are then averaged over prompts. The ``token_embedding`` output is
  the token embeddings, ``positional_embedding`` the embeddings plus positions (the input of block 0),
  ``ln_final`` the final LayerNorm of the last block's output, ``text_projection`` the projected EOT
  feature (one vector per prompt).

Layers are matched by their place in the forward order, not by state-dict keys, so a CLIP tower and a
CustomTextCLIP tower (whose keys differ) compare directly; towers whose shapes differ are refused.
Rows follow :data:`DRIFT_SCHEMA` (a :class:`~upgradebench.store.ParquetSchema`), documented in
``results/ANALYSIS_SCHEMA.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from upgradebench.errors import UserError
from upgradebench.models import VLM
from upgradebench.prompting import clean_name
from upgradebench.provenance import now, versions
from upgradebench.store import Column, ParquetSchema

DRIFT_SCHEMA_VERSION = 1

# The order is the column order of every drift file.
DRIFT_COLUMNS: dict[str, Column] = {
    "schema_version": Column("int64", "version of this drift schema"),
    "kind": Column("string", "'parameters' (Fig. 2b) or 'features' (Fig. 2c)"),
    "layer": Column("string", "text-tower layer: token_embedding, positional_embedding, block_<i>, ln_final, "
                              "text_projection"),
    "layer_index": Column("int64", "position of the layer in forward order (0 = token_embedding)"),
    "source": Column("string", "alias of the source model"),
    "source_fingerprint": Column("string", "hash of the source weights"),
    "target": Column("string", "alias of the target model"),
    "target_fingerprint": Column("string", "hash of the target weights"),
    "mean_abs_change": Column("float64", "mean |target - source| over the layer's values (features: per prompt over "
                                         "its unpadded positions, then averaged over prompts)"),
    "relative_change": Column("float64", "||target - source|| / ||source|| (features: per prompt, then averaged)"),
    "n_values": Column("int64", "number of values compared (parameters: parameter count; features: over all prompts)"),
    "n_prompts": Column("int64", "prompts in the feature set (0 for parameter rows)"),
    "prompt_datasets": Column("string", "datasets whose class names and templates form the prompt set, comma-separated "
                                        "(empty for parameter rows)"),
    "created_at": Column("string", "UTC time the rows were computed, ISO 8601"),
    "upgradebench_version": Column("string", "version of upgradebench that computed the rows"),
    "git_sha": Column("string", "git commit of the upgradebench source when run from a checkout, else empty"),
    "torch_version": Column("string", "torch.__version__"),
    "open_clip_version": Column("string", "open_clip.__version__"),
}

DRIFT_SCHEMA = ParquetSchema(
    name="drift", version=DRIFT_SCHEMA_VERSION, version_column="schema_version", columns=DRIFT_COLUMNS,
    noun="drift file", source_fix="pass the file written by `upgradebench analyze drift --out`",
    damaged_fix="re-run `upgradebench analyze drift --out FILE` to rewrite it")

PARAMETERS, FEATURES = "parameters", "features"


def _tensors(part: nn.Module | nn.Parameter | torch.Tensor | None) -> list[tuple[str, torch.Tensor]]:
    if part is None:
        return []
    if isinstance(part, nn.Module):
        return [(name, p.detach()) for name, p in part.named_parameters()]
    return [("", part.detach())]


def check_compatible(source: VLM, target: VLM) -> None:
    """Raise a :class:`UserError` unless both text towers have the same layers with the same shapes."""
    src, tgt = source.text_modules, target.text_modules
    if list(src) != list(tgt):
        raise UserError(f"The text towers of {source.name!r} ({source.num_text_layers} blocks) and {target.name!r} "
                        f"({target.num_text_layers} blocks) have different layers.",
                        "drift compares a source with an upgrade of the same text architecture")
    for layer in src:
        a = [tuple(t.shape) for _, t in _tensors(src[layer])]
        b = [tuple(t.shape) for _, t in _tensors(tgt[layer])]
        if a != b:
            raise UserError(f"Layer {layer} differs in shape between {source.name!r} {a[:3]} and "
                            f"{target.name!r} {b[:3]}.",
                            "drift compares a source with an upgrade of the same text architecture")


def parameter_drift(source: VLM, target: VLM) -> list[dict]:
    """Per layer: mean absolute and relative change of the parameters (one dict per layer)."""
    check_compatible(source, target)
    rows = []
    for index, (layer, part) in enumerate(source.text_modules.items()):
        s = [t.flatten().double().cpu() for _, t in _tensors(part)]
        t = [t.flatten().double().cpu() for _, t in _tensors(target.text_modules[layer])]
        if not s:  # a tower without this part (e.g. no projection) on both sides
            continue
        ws, wt = torch.cat(s), torch.cat(t)
        diff = wt - ws
        rows.append({"kind": PARAMETERS, "layer": layer, "layer_index": index,
                     "mean_abs_change": float(diff.abs().mean()),
                     "relative_change": _ratio(diff.norm(), ws.norm()),
                     "n_values": ws.numel(), "n_prompts": 0, "prompt_datasets": ""})
    return rows


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num / den) if float(den) > 0 else float("nan")


@torch.no_grad()
def layer_outputs(vlm: VLM, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every text layer's output for ``tokens``, by layer name: ``[B, L', D]`` each, ``[B, E]`` for the
    projection (``L'`` = longest EOT + 1)."""
    states = vlm.text_hidden_states(tokens)
    length = states[0].shape[1]
    out = {"token_embedding": vlm.token_embeddings(tokens)[:, :length], "positional_embedding": states[0]}
    blocks = states[1:-1]
    for i, state in enumerate(blocks):
        out[f"block_{i}"] = state
    out["ln_final"] = vlm.text_modules["ln_final"](blocks[-1] if blocks else states[0])
    out["text_projection"] = states[-1]
    return out


@torch.no_grad()
def feature_drift(source: VLM, target: VLM, prompts: Sequence[str], datasets: Sequence[str] = (),
                  batch_size: int = 256) -> list[dict]:
    """Per layer: mean absolute and relative change of the layer's output on ``prompts``, averaged over prompts."""
    check_compatible(source, target)
    if not prompts:
        raise UserError("The prompt set for feature drift is empty.", "pass --dataset with at least one class")
    layers = list(source.text_modules)
    abs_sum = dict.fromkeys(layers, 0.0)
    rel_sum = dict.fromkeys(layers, 0.0)
    counts = dict.fromkeys(layers, 0)
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        tokens = source.tokenize(batch)
        if not torch.equal(tokens.cpu(), target.tokenize(batch).cpu()):
            raise UserError(f"{source.name!r} and {target.name!r} tokenize the prompts differently.",
                            "feature drift needs both models to share a tokenizer")
        eot = source.eot_index(tokens).cpu()
        s_out, t_out = layer_outputs(source, tokens), layer_outputs(target, tokens)
        for layer in layers:
            s, t = s_out[layer].double().cpu(), t_out[layer].double().cpu()
            if s.dim() == 3:  # per position: keep positions 0..eot of each prompt
                keep = (torch.arange(s.shape[1]).unsqueeze(0) <= eot.unsqueeze(1)).unsqueeze(-1).to(s.dtype)
                s, t = s * keep, t * keep
                values = keep.sum(dim=(1, 2)) * s.shape[-1]
            else:
                values = torch.full((s.shape[0],), float(s.shape[-1]), dtype=s.dtype)
            diff = (t - s).flatten(1)
            abs_sum[layer] += float((diff.abs().sum(1) / values).sum())
            rel_sum[layer] += float((diff.norm(dim=1) / s.flatten(1).norm(dim=1)).sum())
            counts[layer] += int(values.sum())
    n = len(prompts)
    return [{"kind": FEATURES, "layer": layer, "layer_index": index, "mean_abs_change": abs_sum[layer] / n,
             "relative_change": rel_sum[layer] / n, "n_values": counts[layer], "n_prompts": n,
             "prompt_datasets": ",".join(datasets)} for index, layer in enumerate(layers)]


def dataset_prompts(datasets: Sequence) -> list[str]:
    """The prompt set: every class name of each dataset written into that dataset's template."""
    return [ds.template.format(clean_name(name)) for ds in datasets for name in ds.classnames]


def drift_frame(source: VLM, target: VLM, prompts: Sequence[str], datasets: Sequence[str] = ()) -> pd.DataFrame:
    """Parameter and feature drift of ``target`` against ``source`` as rows of :data:`DRIFT_SCHEMA`."""
    common = {"schema_version": DRIFT_SCHEMA_VERSION, "source": source.name,
              "source_fingerprint": source.fingerprint, "target": target.name,
              "target_fingerprint": target.fingerprint, "created_at": now(), **versions()}
    rows = parameter_drift(source, target) + feature_drift(source, target, prompts, datasets)
    return DRIFT_SCHEMA.conform(pd.DataFrame([{**common, **row} for row in rows]), "drift")


def write_drift(df: pd.DataFrame, path: str | Path) -> Path:
    """Write drift rows to parquet atomically."""
    return DRIFT_SCHEMA.write(df, path)


def read_drift(path: str | Path) -> pd.DataFrame:
    """Drift rows from a parquet file written by :func:`write_drift`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Drift file {path} does not exist.", "run `upgradebench analyze drift --out FILE` first")
    return DRIFT_SCHEMA.read(path)


def analysis_schema_markdown() -> str:
    """``results/ANALYSIS_SCHEMA.md``, generated from :data:`DRIFT_SCHEMA` so it cannot drift from the code."""
    lines = [
        "# Analysis schema",
        "",
        "## Drift (`upgradebench analyze drift`, paper Fig. 2b and 2c)",
        "",
        f"Drift schema version **{DRIFT_SCHEMA_VERSION}**. One parquet row per (target x kind x text-tower layer),",
        "layers in forward order. Parameter rows compare each layer's parameters; feature rows compare each",
        "layer's output on the prompt set (class names of `prompt_datasets` in their templates), per prompt over",
        "its positions up to its own EOT, then averaged over prompts. Keep drift files outside a results folder",
        "of runs (that folder is read as result rows). This file is generated by",
        "`python -m upgradebench.analysis.drift > results/ANALYSIS_SCHEMA.md` (a test checks it).",
        "",
        *DRIFT_SCHEMA.markdown_table(),
    ]
    lines += [
        "",
        "## Depth study (`upgradebench analyze depth`, paper Fig. 2d)",
        "",
        "Ordinary result rows (`results/SCHEMA.md`) of method `coop` whose config `depth = k` inserts the",
        "context at the input of text block k; `method_variant` is `depth=k` (empty for k = 0, which is plain",
        "CoOp and shares its run).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(analysis_schema_markdown(), end="")

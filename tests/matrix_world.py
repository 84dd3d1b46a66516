"""A hand-built upgrade matrix: rows and prediction ledgers of runs on one source and three targets, some of them
carried by mappers, with per-item correctness chosen so that every matrix number is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from upgradebench.guard import safe_name
from upgradebench.ledger import ledger_path, write_ledger
from upgradebench.plan import mapper_label
from upgradebench.results import SCHEMA_VERSION, write_rows

from .rows import blank_row

SRC, TGT, TEXT, DRIFT, DS = "toy-clip", "toy-eva", "toy-eva-text", "toy-eva-drift", "toy-pattern"
VOCAB = ("vocab-map", "{}", "none", 0, 3.0)
RETUNE = ("retune", json.dumps({"shots": 4, "steps": 50}), "labeled", 4, 9.0)
CHAINED = ("vocab-map", json.dumps({"via": TGT}), "none", 0, 5.0)

# item:                 0  1  2  3  4
M_SRC = [1, 1, 0, 0, 1]          # m on the source: 60
M_TGT = [1, 0, 1, 0, 0]          # m unchanged on toy-eva: 40, flips items 1 and 4 (NFR 40)
M_TGT_VOCAB = [1, 1, 1, 0, 0]    # m through vocab-map on toy-eva: 60, flips item 4 (NFR 20)
M_TEXT_VOCAB = [0, 1, 1, 1, 1]   # m through vocab-map on toy-eva-text: 80, flips item 0 (NFR 20)
M_TGT_RETUNE = [1, 1, 1, 1, 1]   # m re-tuned on toy-eva: 100, no flip
M_DRIFT_CHAIN = [1, 1, 0, 0, 1]  # m chained through toy-eva onto toy-eva-drift: 60, no flip
ZS = {SRC: [1, 1, 1, 0, 0], TGT: [0, 1, 1, 0, 1], TEXT: [0, 0, 1, 1, 1], DRIFT: [0, 1, 0, 0, 1]}  # 60, 60, 60, 40
ORACLE_TGT = [1, 1, 1, 1, 0]     # m fitted on toy-eva: 80


def _preds(right: list[int]) -> pd.DataFrame:
    label = np.asarray([i % 2 for i in range(len(right))], dtype="int16")
    pred = np.where(np.asarray(right, bool), label, 1 - label).astype("int16")
    return pd.DataFrame({"item": [f"{DS}/test/{i}" for i in range(len(right))], "label": label, "pred": pred,
                         "correct": pred == label, "margin": np.where(pred == label, 1.0, -1.0).astype("float32")})


def _evaluation(method: str, run: str, seed: int, model: str, role: str, right: list[int], source: str = SRC,
                mapper: tuple | None = None) -> tuple[str, dict, pd.DataFrame]:
    """(file name, row, predictions) of one evaluation; ``mapper``: (mapper, config, budget, shots, seconds)."""
    row = blank_row(schema_version=SCHEMA_VERSION, run_id=run, method=method, method_variant="",
                     method_config="{}", dataset=DS, train_dataset=DS, shots=16, seed=seed, source=source,
                     eval_model=model, role=role, top1=100 * float(np.mean(right)), n_test=len(right),
                     fit_seconds=2.0, eval_seconds=0.1, trainable_params=10, needs_image_encoder=False, device="cpu")
    name = f"{safe_name(model)}--{DS}"
    if mapper is not None:
        kind, config, budget, shots, seconds = mapper
        row.update(mapper=kind, mapper_config=config, mapper_budget=budget, mapper_shots=shots, map_seconds=seconds)
        name += f"@{mapper_label(kind, config)}"
    return f"{run}/{name}.parquet", row, _preds(right)


def matrix_world(seeds: tuple[int, ...] = (1,), mapped: bool = True) -> list[tuple[str, dict, pd.DataFrame]]:
    """(file name, row, predictions) of every evaluation: m and zero-shot on the source and the three targets
    (m unchanged only on toy-eva: identity is refused on toy-eva-text), m fitted on toy-eva (the oracle), and
    with ``mapped`` m through vocab-map (toy-eva, toy-eva-text), retune (toy-eva) and vocab-map via toy-eva
    (toy-eva-drift)."""
    out = []
    for seed in seeds:
        run, zs, oracle = f"m-s{seed}", f"zeroshot-s{seed}", f"m-oracle-s{seed}"
        out += [_evaluation("m", run, seed, SRC, "base", M_SRC), _evaluation("m", run, seed, TGT, "new", M_TGT),
                _evaluation("m", oracle, seed, TGT, "oracle", ORACLE_TGT, source=TGT)]
        out += [_evaluation("zeroshot", zs, seed, model, "base" if model == SRC else "new", right)
                for model, right in ZS.items()]
        if mapped:
            out += [_evaluation("m", run, seed, TGT, "mapped", M_TGT_VOCAB, mapper=VOCAB),
                    _evaluation("m", run, seed, TEXT, "mapped", M_TEXT_VOCAB, mapper=VOCAB),
                    _evaluation("m", run, seed, TGT, "mapped", M_TGT_RETUNE, mapper=RETUNE),
                    _evaluation("m", run, seed, DRIFT, "mapped", M_DRIFT_CHAIN, mapper=CHAINED)]
    return out


def in_memory(world: list[tuple[str, dict, pd.DataFrame]]) -> tuple[pd.DataFrame, dict, dict]:
    """The rows as one frame and the ledgers by key, as read_results, read_ledgers and read_mapped_ledgers give
    them."""
    rows = pd.DataFrame([row for _, row, _ in world])
    ledgers, mapped = {}, {}
    for _, row, preds in world:
        key = (row["run_id"], row["eval_model"], row["dataset"])
        ledger = preds.assign(run_id=key[0], eval_model=key[1], dataset=key[2])
        if row["role"] == "mapped":
            mapped[(*key, mapper_label(row["mapper"], row["mapper_config"]))] = ledger
        else:
            ledgers[key] = ledger
    return rows, ledgers, mapped


def write_world(world: list[tuple[str, dict, pd.DataFrame]], folder) -> None:
    """Write the rows and their ledgers under ``folder`` as runs write them."""
    for name, row, preds in world:
        path = folder / name
        write_rows([row], path)
        write_ledger(preds, ledger_path(path), row["run_id"], row["eval_model"], row["dataset"])

"""Submissions: what a results folder covers of the reference protocol, and whether it matches it.

The **protocol** is what every ranked entry (one method with one config, a *label*) must cover: the cells
(source, target, dataset, shots, seed) of the reference, and the fingerprints of its models and datasets. It
comes from a reference results folder (the cells of its zero-shot reference entry, which every run writes
beside its own rows, else of its default-config entries; for a variant the reference ran, an ablation, the
cells it ran it on; the fingerprints of its rows) or from a grid (cells only: a grid names models and
datasets, not weights). A few-shot split is a pure function of (dataset fingerprint, K, seed)
(``upgradebench.data.fewshot``), so a split that differs shows as a dataset fingerprint that differs, and
each module's recorded run identity is checked against its rows.

Hashes find damage, not forgery (anyone who edits a file can recompute them), so a submission is trusted only
for what was re-computed: :func:`reevaluate` plugs a sample of its saved modules (:func:`sample_runs`) into the
models and datasets here and compares the result with its rows and ledgers; rows that no hash or ledger
covers, or that could not be re-computed, are *unverified* (:func:`integrity_gaps`).

:func:`check_entries` judges every entry of a table of rows; :func:`check_submission` adds what needs the
folder (schema, saved modules, re-computation) and is what ``upgradebench leaderboard check`` prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from safetensors import safe_open

from upgradebench.errors import UnknownNameError, UserError
from upgradebench.guard import is_run_id
from upgradebench.integrity import DIGEST_KEY
from upgradebench.ledger import agrees
from upgradebench.metrics import read_ledgers
from upgradebench.module_io import MODULE_CONFIG, MODULE_WEIGHTS, load_module
from upgradebench.results import in_distribution, merge_results, method_label, paired, read_results
from upgradebench.roles import MAPPED, ZERO_SHOT
from upgradebench.sweep import load_grid

if TYPE_CHECKING:
    from upgradebench.runner import Runner

"""The method whose rows every run writes beside its own (``RunSpec.zeroshot_reference``)."""

Cell = tuple[str, str, str, int, int]
"""(source, target, dataset, shots, seed): one paired Base/New measurement the protocol asks for."""


@dataclass
class Protocol:
    """The cells every entry must cover and the fingerprints its rows must carry (empty: not checked)."""

    where: str
    cells: set[Cell]
    models: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    method_versions: dict[str, str] = field(default_factory=dict)
    variant_cells: dict[str, set[Cell]] = field(default_factory=dict)

    def expected(self, label: str) -> set[Cell]:
        """The cells entry ``label`` must cover: a variant the reference ran (an ablation, often on fewer
        datasets) those the reference covered with it, every other entry all of :attr:`cells`."""
        return self.variant_cells.get(label, self.cells)


def cells_of(df: pd.DataFrame) -> set[Cell]:
    """The (source, target, dataset, shots, seed) cells the in-distribution Base/New pairs of ``df`` cover."""
    pairs = paired(in_distribution(df))
    return {(s, t, d, int(k), int(seed)) for s, t, d, k, seed in
            zip(pairs.source, pairs.target, pairs.dataset, pairs.shots, pairs.seed)}


def _most_common(names: pd.Series, values: pd.Series) -> dict[str, str]:
    counts = Counter(zip(names, values))
    out: dict[str, str] = {}
    for (name, value), _ in counts.most_common():
        out.setdefault(name, value)
    return out


def protocol_of(df: pd.DataFrame, where: str) -> Protocol:
    """The protocol of reference rows: the cells of their zero-shot entry (of every default-config entry when
    there is none) and their fingerprints (where the reference holds several for one name, the most frequent)."""
    defaults = df[df.method_variant == ""]
    if (defaults.method == ZERO_SHOT).any():
        defaults = defaults[defaults.method == ZERO_SHOT]
    models = _most_common(pd.concat([df.source, df.eval_model]),
                          pd.concat([df.source_fingerprint, df.eval_fingerprint]))
    variants = {method_label(m, v): cells_of(rows)
                for (m, v), rows in df[df.method_variant != ""].groupby(["method", "method_variant"])}
    return Protocol(where, cells_of(defaults), models, _most_common(df.dataset, df.dataset_fingerprint),
                    _most_common(df.method, df.method_version), variants)


def load_protocol(reference: str | Path) -> Protocol:
    """The protocol of a reference results folder, or of a grid (a YAML file or ``paper:NAME``)."""
    path = Path(reference)
    if path.is_dir():
        rows = read_results(path)
        if rows.empty:
            raise UserError(f"Reference {path} holds no result rows.", "pass the reference results folder or a grid")
        return protocol_of(rows, str(path))
    grid = load_grid(reference)
    cells = {(grid.source, t, d, k, s) for t in grid.targets for d in grid.datasets for k in grid.shots
             for s in grid.seeds}
    return Protocol(str(reference), cells)


def within_grid(protocol: Protocol, grid: str | Path) -> Protocol:
    """``protocol`` with its cells (and each variant's) restricted to those of ``grid`` (a YAML file or
    ``paper:NAME``): the protocol of a reference folder that also holds other studies (the upgrade matrix's targets
    on two tasks) is its main grid's, its fingerprints and method versions the folder's."""
    cells = load_protocol(grid).cells
    return dataclasses.replace(protocol, where=f"{protocol.where} (cells of {grid})", cells=protocol.cells & cells,
                               variant_cells={k: v & cells for k, v in protocol.variant_cells.items()})


def _cell_text(cell: Cell) -> str:
    source, target, dataset, shots, seed = cell
    return f"{source}->{target} {dataset} k{shots} s{seed}"


def _by_pair_shots_and_seeds(cells: Sequence[Cell]) -> dict[tuple, list[str]]:
    """``cells`` grouped: (source, target, shots, seeds) -> the datasets that lack exactly those seeds, sorted."""
    seeds: dict[tuple, list] = {}
    for source, target, dataset, shots, seed in cells:
        seeds.setdefault((source, target, shots, dataset), []).append(seed)
    groups: dict[tuple, list[str]] = {}
    for (source, target, shots, dataset), found in seeds.items():
        groups.setdefault((source, target, shots, tuple(sorted(found))), []).append(dataset)
    return {key: sorted(datasets) for key, datasets in sorted(groups.items())}


def missing_summary(cells: Sequence[Cell]) -> list[str]:
    """``cells`` in a few lines: per (source, target, shots) and set of seeds, the datasets that lack them."""
    return [f"{source}->{target} k{shots} seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}: "
            f"{', '.join(ds)}" for (source, target, shots, ss), ds in _by_pair_shots_and_seeds(cells).items()]


def fill_commands(method: str, variant: str, cells: Sequence[Cell], results: str = "RESULTS") -> list[str]:
    """The ``upgradebench run`` commands that add ``cells`` of entry (``method``, ``variant``) to ``results``: one
    per (source, target, shots) and set of seeds, over the datasets that lack them (runs already there are reused)."""
    config = [part for part in variant.split(",") if part] if variant else []
    out = []
    for (source, target, shots, seed_list), datasets in _by_pair_shots_and_seeds(cells).items():
        words = ["upgradebench", "run", "--method", method, *(w for c in config for w in ("--config", c)),
                 "--source", source, "--target", target, *(w for d in datasets for w in ("--dataset", d)),
                 "--shots", str(shots), *(w for s in seed_list for w in ("--seed", str(s))), "--results", results]
        out.append(shlex.join(words))
    return out


def _differences(rows: pd.DataFrame, names: str, values: str, expected: dict[str, str], kind: str) -> list[dict]:
    found = rows[[names, values]].drop_duplicates()
    return [{"kind": kind, "name": n, "expected": expected[n], "found": v}
            for n, v in sorted(zip(found[names], found[values])) if n in expected and v != expected[n]]


def check_entries(df: pd.DataFrame, protocol: Protocol, results: str = "RESULTS") -> list[dict[str, Any]]:
    """Per entry (method, variant) of ``df``: coverage of the protocol, fingerprints and method versions that
    differ from it, and the distributions that supplied the method. ``complete`` and ``matching`` say
    whether the entry may be ranked; ``fill`` holds the commands that add the missing cells to ``results``."""
    out = []
    for (method, variant), rows in df.groupby(["method", "method_variant"], sort=True):
        have = cells_of(rows)
        expected = protocol.expected(method_label(method, variant))
        missing = sorted(expected - have)
        foreign = (_differences(rows, "source", "source_fingerprint", protocol.models, "model")
                   + _differences(rows, "eval_model", "eval_fingerprint", protocol.models, "model")
                   + _differences(rows, "dataset", "dataset_fingerprint", protocol.datasets, "dataset"))
        foreign = [dict(t) for t in dict.fromkeys(tuple(d.items()) for d in foreign)]
        expected_version = protocol.method_versions.get(method)
        versions = sorted(set(rows.method_version))
        version_problems = [f"method version {v!r}, the reference ran {expected_version!r}"
                            for v in versions if expected_version is not None and v != expected_version]
        out.append({
            "method": method, "variant": variant, "label": method_label(method, variant),
            "origin": sorted(set(rows.method_origin)), "method_version": versions,
            "upgradebench_version": sorted(set(rows.upgradebench_version)),
            "covered": len(expected & have), "expected": len(expected),
            "missing": [_cell_text(c) for c in missing],
            "missing_summary": missing_summary(missing),
            "fill": fill_commands(method, variant, missing, results),
            "extra": [_cell_text(c) for c in sorted(have - expected)],
            "foreign_fingerprints": foreign,
            "version_problems": version_problems,
            "complete": not missing and bool(expected), "matching": not foreign and not version_problems,
        })
    return out


def module_problems(run_dir: Path, rows: pd.DataFrame) -> list[str]:
    """What is wrong with the saved module of one run (empty: nothing): it must exist, load (its method
    installed), hold exactly the tensors its ``module.json`` names with as many values as its rows say it
    learned, and record the run identity (source and dataset fingerprints, shots, seed) of its rows.
    Loading it checks its content hashes and the method that fitted it (:func:`upgradebench.module_io.load_module`)."""
    folder = run_dir / "module"
    config_path = folder / MODULE_CONFIG
    if not config_path.is_file():
        return [f"{folder}: no saved module ({MODULE_CONFIG} missing)"]
    problems = []
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"{config_path} is not JSON ({exc})"]
    named = sorted(config.get("tensors", []))
    weights = folder / MODULE_WEIGHTS
    if named:
        try:
            with safe_open(str(weights), framework="pt") as handle:
                stored = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
        except Exception as exc:  # safetensors raises several types for a missing or damaged file
            return [f"{weights} cannot be read ({exc})"]
        if sorted(stored) != named:
            problems.append(f"{weights} holds tensors {sorted(stored)}, {MODULE_CONFIG} names {named}")
        learned = sum(math.prod(shape) for shape in stored.values())
        claimed = set(rows.trainable_params.dropna().astype(int))
        if claimed and claimed != {learned}:
            problems.append(f"{weights} holds {learned} values, its rows say {sorted(claimed)}")
    identity = config.get("provenance", {}).get("run_identity", {})
    own = in_distribution(rows)
    first = (own if len(own) else rows).iloc[0]
    recorded = {"source": first.source_fingerprint, "shots": int(first.shots), "seed": int(first.seed)}
    if len(own):
        recorded["dataset"] = first.dataset_fingerprint
    differ = [k for k, v in recorded.items() if k in identity and identity[k] != v]
    if differ:
        problems.append(f"{config_path} records a run identity whose {', '.join(differ)} differ from its rows")
    try:
        load_module(folder)
    except UnknownNameError:
        problems.append(f"{folder} does not load: its method {config.get('method')!r} is not installed here "
                        f"(its rows name the distribution {first.method_origin}: install it)")
    except UserError as exc:
        problems.append(f"{folder} does not load: {exc.message}")
    return problems


TRUST = ("Row and module hashes find damage, not forgery: anyone who edits a file can recompute its hash. Only "
         "re-computing a module's predictions finds a forged row, so `leaderboard check` re-evaluates a sample of "
         "each entry's saved modules (every module with --all) on the reference models and datasets.")
"""What the hashes prove and what they do not (printed by ``leaderboard check``)."""


def sample_runs(df: pd.DataFrame, every: bool = False, salt: str = "") -> list[str]:
    """The runs of ``df`` whose modules are re-evaluated: every one with ``every``, else one per (entry, source,
    training dataset, shots): the run whose SHA-256 of ``salt`` + run id is smallest. The sample is
    deterministic (the same folder is checked the same way twice); a checker's own ``salt`` makes it one a
    submitter cannot predict."""
    runs = df.drop_duplicates("run_id")
    if every:
        return sorted(runs.run_id)
    keyed = runs.assign(_key=[hashlib.sha256(f"{salt}{r}".encode()).hexdigest() for r in runs.run_id],
                        _label=[method_label(m, v) for m, v in zip(runs.method, runs.method_variant)])
    chosen = keyed.sort_values("_key").drop_duplicates(["_label", "source", "train_dataset", "shots"])
    return sorted(chosen.run_id)


def reevaluate(folder: Path, df: pd.DataFrame, run_ids: Sequence[str], runner: Runner,
               ledgers: dict[tuple[str, str, str], pd.DataFrame]) -> dict[str, dict[str, list]]:
    """Re-compute the rows of ``run_ids`` (rows of ``df``, read from ``folder``) from their saved modules: each
    module plugged into each row's model (loaded here by its name) on the row's dataset.

    Per run: ``mismatches`` (a top-1 or item count that differs from the row, or per-item predictions that differ
    from its ledger: run, model, dataset and both numbers), ``unverified`` (why a row could not be re-computed
    here: no loadable module, the model or dataset has other weights or data here than in the row) and
    ``recomputed`` (the rows that matched)."""
    out: dict[str, dict[str, list]] = {}
    for run_id in run_ids:
        found: dict[str, list] = {"mismatches": [], "unverified": [], "recomputed": []}
        out[run_id] = found
        # mapped rows are never ranked (the page lists them apart): the check re-computes the ranked ones
        rows = df[(df.run_id == run_id) & ~df.role.isin(["rescore", MAPPED])]
        if not is_run_id(run_id):
            found["unverified"].append(f"run id {run_id!r} is not a folder name, so it has no module to re-evaluate")
            continue
        try:
            module = load_module(folder / run_id / "module")
        except UserError as exc:
            found["unverified"].append(f"its module cannot be re-evaluated ({exc.message})")
            continue
        config = json.loads((folder / run_id / "module" / MODULE_CONFIG).read_text(encoding="utf-8"))
        precision = ((config.get("provenance") or {}).get("run_identity") or {}).get("precision", "fp32")
        if precision != runner.cache.precision:  # other features: a difference would prove nothing
            found["unverified"].append(f"it was evaluated with {precision} features, this check computes "
                                       f"{runner.cache.precision}")
            continue
        for row in rows.itertuples(index=False):
            where = f"{row.eval_model} / {row.dataset}"
            try:
                vlm = runner.model(row.eval_model)
                dataset, trained = runner.dataset(row.dataset), runner.dataset(row.train_dataset)
            except UserError as exc:
                found["unverified"].append(f"{where}: cannot be loaded here ({exc.message})")
                continue
            if vlm.fingerprint != row.eval_fingerprint or dataset.fingerprint != row.dataset_fingerprint:
                found["unverified"].append(
                    f"{where}: here {row.eval_model} has weights {vlm.fingerprint} and {row.dataset} fingerprint "
                    f"{dataset.fingerprint}, the row {row.eval_fingerprint} and {row.dataset_fingerprint}")
                continue
            preds, top1, _ = runner.predict(module, vlm, dataset, trained.classnames, trained.name)
            ledger = ledgers.get((run_id, row.eval_model, row.dataset))
            problem = None
            if len(preds) != row.n_test:
                problem = f"{row.n_test} items in the row, {len(preds)} re-computed"
            elif ledger is None:
                found["unverified"].append(f"{where}: no prediction ledger to compare (re-computed top-1 {top1:.4f}, "
                                           f"the row {float(row.top1):.4f})")
                continue
            elif not agrees(100 * ledger.correct.mean(), float(row.top1)):
                problem = f"its ledger gives top-1 {100 * ledger.correct.mean():.4f}, its row {float(row.top1):.4f}"
            else:
                differ = items_differing(ledger, preds)
                if differ:
                    problem = (f"top-1 {float(row.top1):.4f} in the row, re-computed {top1:.4f}: {differ} of "
                               f"{len(preds)} items predicted otherwise than its ledger says (beyond near-ties)")
            if problem:
                found["mismatches"].append({"run_id": run_id, "model": row.eval_model, "dataset": row.dataset,
                                            "row_top1": float(row.top1), "recomputed_top1": top1, "problem": problem})
            else:
                found["recomputed"].append(where)
    return out


NEAR_TIE = 1e-3
"""Logit difference under which two classes tie: re-computing the committed results from a cold cache flipped
items ~1e-5 from a tie (another device or CPU kernel set moves logits by as much), so an item this close to a tie
may fall either way on re-computation."""


def items_differing(ledger: pd.DataFrame, preds: pd.DataFrame) -> int:
    """How many items ``preds`` (re-computed) answers otherwise than ``ledger``, near-ties aside: an item whose
    correctness differs counts unless both its margins are within :data:`NEAR_TIE` of zero (the re-computed
    one is not the submitter's to choose); an item whose wrong answer differs counts unless its true-class
    margin is the same (two wrong classes tied). An item in one but not the other counts."""
    j = ledger[["item", "pred", "correct", "margin"]].merge(preds[["item", "pred", "correct", "margin"]], on="item",
                                                            how="outer", suffixes=("_ledger", "_now"), indicator=True)
    unpaired = j._merge != "both"
    tie = (j.margin_ledger.abs() <= NEAR_TIE) & (j.margin_now.abs() <= NEAR_TIE)
    flipped = (j.correct_ledger != j.correct_now) & ~tie
    swapped = ((j.pred_ledger != j.pred_now) & (j.correct_ledger == j.correct_now)
               & ((j.margin_ledger - j.margin_now).abs() > NEAR_TIE))
    return int((unpaired | flipped | swapped).sum())


def integrity_gaps(folder: Path, df: pd.DataFrame, hashed: pd.Series,
                   ledgers: dict[tuple[str, str, str], pd.DataFrame]) -> dict[str, list[str]]:
    """Per run of ``df`` (read from ``folder``), what no hash or ledger covers (empty lists left out): rows read
    without a row hash (written before schema 3), rows without a prediction ledger, a module that records no
    content hash of its tensors or of its ``module.json`` (other weights put in its place would pass)."""
    out: dict[str, list[str]] = {}
    for run_id, rows in df.groupby("run_id", sort=True):
        gaps = []
        unhashed = int((~hashed[rows.index]).sum())
        if unhashed:
            gaps.append(f"{unhashed} row(s) without a row hash (written before schema 3)")
        unledgered = [f"{r.eval_model} / {r.dataset}" for r in rows.itertuples()
                      if r.role != MAPPED and (run_id, r.eval_model, r.dataset) not in ledgers]
        if unledgered:
            gaps.append(f"no prediction ledger for {', '.join(unledgered)}")
        config_path = folder / run_id / "module" / MODULE_CONFIG
        if is_run_id(run_id) and config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except ValueError:
                config = {}  # module_problems reports it
            if not isinstance(config, dict) or DIGEST_KEY not in config or "tensors_sha256" not in config:
                gaps.append(f"{config_path} records no content hash")
        if gaps:
            out[run_id] = gaps
    return out


def check_submission(folder: str | Path, protocol: Protocol, runner: Runner | None = None, every: bool = False,
                     salt: str = "") -> dict[str, Any]:
    """Everything ``leaderboard check`` reports of a submitted results folder; ``ok`` only when it reads,
    every entry is complete and matching, every module passes :func:`module_problems`, and every entry is
    verified: its rows carry row hashes and ledgers and its modules content hashes (:func:`integrity_gaps`), and
    with a ``runner`` the sample of its modules (:func:`sample_runs`; all with ``every``) re-computes its rows and
    ledgers (:func:`reevaluate`). Without a ``runner`` nothing is re-computed and every entry is unverified."""
    folder = Path(folder)
    try:
        merged = merge_results(folder)
        ledgers = read_ledgers(folder)
    except UserError as exc:
        return {"submission": str(folder), "reference": protocol.where, "ok": False, "schema_problems": [exc.message],
                "entries": [], "module_problems": [], "trust": TRUST}
    df = merged.rows
    schema = [] if len(df) else [f"{folder} holds no result rows"]
    entries = check_entries(df, protocol, str(folder))
    modules = []
    for run_id, rows in df.groupby("run_id", sort=True):
        problems = module_problems(folder / run_id, rows)
        modules += [{"run_id": run_id, "label": method_label(rows.method.iloc[0], rows.method_variant.iloc[0]),
                     "problem": p} for p in problems]
    broken = {m["label"] for m in modules}
    gaps = integrity_gaps(folder, df, merged.hashed, ledgers)
    chosen = sample_runs(df, every, salt) if runner is not None else []
    found = reevaluate(folder, df, chosen, runner, ledgers) if runner is not None else {}
    for entry in entries:
        entry["modules_ok"] = entry["label"] not in broken
        mine = df[(df.method == entry["method"]) & (df.method_variant == entry["variant"])]
        runs = sorted(set(mine.run_id))
        verdicts = [found[r] for r in runs if r in found]
        unverified = [f"{r}: {g}" for r in runs for g in gaps.get(r, [])]
        unverified += [f"{r}: {u}" for r in runs if r in found for u in found[r]["unverified"]]
        if runner is None:
            unverified.append("nothing re-computed (no models to re-evaluate on)")
        entry["mismatches"] = [m for v in verdicts for m in v["mismatches"]]
        entry["unverified"] = unverified
        entry["recomputed_runs"] = sum(1 for v in verdicts if v["recomputed"] and not v["mismatches"]
                                       and not v["unverified"])
        entry["runs"] = len(runs)
        entry["verification"] = ("mismatch" if entry["mismatches"] else "unverified" if unverified
                                 else "verified" if entry["recomputed_runs"] == len(runs) else "sampled")
        entry["ok"] = (entry["complete"] and entry["matching"] and entry["modules_ok"]
                       and entry["verification"] in ("verified", "sampled"))
    ok = not schema and bool(entries) and all(e["ok"] for e in entries)
    return {"submission": str(folder), "reference": protocol.where, "ok": ok, "schema_problems": schema,
            "entries": entries, "module_problems": modules, "trust": TRUST}

"""The runner: fit a method once on the source, evaluate the module unchanged on the source and every target.

Everything a run depends on goes into its ``run_id`` (method, version, config, dataset fingerprint, shots,
seed, source fingerprint, views, precision), so a run whose module and rows already exist is not redone
("only missing" resume): a new target for an old run only evaluates the saved module.
Layout of a results folder::

    RESULTS/<run_id>/module/{module.safetensors, module.json}
    RESULTS/<run_id>/<eval_model>--<dataset>.parquet      one row file per evaluated (model, dataset)
    RESULTS/<run_id>/ledger/<eval_model>--<dataset>.parquet   its per-item predictions (ledger.py)

A row is reused only while everything it depends on is unchanged: its run (the run id), the evaluated
model's weights and the test set's fingerprint (an OOD test set is not part of the run id: a changed one is
evaluated again). A row of an older schema whose module is saved is brought up to date by re-evaluating the
module (no refit); a schema-2 row, which lacks only its row hash, is rewritten with the same values and their hash.
A row is never replaced by an evaluation of other weights under the same model name: a changed model is
refused unless ``replace`` (``--replace``) says to replace its rows. Temporary files of killed writes in a
run folder are removed when the run starts again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .contract import Module
from .data import DATASETS, Dataset, class_columns, get_dataset, load_fewshot
from .defaults import DEFAULT_VIEWS
from .discovery import get_mapper, method_entry
from .errors import UserError
from .features import FeatureCache
from .guard import safe_name
from .integrity import clean_stale_tmp
from .ledger import MAPPED_MARK, ledger_path, predictions, top1_of, write_ledger
from .mapping import Mapper, Refused, TargetData, width_problem
from .models import VLM, load_vlm, resolve_device
from .module_io import MODULE_CONFIG, load_module
from .paths import default_results_dir
from .plan import VIA, MapperPlan, RunPlan, RunSpec, make_mapper_plans, plan_runs
from .provenance import now, stable_hash, versions
from .results import IDENTITY_MAPPER, SCHEMA_VERSION, has_row_hash, read_results, write_rows
from .roles import IDENTITY, MAPPED, NEW
from .task import ONLINE, FewShotTask

log = logging.getLogger(__name__)


def check_writable(folder: Path) -> None:
    """Fail before any training when results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"Results folder {folder} is not writable ({exc.strerror or exc}).",
                        "pass --results DIR with a folder you can write to") from None


STATUSES = ("fitted", "evaluated", "reused")
"""What executing a plan did (:attr:`RunOutcome.status`)."""


@dataclass
class RunOutcome:
    """What executing one plan did: its run folder, whether its module was fitted now (else the saved one was
    reused), how many row files were written (evaluated, or brought up to date) and how many reused as they were,
    and the run's rows."""

    name: str
    folder: Path
    fitted: bool
    written: int
    reused: int
    rows: pd.DataFrame
    refused: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`: ``fitted`` (module fitted now), ``evaluated`` (saved module, rows written) or
        ``reused`` (nothing written)."""
        fitted, evaluated, reused = STATUSES
        return fitted if self.fitted else evaluated if self.written else reused

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the ``runs`` of ``run --json``, a sweep's outcomes), without the rows."""
        return {"run": self.name, "folder": str(self.folder), "status": self.status, "rows_written": self.written,
                "rows_reused": self.reused, "refused": list(self.refused)}


def outcome_text(outcome: dict[str, Any]) -> str:
    """One line saying what a run did (from :meth:`RunOutcome.as_dict`): fitted, evaluated or reused, and its rows."""
    written, reused = outcome["rows_written"], outcome["rows_reused"]
    if not written:
        return f"{outcome['status']}, nothing written ({count_rows(reused)} already there)"
    return f"{outcome['status']}, {count_rows(written)} written" + (f", {reused} reused" if reused else "")


def count_rows(n: int) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} row{'' if n == 1 else 's'}"


class MethodFailed(UserError):
    """A method's own code (its ``fit``, or its module's ``logits``) raised or returned something unusable."""


@contextmanager
def _method_code(method: str, step: str, kind: str = "method") -> Iterator[None]:
    """Turns an exception raised by a method's own code into a :class:`MethodFailed` naming the method and the
    step (one line in the CLI and in a sweep's report); the original is kept as its ``__cause__`` for debugging."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        raise MethodFailed(f"{kind.capitalize()} {method!r} failed while {step}: {type(exc).__name__}"
                           f"{': ' + detail[0] if detail else ''}",
                           f"this is an error in the code or config of {kind} {method!r}: fix it, or report it "
                           f"to the {kind}'s authors with this message") from exc


def check_logits(logits: Any, items: int, classes: int, method: str, model: str) -> None:
    """Refuse logits that are not a finite ``[items, classes]`` tensor (a plugin's wrong shape or NaN would
    otherwise be scored as a number: a wrong column count as 0 %, NaN as chance)."""
    shape = list(getattr(logits, "shape", []))
    if not isinstance(logits, torch.Tensor) or shape != [items, classes]:
        raise MethodFailed(f"Method {method!r} gave logits of shape {shape} on {model}; expected [{items}, {classes}] "
                           "(one row per test image, one column per class).",
                           f"make Module.logits of method {method!r} return one score per class for each image")
    if not torch.isfinite(logits).all():
        raise MethodFailed(f"Method {method!r} gave logits with NaN or infinite values on {model}.",
                           f"find where Module.logits of method {method!r} (or the tensors its fit saved) give "
                           "NaN or infinity")


class Runner:
    """Runs plans (:mod:`upgradebench.plan`) against shared state: loaded models, the feature cache and the
    results folder.

    ``replace``: rows of a model whose weights changed since they were written are replaced (default: refused).
    """

    def __init__(self, results: str | Path | None = None, device: str = "auto", precision: str = "fp32",
                 data_root: str | Path | None = None, allow_download: bool = False, workers: int | None = None,
                 replace: bool = False) -> None:
        self.replace = replace  # replace the rows of a model whose weights changed (else refuse)
        self.results = Path(results) if results is not None else default_results_dir()
        self.device = resolve_device(device)
        self.cache = FeatureCache(precision=precision, workers=workers)
        self.data_root = data_root
        self.allow_download = allow_download
        self._models: dict[tuple[str, str | None], VLM] = {}
        self._datasets: dict[str, Dataset] = {}

    # ---- shared state ------------------------------------------------------------------------------------------
    def model(self, name: str, pretrained: str | None = None) -> VLM:
        """Load (once) a model by name."""
        key = (name, pretrained)
        if key not in self._models:
            self._models[key] = load_vlm(name, pretrained, self.device, self.allow_download)
        return self._models[key]

    def dataset(self, name: str) -> Dataset:
        """Build (once) a dataset by name."""
        if name not in self._datasets:
            self._datasets[name] = get_dataset(name, self.data_root)
        return self._datasets[name]

    # ---- planning and running ----------------------------------------------------------------------------------
    def plan(self, specs: RunSpec | Iterable[RunSpec]) -> list[RunPlan]:
        """Every run of ``specs``, zero-shot and oracle runs included (:func:`upgradebench.plan.plan_runs`), with
        the datasets checked and the shots capped against this runner's data, and the results folder checked
        writable: every mistake is reported before anything slow happens."""
        plans = plan_runs([specs] if isinstance(specs, RunSpec) else specs, self.dataset)
        check_writable(self.results)
        return plans

    def run_all(self, plans: Sequence[RunPlan], on_start: Callable[[RunPlan], None] | None = None,
                on_end: Callable[[RunPlan, RunOutcome | None, Exception | None], None] | None = None,
                keep_going: bool = False) -> list[RunOutcome]:
        """Execute ``plans`` one after the other (``upgradebench run``, a local sweep, the depth study); returns
        what each finished run did. ``on_start`` is called before each run, ``on_end`` after it with its outcome
        and its error (one of them None); with ``keep_going`` a failed run is reported to ``on_end`` and the rest
        go on, else its error is raised."""
        outcomes = []
        for plan in plans:
            if on_start is not None:
                on_start(plan)
            outcome: RunOutcome | None = None
            error: Exception | None = None
            try:
                outcome = self.execute(plan)
            except Exception as exc:  # a bug in one method must not lose the rest of a sweep
                if not keep_going:
                    raise
                error = exc
            else:
                outcomes.append(outcome)
            if on_end is not None:
                on_end(plan, outcome, error)
        return outcomes

    def run(self, plan: RunPlan | RunSpec) -> pd.DataFrame:
        """The rows of one run: a plan is executed (:meth:`execute`); a :class:`RunSpec` is planned first
        (:meth:`plan`) and every run it gives executed (its own, its oracle and zero-shot runs)."""
        plans = self.plan(plan) if isinstance(plan, RunSpec) else [plan]
        return pd.concat([outcome.rows for outcome in self.run_all(plans)], ignore_index=True)

    def execute(self, plan: RunPlan) -> RunOutcome:
        """Fit (or reuse) the module of ``plan`` and evaluate it on its source (role ``plan.role``) and each target
        (role ``new``), on its dataset and each OOD test set; rows still valid are reused as they are."""
        method, config, views = plan.method, plan.config, plan.views
        source = self.model(plan.source, plan.pretrained.get(plan.source))
        targets = [self.model(t, plan.pretrained.get(t)) for t in plan.targets]
        dataset = self.dataset(plan.dataset)
        config_json = method.config_dict(config)
        identity, run_id = plan.identify(dataset.fingerprint, dataset.name, source.fingerprint, self.cache.precision)
        variant = plan.variant()
        run_dir = self.results / run_id
        self._check_source_unchanged(run_dir, identity, source)
        clean_stale_tmp(run_dir, recursive=True)
        module, fit_seconds, fitted = self._fit_or_load(plan, source, dataset, run_dir, identity)

        entry = method_entry(method.name)
        common = {
            "run_id": run_id, "method": method.name, "method_version": method.version,
            "method_origin": f"{entry.origin}=={entry.origin_version}",
            "method_config": json.dumps(config_json, sort_keys=True),
            "method_variant": variant, "config_hash": stable_hash([method.name, method.version, config_json]),
            "train_dataset": dataset.name, "shots": plan.shots, "seed": plan.seed, "views": str(views),
            "source": source.name, "source_fingerprint": source.fingerprint, "device": str(self.device),
            "schema_version": SCHEMA_VERSION, **versions(),
        }
        cost = {"trainable_params": sum(t.numel() for t in module.tensors().values()),
                "needs_image_encoder": bool(method.needs_image_encoder or views == ONLINE)}
        rows: list[pd.DataFrame] = []
        refused: list[str] = []
        written = 0
        evaluations: list[tuple[str, VLM, str, Callable[[], tuple[Module, dict[str, Any]]]]] = [
            (plan.role, source, "", lambda: (module, {}))]
        for target in targets:
            problem = width_problem(module, target)
            if problem:  # the module unchanged does not fit: refused, never scored (as identity refuses it)
                refused.append(f"identity on {target.name}: {problem}")
            else:
                evaluations.append((NEW, target, "", lambda: (module, {})))
            for mapper in plan.mappers:
                if mapper.name == IDENTITY:
                    continue  # the module unchanged: the target's role-new rows above
                reason = self._map_problem(mapper, module, source, target, plan.pretrained)
                if reason:
                    refused.append(f"{mapper.name} on {target.name}: {reason}")
                    continue
                evaluations.append((MAPPED, target, mapper.label(), functools.partial(
                    self._map, mapper, module, source, target, dataset, plan.seed, method.name, plan.pretrained)))
        for role, vlm, label, mapped in evaluations:
            made: tuple[Module, dict[str, Any]] | None = None
            for eval_ds in [dataset] + [self.dataset(d) for d in plan.ood]:
                name = f"{safe_name(vlm.name)}--{safe_name(eval_ds.name)}" + (f"{MAPPED_MARK}{label}" if label else "")
                path = run_dir / f"{name}.parquet"
                existing = self._reusable(path, vlm, eval_ds)
                if existing is not None:
                    if ledger_path(path).is_file() and not existing.trainable_params.isna().any():
                        if not has_row_hash(path):  # schema 2: the same values, now written with their hash
                            write_rows(existing.to_dict("records"), path)
                            written += 1
                        rows.append(existing)
                        continue
                    row = self._backfill(existing.iloc[0].to_dict(), module, vlm, eval_ds, path, cost, dataset,
                                         method.name)
                else:
                    if made is None:
                        try:
                            made = mapped()
                        except Refused as exc:  # found while mapping (supports() could not tell beforehand)
                            refused.append(f"{label.rsplit('-', 1)[0]} on {vlm.name}: {exc.message}")
                            break
                    carried, mapper_columns = made
                    try:
                        preds, top1, seconds = self.predict(carried, vlm, eval_ds, dataset.classnames, dataset.name,
                                                            method=method.name)
                    except MethodFailed:
                        raise
                    except UserError as exc:
                        if role == plan.role:
                            raise
                        # the module's own check refuses this model (a module that declares no spaces, so no
                        # mapper could tell beforehand, e.g. CLIP-LoRA across a width change): refused, not failed
                        refused.append(f"{label.rsplit('-', 1)[0] if label else IDENTITY} on {vlm.name}: "
                                       f"{exc.message}")
                        break
                    write_ledger(preds, ledger_path(path), run_id, vlm.name, eval_ds.name)
                    row = {**common, **cost, **IDENTITY_MAPPER, **mapper_columns, "created_at": now(),
                           "dataset": eval_ds.name, "dataset_fingerprint": eval_ds.fingerprint, "eval_model": vlm.name,
                           "eval_fingerprint": vlm.fingerprint, "role": role, "top1": top1, "n_test": len(preds),
                           "fit_seconds": fit_seconds, "eval_seconds": seconds}
                write_rows([row], path)
                written += 1
                rows.append(read_results(path))
        frame = pd.concat(rows, ignore_index=True)
        for note in refused:
            log.warning("%s: %s", plan.describe(), note)
        return RunOutcome(plan.describe(), run_dir, fitted, written, len(rows) - written, frame, refused)

    def _mapper(self, mapper: MapperPlan) -> tuple[Mapper[Any], Any]:
        cls = get_mapper(mapper.name)
        return cls(), cls.make_config(json.loads(mapper.config))

    def _map_problem(self, mapper: MapperPlan, module: Module, source: VLM, target: VLM,
                     pretrained: Mapping[str, str]) -> str | None:
        """Why ``mapper`` cannot carry ``module`` to ``target`` (each step of a map through ``via``), or None."""
        instance, config = self._mapper(mapper)
        steps = [(source, self.model(mapper.via, pretrained.get(mapper.via)))] if mapper.via else []
        if mapper.via:
            steps.append((steps[0][1], target))
            if mapper.via in (source.name, target.name):
                return f"via {mapper.via!r} is the source or the target itself"
        for a, b in steps or [(source, target)]:
            with _method_code(mapper.name, f"checking {a.name} -> {b.name}", "mapper"):
                reason = instance.supports(module, a, b, config)
            if reason:
                return reason
        return None

    def _map(self, mapper: MapperPlan, module: Module, source: VLM, target: VLM, dataset: Dataset, seed: int,
             method: str, pretrained: Mapping[str, str]) -> tuple[Module, dict[str, Any]]:
        """(``module`` carried to ``target`` by ``mapper``, step by step through ``via`` if given, and the row's
        mapper columns: name, config, budget, shots and the seconds mapping took)."""
        instance, config = self._mapper(mapper)
        cls = type(instance)
        data = TargetData(dataset, seed, self.cache, cls.budget, mapper.name)
        models = [source, *([self.model(mapper.via, pretrained.get(mapper.via))] if mapper.via else []), target]
        start = time.perf_counter()
        carried = module
        recorded = {**json.loads(mapper.config), "version": cls.version}
        for a, b in zip(models, models[1:]):
            with _method_code(mapper.name, f"mapping {method} from {a.name} to {b.name}", "mapper"):
                start_name = getattr(instance, "start_name", None)
                if callable(start_name):  # a mapper that starts from another one records which it resolved
                    recorded["resolved_start"] = start_name(carried, a, b, config)
                carried = instance.map(carried, a, b, data, config, seed)
        if mapper.via:
            recorded[VIA] = mapper.via
        columns = {"mapper": mapper.name, "mapper_config": json.dumps(recorded, sort_keys=True),
                   "mapper_budget": cls.budget, "mapper_shots": int(cls.shots(config)),
                   "map_seconds": time.perf_counter() - start}
        return carried, columns

    def _reusable(self, path: Path, vlm: VLM, dataset: Dataset) -> pd.DataFrame | None:
        """The row already in ``path`` when it still holds: it was written by this run (the run id covers the
        module), of ``vlm``'s weights and of ``dataset``'s test split as it is now; else None (to be evaluated).

        A row of other weights is refused unless ``replace`` (:meth:`_check_replace`); a row of a test set that
        changed since (an OOD dataset is not part of the run id) is evaluated again."""
        if not path.is_file():
            return None
        existing = read_results(path)
        written = existing.iloc[0]
        if written["eval_fingerprint"] != vlm.fingerprint:
            self._check_replace(path, vlm, written["eval_fingerprint"])
            return None
        if written["dataset_fingerprint"] != dataset.fingerprint:
            log.warning("%s: %s changed since this row was written (fingerprint %s, now %s); evaluating it again",
                        path, dataset.name, written["dataset_fingerprint"], dataset.fingerprint)
            return None
        return existing

    def _check_source_unchanged(self, run_dir: Path, identity: dict, source: VLM) -> None:
        """Refuse a run whose only difference from a run already in the folder is the source's weights (the
        same run of a changed model under the same name: its rows would count twice); with ``replace`` the old
        run folder is removed instead."""
        prefix = run_dir.name.rsplit("-", 1)[0]
        mine = json.loads(json.dumps(identity))
        for other in self.results.glob(f"{prefix}-*"):
            config = other / "module" / MODULE_CONFIG
            if other == run_dir or other.name.rsplit("-", 1)[0] != prefix or not config.is_file():
                continue
            try:
                theirs = json.loads(config.read_text())["provenance"]["run_identity"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a run this check can compare; load_module reports a damaged one where it is used
            if theirs.get("source") == mine["source"] or {**theirs, "source": None} != {**mine, "source": None}:
                continue
            if not self.replace:
                raise UserError(f"{other} holds this run with {source.name!r} of weights {theirs.get('source')}, but "
                                f"{source.name!r} now has weights {source.fingerprint}: the model changed since that "
                                "run was written.",
                                "to keep both, give the new weights another name (e.g. --source local-dir:FOLDER) or "
                                "use another --results folder; to replace the old run, re-run with --replace")
            log.warning("%s: %r changed weights; the run of its old weights is removed (--replace)", other, source.name)
            shutil.rmtree(other)

    def _check_replace(self, path: Path, vlm: VLM, old: str) -> None:
        """Refuse to replace the rows in ``path`` of weights ``old`` by ``vlm``'s, unless ``replace``."""
        if self.replace:
            return
        raise UserError(f"{path} holds the row of {vlm.name!r} with weights {old}, but {vlm.name!r} now has weights "
                        f"{vlm.fingerprint}: the model changed since that row was written.",
                        "to keep both, give the new weights another name (e.g. --target local-dir:FOLDER or "
                        "--pretrained with a copy) or use another --results folder; to replace the old rows, "
                        "re-run with --replace")

    def _backfill(self, row: dict, module: Module, vlm: VLM, dataset: Dataset, path: Path, cost: dict,
                  train: Dataset, method: str) -> dict:
        """Bring a row of an older schema up to date from its saved module, without refitting.

        The module is evaluated again and its ledger written; the row keeps what cannot be recomputed
        (created_at, fit_seconds, eval_seconds, versions) and gains the cost columns. A different top-1 means
        the stored row came from other weights or features: that is reported, never overwritten.
        """
        preds, top1, _ = self.predict(module, vlm, dataset, train.classnames, train.name, method=method)
        if top1 != row["top1"] or len(preds) != row["n_test"]:
            raise UserError(f"{path} says top-1 {row['top1']!r} on {row['n_test']} items, but its saved module now "
                            f"gives {top1!r} on {len(preds)} (different features or code).",
                            "move that run folder away and re-run it, or keep using the older upgradebench")
        write_ledger(preds, ledger_path(path), row["run_id"], vlm.name, dataset.name)
        return {**row, **cost, "schema_version": SCHEMA_VERSION}

    def _fit_or_load(self, plan: RunPlan, source: VLM, dataset: Dataset, run_dir: Path,
                     identity: dict) -> tuple[Module, float, bool]:
        """(module, seconds its fit took, whether it was fitted now): the saved module when there is one."""
        module_dir = run_dir / "module"
        if (module_dir / MODULE_CONFIG).is_file():
            return load_module(module_dir), 0.0, False
        split = load_fewshot(dataset, plan.shots, plan.seed)
        task = FewShotTask(dataset, split, source, self.cache, views=plan.views or DEFAULT_VIEWS)
        torch.manual_seed(plan.seed)
        start = time.perf_counter()
        with _method_code(plan.method.name, f"fitting on {source.name}"):
            module = plan.method().fit(source, task, plan.config, plan.seed)
        seconds = time.perf_counter() - start
        provenance = {"run_identity": identity, "created_at": now(), **versions()}
        module.save(module_dir, plan.method.name, provenance=provenance)
        return module, seconds, True

    def predict(self, module: Module, vlm: VLM, dataset: Dataset, module_classes: list[str] | None = None,
                trained_on: str = "", method: str = "") -> tuple[pd.DataFrame, float, float]:
        """Per-item predictions of ``module`` plugged into ``vlm`` on ``dataset``'s test split, top-1 (%), seconds.

        ``module_classes`` are the classes the module was fitted for (default: ``dataset``'s); a test set
        that holds a subset of them is scored on its columns (:func:`upgradebench.data.class_columns`).
        The module's logits must be finite, one row per test item and one column per class: anything else is a
        :class:`UserError` naming ``method`` (default: the module's class), never a number.
        """
        start = time.perf_counter()
        classes = dataset.classnames if module_classes is None else module_classes
        columns = class_columns(classes, dataset, trained_on or dataset.name)
        items = dataset.split("test")
        feats = self.cache.get(vlm, dataset, "test", items, vlm.test_transform_spec)
        labels = torch.tensor([y for _, y in items])
        names = dataset.classnames if columns is None else classes
        method = method or type(module).__name__
        with torch.no_grad(), _method_code(method, f"computing logits on {vlm.name}"):
            logits = module.logits(vlm, feats, names)
        check_logits(logits, len(items), len(names), method, vlm.name)
        if columns is not None:
            logits = logits[:, columns]
        preds = predictions(logits, labels, [ref for ref, _ in items])
        return preds, top1_of(logits, labels), time.perf_counter() - start

    def evaluate(self, module: Module, vlm: VLM, dataset: Dataset, module_classes: list[str] | None = None,
                 trained_on: str = "", method: str = "") -> tuple[float, int, float]:
        """Top-1 (%) of ``module`` plugged into ``vlm`` on ``dataset``'s test split, number of items, seconds."""
        preds, top1, seconds = self.predict(module, vlm, dataset, module_classes, trained_on, method)
        return top1, len(preds), seconds


def fitted_dataset(folder: str | Path, test: Dataset, runner: Runner) -> tuple[str, list[str]]:
    """(name, class names) of the dataset a saved module was fitted on, found from the dataset fingerprint its
    run identity records: ``test`` itself or the dataset ``test`` is an OOD variant of. Anything else is
    refused (the module would be scored on classes it was not fitted for)."""
    provenance = json.loads((Path(folder) / MODULE_CONFIG).read_text(encoding="utf-8")).get("provenance") or {}
    fitted = (provenance.get("run_identity") or {}).get("dataset")
    if fitted is None:
        raise UserError(f"{folder} records no run identity, so the classes it was fitted for are unknown.",
                        "evaluate a module saved by `upgradebench run` (RESULTS/<run_id>/module)")
    if fitted == test.fingerprint:
        return test.name, test.classnames
    parent = DATASETS.entry(test.name).meta.get("ood_of") if test.name in DATASETS.names() else None
    if parent and runner.dataset(parent).fingerprint == fitted:
        return parent, runner.dataset(parent).classnames
    raise UserError(f"{folder} was fitted on a dataset of fingerprint {fitted}, which is neither {test.name} "
                    f"({test.fingerprint}){f' nor its parent {parent}' if parent else ''}: its classes may differ.",
                    "evaluate it on the dataset it was fitted on (see module.json) or on an OOD variant of it")


def evaluate_module(folder: str | Path, model: str, dataset: str, device: str = "auto",
                    data_root: str | Path | None = None, pretrained: str | None = None,
                    workers: int | None = None, mapper: str | None = None,
                    mapper_config: dict[str, Any] | None = None, source: str | None = None) -> dict:
    """``upgradebench eval``: a saved module on another model, without retraining; with ``mapper`` (other than
    identity), carried there by that mapper from ``source`` (default: the source its run's rows name), which must
    be the model the module was fitted on (its fingerprint is checked)."""
    runner = Runner(results=os.devnull, device=device, data_root=data_root, workers=workers)
    module = load_module(folder)
    test = runner.dataset(dataset)
    trained_on, classes = fitted_dataset(folder, test, runner)  # before any model loads
    (plan,) = make_mapper_plans([(mapper or IDENTITY, mapper_config or {})])
    identity = (json.loads((Path(folder) / MODULE_CONFIG).read_text()).get("provenance") or {}).get(
        "run_identity") or {}
    vlm = runner.model(model, pretrained)
    method = json.loads((Path(folder) / MODULE_CONFIG).read_text())["method"]  # load_module checked it
    out: dict[str, Any] = {"module": str(folder), "method": method, "model": vlm.name,
                           "model_fingerprint": vlm.fingerprint, "dataset": dataset, "mapper": plan.name}
    if plan.name != IDENTITY:
        src = runner.model(source or _recorded_source(Path(folder)))
        if identity.get("source") not in (None, src.fingerprint):
            raise UserError(f"{folder} was fitted on weights {identity['source']}, not {src.name!r} "
                            f"({src.fingerprint}).", "pass --source with the model the module was fitted on")
        seed = int(identity.get("seed", 1))
        reason = runner._map_problem(plan, module, src, vlm, {})
        if reason:
            raise Refused(f"{plan.name} cannot carry the module to {vlm.name}: {reason}.",
                          "choose another mapper (upgradebench mappers list)")
        module, columns = runner._map(plan, module, src, vlm, runner.dataset(trained_on), seed, method, {})
        out.update({"source": src.name, **columns})
    else:
        problem = width_problem(module, vlm)
        if problem:
            raise Refused(f"identity cannot carry the module to {vlm.name}: {problem}.",
                          "pass --mapper with a mapper that bridges it, e.g. vocab-map (upgradebench mappers list)")
    top1, n_test, seconds = runner.evaluate(module, vlm, test, classes, trained_on, method)
    return {**out, "top1": top1, "n_test": n_test, "eval_seconds": seconds}


def _recorded_source(folder: Path) -> str:
    """The source alias the rows of the run holding module folder ``folder`` name (for ``eval --mapper``)."""
    for path in sorted(folder.parent.glob("*.parquet")):
        try:
            rows = read_results(path)
        except UserError:
            continue
        if len(rows):
            return str(rows.source.iloc[0])
    raise UserError(f"No result rows beside {folder} say which model it was fitted on.",
                    "pass --source with the model the module was fitted on")

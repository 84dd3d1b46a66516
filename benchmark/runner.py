"""The runner: fit a method once on the source, evaluate the module unchanged on the source and every target.

Everything a run depends on goes into its ``run_id`` (method, version, config, dataset fingerprint, shots,
seed, source fingerprint, views, precision), so a run whose module and rows already exist is not redone
("only missing" resume): a new target for an old run only evaluates the saved module.
Layout of a results folder::

    RESULTS/<run_id>/module/{module.safetensors, module.json}
    RESULTS/<run_id>/<eval_model>--<dataset>.parquet      one row file per evaluated (model, dataset)
    RESULTS/<run_id>/ledger/<eval_model>--<dataset>.parquet   its per-item predictions (ledger.py)

A row of an older schema whose module is saved is brought up to date by re-evaluating the module (no refit);
a schema-2 row, which lacks only its row hash, is rewritten with the same values and their hash.
A row is never replaced by an evaluation of other weights under the same model name: a changed model is
refused unless ``replace`` (``--replace``) says to replace its rows. Temporary files of killed writes in a
run folder are removed when the run starts again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .data import DATASETS, Dataset, class_columns, get_dataset, load_fewshot
from .data.fewshot import effective_shots
from .defaults import DEFAULT_DATASET, DEFAULT_SOURCE, DEFAULT_TARGETS
from .errors import UserError
from .integrity import clean_stale_tmp
from .features import FeatureCache
from .method import MODULE_CONFIG, Method, Module, get_method, load_module, method_entry
from .models import VLM, load_vlm, parse_model, resolve_device
from .paths import default_results_dir
from .provenance import now, stable_hash, versions
from .ledger import ledger_path, predictions, top1_of, write_ledger
from .results import SCHEMA_VERSION, has_row_hash, read_results, write_rows
from .task import ONLINE, FewShotTask

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """Everything one ``upgradebench run`` needs. ``config`` holds ``--config key=value`` strings."""

    method: str
    source: str = DEFAULT_SOURCE
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    dataset: str = DEFAULT_DATASET
    shots: int = 16
    seed: int = 1
    config: dict[str, str] = field(default_factory=dict)
    views: int | str = 10
    ood: list[str] = field(default_factory=list)
    device: str = "auto"
    precision: str = "fp32"
    results: str | Path | None = None
    data_root: str | Path | None = None
    pretrained: dict[str, str] = field(default_factory=dict)
    allow_download: bool = False
    zeroshot_reference: bool = True
    oracle: bool = False


def safe_name(name: str) -> str:
    """A model or dataset name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def check_writable(folder: Path) -> None:
    """Fail before any training when results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"Results folder {folder} is not writable ({exc.strerror or exc}).",
                        "pass --results DIR with a folder you can write to") from None


def parse_views(value: str | int) -> int | str:
    """``--views``: a positive number of cached views or ``online``."""
    if str(value) == ONLINE:
        return ONLINE
    try:
        views = int(value)
    except ValueError:
        views = 0
    if views < 1:
        raise UserError(f"--views must be a positive number or 'online', got {value!r}.")
    return views


def variant_of(method: type[Method], config) -> str:
    """``k=v,...`` of the config fields that differ from the method's defaults."""
    default = dataclasses.asdict(method.default_config())
    current = dataclasses.asdict(config)
    return ",".join(f"{k}={current[k]}" for k in sorted(current) if current[k] != default.get(k))


class Runner:
    """Runs specs against shared state: loaded models, the feature cache and the results folder.

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

    # ---- one run -----------------------------------------------------------------------------------------------
    def validate(self, spec: RunSpec) -> tuple[type[Method], object]:
        """Check names, config and the results folder before anything slow happens."""
        method = get_method(spec.method)
        config = method.make_config(spec.config)
        parse_views(spec.views)
        for name in [spec.source, *spec.targets]:
            parse_model(name, spec.pretrained.get(name))
        train = self.dataset(spec.dataset)
        for name in spec.ood:  # a test set of other classes would give chance-level rows
            class_columns(train.classnames, self.dataset(name), train.name)
        if spec.source in spec.targets:
            raise UserError(f"{spec.source!r} is both the source and a target.", "drop it from --target")
        check_writable(self.results)
        return method, config

    def run(self, spec: RunSpec) -> pd.DataFrame:
        """Fit (or reuse) the module of ``spec`` and evaluate it; returns this run's rows (and zero-shot rows).

        With ``spec.oracle`` the same method and config is also fitted on each target and evaluated there
        (role ``oracle``): one more fit per target, the ceiling of the recovery ratio.
        """
        method, config = self.validate(spec)
        spec = dataclasses.replace(spec, shots=effective_shots(self.dataset(spec.dataset), spec.shots))
        out = self._run(spec, method, config, source_role="base")
        if spec.oracle and method.name != "zeroshot":
            for target in spec.targets:
                mirror = dataclasses.replace(spec, source=target, targets=[], ood=[], oracle=False,
                                             zeroshot_reference=False)
                out = pd.concat([out, self._run(mirror, method, config, source_role="oracle")], ignore_index=True)
        if spec.zeroshot_reference and method.name != "zeroshot":
            zs = dataclasses.replace(spec, method="zeroshot", config={}, zeroshot_reference=False, oracle=False)
            out = pd.concat([out, self.run(zs)], ignore_index=True)
        return out

    def _run(self, spec: RunSpec, method: type[Method], config, source_role: str) -> pd.DataFrame:
        source = self.model(spec.source, spec.pretrained.get(spec.source))
        targets = [self.model(t, spec.pretrained.get(t)) for t in spec.targets]
        dataset = self.dataset(spec.dataset)
        views = parse_views(spec.views) if method.uses_train_views else 0
        config_json = method.config_dict(config)
        identity = {"method": method.name, "version": method.version, "config": config_json,
                    "dataset": dataset.fingerprint, "shots": spec.shots, "seed": spec.seed,
                    "source": source.fingerprint, "views": views, "precision": self.cache.precision}
        if source_role == "oracle":  # only oracles add the key, so every other run id stays what it was
            identity["role"] = source_role
        variant = variant_of(method, config)
        run_id = "-".join(filter(None, [safe_name(method.name), stable_hash(variant, 6) if variant else "",
                                        safe_name(dataset.name), f"k{spec.shots}", f"s{spec.seed}",
                                        safe_name(spec.source), "oracle" if source_role == "oracle" else "",
                                        stable_hash(identity, 10)]))
        run_dir = self.results / run_id
        self._check_source_unchanged(run_dir, identity, source)
        clean_stale_tmp(run_dir, recursive=True)
        module, fit_seconds = self._fit_or_load(method, config, source, dataset, spec, views, run_dir, identity)

        entry = method_entry(method.name)
        common = {
            "run_id": run_id, "method": method.name, "method_version": method.version,
            "method_origin": f"{entry.origin}=={entry.origin_version}", "method_config": json.dumps(config_json, sort_keys=True),
            "method_variant": variant, "config_hash": stable_hash([method.name, method.version, config_json]),
            "train_dataset": dataset.name, "shots": spec.shots, "seed": spec.seed, "views": str(views),
            "source": source.name, "source_fingerprint": source.fingerprint, "device": str(self.device),
            "schema_version": SCHEMA_VERSION, **versions(),
        }
        cost = {"trainable_params": sum(t.numel() for t in module.tensors().values()),
                "needs_image_encoder": bool(method.needs_image_encoder or views == ONLINE)}
        rows = []
        for role, vlm in [(source_role, source)] + [("new", t) for t in targets]:
            for eval_ds in [dataset] + [self.dataset(d) for d in spec.ood]:
                path = run_dir / f"{safe_name(vlm.name)}--{safe_name(eval_ds.name)}.parquet"
                existing = read_results(path) if path.is_file() else None
                if existing is not None and existing["eval_fingerprint"].iloc[0] != vlm.fingerprint:
                    self._check_replace(path, vlm, existing["eval_fingerprint"].iloc[0])
                    existing = None
                if existing is not None:
                    if ledger_path(path).is_file() and not existing.trainable_params.isna().any():
                        if not has_row_hash(path):  # schema 2: the same values, now written with their hash
                            write_rows(existing.to_dict("records"), path)
                        rows.append(existing)
                        continue
                    row = self._backfill(existing.iloc[0].to_dict(), module, vlm, eval_ds, path, cost, dataset)
                else:
                    preds, top1, seconds = self.predict(module, vlm, eval_ds, dataset.classnames, dataset.name)
                    write_ledger(preds, ledger_path(path), run_id, vlm.name, eval_ds.name)
                    row = {**common, **cost, "created_at": now(), "dataset": eval_ds.name,
                           "dataset_fingerprint": eval_ds.fingerprint, "eval_model": vlm.name,
                           "eval_fingerprint": vlm.fingerprint, "role": role, "top1": top1, "n_test": len(preds),
                           "fit_seconds": fit_seconds, "eval_seconds": seconds}
                write_rows([row], path)
                rows.append(read_results(path))
        return pd.concat(rows, ignore_index=True)

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
                  train: Dataset) -> dict:
        """Bring a row of an older schema up to date from its saved module, without refitting.

        The module is evaluated again and its ledger written; the row keeps what cannot be recomputed
        (created_at, fit_seconds, eval_seconds, versions) and gains the cost columns. A different top-1 means
        the stored row came from other weights or features: that is reported, never overwritten.
        """
        preds, top1, _ = self.predict(module, vlm, dataset, train.classnames, train.name)
        if top1 != row["top1"] or len(preds) != row["n_test"]:
            raise UserError(f"{path} says top-1 {row['top1']!r} on {row['n_test']} items, but its saved module now "
                            f"gives {top1!r} on {len(preds)} (different features or code).",
                            "move that run folder away and re-run it, or keep using the older upgradebench")
        write_ledger(preds, ledger_path(path), row["run_id"], vlm.name, dataset.name)
        return {**row, **cost, "schema_version": SCHEMA_VERSION}

    def _fit_or_load(self, method: type[Method], config, source: VLM, dataset: Dataset, spec: RunSpec,
                     views: int | str, run_dir: Path, identity: dict) -> tuple[Module, float]:
        module_dir = run_dir / "module"
        if (module_dir / MODULE_CONFIG).is_file():
            return load_module(module_dir), 0.0
        split = load_fewshot(dataset, spec.shots, spec.seed)
        task = FewShotTask(dataset, split, source, self.cache, views=views or 10)
        torch.manual_seed(spec.seed)
        start = time.perf_counter()
        module = method().fit(source, task, config, spec.seed)
        seconds = time.perf_counter() - start
        provenance = {"run_identity": identity, "created_at": now(), **versions()}
        module.save(module_dir, method.name, provenance=provenance)
        return module, seconds

    def predict(self, module: Module, vlm: VLM, dataset: Dataset, module_classes: list[str] | None = None,
                trained_on: str = "") -> tuple[pd.DataFrame, float, float]:
        """Per-item predictions of ``module`` plugged into ``vlm`` on ``dataset``'s test split, top-1 (%), seconds.

        ``module_classes`` are the classes the module was fitted for (default: ``dataset``'s); a test set
        that holds a subset of them is scored on its columns (:func:`upgradebench.data.class_columns`).
        """
        start = time.perf_counter()
        classes = dataset.classnames if module_classes is None else module_classes
        columns = class_columns(classes, dataset, trained_on or dataset.name)
        items = dataset.split("test")
        feats = self.cache.get(vlm, dataset, "test", items, vlm.test_transform_spec)
        labels = torch.tensor([y for _, y in items])
        with torch.no_grad():
            logits = module.logits(vlm, feats, dataset.classnames if columns is None else classes)
        if columns is not None:
            logits = logits[:, columns]
        preds = predictions(logits, labels, [ref for ref, _ in items])
        return preds, top1_of(logits, labels), time.perf_counter() - start

    def evaluate(self, module: Module, vlm: VLM, dataset: Dataset, module_classes: list[str] | None = None,
                 trained_on: str = "") -> tuple[float, int, float]:
        """Top-1 (%) of ``module`` plugged into ``vlm`` on ``dataset``'s test split, number of items, seconds."""
        preds, top1, seconds = self.predict(module, vlm, dataset, module_classes, trained_on)
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
                    workers: int | None = None) -> dict:
    """``upgradebench eval``: a saved module on another model, without retraining."""
    runner = Runner(results=os.devnull, device=device, data_root=data_root, workers=workers)
    module = load_module(folder)
    test = runner.dataset(dataset)
    trained_on, classes = fitted_dataset(folder, test, runner)  # before any model loads
    vlm = runner.model(model, pretrained)
    top1, n_test, seconds = runner.evaluate(module, vlm, test, classes, trained_on)
    method = json.loads((Path(folder) / MODULE_CONFIG).read_text())["method"]  # load_module checked it
    return {"module": str(folder), "method": method, "model": vlm.name, "model_fingerprint": vlm.fingerprint,
            "dataset": dataset, "top1": top1, "n_test": n_test, "eval_seconds": seconds}

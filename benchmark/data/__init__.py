"""Datasets: the contract, the registry, few-shot sampling; CoOp-format loaders live in ``coop``."""

from .dataset import SPLITS, Dataset, Item, class_columns
from .fewshot import FewShotSplit, load_fewshot, sample_fewshot
from .registry import DATASETS, dataset_names, dataset_problem, get_dataset, register_dataset

__all__ = ["DATASETS", "SPLITS", "Dataset", "class_columns", "FewShotSplit", "Item", "dataset_names", "dataset_problem",
           "load_fewshot", "get_dataset", "register_dataset", "sample_fewshot"]

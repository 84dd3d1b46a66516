"""Datasets: the contract, the registry, few-shot sampling; CoOp-format loaders live in ``coop``."""

from .dataset import SPLITS, Dataset, Item
from .fewshot import FewShotSplit, load_fewshot, sample_fewshot
from .registry import DATASETS, dataset_names, get_dataset, register_dataset

__all__ = ["DATASETS", "SPLITS", "Dataset", "FewShotSplit", "Item", "dataset_names", "load_fewshot", "get_dataset",
           "register_dataset", "sample_fewshot"]

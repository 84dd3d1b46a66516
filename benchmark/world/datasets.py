"""The toy datasets of the embedded world (``tasks.json``, registered from data by ``data/families.json``).

An item is ``("<dataset>/<split>/<index>", label)``; the reference alone regenerates its image, so no
image is ever stored. Item ``i`` has label ``i mod C`` (every split is class-balanced) and its scene is
drawn from the stream ``"<stream>/<split>"`` with the labelled attribute(s) fixed. OOD variants render
their base task's test scenes in another style, so base and variant are paired item by item.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.dataset import Dataset, Item
from ..errors import UserError
from . import generator
from .worlds import world_name, world_root, world_table


@lru_cache(maxsize=1)
def task_table() -> dict[str, dict[str, Any]]:
    """Every toy dataset's definition, by name; a variant's entry is completed from its base task."""
    raw = json.loads(resources.files(__package__).joinpath("tasks.json").read_text())
    table = {k: v for k, v in raw.items() if not k.startswith("_")}
    for name, task in table.items():
        base = task.get("base")
        if base:
            task.update(attributes=table[base]["attributes"], values=table[base].get("values", {}),
                        template=table[base]["template"], stream=base, splits=["test"])
        task.setdefault("values", {})
        task.setdefault("style", "photo")
        task.setdefault("stream", name)
        task.setdefault("splits", ["train", "val", "test"])
    return table


def task_values(task: dict[str, Any], labelled: bool = True) -> list[tuple[str, list[int]]]:
    """Per labelled attribute of ``task``, the vocabulary indices its classes use: all of them, or the names
    listed under the task's ``values`` (in vocabulary order). ``labelled=False``: the same for the attributes
    the task restricts under ``values`` without labelling them."""
    out = []
    attributes = task["attributes"] if labelled else [a for a in task["values"] if a not in task["attributes"]]
    for attribute in attributes:
        names = generator.names(attribute)
        keep = task["values"].get(attribute)
        unknown = set(keep or []) - set(names)
        if unknown:
            raise ValueError(f"tasks.json: {sorted(unknown)} are not {attribute} values ({names})")
        out.append((attribute, [i for i, n in enumerate(names) if keep is None or n in keep]))
    return out


def task_classnames(task: dict[str, Any]) -> list[str]:
    """Class names of ``task``: every combination of its attributes' values, the last varying fastest."""
    names = [""]
    for attribute, indices in task_values(task):
        values = generator.names(attribute)
        names = [f"{prefix} {values[i]}".strip() for prefix in names for i in indices]
    return names


class ToyDataset(Dataset):
    """One toy task in the selected world size; images are rendered from their references on demand."""

    def __init__(self, name: str, world: str | None = None) -> None:
        """Task ``name`` in world size ``world`` (default: the one ``UPGRADEBENCH_WORLD`` selects)."""
        task = task_table()[name]
        self.name = name
        self.task = task
        self.attributes: list[str] = list(task["attributes"])
        self._values = task_values(task)
        self._restricted = task_values(task, labelled=False)
        self.classnames = task_classnames(task)
        self.template = task["template"]
        self.style: str = task["style"]
        self.world = world or world_name()
        self._config = world_table()[self.world]

    @classmethod
    def from_catalogue(cls, name: str, data_root: Path) -> ToyDataset:
        """Toy dataset ``name`` (the family's registry factory); toy datasets need no data root: they are procedural."""
        return cls(name)

    def has_split(self, name: str) -> bool:
        """Whether the split exists (OOD variants have only ``test``)."""
        return name in self.task["splits"]

    def split_size(self, name: str) -> int:
        """Number of items of split ``name`` in this world size."""
        c = self.num_classes
        if name == "test":
            return c * math.ceil(self._config["test_min"] / c)
        return c * self._config[f"{name}_per_class"]

    def split(self, name: str) -> list[Item]:
        """The items of split ``name``: ``("<dataset>/<split>/<i>", i mod C)``."""
        if not self.has_split(name):
            raise UserError(f"Dataset {self.name!r} has no {name!r} split (it has {', '.join(self.task['splits'])}).",
                            f"use its base dataset {self.task['base']!r} for training" if "base" in self.task else None)
        return [(f"{self.name}/{name}/{i}", i % self.num_classes) for i in range(self.split_size(name))]

    def scene(self, split: str, index: int) -> generator.Scene:
        """The scene of item ``index`` of ``split``: labelled attributes fixed, the rest drawn, but a restricted
        unlabelled attribute cycles through its listed values (item ``i`` takes value ``(i // C) mod n``)."""
        rest = index % self.num_classes
        fixed = {a: indices[index // self.num_classes % len(indices)] for a, indices in self._restricted}
        for attribute, indices in reversed(self._values):
            rest, position = divmod(rest, len(indices))
            fixed[attribute] = indices[position]
        return generator.sample_scene(self._config["seed"], f"{self.task['stream']}/{split}", index, fixed)

    def parse_ref(self, ref: str) -> tuple[str, int]:
        """``"<dataset>/<split>/<i>"`` -> ``(split, i)``, checked against this dataset and world size."""
        parts = ref.split("/")
        if len(parts) != 3 or parts[0] != self.name or not self.has_split(parts[1]) or not parts[2].isdigit():
            raise UserError(f"{ref!r} is not an image reference of dataset {self.name!r}.",
                            f"references look like '{self.name}/test/0'")
        split, index = parts[1], int(parts[2])
        if index >= self.split_size(split):
            raise UserError(f"{ref!r} is past the end of {self.name}/{split} ({self.split_size(split)} items in the "
                            f"{self.world!r} world).", "check UPGRADEBENCH_WORLD")
        return split, index

    def load_image(self, ref: str) -> Image.Image:
        """Render the image of reference ``ref``."""
        split, index = self.parse_ref(ref)
        return generator.render_image(self.scene(split, index), self.style)

    @property
    def fewshot_dir(self) -> Path:
        """``UPGRADEBENCH_HOME/world/<size>/fewshot/<dataset>``."""
        return world_root() / "fewshot" / self.name

    def fingerprint_payload(self) -> dict:
        """The base payload plus the world size, its seed, the rendering style, the generator (code + vocabulary)
        and the values of any restricted unlabelled attribute."""
        restricted = {"restricted": dict(self._restricted)} if self._restricted else {}  # keeps other fingerprints
        return {**super().fingerprint_payload(), "world": self.world, "seed": self._config["seed"],
                "style": self.style, "stream": self.task["stream"], "generator": generator.generator_key(),
                **restricted}


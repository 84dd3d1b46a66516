"""No import cycle anywhere in the package, and registries that never import what they register.

The module graph of top-level imports is acyclic; the dataset registry and the model layer do not import the
dataset families or the world's model provider even inside functions (``data/families.json`` and
``models/aliases.json`` name them as lazy ``"module:attr"`` targets), and a fresh interpreter lists every
dataset and model without importing a family module.

An edge ``a -> b`` means importing ``a`` executes ``b``: the module-level imports of ``a`` (also those under
``if``/``try`` and in class bodies), resolved to the modules they load, plus the packages above ``b`` that
``a`` is not already inside. Imports inside functions are the lazy ones and do not count, nor do
``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_modules(package_dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module of the packages ``name -> folder``, by dotted name (a package by its ``__init__``)."""
    modules = {}
    for package, folder in package_dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            # a subpackage that is mapped to its own folder is listed from that folder
            modules.setdefault(name, path)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _top_level_imports(node.body)


def import_graph(modules: dict[str, Path], lazy: bool = False) -> dict[str, set[str]]:
    """``module -> the modules of ``modules`` that importing it executes at import time`` (``lazy``: or that any
    of its functions imports)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets: list[str] = []
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if lazy else \
            _top_level_imports(tree.body)
        for node in nodes:
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.append(base)
            targets += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                # the packages above the importer are already being imported when its own imports run
                if step in modules and step != name and not name.startswith(step + "."):
                    graph[name].add(step)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module (or a self-loop), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def project_packages() -> dict[str, Path]:
    """The installed packages and their source folders, as pyproject.toml's ``package-dir`` maps them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in config["package-dir"].items()}


def test_the_package_has_no_import_cycle() -> None:
    modules = package_modules(project_packages())
    assert "upgradebench.data.registry" in modules and "upgradebench.world.datasets" in modules
    assert len(modules) > 80  # every package-dir folder was walked
    assert cycles(import_graph(modules)) == []


# (importer prefix, imported prefix): the registries and the contracts never import what they register, even lazily
_ONE_WAY = [("upgradebench.models", "upgradebench.world"), ("upgradebench.data", "upgradebench.world"),
            ("upgradebench.data.registry", "upgradebench.data.coop")]


def test_registries_never_import_what_they_register() -> None:
    graph = import_graph(package_modules(project_packages()), lazy=True)
    assert "upgradebench.models.fingerprint" in graph["upgradebench.world.zoo"]  # an import inside a function
    wrong = sorted((a, b) for a, targets in graph.items() for b in targets for importer, imported in _ONE_WAY
                   if (a == importer or a.startswith(importer + ".")) and b.startswith(imported))
    assert wrong == []


def test_the_harness_never_imports_a_concrete_method() -> None:
    """Methods use the public API; the harness finds them through their entry points only (even lazily)."""
    graph = import_graph(package_modules(project_packages()), lazy=True)
    assert "upgradebench.methods.coop" in graph["upgradebench.methods.kgcoop"]  # the check sees method imports
    wrong = sorted((a, b) for a, targets in graph.items() for b in targets
                   if b.startswith("upgradebench.methods") and not a.startswith("upgradebench.methods"))
    assert wrong == []


_PUBLIC_SCRIPT = r"""
import json, sys
import upgradebench
before = "torch" in sys.modules
names = {name: type(getattr(upgradebench, name)).__name__ for name in upgradebench.__all__}
print(json.dumps([before, names]))
"""


def test_the_public_api_resolves_lazily() -> None:
    out = subprocess.run([sys.executable, "-c", _PUBLIC_SCRIPT], capture_output=True, text=True, check=True)
    torch_at_import, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert torch_at_import is False  # `import upgradebench` (and so `upgradebench --help`) does not load torch
    assert {"Method", "Module", "FewShotTask", "VLM", "ranged", "check_method", "fit_recipe"} <= set(names)


def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package_modules({"pkg": tmp_path / "pkg"})


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    modules = _plant(tmp_path, {
        "__init__.py": "",
        "reg/__init__.py": "from .registry import REGISTRY\n",
        "reg/registry.py": "from ..impl import things\nREGISTRY = {}\n",
        "impl/__init__.py": "",
        "impl/things.py": "from ..reg import REGISTRY\n",
        "lazy.py": "def f():\n    from . import lazy2\n",
        "lazy2.py": "from . import lazy\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .typed2 import X\n",
        "typed2.py": "import pkg.typed\n",
    })
    assert cycles(import_graph(modules)) == [["pkg.impl.things", "pkg.reg", "pkg.reg.registry"]]


@pytest.mark.parametrize("statement", ["import pkg.b", "from pkg import b", "from . import b", "from .b import x",
                                       "try:\n    from .b import x\nexcept ImportError:\n    pass"])
def test_every_import_form_makes_an_edge(tmp_path: Path, statement: str) -> None:
    modules = _plant(tmp_path, {"__init__.py": "", "a.py": statement + "\n", "b.py": "from . import a\nx = 1\n"})
    assert cycles(import_graph(modules)) == [["pkg.a", "pkg.b"]]


# In a fresh interpreter: list every dataset and model, then build one dataset of each family, printing which
# implementation modules each step had imported.
_LAZY_SCRIPT = r"""
import json, sys
from upgradebench.data import DATASETS, dataset_names, get_dataset
from upgradebench.models.spec import alias_names, parse_model

IMPLS = ("upgradebench.data.coop", "upgradebench.world.datasets", "upgradebench.world.zoo")
loaded = lambda: sorted(m for m in IMPLS if m in sys.modules)
report = {}
report["listed"] = [len(dataset_names()), DATASETS.entry("dtd").meta["num_classes"], parse_model("toy-eva").kind,
                    "toy-clip" in alias_names(), loaded()]
get_dataset("toy-pattern")
report["toy"] = loaded()
get_dataset("dtd")
report["dtd"] = loaded()
print(json.dumps(report))
"""


def test_registries_import_an_implementation_only_when_it_is_used() -> None:
    out = subprocess.run([sys.executable, "-c", _LAZY_SCRIPT], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["listed"][1:] == [47, "world", True, []]
    assert report["listed"][0] > 20  # the toy tasks and the CoOp table
    assert report["toy"] == ["upgradebench.world.datasets"]
    assert report["dtd"] == ["upgradebench.data.coop", "upgradebench.world.datasets"]

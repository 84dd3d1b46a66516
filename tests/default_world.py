"""The default embedded world for the ``world``-marked tests, built in a background process.

Building it takes about 4.5 minutes on one thread (the build is pinned to one thread: its weights depend on the
thread count). The tests themselves run on one thread too (``tests/conftest.py``), so on a 2-core machine the
build overlaps the rest of the suite instead of preceding the tests that need it: :func:`start` launches it
as soon as collection shows a selected ``world`` test, :func:`wait` collects it when the first one runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

_BUILD = "from upgradebench.world import zoo; zoo.build_models()"


@dataclass
class Build:
    """A background build of the default world into ``home`` (its output in ``log``)."""

    home: Path
    log: Path
    process: subprocess.Popen


_KEY = pytest.StashKey[Build]()


def start(config: pytest.Config) -> None:
    """Start building the default world into a fresh temporary home (once per session)."""
    if _KEY in config.stash:
        return
    home = Path(tempfile.mkdtemp(prefix="upgradebench-default-world-"))
    env = {**os.environ, "UPGRADEBENCH_HOME": str(home), "UPGRADEBENCH_WORLD": "default", "OMP_NUM_THREADS": "1"}
    env.pop("UPGRADEBENCH_DATA", None)
    log = home / "build.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", _BUILD], env=env, stdout=out, stderr=subprocess.STDOUT)
    config.stash[_KEY] = Build(home, log, process)


def wait(config: pytest.Config) -> Path:
    """The home holding the built default world; fails the calling test with the build's output if it failed."""
    start(config)  # a session that selected no world test at collection (e.g. a plugin's reordering)
    build = config.stash[_KEY]
    if build.process.wait() != 0:
        tail = build.log.read_text(errors="replace")[-4000:]
        pytest.fail(f"building the default world failed (exit {build.process.returncode}):\n{tail}")
    return build.home


def stop(config: pytest.Config) -> None:
    """End a build still running (an interrupted session) and remove its home."""
    build = config.stash.get(_KEY, None)
    if build is None:
        return
    if build.process.poll() is None:
        build.process.kill()
        build.process.wait()
    shutil.rmtree(build.home, ignore_errors=True)

"""The plugin's own test: upgradebench's method test kit, on the embedded world's micro models and data."""

from __future__ import annotations

import pytest

from upgradebench.testing import check_method


@pytest.fixture(autouse=True)
def micro_world(tmp_path, monkeypatch):
    """A private UPGRADEBENCH_HOME with the micro world, which builds in seconds."""
    monkeypatch.setenv("UPGRADEBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("UPGRADEBENCH_WORLD", "micro")


def test_prototype_keeps_the_upgradebench_method_contract():
    module = check_method("prototype")  # deterministic fit, save/load, transplant, the test split never read
    assert module.prototypes.shape[0] == 5  # one prototype per class of toy-pattern

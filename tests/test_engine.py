"""Experiment parameters: defaults, the full grid, explicit overrides."""
from types import SimpleNamespace

from g5kdeploy.engine import parameters

MODULE = SimpleNamespace(PARAMS={"sizes": [1, 2], "repeats": 1, "full": False}, FULL={"sizes": [1, 2, 4], "repeats": 3})


def test_defaults_then_overrides():
    assert parameters(MODULE, {}) == MODULE.PARAMS
    assert parameters(MODULE, {"repeats": 5})["repeats"] == 5


def test_full_grid_under_explicit_overrides():
    assert parameters(MODULE, {"full": True})["sizes"] == [1, 2, 4]
    p = parameters(MODULE, {"full": True, "repeats": 1})
    assert p["sizes"] == [1, 2, 4] and p["repeats"] == 1
    assert parameters(MODULE, {"full": False})["sizes"] == [1, 2]

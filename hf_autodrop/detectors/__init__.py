"""Tests of saturation: when has the run stopped making progress at its learning rate?

Each test is one class in one file, behind the small protocol of `base.SaturationTest`: what it observes
every interval, its statistic and the window that statistic covers, when it first checks, how long the
averaging before a drop lasts, what a drop resets, and its own `state_dict`. `make_test(config)` is the one
place that turns `AutoDropConfig.detector` into a test; the controller (`hf_autodrop.controller`) only runs
the phase machine around it. docs/architecture.md says how to add one.

- `growth` (the default, `growth.py`): how fast does the squared distance from the anchor grow?
- `paper` and `trend` (`omega.py`): tests on the angle omega between consecutive displacements.
- `cooldown.py`: the end of a run of known length (the lr decays to its floor), a policy of its own.
"""

from __future__ import annotations

from .base import SaturationTest
from .cooldown import Cooldown
from .growth import GROWTH_INTERVALS_PER_RUN, GrowthTest, growth_exponent, growth_window_start
from .omega import PAPER_DROP_DELAY, PaperTest, TrendTest, change_statistic, trend_statistic, trend_window_size

__all__ = [
    "DETECTORS",
    "GROWTH_INTERVALS_PER_RUN",
    "PAPER_DROP_DELAY",
    "Cooldown",
    "GrowthTest",
    "PaperTest",
    "SaturationTest",
    "TrendTest",
    "change_statistic",
    "growth_exponent",
    "growth_window_start",
    "make_test",
    "trend_statistic",
    "trend_window_size",
]

# `AutoDropConfig.detector` -> the test's class. A new test is one file and one line here.
_TESTS: dict[str, type] = {"growth": GrowthTest, "paper": PaperTest, "trend": TrendTest}
DETECTORS = tuple(_TESTS)


def make_test(config) -> SaturationTest:
    """The saturation test `config.detector` names, built for `config` (an `AutoDropConfig`)."""
    return _TESTS[config.detector](config)

"""The end of a run of known length: its final segment starts at a lower learning rate.

A run that ends before its learning rate has saturated (AdamW's parameters diffuse for far longer than
most runs) still sits above the loss its lr's noise allows. When the run's length is known
(`AutoDrop.set_horizon`; the Trainer callback sets it from `max_steps`), the run's last
`cooldown_fraction` starts with one drop, after the usual averaging window, which ends where that
segment starts. It is skipped while the parameters still drift (a growth exponent at or above
`COOLDOWN_MAX_EXPONENT`: the loss is still falling fast), when the current lr began less than one
segment before the segment (a drop just landed), or when a drop already landed inside the segment.
At most one per run, and only with a test that `cools_down` (the growth test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

# 1.5: halfway between noise and drift on the log scale, where the drift's share of D equals the noise's. At
# or above it the run is far from its lr's noise floor, and a drop would only slow it down.
COOLDOWN_MAX_EXPONENT = 1.5


class CooldownTrigger(NamedTuple):
    """The cooldown is due now: average for `averaging_intervals`, then drop. `exponent`: the growth
    exponent that showed the parameters no longer drift."""

    averaging_intervals: int
    exponent: float


class Cooldown:
    """When the run's final segment begins and whether its drop is due.

    Args:
        fraction: the share of the run the final segment covers (0: no cooldown).
    """

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.horizon: float | None = None  # the run's length in intervals, when known
        self.cooled = False  # the cooldown was triggered, or a drop landed in the final segment

    def set_horizon(self, intervals: float | None) -> None:
        if intervals is not None and (
            not isinstance(intervals, (int, float)) or isinstance(intervals, bool) or not 0 < intervals < math.inf
        ):
            raise ValueError(f"horizon must be a positive finite number of intervals or None, got {intervals!r}")
        self.horizon = None if intervals is None else float(intervals)

    @property
    def start(self) -> int | None:
        """The interval at which the final segment starts (the cooldown's drop lands), or None."""
        if self.horizon is None or not self.fraction:
            return None
        return math.ceil((1.0 - self.fraction) * self.horizon)

    def due(self, interval: int, t: int, usual: int, exponent: Callable[[], float]) -> CooldownTrigger | None:
        """The trigger when the cooldown is due at `interval` (`t` intervals after the anchor), else None.

        Due at the first interval from which the usual averaging window (`usual` intervals) would reach
        the segment's start, when: no cooldown was triggered and no drop landed inside the segment; the
        current lr began at least one segment's length before the segment; the drop can land before the
        run's last interval; and `exponent()` (the growth exponent of the current phase) is below
        `COOLDOWN_MAX_EXPONENT`. The averaging window ends where the segment starts.
        """
        start = self.start
        if start is None or self.cooled:
            return None
        if interval - t > start - self.fraction * self.horizon:
            return None
        delay = max(1, min(usual, start - interval))
        if interval + usual < start or interval + delay >= self.horizon:
            return None
        value = exponent()
        if not value < COOLDOWN_MAX_EXPONENT:
            return None
        return CooldownTrigger(delay, value)

    def triggered(self) -> None:
        self.cooled = True

    def dropped(self, interval: int) -> None:
        """A drop landed at `interval`: inside the final segment, no cooldown is added on top of it."""
        start = self.start
        if start is not None and interval >= start:
            self.cooled = True

    def state_dict(self) -> dict:
        return {"horizon": self.horizon, "cooled": self.cooled}

    def load_state_dict(self, state: dict) -> None:
        horizon = state.get("horizon")
        self.horizon = None if horizon is None else float(horizon)
        self.cooled = bool(state.get("cooled", False))

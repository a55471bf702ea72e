"""The end of a run of known length: the learning rate decays to its floor over the run's final segment.

A run that ends before its learning rate has saturated (AdamW's parameters diffuse for far longer than
most runs) still sits above the loss its lr's noise allows, and a run that saturated and dropped still
gains from annealing its last lr. When the run's length is known (`AutoDrop.set_horizon`, or
`AutoDrop(..., horizon=N)`; the Trainer callback sets it from `max_steps`), its last `cooldown_fraction`
(a fifth by default) decays every param group's lr from the lr in force when the segment begins to the
group's floor, along 1 - sqrt of the segment's progress: the cooldown of a warm-up-stable-decay schedule
(transformers' `warmup_stable_decay` with `decay_type="1-sqrt"`), which matches or beats cosine and linear
cooldowns (Hagele et al. 2024). Before the segment, the saturation test drops the lr where the run
settles; inside it the decay alone sets the lr (an averaging window still open when it begins drops at
once, with the snapshots averaged so far). The lr follows the decay at every optimizer step: each step
uses the value 1 - sqrt takes at its start, as `warmup_stable_decay` sets the lr of a step from the steps
taken before it. The position of a step inside its interval comes from the optimizer steps AutoDrop counts
(the steps in the last complete interval tell how many an interval has); where it cannot count them (no
step hook, or no complete interval yet) the lr changes once per interval, at the value in the middle of
the next interval.
"""

from __future__ import annotations

import math

# The shortest phase a saturation drop may end, as a multiple of the final segment's length: the whole
# segment (a fifth of the run at the default cooldown_fraction). Chosen by measurement
# (docs/how-it-decides.md): half of it let AdamW's early stall drop a 3-epoch run (twice WSD's final
# loss); on the NQM the whole segment costs long runs some later drops and still beats WSD several-fold.
SHORTEST_PHASE = 1.0


class Cooldown:
    """When the run's final segment begins, and the lr scales it sets at each interval in it.

    Args:
        fraction: the share of the run the final segment covers (0: no cooldown).
    """

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.horizon: float | None = None  # the run's length in intervals, when known
        self.start_scales: list[float] | None = None  # every group's lr scale when the decay began

    def set_horizon(self, intervals: float | None) -> None:
        if intervals is not None and (
            not isinstance(intervals, (int, float)) or isinstance(intervals, bool) or not 0 < intervals < math.inf
        ):
            raise ValueError(f"horizon must be a positive finite number of intervals or None, got {intervals!r}")
        self.horizon = None if intervals is None else float(intervals)

    @property
    def cooled(self) -> bool:
        """The decay has begun (its start scales are recorded)."""
        return self.start_scales is not None

    @property
    def shortest_phase(self) -> float:
        """The fewest intervals after the start or a drop before a saturation test may trigger: the final
        segment's length times `SHORTEST_PHASE` (0 without a horizon or a cooldown). A stall on a shorter
        time scale (AdamW's first hundred steps can show one) is not told from saturation with any
        confidence, and the decay anneals on that scale anyway."""
        if self.horizon is None or not self.fraction:
            return 0.0
        return SHORTEST_PHASE * self.fraction * self.horizon

    @property
    def _segment_start(self) -> float | None:
        """Where the final segment begins, in intervals (not rounded)."""
        if self.horizon is None or not self.fraction:
            return None
        return (1.0 - self.fraction) * self.horizon

    @property
    def start(self) -> int | None:
        """The first interval at whose end the decay sets the lr (the next interval is the segment's first),
        or None without a horizon or with `fraction` 0."""
        begin = self._segment_start
        return None if begin is None else math.floor(begin - 0.5) + 1

    def progress(self, interval: int) -> float | None:
        """How far into the segment the middle of the interval after `interval` lies, in [0, 1]; None
        before the segment (or without one). The interval after `interval` is inside the decay when
        this is not None."""
        begin = self._segment_start
        if begin is None or interval + 0.5 <= begin:
            return None
        return self._progress_at(interval + 0.5)

    def _progress_at(self, position: float) -> float:
        """How far into the segment `position` (in intervals since the start) lies, clipped to [0, 1]."""
        begin = self._segment_start
        return min(1.0, max(0.0, (position - begin) / (self.horizon - begin)))

    def scales(
        self, interval: int, current: list[float], floors: list[float], position: float | None = None
    ) -> list[float] | None:
        """Every group's lr scale for the interval after `interval` (None before the segment), or, with
        `position` (in intervals since the start, inside that interval), for the optimizer step there.

        `current`: the groups' lr scales now (recorded as the decay's start at its first interval);
        `floors`: their floors as scales. 1 - sqrt(p) from the start's scale at p = 0 to the floor at p = 1,
        never above the start and never below the floor.
        """
        if self.progress(interval) is None:
            return None
        p = self._progress_at(interval + 0.5 if position is None else position)
        if self.start_scales is None:
            self.start_scales = list(current)
        shape = 1.0 - math.sqrt(p)
        return [f + (s - f) * shape if s > f else s for s, f in zip(self.start_scales, floors)]

    def state_dict(self) -> dict:
        return {"horizon": self.horizon, "cooled": self.cooled, "cooldown_scales": self.start_scales}

    def load_state_dict(self, state: dict) -> None:
        horizon = state.get("horizon")
        self.horizon = None if horizon is None else float(horizon)
        scales = state.get("cooldown_scales")
        self.start_scales = None if scales is None else [float(s) for s in scales]

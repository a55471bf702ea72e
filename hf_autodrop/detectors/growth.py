"""The growth test (the default): how fast does the squared distance from the anchor grow?

`growth` (the default): how fast does the squared distance from the anchor grow? The anchor x_a is the
point where the current learning rate began (the start, or the averaged point of the last drop);
D(s) = |x_s - x_a|^2 is recorded at every interval s. While the parameters drift, D grows like s^2;
under pure noise (a random walk) like s; once they fluctuate around a stationary point, D stops
growing (s^0). The test fits the exponent of that growth, the least-squares slope of log D against
log s, over the latter half [t/2, t] of the time t since the anchor, and calls the run saturated when
it has fallen below `growth_threshold`. The window is a fixed fraction of the time at this learning
rate, so the statistic is a property of the trajectory, not of how often it is sampled: measuring
every k or every 4k steps reads the same curve D and gives the same exponent, and the decision moves
by about one interval when the interval changes. The angle omega the paper measures is the same
quantity at the scale of one interval: for a trajectory whose increments are stationary, with
E|x_(s+k) - x_s|^2 = S(k), cos(omega) = S(2k) / (2 S(k)) - 1 between two consecutive k-step
displacements, which is 0 degrees for drift (S ~ k^2), 90 for a random walk (S ~ k) and 120 for a
stationary process (S flat) -- so omega tests the growth exponent at the lag of one interval, a scale
the user picks, while `growth` tests it at the scale of the time since the last drop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# With interval_steps=None: about this many intervals per run.
GROWTH_INTERVALS_PER_RUN = 300
# The test keeps at most about this many (interval, D) pairs of its window; beyond, every other one is
# dropped (the fit over [t/2, t] hardly changes, and the state stays small with tiny intervals).
MAX_GROWTH_SAMPLES = 1024


def growth_window_start(t: int) -> int:
    """The first interval of the growth test's window [t/2, t]: `ceil(t / 2)` (at least 1).

    Example:
        >>> [growth_window_start(t) for t in (1, 2, 3, 8, 9)]
        [1, 1, 2, 4, 5]
    """
    return max(1, (t + 1) // 2)


def growth_exponent(times: Sequence[float], distances: Sequence[float]) -> float:
    """The least-squares slope of log D against log s: how D grows with time over these samples.

    `times` are the sample times s (in any unit: a common factor shifts log s and leaves the slope
    alone), `distances` the squared distances D(s) from the anchor. About 2 for a drift (D ~ s^2),
    1 for a random walk (D ~ s), 0 once D has stopped growing. NaN with fewer than 3 samples, or when
    a distance is not a positive finite number (the parameters did not move, or NaN/Inf).

    Example:
        >>> round(growth_exponent([4, 5, 6, 7, 8], [s * s for s in (4, 5, 6, 7, 8)]), 6)
        2.0
        >>> round(growth_exponent([40, 50, 60, 70, 80], [3.0 * s for s in (40, 50, 60, 70, 80)]), 6)
        1.0
        >>> growth_exponent([4, 5, 6, 7, 8], [9.0] * 5)
        0.0
    """
    n = len(times)
    if n != len(distances):
        raise ValueError(f"times and distances differ in length ({n} and {len(distances)})")
    if n < 3 or not all(math.isfinite(d) and d > 0.0 for d in distances) or not all(s > 0 for s in times):
        return math.nan
    return _log_slope([math.log(s) for s in times], [math.log(d) for d in distances])


def _log(d: float) -> float:
    """log d, NaN where d is not a positive finite number (such a sample makes the fit NaN)."""
    return math.log(d) if math.isfinite(d) and d > 0.0 else math.nan


def _log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of `ys` against `xs` (logs already taken); NaN if a value is NaN or xs are equal."""
    n = len(xs)
    x_mean, y_mean = math.fsum(xs) / n, math.fsum(ys) / n
    if not math.isfinite(y_mean):
        return math.nan
    sxx = math.fsum((x - x_mean) ** 2 for x in xs)
    if sxx == 0.0:
        return math.nan
    return math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sxx


class GrowthTest:
    """Saturated when the growth exponent of D over [t/2, t] falls below `config.growth_threshold`.

    It observes D(t) every interval (the anchor is the controller's), checks first at
    `2 * (growth_min_samples - 1)` intervals after the start or a drop and not before
    `growth_min_phase` times the previous phase, and averages for `drop_delay_fraction * t` intervals.
    """

    uses_anchor = True
    uses_threshold = False
    cools_down = True
    measures_per_epoch = False

    def __init__(self, config):
        self.config = config
        self.samples: list[tuple[int, float]] = []  # (s, D(s)) of the window [t/2, t], oldest first
        # Their logs, taken once per sample rather than at every fit (what a small model's interval notices).
        self._log_s: list[float] = []
        self._log_d: list[float] = []

    @property
    def first_check(self) -> int:
        return 2 * (self.config.growth_min_samples - 1)

    def default_averaging_intervals(self, t: int) -> int:
        return max(1, round(self.config.drop_delay_fraction * t))

    def auto_interval_steps(self, max_steps: int) -> int:
        # The decision does not depend on the interval; about 300 measurements per run keep the window
        # well sampled early in the run, at any run length.
        return max(1, int(max_steps) // GROWTH_INTERVALS_PER_RUN)

    def angles_kept(self, t: int) -> int:
        return 1  # only for the logged change of the angle

    def observe(self, t: int, distance_sq: float) -> None:
        if math.isfinite(distance_sq):
            self.samples.append((t, distance_sq))
            self._log_s.append(math.log(t))
            self._log_d.append(_log(distance_sq))
        start = growth_window_start(t)
        if self.samples and self.samples[0][0] < start:
            keep = (
                next(i for i, (s, _) in enumerate(self.samples) if s >= start)
                if self.samples[-1][0] >= start
                else len(self.samples)
            )
            del self.samples[:keep], self._log_s[:keep], self._log_d[:keep]
        if len(self.samples) > 2 * MAX_GROWTH_SAMPLES:
            # Every other one, the newest kept.
            self.samples, self._log_s, self._log_d = (
                x[::-1][::2][::-1] for x in (self.samples, self._log_s, self._log_d)
            )

    def exponent(self) -> float:
        """The growth exponent over the window [t/2, t] (NaN: too few samples); `growth_exponent` of the samples."""
        if len(self.samples) < max(3, self.config.growth_min_samples):
            return math.nan
        return _log_slope(self._log_s, self._log_d)

    def statistic(self, t: int, angle: float, change: float, recent: list[float], last_phase: int) -> tuple[float, int]:
        cfg = self.config
        window = t - growth_window_start(t) + 1
        if t < max(self.first_check, cfg.growth_min_phase * last_phase) or len(self.samples) < cfg.growth_min_samples:
            return math.nan, window
        return self.exponent(), window

    def tolerance(self, threshold: float) -> float:
        return self.config.growth_threshold

    def reset(self) -> None:
        self.samples, self._log_s, self._log_d = [], [], []

    def resume_refusal(self, saved_config) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {"growth_samples": [[s, d] for s, d in self.samples]}

    def load_state_dict(self, state: dict) -> None:
        self.samples = [(int(s), float(d)) for s, d in state.get("growth_samples", [])]
        self._log_s = [math.log(s) for s, _ in self.samples]
        self._log_d = [_log(d) for _, d in self.samples]

"""The tests on the angle omega between consecutive displacements: the paper's, and the trend test.

`paper`: abs(omega_t - omega_(t-1)) < threshold (degrees), the test of the AutoDrop paper. It
compares one noisy difference with a fixed number of degrees, so it fires at random when omega is
noisy compared with the threshold and never when omega is noisier than that (small data, short
intervals, AdamW).

`trend`: fit a least-squares line to the angles of the latter half of the intervals since the start
(or the last drop), at least `trend_window` of them, and bound how far omega can have drifted over
that window: `(abs(slope) + SE(slope)) * n`, the drift of the fitted line plus one standard error of
it, for `n` angles. Omega has stopped changing when that bound is below `z` times the scatter of the
angles around the line (their residual standard deviation). The statistic is a ratio of two
quantities in degrees, so it does not change when omega's noise (or omega itself) is scaled, and it
needs positive evidence: a window too short to pin the slope down (fewer than about 13 angles for
z = 1) cannot pass, however flat it looks, and a window that still shows a drift of the size of
the noise cannot pass, however noisy. The window grows with the time spent at the current learning
rate, so the test asks the same question early and late in a run: has omega been flat over the
second half of the time since the last drop? z grows after each drop like the paper's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The paper's n_d: the omega tests' averaging intervals when drop_delay is None.
PAPER_DROP_DELAY = 20


def change_statistic(previous: float, angle: float) -> float:
    """The paper's statistic abs(omega_t - omega_(t-1)); NaN when either angle is undefined."""
    return abs(angle - previous)


def trend_window_size(num_angles: int, min_window: int) -> int:
    """How many of the latest angles the trend test fits: the latter half of `num_angles` (the angles
    measured since the start or the last drop), at least `min_window`; 0 while there are fewer than
    `min_window`.

    Example:
        >>> [trend_window_size(m, 10) for m in (9, 10, 19, 20, 21, 40)]
        [0, 10, 10, 10, 11, 20]
    """
    if num_angles < min_window:
        return 0
    return max(min_window, (num_angles + 1) // 2)


def trend_statistic(angles: Sequence[float]) -> float:
    """How far omega can have drifted over `angles`, in units of its scatter around the trend line.

    `(abs(slope) + SE(slope)) * n / s` for the least-squares line through the `n` equally spaced
    angles, `s` the residual standard deviation (`n - 2` degrees of freedom) and `SE(slope) =
    s / sqrt(sum((i - mean(i))^2))`. NaN when any angle is undefined or there are fewer than 3 of them;
    0 for an exactly constant series, inf for an exactly straight, sloped one.

    A flat series with noise gives about `(abs(t) + 1) * sqrt(12 / n)` (t: the slope's t-statistic),
    which falls below 1 once `n` exceeds about `12 (abs(t) + 1)^2`; a series with a slope `b` gives at
    least `abs(b) * n / s`, which grows with the window.

    Example:
        >>> trend_statistic([10.0, 11.0, 12.0, 13.0]) == math.inf
        True
        >>> trend_statistic([5.0] * 6)
        0.0
        >>> round(trend_statistic([1.0, 2.0, 3.0] * 2), 2)  # flat but too short to tell
        3.0
        >>> round(trend_statistic([1.0, 2.0, 3.0] * 10), 2)  # the same pattern, long enough
        0.95
    """
    n = len(angles)
    if n < 3 or not all(math.isfinite(a) for a in angles):
        return math.nan
    x_mean = (n - 1) / 2.0
    y_mean = math.fsum(angles) / n
    sxx = n * (n * n - 1) / 12.0
    sxy = math.fsum((i - x_mean) * (a - y_mean) for i, a in enumerate(angles))
    slope = sxy / sxx
    rss = math.fsum((a - y_mean - slope * (i - x_mean)) ** 2 for i, a in enumerate(angles))
    scatter = math.sqrt(max(rss, 0.0) / (n - 2))
    if scatter == 0.0:
        return 0.0 if slope == 0.0 else math.inf
    se = scatter / math.sqrt(sxx)
    return (abs(slope) + se) * n / scatter


class _OmegaTest:
    """What the omega tests share: averaging for the paper's n_d, the paper's growing threshold, no anchor."""

    uses_anchor = False
    uses_threshold = True
    cools_down = False
    measures_per_epoch = True

    def __init__(self, config):
        self.config = config

    def default_averaging_intervals(self, t: int) -> int:
        return PAPER_DROP_DELAY

    def auto_interval_steps(self, max_steps: int) -> int:
        # For runs with fewer epochs than a drop needs: room for about three drops.
        cfg = self.config
        return max(1, int(max_steps) // (3 * cfg.min_intervals_per_drop))

    def angles_kept(self, t: int) -> int:
        return 1

    def observe(self, t: int, distance_sq: float) -> None:
        pass

    def reset(self) -> None:
        pass

    def resume_refusal(self, saved_config) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PaperTest(_OmegaTest):
    """The paper's test: abs(omega_t - omega_(t-1)) < threshold degrees, first at the third interval."""

    first_check = 3

    def statistic(self, t: int, angle: float, change: float, recent: list[float], last_phase: int) -> tuple[float, int]:
        return change, 2

    def tolerance(self, threshold: float) -> float:
        return threshold


class TrendTest(_OmegaTest):
    """The trend test: omega's drift over the latter half of the angles since the anchor, in units of its
    scatter, below `trend_z` grown like the paper's threshold."""

    @property
    def first_check(self) -> int:
        return self.config.trend_window + 1

    def angles_kept(self, t: int) -> int:
        # The next interval's window (the t angles kept so far, counting interval 1's undefined one), or all
        # of them while fewer than trend_window.
        w = self.config.trend_window
        return max(w, trend_window_size(t, w))

    def statistic(self, t: int, angle: float, change: float, recent: list[float], last_phase: int) -> tuple[float, int]:
        # Angles exist from the second interval after the reset: t - 1 of them.
        n = trend_window_size(t - 1, self.config.trend_window)
        return (trend_statistic((recent + [angle])[-n:]) if n else math.nan), n

    def tolerance(self, threshold: float) -> float:
        return self.config.trend_z * threshold / self.config.threshold

    def resume_refusal(self, saved_config) -> str | None:
        if self.config.trend_window > saved_config.trend_window:
            return "the state keeps only the angles the smaller trend_window needs."
        return None

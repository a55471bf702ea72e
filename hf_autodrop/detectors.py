"""Saturation tests: when has the run stopped making progress at its learning rate?

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

__all__ = [
    "DETECTORS",
    "change_statistic",
    "growth_exponent",
    "growth_window_start",
    "trend_statistic",
    "trend_window_size",
]

DETECTORS = ("growth", "paper", "trend")


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
    xs = [math.log(s) for s in times]
    ys = [math.log(d) for d in distances]
    x_mean, y_mean = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - x_mean) ** 2 for x in xs)
    if sxx == 0.0:
        return math.nan
    return math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sxx

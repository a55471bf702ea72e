"""Saturation tests: when has the angular velocity omega stopped changing?

`paper`: abs(omega_t - omega_(t-1)) < threshold (degrees), the test of the AutoDrop paper. It
compares one noisy difference with a fixed number of degrees, so it fires at random when omega is
noisy compared with the threshold and never when omega is noisier than that (small data, short
intervals, AdamW).

`trend`: fit a least-squares line to the last `trend_window` angles and compare its slope with the
slope's own standard error: omega has stopped changing when abs(slope) < z * SE(slope), i.e. when
the window shows no trend that its own scatter could not produce. The statistic abs(slope)/SE(slope)
is a t-statistic: it does not change when omega's noise (or omega itself) is scaled, so the test
needs no per-task threshold; z grows after each drop like the paper's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["DETECTORS", "change_statistic", "trend_statistic"]

DETECTORS = ("paper", "trend")


def change_statistic(previous: float, angle: float) -> float:
    """The paper's statistic abs(omega_t - omega_(t-1)); NaN when either angle is undefined."""
    return abs(angle - previous)


def trend_statistic(angles: Sequence[float]) -> float:
    """abs(slope) / SE(slope) of the least-squares line through equally spaced `angles`.

    NaN when any angle is undefined or there are fewer than 3 of them. 0 for an exactly flat
    series, inf for an exactly straight, sloped one.

    Example:
        >>> trend_statistic([10.0, 11.0, 12.0, 13.0]) == math.inf
        True
        >>> round(trend_statistic([1.0, 2.0, 1.0, 2.0, 1.0]), 6)
        0.0
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
    se = math.sqrt(max(rss, 0.0) / (n - 2) / sxx)
    if se == 0.0:
        return 0.0 if slope == 0.0 else math.inf
    return abs(slope) / se

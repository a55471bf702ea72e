"""`Measurement`: what `AutoDrop.step()` saw and decided at the end of one interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AVERAGING", "MONITOR", "Measurement"]

# The two phases of the controller.
MONITOR, AVERAGING = "monitor", "averaging"


@dataclass(frozen=True)
class Measurement:
    """What `AutoDrop.step()` saw and decided at the end of one interval (state after the step).

    Attributes:
        interval: 1-based index of the interval since training started.
        angle: omega_t, the angle in degrees between the last two displacements (NaN when undefined:
            fewer than two displacements since the last reset, a zero displacement, or NaN/Inf).
        angle_change: abs(omega_t - omega_(t-1)) (NaN when either is undefined).
        statistic: the saturation test's statistic at this interval: for `"growth"`, the growth
            exponent of the squared distance from the anchor over the window (2 drift, 1 noise, 0
            settled); `angle_change` for the paper's test; for `"trend"`, the drift of omega over its
            window that the fitted slope allows (one standard error included), in units of omega's
            scatter. NaN while undefined (too few measurements). A trigger needs it below `threshold`
            (as it stood before this interval).
        tolerance: what the test's statistic must stay below from now on: a growth exponent for
            `"growth"`, degrees for `"paper"` (the paper's threshold, grown at every drop), units of
            omega's scatter for `"trend"`. Logged as `autodrop/threshold`; `threshold` is the same value.
        phase: "monitor" or "averaging".
        lr_scale: param group 0's product of the drop factors applied so far (its lr over its
            initial lr under a constant base schedule).
        dropped: a drop happened at this interval (in a dry run: would have happened).
        num_drops: drops so far, this one included.
        triggered: the angular velocity saturated at this interval and averaging began.
        exhausted: this drop found every param group already at its floor.
        should_stop: `exhausted` and the config asks to stop when exhausted.
        lrs: every param group's current learning rate.
        window: the time scale the decision used, in intervals: the window [t/2, t] of the growth
            test spans t - ceil(t/2) + 1 measurements back from t, the intervals since the start or the
            last drop; the trend test's angles; 2 for the paper's test (one change of omega).
        since_anchor: t, the intervals since the start or the last drop (0 right after a drop).
        distance_sq: D(t) = |x_t - x_a|^2, the squared distance from the anchor (the start or the
            last drop's averaged point); NaN with the omega tests, which do not keep the anchor.
        cooldown: the run's cooldown has begun: from this interval on the lr decays to its floor over the
            run's final segment (`cooldown_fraction` of a run of known length).
    """

    interval: int
    angle: float
    angle_change: float
    statistic: float
    tolerance: float
    phase: str
    lr_scale: float
    dropped: bool
    num_drops: int
    triggered: bool = False
    exhausted: bool = False
    should_stop: bool = False
    lrs: tuple[float, ...] = ()
    window: int = 0
    since_anchor: int = 0
    distance_sq: float = math.nan
    cooldown: bool = False

    @property
    def threshold(self) -> float:
        """The older name of `tolerance` (for the paper's test they are its threshold)."""
        return self.tolerance

    def logs(self) -> dict[str, float]:
        """The `autodrop/*` metrics logged every interval."""
        return {
            "autodrop/angle": self.angle,
            "autodrop/angle_change": self.angle_change,
            "autodrop/statistic": self.statistic,
            "autodrop/threshold": self.tolerance,
            "autodrop/lr_scale": self.lr_scale,
            "autodrop/phase": 0.0 if self.phase == MONITOR else 1.0,
            "autodrop/num_drops": float(self.num_drops),
            "autodrop/window": float(self.window),
            "autodrop/since_anchor": float(self.since_anchor),
            "autodrop/distance_sq": self.distance_sq,
            "autodrop/cooldown": 1.0 if self.cooldown else 0.0,
        }

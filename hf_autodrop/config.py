"""The one configuration object shared by the core, the Trainer callback and the recipes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .detectors import DETECTORS, make_test

__all__ = ["AutoDropConfig"]

# The growth test's defaults (docs/results/interval.md shows how they were chosen and what they do).
GROWTH_THRESHOLD = 0.2
GROWTH_MIN_SAMPLES = 4
GROWTH_MIN_PHASE = 1.0
DROP_DELAY_FRACTION = 0.25
# The cooldown of a run of known length: the lr decays to its floor over this fraction of the run, along
# 1 - sqrt (hf_autodrop/detectors/cooldown.py; docs/results/peers.md measures it).
COOLDOWN_FRACTION = 0.2


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class AutoDropConfig:
    """Hyper-parameters of AutoDrop (see the README's option table for the paper's values).

    Args:
        drop_factor (`float`, defaults to 0.1):
            rho: the learning rate is multiplied by this at every drop. Must lie in (0, 1).
        min_lr (`float` or `None`, defaults to `None`):
            Floor for every param group's learning rate. `None` means 1e-3 x that group's initial
            learning rate, so that groups with different learning rates keep their ratio.
        threshold (`float`, defaults to 0.01):
            theta_0, in degrees: the paper's test triggers a drop when the angular velocity changes by less
            than this between two consecutive intervals. The trend test uses only the ratio of the
            current threshold to it (its tolerance grows with the threshold).
        max_threshold (`float`, defaults to 1.0):
            theta_max, in degrees: the threshold grows by `1 / drop_factor` at every drop up to this cap.
        detector (`str`, defaults to `"growth"`):
            The saturation test; `hf_autodrop.detectors` explains each. `"growth"` (the default, nothing in
            degrees or in intervals to tune): the exponent of the growth of the squared distance from the
            point where the current learning rate began, over the latter half of the time since then, below
            `growth_threshold`; the decision does not hinge on how many steps make an interval. `"trend"`: a
            line fitted to the latest angles (noise-adaptive); its tolerance grows with the threshold's ratio
            `threshold_now / threshold` (capped by `max_threshold / threshold`), like the paper's threshold.
            `"paper"`: the paper's test, abs(omega_t - omega_(t-1)) < threshold degrees. Both omega tests
            judge saturation at the time scale of one interval (docs/results/saturation.md, interval.md).
        growth_threshold (`float`, defaults to 0.2):
            The `"growth"` test fires when the growth exponent of D over [t/2, t] is below this (> 0).
        growth_min_samples (`int`, defaults to 4):
            The fewest measurements the `"growth"` test fits (>= 3): its first check comes at interval
            `2 * (growth_min_samples - 1)` after the start or a drop, when [t/2, t] holds that many.
        growth_min_phase (`float`, defaults to 1.0):
            After a drop, the `"growth"` test's first check waits at least this multiple of the previous
            phase's length (from the start or the drop before to the last drop): each learning rate is
            judged on at least the time scale that judged the one before it. 0 turns it off.
        trend_window (`int`, defaults to 10):
            The fewest angles the `"trend"` test fits (>= 3); its first check comes `trend_window + 1`
            intervals after the start or a drop. Before the first drop it needs about 13 angles to
            pass at all (positive evidence of flatness), so in practice 26 or more intervals.
        trend_z (`float`, defaults to 1.0):
            The `"trend"` test's initial tolerance (> 0): the drift of omega over the window allowed,
            in units of omega's scatter around its trend line.
        drop_delay (`int` or `None`, defaults to `None`):
            n_d: intervals between the trigger and the drop, during which parameters are averaged.
            `None`: `drop_delay_fraction` x the intervals since the start or the last drop (at least
            one) for the `"growth"` test, so that the averaging covers the same share of the run at any
            interval length; 20 (the paper's n_d) for the `"paper"` and `"trend"` tests.
        drop_delay_fraction (`float`, defaults to 0.25):
            With `drop_delay=None` and the `"growth"` test: the averaging lasts this fraction of the
            time since the start or the last drop, measured at the trigger (> 0).
        cooldown_fraction (`float`, defaults to 0.2):
            With the `"growth"` test and a run of known length (the Trainer callback knows it from
            `max_steps`; a custom loop passes `AutoDrop(..., horizon=N)` or calls `set_horizon(N)`): over
            the run's last `cooldown_fraction` every group's lr decays from the lr in force to its floor
            along 1 - sqrt of the segment's progress, the cooldown of transformers'
            `warmup_stable_decay` schedule. Before it the saturation test drops the lr where the run
            settles; inside it the decay alone sets the lr (an averaging window still open when it
            begins drops at once). The segment is also the shortest time scale a saturation drop is
            judged on: no drop triggers before `cooldown_fraction` of the run has passed since the start
            or the last drop (an early stall, as AdamW's first hundred steps can show, is not saturation;
            the decay anneals on that scale anyway). 0 turns both off. The omega tests (`"paper"`,
            `"trend"`) never cool down.
        interval_steps (`int` or `None`, defaults to `None`):
            `None`: with the `"growth"` test, every `auto_interval_steps(max_steps)` optimizer updates
            (about 300 intervals per run, logged); with the omega tests once per epoch, or, when
            the run has fewer epochs than `min_intervals_per_drop`, every `auto_interval_steps(max_steps)`
            updates. `N`: every `N` optimizer updates. Used by the Trainer callback; custom loops decide themselves
            when to call `AutoDrop.step()` (`auto_interval_steps` serves them too).
        average_buffers (`bool`, defaults to `True`):
            Average floating-point buffers (BatchNorm running statistics) with the same weights as
            the parameters.
        dry_run (`bool`, defaults to `False`):
            Measure, decide and log as usual, but never change the learning rate or the parameters.
        stop_when_exhausted (`bool`, defaults to `False`):
            End training at a drop that finds every param group already at its floor.
        offload_to_cpu (`bool`, defaults to `False`):
            Keep AutoDrop's snapshots (float32 copies of the trainable elements this process owns: three
            with the `"growth"` test, two with the omega tests, one more while averaging) in pinned CPU memory instead of the accelerator's. The per-interval
            arithmetic streams chunks through the accelerator; the end-of-interval copy overlaps with
            the next steps. Costs PCIe transfers at every interval boundary (see docs/distributed.md for
            measurements); no effect on what is computed.

    Example:
        >>> AutoDropConfig(drop_factor=0.2, drop_delay=5)
        AutoDropConfig(drop_factor=0.2, min_lr=None, threshold=0.01, max_threshold=1.0, detector='growth', growth_threshold=0.2, growth_min_samples=4, growth_min_phase=1.0, trend_window=10, trend_z=1.0, drop_delay=5, drop_delay_fraction=0.25, cooldown_fraction=0.2, interval_steps=None, average_buffers=True, dry_run=False, stop_when_exhausted=False, offload_to_cpu=False)
    """

    drop_factor: float = 0.1
    min_lr: float | None = None
    threshold: float = 0.01
    max_threshold: float = 1.0
    detector: str = "growth"
    growth_threshold: float = GROWTH_THRESHOLD
    growth_min_samples: int = GROWTH_MIN_SAMPLES
    growth_min_phase: float = GROWTH_MIN_PHASE
    trend_window: int = 10
    trend_z: float = 1.0
    drop_delay: int | None = None
    drop_delay_fraction: float = DROP_DELAY_FRACTION
    cooldown_fraction: float = COOLDOWN_FRACTION
    interval_steps: int | None = None
    average_buffers: bool = True
    dry_run: bool = False
    stop_when_exhausted: bool = False
    offload_to_cpu: bool = False

    def __post_init__(self) -> None:
        def bad(field: str, valid: str) -> ValueError:
            return ValueError(f"AutoDropConfig.{field}={getattr(self, field)!r} is invalid: expected {valid}.")

        if not _is_number(self.drop_factor) or not 0.0 < self.drop_factor < 1.0:
            raise bad("drop_factor", "a number in the open interval (0, 1), e.g. 0.1 or 0.2")
        if self.min_lr is not None and (not _is_finite(self.min_lr) or self.min_lr < 0):
            raise bad("min_lr", "None (1e-3 x each group's initial lr) or a finite number >= 0")
        if not _is_finite(self.threshold) or self.threshold <= 0:
            raise bad("threshold", "a finite number of degrees > 0 (the paper uses 0.01)")
        if not _is_finite(self.max_threshold) or self.max_threshold < self.threshold:
            raise bad("max_threshold", f"a finite number of degrees >= threshold ({self.threshold})")
        if self.detector not in DETECTORS:
            raise bad("detector", f"one of {DETECTORS}")
        if not _is_int(self.trend_window) or self.trend_window < 3:
            raise bad("trend_window", "an integer >= 3")
        if not _is_finite(self.trend_z) or self.trend_z <= 0:
            raise bad("trend_z", "a finite number > 0 (standard errors of the slope)")
        if self.drop_delay is not None and (not _is_int(self.drop_delay) or self.drop_delay < 0):
            raise bad("drop_delay", "None (automatic) or an integer >= 0 (the paper uses 20)")
        if not _is_finite(self.growth_threshold) or self.growth_threshold <= 0:
            raise bad("growth_threshold", "a finite number > 0 (a growth exponent: 2 drift, 1 noise, 0 settled)")
        if not _is_int(self.growth_min_samples) or self.growth_min_samples < 3:
            raise bad("growth_min_samples", "an integer >= 3")
        if not _is_finite(self.growth_min_phase) or self.growth_min_phase < 0:
            raise bad("growth_min_phase", "a finite number >= 0 (a multiple of the previous phase's length)")
        if not _is_finite(self.drop_delay_fraction) or self.drop_delay_fraction <= 0:
            raise bad("drop_delay_fraction", "a finite number > 0 (a fraction of the time since the last drop)")
        if not _is_finite(self.cooldown_fraction) or not 0 <= self.cooldown_fraction < 0.5:
            raise bad(
                "cooldown_fraction",
                "a number in [0, 0.5) (the share of the run over which the lr decays to its floor; 0: off)",
            )
        if self.interval_steps is not None and (not _is_int(self.interval_steps) or self.interval_steps < 1):
            raise bad("interval_steps", "None (one interval per epoch) or an integer >= 1")
        for name in ("average_buffers", "dry_run", "stop_when_exhausted", "offload_to_cpu"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")

    @property
    def first_check(self) -> int:
        """The interval (after the start or a drop) of the test's first possible trigger."""
        return make_test(self).first_check

    def averaging_intervals(self, t: int) -> int:
        """n_d for a trigger at interval `t` after the start or the last drop: `drop_delay` when set;
        else `max(1, round(drop_delay_fraction * t))` for the growth test, 20 for the omega tests.

        Example:
            >>> cfg = AutoDropConfig()
            >>> [cfg.averaging_intervals(t) for t in (2, 8, 40, 400)]
            [1, 2, 10, 100]
        """
        if self.drop_delay is not None:
            return self.drop_delay
        return make_test(self).default_averaging_intervals(t)

    @property
    def min_intervals_per_drop(self) -> int:
        """Intervals from the start (or a drop) to the earliest possible drop: the first check + n_d."""
        return self.first_check + self.averaging_intervals(self.first_check)

    def auto_interval_steps(self, max_steps: int) -> int:
        """Optimizer steps per interval when `interval_steps` is None, for a run of `max_steps` steps.

        The growth test: `max_steps // 300` (at least 1), so that the window [t/2, t] holds enough
        measurements early in the run whatever its length (its decision does not depend on the
        interval; this only sets how finely it is sampled). The omega tests, for runs too short for one
        interval per epoch: `max_steps // (3 * min_intervals_per_drop)` (at least 1), room for about
        three drops. The Trainer callback uses it; a custom loop that knows its length can too.

        Example:
            >>> AutoDropConfig().auto_interval_steps(1200)
            4
            >>> AutoDropConfig(detector="trend").auto_interval_steps(1200)
            12
        """
        return make_test(self).auto_interval_steps(max_steps)

    def replace(self, **changes: object) -> AutoDropConfig:
        """A copy with some fields changed (validated again); unknown names raise `TypeError`."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"Unknown AutoDropConfig field(s) {sorted(unknown)}; valid fields: "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, config: AutoDropConfig | dict | None = None, **overrides: object) -> AutoDropConfig:
        """The configuration `AutoDrop` and `AutoDropCallback` take: an `AutoDropConfig`, a dict of its
        fields or None (the defaults), with single fields replaced by `overrides`.

        Unknown field names raise `TypeError` (listing the valid ones), invalid values `ValueError`.

        Example:
            >>> AutoDropConfig.coerce({"drop_factor": 0.5}, drop_delay=3) == AutoDropConfig(drop_factor=0.5, drop_delay=3)
            True
        """
        if config is None:
            config = cls()
        elif isinstance(config, dict):
            config = cls().replace(**config)
        elif not isinstance(config, cls):
            raise TypeError(
                f"config must be an AutoDropConfig or a dict of its fields (it is the only positional argument), "
                f"got {config!r}; pass single fields by name, e.g. drop_factor={config!r}."
            )
        return config.replace(**overrides) if overrides else config

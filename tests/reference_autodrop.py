"""A slow, obvious float64 implementation of AutoDrop, written from its documentation, for the tests.

Sources: the paper's test (`detector="paper"`) and the phase machine follow the spec
(`autodrop-spec.md`: monitor -> averaging -> drop, bit for bit); the growth test (the default), the
trend test, the averaging length and the end-of-run decay follow the README ("How AutoDrop
decides", "The algorithm", "Reliability": the spikes left out of the average), docs/architecture.md
and the `AutoDropConfig` docstrings. Nothing here comes from `hf_autodrop.detectors` or the
controller: the twin keeps every angle since the last reset, every snapshot of the averaging window
and every distance from the anchor, recomputes the weighted average and every fit from scratch
(`torch.linalg.lstsq`), works on one flat float64 vector, and knows nothing about optimizers: it
returns the learning rates. The fast `AutoDrop` must make the same decisions at the same intervals,
report the same statistics and reach the same parameters.

Where the documents are silent, the twin makes these choices (each one a place the fast code could
differ without a document saying which is right):
- an averaging window triggered by an interval that did not move has no length to compare spikes with:
  nothing is left out of it but NaN/Inf intervals.

A zero displacement carries no information (docs/paper-differences.md): no trigger at such an interval,
also where the growth test's statistic is defined (D is finite, and held still by a frozen model).
Not modelled: the growth test thins its window to every other sample beyond 2048 of them (t > ~4096
intervals since the anchor); the twin always fits every measurement of [t/2, t].

The end of a run of known length is two functions, `decay_progress` and `shortest_phase`, so that another
policy replaces it in one place.
"""

from __future__ import annotations

import math

import torch

from hf_autodrop import AutoDropConfig

# README "The algorithm": with `drop_delay=None` the omega tests average over the paper's n_d = 20 intervals.
OMEGA_DROP_DELAY = 20
# README "Reliability": inside an averaging window, an interval whose displacement is more than this many
# times longer than the one at the trigger is left out of the running average.
SPIKE_RATIO = 1000.0
# README "The algorithm": an lr within 1e-9 (relative) of its floor counts as at the floor.
AT_FLOOR = 1e-9


# ---------------------------------------------------------------------- the measurements
def reference_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """degrees(arccos(clamp(<a,b> / (|a| |b|), -1, 1))) in float64; NaN when a norm is zero or not finite."""
    a, b = a.double(), b.double()
    na, nb = torch.linalg.vector_norm(a).item(), torch.linalg.vector_norm(b).item()
    if not (math.isfinite(na) and math.isfinite(nb)) or na == 0.0 or nb == 0.0:
        return math.nan
    cos = (a @ b).item() / (na * nb)
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


# ---------------------------------------------------------------------- the tests' statistics
def reference_trend_drift(angles: list[float]) -> float:
    """(abs(slope) + SE(slope)) * n / s of a straight-line least-squares fit (torch.linalg.lstsq) through
    the n angles, s the residual standard deviation (n - 2 degrees of freedom): 0 for an exactly flat
    series, inf for an exactly straight sloped one, NaN when an angle is undefined."""
    if len(angles) < 3 or any(math.isnan(a) for a in angles):
        return math.nan
    y = torch.tensor(angles, dtype=torch.float64)
    x = torch.arange(len(angles), dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    residual = y - design @ coef
    s = math.sqrt((residual @ residual).item() / (len(angles) - 2))
    slope = coef[1].item()
    if s == 0.0:
        return 0.0 if slope == 0.0 else math.inf
    se = s / math.sqrt(((x - x.mean()) ** 2).sum().item())
    return (abs(slope) + se) * len(angles) / s


def reference_growth_exponent(samples: list[tuple[int, float]]) -> float:
    """The least-squares slope of log D against log s (torch.linalg.lstsq on [1, log s]); NaN with fewer than
    3 samples or a distance that is not a positive finite number."""
    if len(samples) < 3 or not all(math.isfinite(d) and d > 0.0 for _, d in samples):
        return math.nan
    log_s = torch.tensor([math.log(s) for s, _ in samples], dtype=torch.float64)
    log_d = torch.tensor([math.log(d) for _, d in samples], dtype=torch.float64)
    design = torch.stack([torch.ones_like(log_s), log_s], dim=1)
    return torch.linalg.lstsq(design, log_d.unsqueeze(1)).solution[1, 0].item()


# ---------------------------------------------------------------------- the end of a run of known length
def decay_progress(interval: int, horizon: float | None, fraction: float) -> float | None:
    """`AutoDropConfig.cooldown_fraction`: over the run's last `fraction` the lr decays along 1 - sqrt of the
    segment's progress (the twin sets it once per interval, at the value in the middle of the next interval:
    it steps no optimizer, so it has no steps to place; the controller moves it at every step). Returns that
    progress in [0, 1] for the interval after `interval`, or None before the segment (or without one)."""
    if horizon is None or fraction == 0:
        return None
    begin = (1 - fraction) * horizon
    if interval + 0.5 <= begin:
        return None
    return min(1.0, (interval + 0.5 - begin) / (horizon - begin))


def shortest_phase(horizon: float | None, fraction: float) -> float:
    """`AutoDropConfig.cooldown_fraction`: no drop triggers before `fraction` of the run has passed since the
    start or the last drop (0 without a horizon or a cooldown)."""
    if horizon is None or fraction == 0:
        return 0.0
    return fraction * horizon


def decayed_lr(start: float, floor: float, progress: float) -> float:
    """From the lr in force when the decay began (`start`) to the floor along 1 - sqrt; an lr at or below
    its floor stays."""
    return floor + (start - floor) * (1.0 - math.sqrt(progress)) if start > floor else start


# ---------------------------------------------------------------------- the phase machine
class ReferenceAutoDrop:
    """AutoDrop on a flat vector: `step(x)` returns (decision, parameters to use, learning rates).

    `horizon`: the run's length in intervals (`AutoDrop.set_horizon`), None when unknown.
    """

    def __init__(self, x0: torch.Tensor, lrs: list[float], config: AutoDropConfig, horizon: float | None = None):
        self.config = config
        self.horizon = horizon
        self.interval = 0
        self.phase = "monitor"
        self.num_drops = 0
        self.threshold = config.threshold  # the paper's threshold, grown at every drop
        self.lrs = list(lrs)  # the lrs AutoDrop would set (real, or virtual in a dry run)
        self.floors = [config.min_lr if config.min_lr is not None else 1e-3 * lr for lr in lrs]
        # Since the start or the last drop: the anchor x_a (where the current lr began) and its interval,
        # the previous point and displacement, every angle (from the second interval on) and every finite
        # (s, D(s)) of the growth test; the length of the phase the last drop ended (0 before any).
        self.anchor = x0.double().clone()
        self.anchor_interval = 0
        self.prev_x = x0.double().clone()
        self.prev_s: torch.Tensor | None = None
        self.angles: list[float] = []
        self.distances: list[tuple[int, float]] = []
        self.previous_phase = 0
        # The averaging window: every snapshot folded in, its length n_d, fixed at the trigger, and the
        # squared length of the trigger interval's displacement (what a spike is measured against).
        self.snapshots: list[torch.Tensor] = []
        self.averaging_length = 0
        self.trigger_norm_sq = 0.0
        self.cooled = False  # the decay has begun
        self.decay_from: list[float] | None = None  # every group's lr when the decay began
        self.withheld = 0  # monitor intervals whose statistic was below the tolerance in too short a phase
        self.spikes = 0  # intervals left out of an averaging window for their length

    def resync(self, x: torch.Tensor) -> None:
        """After a drop: continue from what the parameters really hold (the fast code's float32 average)."""
        self.prev_x = x.double().clone()
        self.anchor = x.double().clone()

    # ------------------------------------------------------------------ the statistics, one per test
    def growth_exponent(self, t: int) -> float:
        """The growth exponent over the window [t/2, t]; NaN with fewer than `growth_min_samples` there."""
        window = [(s, d) for s, d in self.distances if t / 2 <= s <= t]
        if len(window) < self.config.growth_min_samples:
            return math.nan
        return reference_growth_exponent(window)

    def growth_statistic(self, t: int) -> tuple[float, int]:
        """The first check: at 2 (growth_min_samples - 1) intervals, and once the phase has lasted
        `growth_min_phase` times the previous one. The window [t/2, t] spans t - ceil(t/2) + 1 intervals."""
        cfg = self.config
        window = t - math.ceil(t / 2) + 1
        first = max(2 * (cfg.growth_min_samples - 1), cfg.growth_min_phase * self.previous_phase)
        return (self.growth_exponent(t) if t >= first else math.nan), window

    def paper_statistic(self) -> tuple[float, int]:
        """abs(omega_t - omega_(t-1)) over the last two angles (NaN while either is undefined)."""
        if len(self.angles) < 2:
            return math.nan, 2
        return abs(self.angles[-1] - self.angles[-2]), 2

    def trend_statistic(self) -> tuple[float, int]:
        """The drift of the line through the latter half of the angles since the reset, at least
        `trend_window` of them (NaN, window 0, while there are fewer)."""
        w = self.config.trend_window
        if len(self.angles) < w:
            return math.nan, 0
        n = max(w, math.ceil(len(self.angles) / 2))
        return reference_trend_drift(self.angles[-n:]), n

    def tolerance(self) -> float:
        cfg = self.config
        if cfg.detector == "paper":
            return self.threshold
        if cfg.detector == "trend":
            return cfg.trend_z * self.threshold / cfg.threshold  # grows with the paper's threshold
        return cfg.growth_threshold

    def averaging_intervals(self, t: int) -> int:
        """n_d for a trigger t intervals after the anchor."""
        cfg = self.config
        if cfg.drop_delay is not None:
            return cfg.drop_delay
        if cfg.detector == "growth":
            return max(1, round(cfg.drop_delay_fraction * t))
        return OMEGA_DROP_DELAY

    # ------------------------------------------------------------------ one interval
    def step(self, x: torch.Tensor) -> tuple[dict, torch.Tensor, list[float]]:
        cfg = self.config
        self.interval += 1
        t = self.interval - self.anchor_interval
        x = x.double().clone()
        s = x - self.prev_x
        finite = bool(torch.isfinite(s).all())
        angle = math.nan
        if self.prev_s is not None:
            angle = reference_angle(s, self.prev_s)
            self.angles.append(angle)
        angle_change = abs(self.angles[-1] - self.angles[-2]) if len(self.angles) >= 2 else math.nan
        distance = math.nan
        if cfg.detector == "growth":
            distance = ((x - self.anchor) @ (x - self.anchor)).item()
            if math.isfinite(distance):
                self.distances.append((t, distance))
            statistic, window = self.growth_statistic(t)
        elif cfg.detector == "paper":
            statistic, window = self.paper_statistic()
        else:
            statistic, window = self.trend_statistic()
        tolerance = self.tolerance()  # as it stood before this interval
        triggered = dropped = exhausted = cooldown_drop = False

        # The growth test alone cools down; inside the final segment the decay alone sets the lr.
        fraction = cfg.cooldown_fraction if cfg.detector == "growth" else 0.0
        progress = decay_progress(self.interval, self.horizon, fraction)
        decaying = progress is not None
        if self.phase == "monitor":
            # False whenever the statistic is undefined (NaN) and where nothing moved (a zero displacement).
            if finite and (s @ s).item() > 0.0 and statistic < tolerance and not decaying:
                if t >= shortest_phase(self.horizon, fraction):
                    triggered = True
                    self.phase, self.averaging_length = "averaging", self.averaging_intervals(t)
                    self.snapshots, self.trigger_norm_sq = [x], (s @ s).item()
                else:
                    self.withheld += 1
        elif finite:
            norm_sq = (s @ s).item()
            spike = self.trigger_norm_sq > 0 and math.sqrt(norm_sq) > SPIKE_RATIO * math.sqrt(self.trigger_norm_sq)
            if spike:
                self.spikes += 1
            else:
                self.snapshots.append(x)

        # A window still open when the decay begins drops at once, with the snapshots averaged so far.
        if self.phase == "averaging" and (len(self.snapshots) == self.averaging_length + 1 or decaying):
            dropped, cooldown_drop = True, decaying
            k = len(self.snapshots)
            average = sum(j * x_j for j, x_j in enumerate(self.snapshots, start=1)) / (k * (k + 1) / 2)
            if not cfg.dry_run:
                x = average
            exhausted = all(lr <= floor * (1 + AT_FLOOR) for lr, floor in zip(self.lrs, self.floors))
            self.lrs = [
                lr if lr <= floor * (1 + AT_FLOOR) else max(floor, cfg.drop_factor * lr)
                for lr, floor in zip(self.lrs, self.floors)
            ]
            self.threshold = min(cfg.max_threshold, self.threshold / cfg.drop_factor)
            self.num_drops += 1
            self.phase, self.snapshots = "monitor", []
            self.previous_phase = t
            self.anchor, self.anchor_interval, self.distances = x.clone(), self.interval, []
            self.prev_x, self.prev_s, self.angles = x.clone(), None, []
        else:
            self.prev_x, self.prev_s = x, s
        if decaying:
            if self.decay_from is None:
                self.cooled, self.decay_from = True, list(self.lrs)
            self.lrs = [decayed_lr(lr, floor, progress) for lr, floor in zip(self.decay_from, self.floors)]

        decision = {
            "interval": self.interval,
            "angle": angle,
            "angle_change": angle_change,
            "statistic": statistic,
            "tolerance": self.tolerance(),  # in effect after this interval (after any growth)
            "triggered": triggered,
            "dropped": dropped,
            "exhausted": exhausted,
            "phase": self.phase,
            "num_drops": self.num_drops,
            "window": window,
            "since_anchor": t,  # as measured: a drop's interval still reports the phase it ended
            "distance_sq": distance,
            "cooldown": self.cooled,
            "cooldown_drop": cooldown_drop,  # the decay's start cut this drop's averaging window short
        }
        return decision, x, list(self.lrs)

"""A slow, obvious float64 implementation of AutoDrop, written from its documentation, for the tests.

The paper's test follows the spec (`detector="paper"`, bit for bit); the default growth test and the
cooldown of a run of known length follow the README ("How AutoDrop decides"), the `hf_autodrop.detectors`
module docstring and the `AutoDropConfig` docstrings. Nothing here is shared with the controller: it
keeps every snapshot of the averaging window and every distance from the anchor, recomputes the
weighted average and every fit from scratch, works on one flat float64 vector, and knows nothing about
optimizers: it returns the learning rates. The fast `AutoDrop` must make the same decisions at the same
intervals and reach the same parameters.
"""

from __future__ import annotations

import math

import torch

from hf_autodrop import AutoDropConfig

# README "How AutoDrop decides": the cooldown is skipped while the growth exponent is 1.5 or more.
DRIFT_EXPONENT = 1.5
# README "The algorithm": without `drop_delay`, the omega tests average over the paper's n_d = 20 intervals.
OMEGA_DROP_DELAY = 20


def reference_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    na, nb = torch.linalg.vector_norm(a).item(), torch.linalg.vector_norm(b).item()
    if not (math.isfinite(na) and math.isfinite(nb)) or na == 0.0 or nb == 0.0:
        return math.nan
    cos = (a @ b).item() / (na * nb)
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def reference_trend_drift(angles: list[float]) -> float:
    """(abs(slope) + SE(slope)) * n / s of a straight-line least-squares fit through torch.linalg.lstsq,
    s the residual standard deviation."""
    if any(math.isnan(a) for a in angles):
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


class ReferenceAutoDrop:
    """AutoDrop on a flat vector: `step(x)` returns (decision, parameters to use, learning rates)."""

    def __init__(self, x0: torch.Tensor, lrs: list[float], config: AutoDropConfig, horizon: float | None = None):
        self.config = config
        self.horizon = horizon  # the run's length in intervals (AutoDrop.set_horizon), None: unknown
        self.prev_x = x0.double().clone()
        self.prev_s = None
        self.omegas: list[float] = []  # every angle since the last reset
        self.phase = "monitor"
        self.snapshots: list[torch.Tensor] = []
        self.averaging_length = 0  # n_d of the current averaging phase, fixed at its trigger
        self.threshold = config.threshold
        self.num_drops = 0
        self.lrs = list(lrs)  # the lrs AutoDrop would set (real, or virtual in a dry run)
        self.floors = [config.min_lr if config.min_lr is not None else 1e-3 * lr for lr in lrs]
        self.interval = 0
        # The growth test: the anchor (where the current lr began), the interval it was taken at, every
        # (s, D(s)) since then, and the length of the phase that the last drop ended.
        self.anchor = x0.double().clone()
        self.anchor_interval = 0
        self.distances: list[tuple[int, float]] = []
        self.previous_phase = 0
        self.cooldown = False  # the cooldown has been triggered, or a drop landed in the final segment

    def resync(self, x: torch.Tensor) -> None:
        """After a drop: continue from what the parameters really hold (the float32 average)."""
        self.prev_x = x.double().clone()
        if self.anchor_interval == self.interval:
            self.anchor = x.double().clone()

    # ------------------------------------------------------------------ the growth test, from the docs
    def growth_window(self, t: int) -> list[tuple[int, float]]:
        """The (s, D(s)) with s in the window [t/2, t] of the time since the anchor."""
        return [(s, d) for s, d in self.distances if t / 2 <= s <= t]

    def growth_exponent(self, t: int) -> float:
        """The growth exponent over [t/2, t]; NaN with fewer than `growth_min_samples` measurements there."""
        window = self.growth_window(t)
        if len(window) < self.config.growth_min_samples:
            return math.nan
        return reference_growth_exponent(window)

    def first_check(self) -> float:
        """The first interval since the anchor at which the growth test may trigger: when [t/2, t] holds
        `growth_min_samples` measurements, and the phase has lasted `growth_min_phase` times the last one."""
        cfg = self.config
        return max(2 * (cfg.growth_min_samples - 1), cfg.growth_min_phase * self.previous_phase)

    def averaging_intervals(self, t: int) -> int:
        """n_d for a trigger t intervals after the anchor."""
        cfg = self.config
        if cfg.drop_delay is not None:
            return cfg.drop_delay
        if cfg.detector == "growth":
            return max(1, round(cfg.drop_delay_fraction * t))
        return OMEGA_DROP_DELAY

    def cooldown_start(self) -> int | None:
        """The interval where the run's last `cooldown_fraction` begins (the cooldown's drop lands there)."""
        f = self.config.cooldown_fraction
        if self.horizon is None or f == 0 or self.config.detector != "growth":
            return None
        return math.ceil((1 - f) * self.horizon)

    def cooldown_length(self, t: int) -> int | None:
        """The averaging length of a cooldown triggered now (t intervals after the anchor), or None."""
        c = self.cooldown_start()
        if c is None or self.cooldown:
            return None  # no horizon, off, an omega test, or the cooldown (or a drop in the segment) happened
        if c - self.anchor_interval < self.config.cooldown_fraction * self.horizon:
            return None  # the current lr began less than one segment before the segment
        usual = self.averaging_intervals(t)
        if self.interval + usual < c:
            return None  # not yet: a usual averaging window from here would end before the segment
        length = max(1, min(usual, c - self.interval))  # the window ends where the segment starts
        if self.interval + length >= self.horizon:
            return None  # the drop would land at or after the run's last interval
        if not self.growth_exponent(t) < DRIFT_EXPONENT:
            return None  # still drifting (or too few measurements to tell): a drop would only slow it down
        return length

    # ------------------------------------------------------------------ one interval
    def step(self, x: torch.Tensor) -> tuple[dict, torch.Tensor, list[float]]:
        cfg = self.config
        self.interval += 1
        x = x.double().clone()
        s = x - self.prev_x
        finite = bool(torch.isfinite(s).all())
        omega = reference_angle(s, self.prev_s) if self.prev_s is not None else math.nan
        omegas = self.omegas + [omega]
        angle_change = abs(omegas[-1] - omegas[-2]) if len(omegas) >= 2 else math.nan
        t = self.interval - self.anchor_interval
        distance = math.nan
        if cfg.detector == "paper":
            statistic = angle_change
            tolerance = self.threshold
            window = 2
        elif cfg.detector == "trend":
            # The latter half of the angles since the reset (omegas[0] is the first interval's NaN), at least
            # trend_window of them.
            measured = omegas[1:]
            n = max(cfg.trend_window, math.ceil(len(measured) / 2))
            statistic = reference_trend_drift(measured[-n:]) if len(measured) >= cfg.trend_window else math.nan
            tolerance = cfg.trend_z * self.threshold / cfg.threshold
            window = n if len(measured) >= cfg.trend_window else 0
        else:
            distance = ((x - self.anchor) @ (x - self.anchor)).item()
            if math.isfinite(distance):
                self.distances.append((t, distance))
            statistic = self.growth_exponent(t) if t >= self.first_check() else math.nan
            tolerance = cfg.growth_threshold
            window = t - math.ceil(t / 2) + 1
        triggered = dropped = exhausted = False

        if self.phase == "monitor":
            cooldown_length = None
            if finite and statistic < tolerance:  # False whenever the statistic is undefined (NaN)
                triggered = True
                self.averaging_length = self.averaging_intervals(t)
            elif finite:
                cooldown_length = self.cooldown_length(t)
            if cooldown_length is not None:
                triggered = self.cooldown = True
                self.averaging_length = cooldown_length
            if triggered:
                self.phase = "averaging"
                self.snapshots = [x]
        elif finite:
            self.snapshots.append(x)

        if self.phase == "averaging" and len(self.snapshots) == self.averaging_length + 1:
            dropped = True
            k = len(self.snapshots)
            weighted = sum(j * x_j for j, x_j in enumerate(self.snapshots, start=1))
            average = weighted / (k * (k + 1) / 2)
            if not cfg.dry_run:
                x = average
            # max(floor, rho * lr), never raising an lr; within 1e-9 of the floor counts as at it.
            new_lrs = [
                lr if lr <= floor * (1 + 1e-9) else max(floor, cfg.drop_factor * lr)
                for lr, floor in zip(self.lrs, self.floors)
            ]
            exhausted = new_lrs == self.lrs
            self.lrs = new_lrs
            self.threshold = min(cfg.max_threshold, self.threshold / cfg.drop_factor)
            self.num_drops += 1
            self.phase = "monitor"
            self.snapshots = []
            c = self.cooldown_start()
            if c is not None and self.interval >= c:
                self.cooldown = True  # a drop landed in the final segment: no cooldown is added
            self.previous_phase = t
            self.anchor, self.anchor_interval, self.distances = x.clone(), self.interval, []
            self.prev_x, self.prev_s, self.omegas = x.clone(), None, []
        else:
            self.prev_x, self.prev_s, self.omegas = x, s, omegas

        if cfg.detector == "paper":
            threshold = self.threshold
        elif cfg.detector == "trend":
            threshold = cfg.trend_z * self.threshold / cfg.threshold
        else:
            threshold = cfg.growth_threshold
        decision = {
            "interval": self.interval,
            "angle": omega,
            "angle_change": angle_change,
            "statistic": statistic,
            "triggered": triggered,
            "dropped": dropped,
            "exhausted": exhausted,
            "phase": self.phase,
            "threshold": threshold,
            "num_drops": self.num_drops,
            "window": window,
            "since_anchor": t,  # as measured: a drop's interval still reports the phase it ended
            "distance_sq": distance,
            "cooldown": self.cooldown,
        }
        return decision, x, list(self.lrs)

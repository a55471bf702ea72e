"""A slow, obvious float64 implementation of AutoDrop, written straight from the spec, for tests.

It keeps every snapshot of the averaging window and recomputes the weighted average from scratch,
works on one flat float64 vector, and knows nothing about optimizers: it returns the learning rates.
The fast `AutoDrop` must make the same decisions at the same intervals and reach the same parameters.
"""

from __future__ import annotations

import math

import torch

from .config import AutoDropConfig


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


class ReferenceAutoDrop:
    """AutoDrop on a flat vector: `step(x)` returns (decision, parameters to use, learning rates)."""

    def __init__(self, x0: torch.Tensor, lrs: list[float], config: AutoDropConfig):
        self.config = config
        self.prev_x = x0.double().clone()
        self.prev_s = None
        self.omegas: list[float] = []  # every angle since the last reset
        self.phase = "monitor"
        self.snapshots: list[torch.Tensor] = []
        self.threshold = config.threshold
        self.num_drops = 0
        self.lrs = list(lrs)  # the lrs AutoDrop would set (real, or virtual in a dry run)
        self.floors = [config.min_lr if config.min_lr is not None else 1e-3 * lr for lr in lrs]
        self.interval = 0

    def step(self, x: torch.Tensor) -> tuple[dict, torch.Tensor, list[float]]:
        cfg = self.config
        self.interval += 1
        x = x.double().clone()
        s = x - self.prev_x
        finite = bool(torch.isfinite(s).all())
        omega = reference_angle(s, self.prev_s) if self.prev_s is not None else math.nan
        omegas = self.omegas + [omega]
        if cfg.detector == "paper":
            statistic = abs(omegas[-1] - omegas[-2]) if len(omegas) >= 2 else math.nan
            tolerance = self.threshold
        else:
            # The latter half of the angles since the reset (omegas[0] is the first interval's NaN), at least
            # trend_window of them.
            measured = omegas[1:]
            n = max(cfg.trend_window, math.ceil(len(measured) / 2))
            statistic = reference_trend_drift(measured[-n:]) if len(measured) >= cfg.trend_window else math.nan
            tolerance = cfg.trend_z * self.threshold / cfg.threshold
        triggered = dropped = exhausted = False

        if self.phase == "monitor":
            if finite and statistic < tolerance:  # False whenever the statistic is undefined (NaN)
                triggered = True
                self.phase = "averaging"
                self.snapshots = [x]
        elif finite:
            self.snapshots.append(x)

        if self.phase == "averaging" and len(self.snapshots) == cfg.averaging_intervals(0) + 1:
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
            self.prev_x, self.prev_s, self.omegas = x.clone(), None, []
        else:
            self.prev_x, self.prev_s, self.omegas = x, s, omegas

        decision = {
            "interval": self.interval,
            "angle": omega,
            "statistic": statistic,
            "triggered": triggered,
            "dropped": dropped,
            "exhausted": exhausted,
            "phase": self.phase,
            "threshold": self.threshold if cfg.detector == "paper" else cfg.trend_z * self.threshold / cfg.threshold,
            "num_drops": self.num_drops,
        }
        return decision, x, list(self.lrs)

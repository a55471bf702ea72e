"""The noisy quadratic model (NQM) of the paper's Section 3, Definition 2, and its Theorem 1.

The loss is `L(x) = 1/2 (x - c)^T A (x - c)` with `c ~ N(0, Sigma)`, `A` and `Sigma` diagonal, and
gradient descent takes one fresh `c` per iteration: `x_(t+1) = x_t - lr * A (x_t - c_t)`. The paper
uses dimension 200 and `A = diag(1/10, 2/10, ..., 200/10)` (`paper_curvature()`); it does not say
which `Sigma` it used, so every function here takes the diagonal `noise_var` explicitly and
`NOISE_MODELS` names the ones the studies use.

The update runs on a real `torch.nn.Parameter` with `torch.optim.SGD`, and with `autodrop=` the
public `AutoDrop` controller drives the learning rate exactly as it would in a training loop.

Example:
    >>> from experiments.nqm import paper_curvature, simulate, steady_state_angle
    >>> a = paper_curvature()
    >>> angles, losses = simulate(0.01, 3000, a, 1 / a, seed=0)
    >>> round(steady_state_angle(0.01, a, 1 / a), 2)
    93.87
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from hf_autodrop import AutoDrop, AutoDropConfig, Measurement

__all__ = [
    "NOISE_MODELS",
    "NQMRun",
    "block_mean",
    "paper_curvature",
    "simulate",
    "steady_state_angle",
    "steady_state_loss",
]

# Diagonals of Sigma (the covariance of c) as functions of the curvature diagonal a. The gradient
# noise is A c, with covariance A Sigma A: "inverse_curvature" makes it equal to A, the choice of
# Zhang et al. (2019b), whose NQM the paper says it uses.
NOISE_MODELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: np.ones_like(a),
    "inverse_curvature": lambda a: 1.0 / a,
    "curvature": lambda a: np.array(a, dtype=np.float64),
}

# Iterations whose noise is drawn and whose trajectory is analysed at once (bounds memory).
_CHUNK = 4096


def paper_curvature(dim: int = 200) -> np.ndarray:
    """The paper's `A = diag(1/10, 2/10, ..., dim/10)` as its diagonal."""
    return np.arange(1, dim + 1, dtype=np.float64) / 10.0


def _weights(lr: float, curvature, noise_var) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(curvature, dtype=np.float64)
    v = np.asarray(noise_var, dtype=np.float64)
    if np.any(lr * a >= 2.0):
        raise ValueError(f"lr={lr} diverges on this NQM (lr * max(curvature) = {lr * a.max():.3g} >= 2)")
    return a, v / (2.0 - lr * a)


def steady_state_angle(lr: float, curvature, noise_var) -> float:
    """Theorem 1's steady-state angle between consecutive steps, in degrees.

    Per coordinate the step is `s_(t+1) = lr a (c_t - x_t)`; at stationarity
    `E[s_t s_(t+1)] = -(lr a)^3 v / (2 - lr a)` and `E[s_t^2] = 2 (lr a)^2 v / (2 - lr a)` (v: the
    variance of c), so the cosine is approximately their ratio summed over coordinates:
    `C* = -(lr / 2) sum(a^3 v / (2 - lr a)) / sum(a^2 v / (2 - lr a))` (the paper's eq. 6, whose
    `sigma_i^2` is our `v`), and the angle is `degrees(arccos(C*))`.
    """
    a, w = _weights(lr, curvature, noise_var)
    cos = -0.5 * lr * float(np.sum(a**3 * w) / np.sum(a**2 * w))
    return math.degrees(math.acos(cos))


def steady_state_loss(lr: float, curvature, noise_var) -> float:
    """The stationary `E[1/2 x^T A x]` under a fixed lr: `1/2 sum(a * lr a v / (2 - lr a))`."""
    a, w = _weights(lr, curvature, noise_var)
    return 0.5 * float(np.sum(lr * a**2 * w))


@dataclass
class NQMRun:
    """One simulated run. Unpacks as `(angles, losses)`.

    Attributes:
        angles: per iteration t = 1..steps, the angle in degrees between the step of iteration t and
            the step of iteration t - 1 (`s_t = x_t - x_(t-1)`, float64); NaN at the first iteration.
        losses: per iteration, `1/2 x_t^T A x_t` after the update: the expected loss over c minus
            its irreducible part `1/2 tr(A Sigma)`, so the optimum has loss 0.
        lrs: per iteration, the learning rate that iteration used.
        measurements: with `autodrop`, the controller's `Measurement` of every interval.
        interval: iterations per AutoDrop interval (1 without `autodrop`).
    """

    angles: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray
    measurements: list[Measurement] = field(default_factory=list)
    interval: int = 1

    def __iter__(self):
        return iter((self.angles, self.losses))

    @property
    def drops(self) -> list[int]:
        """Iterations (1-based) at whose end AutoDrop dropped the lr."""
        return [m.interval * self.interval for m in self.measurements if m.dropped]

    @property
    def triggers(self) -> list[int]:
        """Iterations (1-based) at whose end the saturation test fired (averaging began)."""
        return [m.interval * self.interval for m in self.measurements if m.triggered]


def simulate(
    lr: float | Callable[[int], float],
    steps: int,
    curvature,
    noise_var,
    seed: int,
    autodrop: AutoDropConfig | None = None,
    *,
    x0: float | np.ndarray = 10.0,
    after_step: Callable[[int, torch.Tensor, torch.optim.Optimizer], None] | None = None,
) -> NQMRun:
    """Run gradient descent on the NQM and record the angle and loss of every iteration.

    Args:
        lr: a float, or a function of the 0-based iteration returning the lr of that iteration.
            With `autodrop` it must be a float: the initial lr, which AutoDrop then drops.
        steps: number of iterations.
        curvature: the diagonal of A (positive).
        noise_var: the diagonal of Sigma, the covariance of c (non-negative).
        seed: seeds the noise; the same seed gives the same c_t sequence whatever the lr.
        autodrop: an `AutoDropConfig` for the public `AutoDrop` controller, stepped every
            `autodrop.interval_steps` iterations (every iteration when it is None).
        x0: the starting point (a scalar for every coordinate, or an array); the optimum is 0.
        after_step: called after every iteration (after AutoDrop) with the 0-based iteration, the
            parameter vector and the optimizer; it may change the optimizer's lr (a schedule that
            reads the loss, such as torch's `ReduceLROnPlateau`). Not with `autodrop` or a callable `lr`.

    Returns:
        An `NQMRun`, which unpacks as `(angles, losses)`, both numpy arrays of length `steps`.
    """
    a_np = np.asarray(curvature, dtype=np.float64)
    v_np = np.asarray(noise_var, dtype=np.float64)
    if a_np.ndim != 1 or v_np.shape != a_np.shape:
        raise ValueError(f"curvature and noise_var must be 1-D of equal length, got {a_np.shape} and {v_np.shape}")
    if np.any(a_np <= 0) or np.any(v_np < 0):
        raise ValueError("curvature must be > 0 and noise_var >= 0 everywhere")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    schedule = lr if callable(lr) else None
    if autodrop is not None and schedule is not None:
        raise ValueError("with autodrop, lr must be a float (the initial lr), not a schedule")
    if after_step is not None and (autodrop is not None or schedule is not None):
        raise ValueError("after_step sets the lr itself: pass a float lr and no autodrop")
    lr0 = float(schedule(0) if schedule is not None else lr)
    if schedule is None:
        _weights(lr0, a_np, v_np)  # a fixed lr that diverges is an error, not a NaN curve

    a = torch.from_numpy(a_np)
    std = torch.from_numpy(np.sqrt(v_np))
    x = torch.nn.Parameter(torch.tensor(np.broadcast_to(x0, a_np.shape), dtype=torch.float64))
    opt = torch.optim.SGD([x], lr=lr0)
    interval = 1
    controller = None
    if autodrop is not None:
        interval = autodrop.interval_steps or 1
        controller = AutoDrop([x], opt, config=autodrop)
        controller.set_horizon(steps / interval)  # a run of known length (enables the growth test's cooldown)
    gen = torch.Generator().manual_seed(int(seed))

    dots = np.empty(steps)
    norms = np.empty(steps)
    losses = np.empty(steps)
    lrs = np.empty(steps)
    measurements: list[Measurement] = []
    prev_x = x.detach().clone()
    prev_step = torch.zeros_like(prev_x)
    for start in range(0, steps, _CHUNK):
        n = min(_CHUNK, steps - start)
        noise = torch.randn(n, a.numel(), generator=gen, dtype=torch.float64) * std
        traj = torch.empty(n, a.numel(), dtype=torch.float64)
        for i in range(n):
            t = start + i
            if schedule is not None:
                opt.param_groups[0]["lr"] = float(schedule(t))
            lrs[t] = opt.param_groups[0]["lr"]
            x.grad = a * (x.detach() - noise[i])
            opt.step()
            if controller is not None and (t + 1) % interval == 0:
                measurements.append(controller.step())  # may average x and drop the lr
            if after_step is not None:
                after_step(t, x.detach(), opt)
            traj[i] = x.detach()
        # Steps, their angles and the losses of the whole chunk at once, in float64.
        step_vectors = torch.diff(torch.cat([prev_x[None], traj]), dim=0)
        before = torch.cat([prev_step[None], step_vectors[:-1]])
        dots[start : start + n] = (step_vectors * before).sum(1).numpy()
        norms[start : start + n] = (step_vectors * step_vectors).sum(1).numpy()
        losses[start : start + n] = (0.5 * (a * traj * traj).sum(1)).numpy()
        prev_x, prev_step = traj[-1].clone(), step_vectors[-1].clone()

    prev_norms = np.concatenate([[0.0], norms[:-1]])
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dots / np.sqrt(norms * prev_norms)
    angles = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    angles[(norms == 0) | (prev_norms == 0)] = np.nan
    return NQMRun(angles=angles, losses=losses, lrs=lrs, measurements=measurements, interval=interval)


def block_mean(values: np.ndarray, block: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Means over consecutive blocks of `block` iterations (the paper averages angles over 20).

    Returns `(iterations, means)`: the last iteration (1-based) of each full block and its mean,
    ignoring NaNs (an all-NaN block gives NaN).
    """
    usable = len(values) // block * block
    blocks = values[:usable].reshape(-1, block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" for an all-NaN block
        means = np.nanmean(blocks, axis=1)
    return np.arange(block, usable + 1, block), means

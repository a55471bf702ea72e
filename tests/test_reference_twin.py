"""The fast AutoDrop against the slow float64 twin written from its documentation, on random trajectories.

Every test of saturation ("growth", "paper", "trend") runs random configurations on random trajectories,
with and without a known run length (the end-of-run decay); AutoDrop and the twin are driven with the same
trajectory, interval by interval, and must agree after every interval: the decisions and the phase
exactly, the tolerance exactly, the statistic and the angle to float32 precision (AutoDrop sums float32
products), the learning rates and the parameters (the averages AutoDrop writes back).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from hf_autodrop import AutoDrop, AutoDropConfig

from .reference_autodrop import ReferenceAutoDrop, decay_progress, reference_growth_exponent, reference_trend_drift

SHAPES = [(7, 5), (13,), (3, 2, 4), (1,), (40,)]
LRS = [0.1, 0.003]  # two param groups: SHAPES[:2] and SHAPES[2:]
DIM = sum(torch.Size(s).numel() for s in SHAPES)
GROUP_OF_ELEMENT = torch.cat(
    [torch.full((torch.Size(s).numel(),), 0 if i < 2 else 1, dtype=torch.long) for i, s in enumerate(SHAPES)]
)
INTERVALS = 120
SEEDS = {"growth": range(48), "paper": range(30), "trend": range(30), "cooldown": range(7)}


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _choice(g: torch.Generator, options: list):
    return options[int(torch.randint(len(options), (), generator=g))]


def _config(detector: str, g: torch.Generator) -> AutoDropConfig:
    common = dict(
        detector=detector,
        drop_factor=_choice(g, [0.1, 0.2, 0.5, _uniform(g, 0.05, 0.9)]),
        min_lr=None if torch.rand((), generator=g) < 0.5 else _uniform(g, 1e-4, 5e-3),
        dry_run=bool(torch.rand((), generator=g) < 0.2),
        average_buffers=False,
    )
    if detector == "growth":
        return AutoDropConfig(
            **common,
            growth_threshold=_uniform(g, 0.1, 0.6),
            growth_min_samples=int(torch.randint(3, 7, (), generator=g)),
            growth_min_phase=_choice(g, [0.0, 0.5, 1.0, 1.0, _uniform(g, 0.2, 2.0)]),
            drop_delay=None if torch.rand((), generator=g) < 0.75 else int(torch.randint(0, 7, (), generator=g)),
            drop_delay_fraction=_choice(g, [0.25, 0.25, _uniform(g, 0.05, 0.6)]),
            cooldown_fraction=_choice(g, [0.0, 0.1, 0.1, _uniform(g, 0.02, 0.4)]),
        )
    threshold = _uniform(g, 0.2, 3.0)
    return AutoDropConfig(
        **common,
        threshold=threshold,
        max_threshold=threshold * _uniform(g, 1.0, 20.0),
        trend_window=int(torch.randint(3, 9, (), generator=g)),
        trend_z=_uniform(g, 0.3, 2.0),
        drop_delay=None if torch.rand((), generator=g) < 0.15 else int(torch.randint(0, 7, (), generator=g)),
        # A cooldown_fraction the omega tests must ignore.
        cooldown_fraction=_choice(g, [0.0, 0.1, _uniform(g, 0.02, 0.4)]),
    )


class _AngleWalk:
    """Displacements whose successive angles follow omega_inf + A exp(-t / tau) + noise, with occasional pauses."""

    def __init__(self, g: torch.Generator):
        self.g = g
        self.last = torch.randn(DIM, generator=g, dtype=torch.float64)
        self.omega_inf, self.amp = _uniform(g, 20, 120), _uniform(g, -40, 40)
        self.tau, self.noise = _uniform(g, 2, 15), _uniform(g, 0.05, 2.0)
        self.t = 0

    def next(self, x: torch.Tensor, lr_scale: torch.Tensor) -> torch.Tensor:
        self.t += 1
        if torch.rand((), generator=self.g) < 0.03:
            return x  # the parameters did not move
        omega = (
            self.omega_inf
            + self.amp * math.exp(-self.t / self.tau)
            + self.noise * torch.randn((), generator=self.g).item()
        )
        omega = math.radians(min(179.0, max(1.0, omega)))
        u = self.last / self.last.norm()
        v = torch.randn(DIM, generator=self.g, dtype=torch.float64)
        v = v - (v @ u) * u
        v = v / v.norm()
        size = 0.2 + torch.rand((), generator=self.g).item()
        self.last = size * (math.cos(omega) * u + math.sin(omega) * v)
        return x + self.last


class _Landscape:
    """Noisy gradient descent on a quadratic whose centre may move: the squared distance from where the lr
    began grows like s^2 (drift), s (random walk) or flattens (settling, stationary), and a drop (a smaller
    lr) starts the next phase of the same landscape, closer to its centre and with less noise."""

    KINDS = ("drift", "walk", "settle", "stationary", "drift-then-settle", "walk-then-settle", "drift-then-still")

    def __init__(self, kind: str, g: torch.Generator):
        self.kind, self.g = kind, g
        self.centre = torch.randn(DIM, generator=g, dtype=torch.float64)
        self.curvature = torch.empty(DIM, dtype=torch.float64).uniform_(0.05, 0.6, generator=g)
        self.noise = _uniform(g, 0.05, 0.5)
        self.velocity = _uniform(g, 0.2, 1.0) * torch.randn(DIM, generator=g, dtype=torch.float64)
        self.switch = int(torch.randint(15, 70, (), generator=g))  # when a mixture changes kind
        self.t = 0

    def next(self, x: torch.Tensor, lr_scale: torch.Tensor) -> torch.Tensor:
        self.t += 1
        if torch.rand((), generator=self.g) < 0.03:
            return x  # the parameters did not move
        kind = self.kind
        if "-then-" in kind:
            kind = kind.split("-then-")[self.t > self.switch]
        noise = lambda: self.noise * torch.randn(DIM, generator=self.g, dtype=torch.float64)  # noqa: E731
        if kind == "drift":
            return x + lr_scale * (self.velocity + 0.3 * noise())
        if kind == "walk":
            return x + lr_scale * noise()
        if kind == "still":  # hardly moves: D from the anchor flattens at once
            return x + 1e-3 * lr_scale * noise()
        if kind == "stationary":
            return self.centre + lr_scale.sqrt() * noise()
        for _ in range(4):  # settle: a few noisy gradient steps towards the centre
            x = x - lr_scale * self.curvature * (x - self.centre) + lr_scale * noise()
        return x


class _Spikes:
    """Another trajectory with, now and then, one interval where one weight jumps by 1e5 and comes back at the
    next: two displacements far more than 1000 times longer than any other (README "Reliability")."""

    def __init__(self, inner, g: torch.Generator, rate: float = 0.02):
        self.inner, self.g, self.rate = inner, g, rate
        self.jump: torch.Tensor | None = None

    def next(self, x: torch.Tensor, lr_scale: torch.Tensor) -> torch.Tensor:
        if self.jump is not None:
            x, self.jump = x - self.jump, None
            return self.inner.next(x, lr_scale)
        if torch.rand((), generator=self.g) < self.rate:
            self.jump = torch.zeros(DIM, dtype=torch.float64)
            self.jump[int(torch.randint(DIM, (), generator=self.g))] = 1e5
            return x + self.jump
        return self.inner.next(x, lr_scale)


def _case(detector: str, seed: int):
    """The configuration, trajectory, horizon and generator of one case (`detector` "cooldown": the growth
    test on runs that drift until shortly before the final segment, then hardly move)."""
    g = torch.Generator().manual_seed({"growth": 1000, "paper": 0, "trend": 2000, "cooldown": 3000}[detector] + seed)
    if detector == "cooldown":
        cfg = AutoDropConfig(dry_run=seed % 3 == 1, average_buffers=False)
        trajectory = _Landscape("drift-then-still", g)
        # The segment starts at 80: the parameters stop drifting before it (a saturation drop first, or a
        # window the decay cuts short) or only inside it (the decay alone).
        trajectory.switch = 50 + 5 * seed
        return cfg, trajectory, 100.0 if seed % 2 else 99.5, g
    cfg = _config(detector, g)
    if detector == "growth" or seed % 4 == 3:
        trajectory = _Landscape(_Landscape.KINDS[seed % len(_Landscape.KINDS)], g)
    else:
        trajectory = _AngleWalk(g)
    # No horizon, a horizon inside the run (the cooldown's segment starts within it), one beyond it, or one
    # whose segment starts near the interval where a mixture of landscapes settles.
    near_switch = (getattr(trajectory, "switch", 40) + _uniform(g, -5, 15)) / (1 - cfg.cooldown_fraction)
    horizon = _choice(
        g, [None, round(_uniform(g, 40, INTERVALS)), _uniform(g, 40.0, INTERVALS), 5.0 * INTERVALS, near_switch]
    )
    if seed % 3 == 2:
        trajectory = _Spikes(trajectory, g)
    return cfg, trajectory, horizon, g


def _angle_tolerance(degrees: float, cos_error: float = 1e-6) -> float:
    """How far an angle moves, in degrees, when its cosine moves by `cos_error` (0 for an undefined one)."""
    if math.isnan(degrees):
        return 0.0
    sin = math.sin(math.radians(degrees))
    return math.degrees(min(cos_error / sin if sin > 0 else math.inf, math.sqrt(2 * cos_error))) + 1e-9


def _assert_close(got: float, want: float, tolerance: float, where: str) -> None:
    if math.isnan(want) or math.isnan(got):
        assert math.isnan(want) and math.isnan(got), where
    elif math.isinf(want):
        assert got == want, where
    else:
        assert abs(got - want) <= tolerance, (got - want, tolerance, where)


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).double()


@functools.cache
def _run(detector: str, seed: int) -> dict[str, int]:
    """Drive AutoDrop and the twin with one trajectory, comparing after every interval; returns counts of
    what happened (cached: the coverage test reads them)."""
    cfg, trajectory, horizon, g = _case(detector, seed)
    detector = cfg.detector
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    optimizer = torch.optim.SGD([{"params": params[:2], "lr": LRS[0]}, {"params": params[2:], "lr": LRS[1]}])
    fast = AutoDrop(params, optimizer, config=cfg)
    ref = ReferenceAutoDrop(_flat(params), LRS, cfg, horizon=horizon)
    if horizon is not None:
        fast.set_horizon(horizon)
    fraction = cfg.cooldown_fraction if detector == "growth" else 0.0
    seen = dict.fromkeys(("triggered", "dropped", "exhausted", "dry drop", "nan angle", "second drop"), 0)
    seen.update(dict.fromkeys(("decaying", "window cut by the decay", "drop before the decay"), 0))
    prev_angle = math.nan
    fast_angles = []  # AutoDrop's angles since the reset (from the second interval on)
    fast_distances = []  # AutoDrop's (since_anchor, distance_sq) since its anchor
    for interval in range(1, INTERVALS + 1):
        # The trajectory answers the lr AutoDrop set (the optimizer's; the twin's in a dry run, where the
        # optimizer keeps its lr): a smaller lr moves the parameters less.
        lrs = ref.lrs if cfg.dry_run else [group["lr"] for group in optimizer.param_groups]
        lr_scale = torch.tensor([lr / lr0 for lr, lr0 in zip(lrs, LRS)], dtype=torch.float64)[GROUP_OF_ELEMENT]
        x = trajectory.next(_flat(params), lr_scale)
        with torch.no_grad():
            offset = 0
            for p in params:
                p.copy_(x[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        x_t = _flat(params)  # before fast.step(), which may write the average into the parameters
        m = fast.step()
        d, ref_x, ref_lrs = ref.step(x_t)
        where = f"interval {interval}: fast {m}, twin {d}"

        assert m.interval == d["interval"] == interval
        decisions = ("triggered", "dropped", "exhausted", "cooldown", "phase", "num_drops", "since_anchor", "window")
        assert {k: getattr(m, k) for k in decisions} == {k: d[k] for k in decisions}, where
        assert m.tolerance == d["tolerance"], where
        # The angles to float32 precision (AutoDrop's displacement is a float32 difference): 1e-6 in their
        # cosine, which near 0 or 180 degrees (a spike and the way back) is up to 0.08 degrees.
        change_tolerance = _angle_tolerance(d["angle"]) + _angle_tolerance(prev_angle)
        _assert_close(m.angle, d["angle"], _angle_tolerance(d["angle"]), where)
        _assert_close(m.angle_change, d["angle_change"], change_tolerance, where)
        if detector == "paper":
            _assert_close(m.statistic, m.angle_change, 0.0, where)
            _assert_close(m.statistic, d["statistic"], change_tolerance, where)
        elif detector == "trend":
            # The fit to 1e-9 on AutoDrop's own angles; against the twin's, their float32 precision carries over
            # (a spike's way back, near 180 degrees, moves the statistic by up to 2e-4).
            if m.since_anchor >= 2:
                fast_angles.append(m.angle)
            if m.window:
                want = reference_trend_drift(fast_angles[-m.window :])
                _assert_close(m.statistic, want, 1e-9 * (1 + abs(want)), where)
            _assert_close(m.statistic, d["statistic"], 1e-3 * (1 + abs(d["statistic"])), where)
            if m.dropped:
                fast_angles = []
        prev_angle = math.nan if m.dropped else d["angle"]
        if detector == "growth":
            # AutoDrop sums D(t) = |x_t - x_a|^2 in float32 blocks (float64 across them), the twin in float64:
            # they agree to float32 precision. The fit itself is checked to 1e-9 on AutoDrop's own distances.
            assert m.distance_sq == pytest.approx(d["distance_sq"], rel=1e-6), where
            fast_distances.append((m.since_anchor, m.distance_sq))
            t = m.since_anchor
            window = [(s, dist) for s, dist in fast_distances if t / 2 <= s <= t and math.isfinite(dist)]
            if not math.isnan(m.statistic):
                assert m.statistic == pytest.approx(reference_growth_exponent(window), rel=1e-9, abs=1e-12), where
            if m.dropped:
                fast_distances = []
        else:
            assert math.isnan(m.distance_sq), where
        torch.testing.assert_close(_flat(params), ref_x, rtol=1e-6, atol=1e-6)
        if m.dropped:
            # Both averages agree to 1e-6; continue both from what the parameters really hold, so that
            # rounding differences cannot turn a pause right after a drop into a tiny, random displacement.
            ref.resync(_flat(params))
        got_lrs = [lr * s for lr, s in zip(LRS, fast.lr_scales)] if cfg.dry_run else list(m.lrs)
        assert got_lrs == pytest.approx(ref_lrs, rel=1e-12), where

        seen["triggered"] += m.triggered
        seen["dropped"] += m.dropped
        seen["second drop"] += m.dropped and m.num_drops == 2
        seen["exhausted"] += m.exhausted
        seen["dry drop"] += m.dropped and cfg.dry_run
        seen["nan angle"] += math.isnan(m.angle)
        decaying = decay_progress(interval, horizon, fraction) is not None
        seen["decaying"] += decaying
        seen["window cut by the decay"] += d["cooldown_drop"]
        seen["drop before the decay"] += m.dropped and not decaying and horizon is not None and fraction > 0
    assert fast.num_drops == ref.num_drops
    seen["trigger withheld: phase too short"] = ref.withheld
    seen["spike left out"] = ref.spikes
    return seen


@pytest.mark.parametrize(("detector", "seed"), [(d, seed) for d, seeds in SEEDS.items() for seed in seeds])
def test_autodrop_matches_twin(detector, seed):
    """Every test of saturation on its random cases ("cooldown": the growth test on runs that stop drifting
    before or after the final segment starts)."""
    seen = _run(detector, seed)
    if detector in ("paper", "trend"):  # the omega tests never cool down
        assert not seen["decaying"] and not seen["window cut by the decay"], seen
        assert not seen["trigger withheld: phase too short"], seen
    if detector == "cooldown":
        assert seen["decaying"] == INTERVALS - 79, seen  # from interval 80 of 100 (or 99.5) to the end


def test_trajectories_exercise_every_branch():
    """The random cases above reach triggers, drops, floors, dry runs, undefined angles, spikes left out of
    the average, the end-of-run decay (from a dropped lr, cutting a window short) and triggers withheld in
    too short a phase, so that the comparisons can fail. Reads the counts of the runs above (runs them when this test runs alone)."""
    totals: dict[str, dict[str, int]] = {}
    for detector, seeds in SEEDS.items():
        for seed in seeds:
            for name, n in _run(detector, seed).items():
                totals.setdefault(detector, {}).setdefault(name, 0)
                totals[detector][name] += n
    every_test = ("triggered", "dropped", "second drop", "exhausted", "dry drop", "nan angle", "spike left out")
    for detector in ("growth", "paper", "trend"):
        assert all(totals[detector][name] > 0 for name in every_test), (detector, totals[detector])
    growth = {name: totals["growth"].get(name, 0) + totals["cooldown"].get(name, 0) for name in totals["growth"]}
    end = ("decaying", "window cut by the decay", "drop before the decay", "trigger withheld: phase too short")
    assert all(growth.get(name, 0) > 0 for name in end), growth

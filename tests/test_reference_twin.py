"""The fast AutoDrop against the slow float64 reference of the spec, on random trajectories."""

import math

import pytest
import torch

from hf_autodrop import AutoDrop, AutoDropConfig
from hf_autodrop._reference import ReferenceAutoDrop

SHAPES = [(7, 5), (13,), (3, 2, 4), (1,), (40,)]


def _random_config(g: torch.Generator) -> AutoDropConfig:
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    trend = bool(torch.rand((), generator=g) < 0.5)
    threshold = u(0.2, 3.0)
    return AutoDropConfig(
        detector="trend" if trend else "paper",
        trend_window=int(torch.randint(3, 9, (), generator=g)),
        trend_z=u(0.3, 2.0),
        drop_factor=[0.1, 0.2, 0.5, u(0.05, 0.9)][int(torch.randint(4, (), generator=g))],
        min_lr=None if torch.rand((), generator=g) < 0.5 else u(1e-4, 5e-3),
        threshold=threshold,
        max_threshold=threshold * u(1.0, 20.0),
        drop_delay=int(torch.randint(0, 7, (), generator=g)),
        dry_run=bool(torch.rand((), generator=g) < 0.25),
        average_buffers=False,
    )


class _AngleWalk:
    """Displacements whose successive angles follow omega_inf + A exp(-t / tau) + noise, with occasional pauses."""

    def __init__(self, dim: int, g: torch.Generator):
        self.g = g
        self.dim = dim
        self.last = torch.randn(dim, generator=g, dtype=torch.float64)
        rand = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
        self.omega_inf, self.amp, self.tau, self.noise = rand(20, 120), rand(-40, 40), rand(2, 15), rand(0.05, 2.0)
        self.t = 0

    def next(self) -> torch.Tensor:
        self.t += 1
        if torch.rand((), generator=self.g) < 0.03:
            return torch.zeros(self.dim, dtype=torch.float64)  # the parameters did not move
        omega = (
            self.omega_inf
            + self.amp * math.exp(-self.t / self.tau)
            + self.noise * torch.randn((), generator=self.g).item()
        )
        omega = math.radians(min(179.0, max(1.0, omega)))
        u = self.last / self.last.norm()
        v = torch.randn(self.dim, generator=self.g, dtype=torch.float64)
        v = v - (v @ u) * u
        v = v / v.norm()
        size = 0.2 + torch.rand((), generator=self.g).item()
        self.last = size * (math.cos(omega) * u + math.sin(omega) * v)
        return self.last


@pytest.mark.parametrize("seed", range(40))
def test_fast_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    cfg = _random_config(g)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    optimizer = torch.optim.SGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 0.003}])
    fast = AutoDrop(params, optimizer, config=cfg)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in params]).double()  # noqa: E731
    ref = ReferenceAutoDrop(flat(), [0.1, 0.003], cfg)
    walk = _AngleWalk(sum(p.numel() for p in params), g)

    drops = 0
    for interval in range(1, 121):
        step = walk.next()
        with torch.no_grad():
            offset = 0
            for p in params:
                p.add_(step[offset : offset + p.numel()].view_as(p).float())
                offset += p.numel()
        x_t = flat()  # before fast.step(), which may write the average into the parameters
        m = fast.step()
        decision, ref_x, ref_lrs = ref.step(x_t)

        assert m.interval == decision["interval"] == interval
        assert (m.triggered, m.dropped, m.exhausted) == (
            decision["triggered"],
            decision["dropped"],
            decision["exhausted"],
        ), interval
        assert (m.phase, m.num_drops) == (decision["phase"], decision["num_drops"]), interval
        assert m.threshold == pytest.approx(decision["threshold"], rel=1e-12)
        for got, want in ((m.angle, decision["angle"]), (m.statistic, decision["statistic"])):
            if math.isnan(want):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
        torch.testing.assert_close(flat(), ref_x, rtol=1e-6, atol=1e-6)
        if m.dropped:
            # Both averages agree to 1e-6; continue both from what the parameters really hold, so that
            # rounding differences cannot turn a pause right after a drop into a tiny, random displacement.
            ref.prev_x = flat()
        lrs = [lr * s for lr, s in zip([0.1, 0.003], fast.lr_scales)] if cfg.dry_run else list(m.lrs)
        assert lrs == pytest.approx(ref_lrs, rel=1e-12)
        drops += m.dropped
    assert drops == ref.num_drops


def test_trajectories_exercise_every_branch():
    """The random trajectories above do reach triggers, drops, floors and undefined angles."""
    seen = {"triggered": 0, "dropped": 0, "exhausted": 0, "nan": 0, "dry": 0, "trend drops": 0}
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        cfg = _random_config(g)
        x = torch.randn(sum(torch.Size(s).numel() for s in SHAPES), generator=g, dtype=torch.float64)
        ref = ReferenceAutoDrop(x, [0.1, 0.003], cfg)
        walk = _AngleWalk(x.numel(), g)
        for _ in range(120):
            x = x + walk.next()
            d, x, _ = ref.step(x)
            seen["triggered"] += d["triggered"]
            seen["dropped"] += d["dropped"]
            seen["exhausted"] += d["exhausted"]
            seen["nan"] += math.isnan(d["angle"])
            seen["dry"] += d["dropped"] and cfg.dry_run
            seen["trend drops"] += d["dropped"] and cfg.detector == "trend"
    assert all(count > 0 for count in seen.values()), seen

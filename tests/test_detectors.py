"""The saturation tests on synthetic angle series, and the trend test inside AutoDrop."""

import math
import random

import pytest
import torch

from hf_autodrop import AutoDrop
from hf_autodrop.detectors import trend_statistic

WINDOW, Z = 10, 1.0


def _decisions(series, window=WINDOW, z=Z):
    """The trend test's decision at every interval that has a full window."""
    return [trend_statistic(series[i - window : i]) < z for i in range(window, len(series) + 1)]


def _paper_decisions(series, threshold=0.01):
    return [abs(b - a) < threshold for a, b in zip(series, series[1:])]


def _noise(n, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(0.0, 1.0) for _ in range(n)]


class TestSyntheticSeries:
    def test_flat_with_noise_fires(self):
        for seed in range(20):
            decisions = _decisions([60.0 + 2.0 * e for e in _noise(40, seed)])
            assert any(decisions[:10]), seed  # within 10 checks of the first possible one

    def test_rising_with_noise_does_not_fire(self):
        for seed in range(20):
            series = [40.0 + 1.0 * t + 2.0 * e for t, e in enumerate(_noise(60, seed))]
            assert not any(_decisions(series)), seed

    @pytest.mark.parametrize("scale", [0.01, 100.0])
    def test_noise_scaled_100x_up_or_down_gives_the_same_decisions(self, scale):
        for seed in range(20):
            noise = _noise(60, seed)
            flat = [60.0 + 2.0 * e for e in noise]
            flat_scaled = [60.0 + 2.0 * scale * e for e in noise]
            assert _decisions(flat_scaled) == _decisions(flat)
            # A rising series is the same series in other units when its trend and noise scale together.
            rising = [40.0 + 1.0 * t + 2.0 * e for t, e in enumerate(noise)]
            rising_scaled = [40.0 + scale * (1.0 * t + 2.0 * e) for t, e in enumerate(noise)]
            assert _decisions(rising_scaled) == _decisions(rising)

    def test_the_papers_test_depends_on_the_noise_level(self):
        # Why the trend test exists: the same flat series fires always or never depending on its units.
        noise = _noise(60, 1)
        quiet = _paper_decisions([60.0 + 1e-4 * e for e in noise])
        loud = _paper_decisions([60.0 + 1.0 * e for e in noise])
        assert all(quiet) and sum(loud) <= 2

    def test_saturating_curve_fires_after_the_rise_not_before(self):
        # omega = 90 (1 - exp(-t / 15)) + noise: rises steeply, then flattens.
        for seed in range(10):
            series = [90 * (1 - math.exp(-t / 15)) + 0.5 * e for t, e in enumerate(_noise(120, seed))]
            decisions = _decisions(series)
            first = decisions.index(True) + WINDOW  # the interval at which the trend test fires first
            assert 40 <= first <= 110, (seed, first)

    def test_statistic_edge_cases(self):
        assert math.isnan(trend_statistic([1.0, 2.0]))
        assert math.isnan(trend_statistic([1.0, float("nan"), 2.0, 3.0]))
        assert trend_statistic([5.0] * 6) == 0.0
        assert trend_statistic([1.0, 2.0, 3.0]) == math.inf


class _PlanarWalk:
    """Parameters whose successive displacements turn by chosen angles, so omega is what we ask."""

    def __init__(self, params):
        self.params, self.direction = params, 0.0

    def interval(self, omega_deg):
        self.direction += math.radians(omega_deg)
        with torch.no_grad():
            self.params[0][0] += math.cos(self.direction)
            self.params[0][1] += math.sin(self.direction)


def _run_trend(omegas, **cfg):
    params = [torch.nn.Parameter(torch.zeros(4))]
    opt = torch.optim.SGD(params, lr=1.0)
    ad = AutoDrop(params, opt, detector="trend", trend_window=WINDOW, **cfg)
    walk = _PlanarWalk(params)
    out = []
    for omega in [0.0] + list(omegas):  # the first interval has no previous displacement
        walk.interval(omega)
        out.append(ad.step())
    return out


class TestTrendInsideAutoDrop:
    def test_first_check_needs_a_full_window(self):
        out = _run_trend([60.0] * 15, drop_delay=100)
        assert all(math.isnan(m.statistic) for m in out[:WINDOW])  # angles exist from interval 2
        assert not math.isnan(out[WINDOW].statistic)
        assert [m.triggered for m in out].index(True) == WINDOW  # interval WINDOW + 1

    def test_flat_noisy_angles_trigger_and_rising_ones_do_not(self):
        noise = _noise(40, 3)
        flat = _run_trend([60.0 + 3.0 * e for e in noise], drop_delay=100)
        rising = _run_trend([30.0 + 2.0 * t + 3.0 * e for t, e in enumerate(noise)], drop_delay=100)
        assert any(m.triggered for m in flat)
        assert not any(m.triggered for m in rising)

    def test_tolerance_grows_like_the_threshold_and_history_resets(self):
        out = _run_trend([60.0] * 40, drop_delay=2, drop_factor=0.5, trend_z=1.0, threshold=0.01, max_threshold=0.04)
        drops = [i + 1 for i, m in enumerate(out) if m.dropped]
        period = WINDOW + 1 + 2
        assert drops[:3] == [period, 2 * period, 3 * period]
        assert [out[i - 1].threshold for i in drops[:3]] == pytest.approx([2.0, 4.0, 4.0])
        assert math.isnan(out[drops[0]].statistic)

    def test_state_round_trip_mid_window(self):
        noise = _noise(30, 5)
        omegas = [60.0 + 3.0 * e for e in noise]
        straight = _run_trend(omegas, drop_delay=3)

        params = [torch.nn.Parameter(torch.zeros(4))]
        opt = torch.optim.SGD(params, lr=1.0)
        ad = AutoDrop(params, opt, detector="trend", trend_window=WINDOW, drop_delay=3)
        walk = _PlanarWalk(params)
        seq = [0.0] + omegas
        for omega in seq[:7]:
            walk.interval(omega)
            ad.step()
        saved = ad.state_dict()
        assert len(saved["recent_angles"]) == 7  # interval 1 (no angle yet) and six angles
        twin = AutoDrop(params, opt, detector="trend", trend_window=WINDOW, drop_delay=3)
        twin.load_state_dict(
            {k: ([t.clone() for t in v] if k in ("snapshot", "displacement") else v) for k, v in saved.items()}
        )
        rest = []
        for omega in seq[7:]:
            walk.interval(omega)
            rest.append(twin.step())
        assert repr(rest) == repr(straight[7:])

"""The saturation tests on synthetic angle series, and the trend test inside AutoDrop."""

import math
import random

import pytest
import torch

from hf_autodrop import AutoDrop, AutoDropConfig
from hf_autodrop.detectors import trend_statistic, trend_window_size

WINDOW, Z = 10, 1.0


def _decisions(series, window=WINDOW, z=Z):
    """The trend test's decision after each angle, as AutoDrop takes it (latter half, at least `window`)."""
    out = []
    for m in range(1, len(series) + 1):
        n = trend_window_size(m, window)
        out.append(bool(n) and trend_statistic(series[m - n : m]) < z)
    return out


def _first(decisions):
    return decisions.index(True) + 1 if True in decisions else None  # angles seen at the first trigger


def _paper_decisions(series, threshold=0.01):
    return [abs(b - a) < threshold for a, b in zip(series, series[1:])]


def _noise(n, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(0.0, 1.0) for _ in range(n)]


class TestSyntheticSeries:
    def test_flat_with_noise_fires(self):
        for seed in range(20):
            first = _first(_decisions([60.0 + 2.0 * e for e in _noise(80, seed)]))
            assert first is not None and first <= 80, seed

    def test_rising_with_noise_does_not_fire(self):
        for seed in range(20):
            steep = [40.0 + 1.0 * t + 2.0 * e for t, e in enumerate(_noise(100, seed))]
            assert not any(_decisions(steep)), seed
            # A slow rise, 0.3 degree per interval under noise of 2 degrees, is still a rise. (At 0.1 degree
            # per interval the drift over a 13-30 angle window is within the noise: flat at that time scale.)
            slow = [40.0 + 0.3 * t + 2.0 * e for t, e in enumerate(_noise(200, seed))]
            assert not any(_decisions(slow)), seed

    @pytest.mark.parametrize("scale", [0.01, 100.0])
    def test_noise_scaled_100x_up_or_down_gives_the_same_decisions(self, scale):
        for seed in range(20):
            noise = _noise(80, seed)
            flat = [60.0 + 2.0 * e for e in noise]
            flat_scaled = [60.0 + 2.0 * scale * e for e in noise]
            assert _decisions(flat_scaled) == _decisions(flat)
            # A rising series is the same series in other units when its trend and noise scale together.
            rising = [40.0 + 1.0 * t + 2.0 * e for t, e in enumerate(noise)]
            rising_scaled = [40.0 + scale * (1.0 * t + 2.0 * e) for t, e in enumerate(noise)]
            assert _decisions(rising_scaled) == _decisions(rising)

    def test_a_window_too_short_to_tell_never_passes(self):
        # Positive evidence: with 12 angles or fewer the bound on the drift exceeds the scatter, whatever
        # the angles (a flat series with noise included), so no early trigger comes from lack of data.
        for seed in range(50):
            for n in range(3, 13):
                series = [60.0 + e for e in _noise(n, seed)]
                assert trend_statistic(series) >= math.sqrt(12 * n / (n * n - 1)) - 1e-12 >= 1.0 - 1e-12
        flat_fires = [_first(_decisions([60.0 + 2.0 * e for e in _noise(80, seed)])) for seed in range(20)]
        assert min(flat_fires) >= 13

    def test_the_papers_test_depends_on_the_noise_level(self):
        # Why the trend test exists: the same flat series fires always or never depending on its units.
        noise = _noise(60, 1)
        quiet = _paper_decisions([60.0 + 1e-4 * e for e in noise])
        loud = _paper_decisions([60.0 + 1.0 * e for e in noise])
        assert all(quiet) and sum(loud) <= 2

    def test_saturating_curve_fires_after_the_rise_not_before(self):
        # omega = 90 (1 - exp(-t / 15)) + noise: rises steeply, then flattens.
        for seed in range(10):
            series = [90 * (1 - math.exp(-t / 15)) + 0.5 * e for t, e in enumerate(_noise(200, seed))]
            first = _first(_decisions(series))
            assert first is not None and 60 <= first <= 200, (seed, first)

    def test_window_is_the_latter_half(self):
        assert [trend_window_size(m, 10) for m in (0, 9, 10, 19, 20, 21, 40, 41)] == [0, 0, 10, 10, 10, 11, 20, 21]

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


def _trend(params, **cfg):
    opt = torch.optim.SGD(params, lr=1.0)
    return AutoDrop(params, opt, detector="trend", trend_window=WINDOW, **cfg)


def _run_trend(omegas, **cfg):
    params = [torch.nn.Parameter(torch.zeros(4))]
    ad = _trend(params, **cfg)
    walk = _PlanarWalk(params)
    out = []
    for omega in [0.0] + list(omegas):  # the first interval has no previous displacement
        walk.interval(omega)
        out.append(ad.step())
    return out


class TestTrendInsideAutoDrop:
    def test_growth_is_the_default_and_trend_stays_an_option(self):
        assert AutoDropConfig().detector == "growth"
        assert AutoDropConfig(detector="trend").detector == "trend"

    def test_first_check_needs_a_full_window(self):
        out = _run_trend([60.0 + 2.0 * e for e in _noise(60, 0)], drop_delay=100)
        assert all(math.isnan(m.statistic) for m in out[:WINDOW])  # angles exist from interval 2
        assert all(not math.isnan(m.statistic) for m in out[WINDOW:])
        first = [m.triggered for m in out].index(True) + 1
        assert first >= 14  # 13 angles at least

    def test_decisions_match_the_synthetic_helper(self):
        omegas = [60.0 + 3.0 * e for e in _noise(60, 3)]
        out = _run_trend(omegas, drop_delay=100)
        expected = _decisions(omegas)
        first = _first(expected)
        assert [m.triggered for m in out].index(True) == first  # interval first + 1 holds angle `first`
        for m, angles_seen in zip(out[WINDOW:first], range(WINDOW, first)):
            n = trend_window_size(angles_seen, WINDOW)
            assert m.statistic == pytest.approx(trend_statistic(omegas[angles_seen - n : angles_seen]), rel=1e-6)

    def test_flat_noisy_angles_trigger_and_rising_ones_do_not(self):
        noise = _noise(80, 3)
        flat = _run_trend([60.0 + 3.0 * e for e in noise], drop_delay=100)
        rising = _run_trend([30.0 + 1.0 * t + 3.0 * e for t, e in enumerate(noise)], drop_delay=100)
        assert any(m.triggered for m in flat)
        assert not any(m.triggered for m in rising)

    def test_a_rise_then_a_plateau_triggers_once_the_half_window_is_flat(self):
        # 40 intervals of rise, then flat: the window (the latter half) must mostly leave the rise first.
        noise = _noise(160, 7)
        series = [30.0 + 1.0 * min(t, 40) + 1.0 * e for t, e in enumerate(noise)]
        first = [m.triggered for m in _run_trend(series, drop_delay=200)].index(True) + 1
        assert 60 <= first <= 160, first

    def test_tolerance_grows_like_the_threshold_and_history_resets(self):
        omegas = [60.0 + 2.0 * e for e in _noise(300, 11)]
        out = _run_trend(omegas, drop_delay=2, drop_factor=0.5, trend_z=1.0, threshold=0.01, max_threshold=0.04)
        drops = [i + 1 for i, m in enumerate(out) if m.dropped]
        assert len(drops) >= 3
        assert [out[i - 1].threshold for i in drops[:3]] == pytest.approx([2.0, 4.0, 4.0])
        for d, nxt in zip(drops, drops[1:]):
            assert math.isnan(out[d].statistic)  # the history restarts after a drop
            assert nxt - d >= WINDOW + 1 + 2  # the next check needs a full window, then drop_delay

    def test_state_round_trip_mid_window(self):
        omegas = [60.0 + 3.0 * e for e in _noise(60, 5)]
        straight = _run_trend(omegas, drop_delay=3)

        params = [torch.nn.Parameter(torch.zeros(4))]
        ad = _trend(params, drop_delay=3)
        walk = _PlanarWalk(params)
        seq = [0.0] + omegas
        for omega in seq[:30]:
            walk.interval(omega)
            ad.step()
        saved = ad.state_dict()
        assert len(saved["recent_angles"]) == 15  # the latter half: what the next checks need
        twin = _trend(params, drop_delay=3)
        twin.load_state_dict(
            {k: ([t.clone() for t in v] if k in ("snapshot", "displacement") else v) for k, v in saved.items()}
        )
        rest = []
        for omega in seq[30:]:
            walk.interval(omega)
            rest.append(twin.step())
        assert repr(rest) == repr(straight[30:])

    def test_state_grows_like_half_the_intervals_since_the_reset(self):
        out_len = []
        params = [torch.nn.Parameter(torch.zeros(4))]
        ad = _trend(params, drop_delay=1000)
        walk = _PlanarWalk(params)
        for t, e in enumerate(_noise(200, 1)):
            walk.interval(30.0 + 1.0 * t + e)  # rising: never triggers
            ad.step()
            out_len.append(len(ad.state_dict()["recent_angles"]))
        assert out_len[-1] == 100 and max(out_len) == 100

import dataclasses

import pytest

from hf_autodrop import AutoDropConfig


def test_defaults_are_the_specs():
    cfg = AutoDropConfig()
    assert (cfg.drop_factor, cfg.min_lr, cfg.threshold, cfg.max_threshold) == (0.1, None, 0.01, 1.0)
    assert cfg.interval_steps is None and cfg.average_buffers and not cfg.dry_run and not cfg.stop_when_exhausted
    # drop_delay None: the paper's n_d of 20 intervals for the omega tests, a share of the phase for growth.
    assert cfg.drop_delay is None
    assert (
        AutoDropConfig(detector="paper").averaging_intervals(7)
        == AutoDropConfig(detector="trend").averaging_intervals(7)
        == 20
    )


def test_the_growth_test_is_the_default_and_a_drop_needs_8_intervals():
    cfg = AutoDropConfig()
    assert (cfg.detector, cfg.growth_threshold, cfg.growth_min_samples, cfg.drop_delay_fraction) == (
        "growth",
        0.2,
        4,
        0.25,
    )
    assert cfg.first_check == 2 * (4 - 1)
    assert cfg.min_intervals_per_drop == 6 + 2
    assert AutoDropConfig(detector="trend").min_intervals_per_drop == 10 + 1 + 20
    assert AutoDropConfig(detector="paper").min_intervals_per_drop == 3 + 20
    assert AutoDropConfig(drop_delay=0).min_intervals_per_drop == 6


def test_auto_interval():
    cfg = AutoDropConfig()
    # The growth test: about 300 measurements per run, whatever its length.
    assert cfg.auto_interval_steps(1200) == 4
    assert cfg.auto_interval_steps(20000) == 66
    assert cfg.auto_interval_steps(50) == 1  # never 0
    # The omega tests: room for three drops.
    assert AutoDropConfig(detector="trend").auto_interval_steps(1200) == 1200 // 93 == 12
    assert AutoDropConfig(detector="paper").auto_interval_steps(1200) == 1200 // 69


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AutoDropConfig().drop_factor = 0.5


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("drop_factor", 0.0, "(0, 1)"),
        ("drop_factor", 1.0, "(0, 1)"),
        ("drop_factor", True, "(0, 1)"),
        ("min_lr", -1e-4, ">= 0"),
        ("min_lr", float("inf"), ">= 0"),
        ("threshold", 0.0, "> 0"),
        ("threshold", float("nan"), "> 0"),
        ("max_threshold", 0.001, ">= threshold"),
        ("drop_delay", -1, ">= 0"),
        ("growth_threshold", -0.1, "> 0"),
        ("growth_min_samples", 2, ">= 3"),
        ("drop_delay", 2.5, ">= 0"),
        ("interval_steps", 0, ">= 1"),
        ("dry_run", "yes", "True or False"),
    ],
)
def test_invalid_values_name_field_value_and_range(field, value, fragment):
    with pytest.raises(ValueError) as err:
        AutoDropConfig(**{field: value})
    message = str(err.value)
    assert f"AutoDropConfig.{field}={value!r}" in message
    assert fragment in message


def test_replace_validates_and_rejects_unknown_fields():
    cfg = AutoDropConfig().replace(drop_factor=0.2, drop_delay=0)
    assert (cfg.drop_factor, cfg.drop_delay) == (0.2, 0)
    with pytest.raises(TypeError, match="drop_facter"):
        AutoDropConfig().replace(drop_facter=0.2)
    with pytest.raises(ValueError, match="drop_factor"):
        cfg.replace(drop_factor=2.0)


def test_to_dict_round_trips():
    cfg = AutoDropConfig(drop_factor=0.5, min_lr=1e-5, interval_steps=100)
    assert AutoDropConfig(**cfg.to_dict()) == cfg

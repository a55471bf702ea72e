import dataclasses

import pytest

from hf_autodrop import AutoDropConfig


def test_defaults_are_the_specs():
    cfg = AutoDropConfig()
    assert (cfg.drop_factor, cfg.min_lr, cfg.threshold, cfg.max_threshold, cfg.drop_delay) == (0.1, None, 0.01, 1.0, 20)
    assert cfg.interval_steps is None and cfg.average_buffers and not cfg.dry_run and not cfg.stop_when_exhausted


def test_the_trend_test_is_the_default_and_a_drop_needs_31_intervals():
    cfg = AutoDropConfig()
    assert (cfg.detector, cfg.trend_window, cfg.trend_z) == ("trend", 10, 1.0)
    assert cfg.min_intervals_per_drop == 10 + 1 + 20
    assert AutoDropConfig(detector="paper").min_intervals_per_drop == 3 + 20


def test_auto_interval_leaves_room_for_three_drops():
    cfg = AutoDropConfig()
    assert cfg.auto_interval_steps(1200) == 1200 // 93 == 12
    assert cfg.auto_interval_steps(20000) == 215
    assert cfg.auto_interval_steps(50) == 1  # never 0
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

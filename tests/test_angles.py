import math

import pytest
import torch

from hf_autodrop import angle_degrees


def test_known_angles():
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle_degrees(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, -4.0])) == pytest.approx(180.0)
    assert angle_degrees(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])) == pytest.approx(0.0, abs=1e-6)


def test_lists_form_one_global_vector_whatever_the_shapes():
    a = [torch.randn(3, 4), torch.randn(5)]
    b = [torch.randn(12), torch.randn(1, 5)]
    flat_a = torch.cat([t.reshape(-1) for t in a]).double()
    flat_b = torch.cat([t.reshape(-1) for t in b]).double()
    expected = math.degrees(math.acos((flat_a @ flat_b / (flat_a.norm() * flat_b.norm())).item()))
    assert angle_degrees(a, b) == pytest.approx(expected, abs=1e-9)
    # Not the mean of per-tensor angles.
    per_tensor = [angle_degrees(x, y) for x, y in zip(a, b)]
    assert angle_degrees(a, b) != pytest.approx(sum(per_tensor) / 2, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    a, b = a.to(dtype), b.to(dtype)
    exact = angle_degrees(a.double(), b.double())  # the same rounded values, in float64
    assert angle_degrees(a, b) == pytest.approx(exact, abs=1e-9)


def test_zero_norm_and_non_finite_give_nan():
    assert math.isnan(angle_degrees(torch.zeros(3), torch.ones(3)))
    assert math.isnan(angle_degrees([torch.zeros(2)], [torch.zeros(2)]))
    assert math.isnan(angle_degrees(torch.tensor([1.0, float("nan")]), torch.ones(2)))
    assert math.isnan(angle_degrees(torch.tensor([1.0, float("inf")]), torch.ones(2)))


def test_float64_accumulation_beats_float32_on_large_vectors():
    # 3M nearly orthogonal elements: a float32 dot is off by more than the 0.01-degree threshold scale.
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3_000_000, generator=g)
    b = torch.randn(3_000_000, generator=g)
    exact = angle_degrees(a.double(), b.double())
    assert angle_degrees(a, b) == pytest.approx(exact, abs=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="same number of tensors"):
        angle_degrees([torch.ones(2)], [torch.ones(2), torch.ones(2)])
    with pytest.raises(ValueError, match="same number of elements"):
        angle_degrees(torch.ones(2), torch.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        angle_degrees(torch.ones(2, dtype=torch.int64), torch.ones(2))

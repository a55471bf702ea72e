import math

import pytest
import torch

from hf_autodrop import AutoDrop, angle_degrees


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


def _float32_blas_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    dot, na, nb = torch.dot(a, b).item(), torch.dot(a, a).item(), torch.dot(b, b).item()
    return math.degrees(math.acos(max(-1.0, min(1.0, dot / math.sqrt(na * nb)))))


def test_interval_step_angle_within_1e4_degrees_of_float64_at_1e8_elements():
    """The step's fast float32 sums against the exact float64 ones, at 10^8 parameters and a hard (small) angle."""
    n = 10**8
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, generator=g))
    autodrop = AutoDrop([p], torch.optim.SGD([p], lr=0.1), detector="paper", threshold=1e-9, max_threshold=1e-9)
    first = torch.randn(n, generator=g).mul_(1e-3)
    second = torch.randn(n, generator=g).mul_(1e-2).add_(first)  # about 84 degrees from the first
    third = lambda: torch.randn(n, generator=g).mul_(5e-4).add_(second)  # noqa: E731 - about 3 degrees from the second
    displacements = [lambda: first, lambda: second, third]
    negated, angles = [], []
    with torch.no_grad():
        for step in displacements:
            before = p.detach().clone()
            p.add_(step())
            negated.append(before.sub_(p))  # x_(t-1) - x_t in float32, the step's own displacement
            del before
            angles.append(autodrop.step().angle)
    for (a, b), got in zip([(negated[0], negated[1]), (negated[1], negated[2])], angles[1:]):
        exact = angle_degrees(a, b)  # float64
        assert got == pytest.approx(exact, abs=1e-4)
    assert 80 < angles[1] < 90 and angles[2] < 5  # a typical angle and a small one, where errors grow
    # A plain float32 dot over the whole vector misses the small angle by more than the tolerance.
    assert abs(_float32_blas_angle(negated[1], negated[2]) - angle_degrees(negated[1], negated[2])) > 1e-4

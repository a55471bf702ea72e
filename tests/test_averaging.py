"""FlatCopy's fused interval pass and `flat_sums` against plain float64 arithmetic."""

import pytest
import torch

from hf_autodrop.averaging import FlatCopy, OffloadedFlatCopy, flat_sums

SHAPES = [(300, 200), (7,), (50, 3, 3), (1,)]


def _tensors(g):
    return [torch.randn(s, generator=g) for s in SHAPES]


def _flat64(tensors):
    return torch.cat([t.reshape(-1) for t in tensors]).double()


@pytest.mark.parametrize("kind", [FlatCopy, OffloadedFlatCopy])
def test_flat_sums_of_copies_and_differences(kind):
    g = torch.Generator().manual_seed(0)
    a, b = kind.of(_tensors(g)), kind.of(_tensors(g))
    x, y = _flat64(a.views), _flat64(b.views)
    got = flat_sums([(a, b), (a, a), ((a, b), (a, b))]).tolist()
    want = [x @ y, x @ x, (a.flats[0] - b.flats[0]).double() @ (a.flats[0] - b.flats[0]).double()]
    # Float32 products, accumulated in float64: within a few float32 roundings of |x| |y|.
    assert got == pytest.approx([w.item() for w in want], abs=1e-6 * (x.norm() * y.norm()).item())


@pytest.mark.parametrize("kind", [FlatCopy, OffloadedFlatCopy])
def test_advance_is_subtract_sums_copy_in_one_pass(kind, monkeypatch):
    import hf_autodrop.angles as angles
    import hf_autodrop.averaging as averaging

    # Chunks that cut through tensors, so that pieces of several tensors meet in one chunk.
    monkeypatch.setattr(angles, "_CHUNK", 1 << 14)
    monkeypatch.setattr(averaging, "_CHUNK", 1 << 14)
    g = torch.Generator().manual_seed(1)
    x0, x1, x2 = _tensors(g), _tensors(g), _tensors(g)
    anchor = kind.of(_tensors(g))
    snapshot, spare = kind.of(x0), kind(x0)
    spare.zero_()
    snapshot.advance(x1, spare)  # snapshot: x0 - x1, spare: x1
    sums = spare.advance(x2, snapshot, extra=[((snapshot, anchor), (snapshot, anchor))]).tolist()
    s1 = _flat64(x0) - _flat64(x1)
    s2 = _flat64(x1) - _flat64(x2)
    want = [s2 @ s1, s2 @ s2, s1 @ s1, (_flat64(x2) - _flat64(anchor.views)).square().sum()]
    assert sums == pytest.approx([w.item() for w in want], rel=1e-6, abs=1e-6 * (s1.norm() * s2.norm()).item())
    assert torch.equal(torch.cat([v.reshape(-1) for v in snapshot.views]), _flat64(x2).float())
    # ... and the other buffer holds -s_t = x1 - x2, rounded once in float32, whole tensors and cut ones alike.
    assert torch.equal(
        torch.cat([v.reshape(-1) for v in spare.views]),
        torch.cat([a.reshape(-1) - b.reshape(-1) for a, b in zip(x1, x2)]),
    )
    # |s_(t-1)|^2 comes from the previous pass only while nothing else wrote the buffer.
    spare.load([torch.ones(spare.flats[0].numel())], "displacement")
    n = spare.flats[0].numel()
    sums = snapshot.advance(x1, spare).tolist()
    assert sums[2] == pytest.approx(float(n))
    assert sums[0] == pytest.approx((_flat64(x2) - _flat64(x1)).sum().item(), abs=1e-6 * n)

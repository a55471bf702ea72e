"""`offload_to_cpu=True`: AutoDrop's buffers in (pinned) CPU memory compute exactly what the on-device ones do.

On this CPU-only machine the offloaded code path (chunked transfers, side-stream snapshot) runs with plain
copies; the GPU check script (bench/gpu_distributed.sh) times it on an accelerator.
"""

import io

import pytest
import torch

from hf_autodrop import AutoDrop, AutoDropConfig, angles
from hf_autodrop.averaging import OffloadedFlatCopy

from .helpers import ALWAYS, MLP


def _twins(offload: bool):
    torch.manual_seed(0)
    model = MLP(hidden=48)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, AutoDrop(model, optimizer, drop_delay=2, offload_to_cpu=offload, **ALWAYS)


def _train(model, optimizer, g):
    for _ in range(3):
        optimizer.zero_grad()
        out = model(torch.randn(16, 64, generator=g), labels=torch.randint(0, 10, (16,), generator=g))
        out["loss"].backward()
        optimizer.step()


def test_offloaded_buffers_give_identical_angles_decisions_and_parameters(monkeypatch):
    monkeypatch.setattr(angles, "_CHUNK", 1000)  # several chunks per tensor: exercise the chunk loops
    import hf_autodrop.averaging as averaging

    monkeypatch.setattr(averaging, "_CHUNK", 1000)
    runs = []
    for offload in (False, True):
        model, optimizer, autodrop = _twins(offload)
        assert isinstance(autodrop._snapshot, OffloadedFlatCopy) == offload
        g = torch.Generator().manual_seed(3)
        measurements = []
        for interval in range(12):
            _train(model, optimizer, g)
            measurements.append(autodrop.step())
            if interval == 3:  # inside the averaging window: resume a fresh controller from the saved state
                buffer = io.BytesIO()
                torch.save(autodrop.state_dict(), buffer)
                autodrop = AutoDrop(model, optimizer, drop_delay=2, offload_to_cpu=offload, **ALWAYS)
                autodrop.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        runs.append((measurements, [p.detach().clone() for p in model.parameters()], autodrop.state_dict()))
    (plain, plain_params, plain_state), (off, off_params, off_state) = runs
    assert sum(m.dropped for m in plain) == 2
    # Bit for bit: the same chunks go through the same float64 sums.
    assert [repr(m) for m in plain] == [repr(m) for m in off]
    for p, q in zip(plain_params, off_params):
        assert torch.equal(p, q)
    for key in ("snapshot", "displacement"):
        assert all(torch.equal(a, b) for a, b in zip(plain_state[key], off_state[key]))
    # Interchangeable: a state saved with the buffers on the device resumes offloaded (onto the
    # parameters it was saved with: the state checks their fingerprint).
    model, optimizer, _ = _twins(True)
    with torch.no_grad():
        for p, q in zip(model.parameters(), plain_params):
            p.copy_(q)
    AutoDrop(model, optimizer, drop_delay=2, offload_to_cpu=True, **ALWAYS).load_state_dict(plain_state)


def test_offload_to_cpu_must_be_a_bool():
    with pytest.raises(ValueError, match=r"offload_to_cpu='yes' is invalid: expected True or False"):
        AutoDropConfig(offload_to_cpu="yes")

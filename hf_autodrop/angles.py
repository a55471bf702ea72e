"""The global angle between two parameter vectors, and the sums it is made of.

AutoDrop's signal is an angle near 90 degrees whose epoch-to-epoch change is compared against
thresholds as small as 0.01 degrees, so the sums must be accurate: one float32 BLAS dot over 10^8
elements is off by ~1e-4 relative, several hundredths of a degree. Two accurate ways are kept:

- `partial_sums` / `angle_degrees` (the public function): every product of two float32 numbers is
  exact in float64 (24 + 24 bits < 53), so converting chunk by chunk and summing in float64 is
  essentially exact, at the cost of several `clone()`s of the vectors.
- `chunk_dots`, the interval step's fast path (see `averaging.FlatCopy.advance`): per chunk of
  `chunk_elements()` elements, the float32 products summed in float32 by blocks of 1024 (torch's
  vectorised cascade reduction), the blocks' sums in float64. Its error is one float32 rounding per
  block, independent across thousands of blocks, not a rounding of a running total: within 1e-4
  degrees of the float64 angle at 10^8 elements (`tests/test_angles.py`) and down to one degree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["angle_degrees", "partial_sums", "angle_from_sums", "chunk_dots", "chunk_elements"]

# Elements converted to float64 at a time by the exact path: bounds its temporary memory (2 x 8 MiB).
_EXACT_CHUNK = 1 << 20
# Elements per chunk of the fast path. On the CPU small enough that the chunks of every buffer one fused
# pass touches (three buffers, the parameters and a scratch: 5 x 4 MiB) stay in a server's last-level
# cache between its operations, and large enough that a loaded machine does not pay for many small
# multi-threaded operations; on accelerators large, so that kernel launches stay few.
_CHUNK = 1 << 20
_DEVICE_CHUNK = 1 << 22
# Elements summed in float32 before their sum joins a float64 total, and how many such blocks a chunk needs.
_BLOCK = 1 << 10
_MIN_BLOCKS = 64


def chunk_elements(device: torch.device) -> int:
    """Elements per chunk of the fast sums on `device`."""
    return _CHUNK if torch.device(device).type == "cpu" else _DEVICE_CHUNK


def chunk_dots(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], out: torch.Tensor, scratch: torch.Tensor) -> None:
    """`out[k] <- <x_k, y_k>` for 1-D float32 chunks, accurate to a few float32 roundings spread over many blocks
    (float64 chunks: one float64 dot each).

    The float32 products are summed by blocks of `_BLOCK` elements in float32 (torch's cascade reduction,
    vectorised), and the blocks' sums in float64. Each block sum carries one rounding of relative size
    2^-24; independent over at least `_MIN_BLOCKS` blocks, they shrink to a few 1e-9 of the total, which
    keeps an angle of one degree within 1e-4 degrees (the error in degrees grows like 1/sin(angle)).
    Chunks with fewer blocks than that are small: their products are summed in float64 directly.
    `scratch` is a float32 buffer on the chunks' device with room for the chunk rounded up to a whole
    block, plus one block sum per block and pair; `out` a float64 row with one slot per pair.
    """
    if pairs and pairs[0][0].dtype == torch.float64:
        # Float64 copies (of float64 parameters) are summed by float64 dots: already accurate.
        for k, (x, y) in enumerate(pairs):
            out[k] = torch.dot(x, y)
        return
    n = pairs[0][0].numel() if pairs else 0
    blocks = -(-n // _BLOCK)
    product = scratch[: blocks * _BLOCK]
    if blocks < _MIN_BLOCKS:
        for k, (x, y) in enumerate(pairs):
            torch.mul(x, y, out=product[:n])
            torch.sum(product[:n], 0, dtype=torch.float64, out=out[k])
        return
    if n % _BLOCK:
        product[n:].zero_()
    block_sums = scratch[blocks * _BLOCK :][: len(pairs) * blocks].view(len(pairs), blocks)
    for k, (x, y) in enumerate(pairs):
        torch.mul(x, y, out=product[:n])
        torch.sum(product.view(blocks, _BLOCK), 1, out=block_sums[k])
    torch.sum(block_sums, 1, dtype=torch.float64, out=out[: len(pairs)])


def _as_list(x: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    tensors = list(x)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"{name} must be a tensor or a sequence of tensors")
    return tensors


def _flat(t: torch.Tensor) -> torch.Tensor:
    # DTensors and other wrappers are unwrapped by the caller; here only plain tensors arrive.
    return t.detach().reshape(-1)


def partial_sums(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], device: torch.device | None = None
) -> torch.Tensor:
    """Return `[<a,b>, |a|^2, |b|^2]` over all tensors as a float64 CPU tensor of shape (3,), exactly.

    `a[i]` and `b[i]` must have the same number of elements (shapes may differ, e.g. a flat buffer
    and a parameter). Each tensor pair is read once, in chunks converted to float64. On an
    accelerator the sums stay on the device until the single transfer at the end. With `device`,
    chunks are moved there first (sums over buffers kept in CPU memory, computed on the accelerator).
    """
    if len(a) != len(b):
        raise ValueError(f"both sides need the same number of tensors, got {len(a)} and {len(b)}")
    per_device: dict[torch.device, torch.Tensor] = {}
    for x, y in zip(a, b):
        if x.numel() != y.numel():
            raise ValueError(f"tensor sizes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.numel() == 0:
            continue
        target = x.device if device is None else torch.device(device)
        if device is None and x.device != y.device:
            y = y.to(x.device)
        acc = per_device.get(target)
        if acc is None:
            acc = per_device[target] = torch.zeros(3, dtype=torch.float64, device=target)
        xf, yf = _flat(x), _flat(y)
        for start in range(0, xf.numel(), _EXACT_CHUNK):
            xd = xf[start : start + _EXACT_CHUNK].to(target, non_blocking=True).double()
            yd = yf[start : start + _EXACT_CHUNK].to(target, non_blocking=True).double()
            acc[0] += xd @ yd
            acc[1] += xd @ xd
            acc[2] += yd @ yd
    total = torch.zeros(3, dtype=torch.float64)
    for acc in per_device.values():
        total += acc.cpu()
    return total


def angle_from_sums(dot: float, norm_a_sq: float, norm_b_sq: float) -> float:
    """The angle in degrees from the three sums; NaN when either norm is zero or a sum is not finite."""
    if not (math.isfinite(dot) and math.isfinite(norm_a_sq) and math.isfinite(norm_b_sq)):
        return float("nan")
    if norm_a_sq <= 0.0 or norm_b_sq <= 0.0:
        return float("nan")
    cos = dot / math.sqrt(norm_a_sq * norm_b_sq)
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def angle_degrees(a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """The global angle in degrees between two tensors, or two equal-length lists of tensors.

    The lists are treated as one long vector each (one global angle, never per tensor). Any shapes,
    dtypes (float16, bfloat16, float32, float64) and devices; sums are accumulated in float64.
    Returns `float('nan')` when either side has zero norm (the angle is undefined) or holds NaN/Inf.

    Example:
        >>> import torch
        >>> round(angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])), 6)
        45.0
        >>> angle_degrees([torch.ones(2, 2), torch.zeros(3)], [torch.ones(4), torch.ones(3)])
        40.89339464913091
    """
    a_list, b_list = _as_list(a, "a"), _as_list(b, "b")
    if len(a_list) != len(b_list):
        raise ValueError(f"a and b must hold the same number of tensors, got {len(a_list)} and {len(b_list)}")
    for x, y in zip(a_list, b_list):
        if x.numel() != y.numel():
            raise ValueError(
                f"paired tensors must have the same number of elements: {tuple(x.shape)} vs {tuple(y.shape)}"
            )
        if not (x.is_floating_point() and y.is_floating_point()):
            raise TypeError(f"angle_degrees needs floating-point tensors, got {x.dtype} and {y.dtype}")
    dot, na, nb = partial_sums(a_list, b_list).tolist()
    return angle_from_sums(dot, na, nb)

"""Float32 copies of a list of tensors, one contiguous buffer per device, and the running average.

One flat buffer per device turns every per-interval operation into a handful of large kernels
(`torch._foreach_*` to move between the parameters and the buffer, one elementwise op or chunked
dot on the buffer itself), whatever the number of parameter tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from .angles import partial_sums

__all__ = ["FlatCopy"]


class FlatCopy:
    """A float32 copy of `tensors` laid out in one flat buffer per device.

    `views[i]` has the shape of `tensors[i]` and aliases the buffer of its device.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], counted: Sequence[bool] | None = None):
        self.shapes = [tuple(t.shape) for t in tensors]
        self._tensor_devices = [t.device for t in tensors]
        self.devices = list(dict.fromkeys(self._tensor_devices))
        # Under sharded engines some tensors are extra copies of replicated elements that must not enter
        # the sums; they are laid out after the counted ones, so that the sums read one prefix per buffer.
        self._counted = [True] * len(self.shapes) if counted is None else [bool(c) for c in counted]
        if len(self._counted) != len(self.shapes):
            raise ValueError(f"counted has {len(self._counted)} entries for {len(self.shapes)} tensors")
        sizes = dict.fromkeys(self.devices, 0)
        self._counted_sizes = dict.fromkeys(self.devices, 0)
        for t, c in zip(tensors, self._counted):
            sizes[t.device] += t.numel()
            if c:
                self._counted_sizes[t.device] += t.numel()
        self._attach([torch.empty(sizes[d], dtype=torch.float32, device=d) for d in self.devices])

    def _attach(self, flats: list[torch.Tensor]) -> None:
        """Use `flats` as storage and cut the per-tensor views out of them (counted tensors first)."""
        self.flats = flats
        offsets = dict.fromkeys(self.devices, 0)
        views: list[torch.Tensor | None] = [None] * len(self.shapes)
        for counted_pass in (True, False):
            for i, (shape, device, counted) in enumerate(zip(self.shapes, self._tensor_devices, self._counted)):
                if counted != counted_pass:
                    continue
                flat = flats[self.devices.index(device)]
                start = offsets[device]
                numel = math.prod(shape)
                views[i] = flat[start : start + numel].view(shape)
                offsets[device] = start + numel
        self.views: list[torch.Tensor] = views

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor], counted: Sequence[bool] | None = None) -> FlatCopy:
        """A new buffer holding a copy of `tensors`."""
        buffer = cls(tensors, counted)
        buffer.copy_from(tensors)
        return buffer

    def clone(self) -> FlatCopy:
        """A new buffer with the same layout and contents."""
        twin = copy.copy(self)
        twin._attach([f.clone() for f in self.flats])
        return twin

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.flats)

    def copy_from(self, tensors: Sequence[torch.Tensor]) -> None:
        if self.views:
            torch._foreach_copy_(self.views, list(tensors))

    def copy_to(self, tensors: Sequence[torch.Tensor]) -> None:
        if self.views:
            torch._foreach_copy_(list(tensors), self.views)

    def set_difference(self, tensors: Sequence[torch.Tensor]) -> None:
        """self <- tensors - self, in place (turns the previous snapshot into the displacement)."""
        if self.views:
            torch._foreach_sub_(self.views, list(tensors))
            for flat in self.flats:
                flat.neg_()

    def lerp_(self, other: FlatCopy, weight: float) -> None:
        """self <- self + weight * (other - self): the running weighted average step."""
        for mine, theirs in zip(self.flats, other.flats):
            mine.lerp_(theirs, weight)

    def lerp_from(self, tensors: Sequence[torch.Tensor], weight: float) -> None:
        """Like `lerp_`, from tensors of any floating dtype (buffers are few and small)."""
        for view, t in zip(self.views, tensors):
            view.lerp_(t.detach().float(), weight)

    def sums(self, other: FlatCopy) -> torch.Tensor:
        """`[<self,other>, |self|^2, |other|^2]` in float64 over the counted tensors (see `partial_sums`)."""
        sizes = [self._counted_sizes[d] for d in self.devices]
        return partial_sums([f[:n] for f, n in zip(self.flats, sizes)], [f[:n] for f, n in zip(other.flats, sizes)])

    def state(self) -> list[torch.Tensor]:
        return self.flats

    def load(self, flats: Sequence[torch.Tensor], name: str) -> None:
        if len(flats) != len(self.flats) or any(
            not isinstance(a, torch.Tensor) or a.numel() != b.numel() for a, b in zip(flats, self.flats)
        ):
            raise ValueError(
                f"AutoDrop state '{name}' holds buffers of sizes "
                f"{[a.numel() if isinstance(a, torch.Tensor) else type(a).__name__ for a in flats]} but this "
                f"model needs {[b.numel() for b in self.flats]}: the state belongs to another model."
            )
        for mine, saved in zip(self.flats, flats):
            mine.copy_(saved.reshape(-1))

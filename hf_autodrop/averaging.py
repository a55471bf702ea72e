"""Copies of a list of tensors, one contiguous buffer per device and precision, and the running average.

Float64 tensors are copied in float64 (a float32 copy would round updates of 1e-7 relative size and,
at a drop, the weights themselves); every other floating dtype in float32. One flat buffer per
(device, precision) turns every per-interval operation into a handful of large kernels
(`torch._foreach_*` to move between the parameters and the buffer, one elementwise op or chunked
dot on the buffer itself), whatever the number of parameter tensors.

`OffloadedFlatCopy` keeps the same buffers in (pinned) CPU memory instead, for models whose accelerator
memory cannot spare AutoDrop's two or three float32 copies: the arithmetic streams chunks through the
tensors' device, and the snapshot taken at the end of an interval is copied out on a side stream while
training goes on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from .angles import _CHUNK, partial_sums

__all__ = ["FlatCopy", "OffloadedFlatCopy"]


def copy_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision AutoDrop keeps a tensor of `dtype` in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class FlatCopy:
    """A copy of `tensors` laid out in one flat buffer per (device, precision) (see `copy_dtype`).

    `views[i]` has the shape of `tensors[i]` and aliases the buffer of its device and precision;
    `devices[j]` and `dtypes[j]` describe `flats[j]`.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], counted: Sequence[bool] | None = None):
        self.shapes = [tuple(t.shape) for t in tensors]
        self._tensor_keys = [(t.device, copy_dtype(t.dtype)) for t in tensors]
        self._keys = list(dict.fromkeys(self._tensor_keys))
        self.devices = [device for device, _ in self._keys]
        self.dtypes = [dtype for _, dtype in self._keys]
        # Under sharded engines some tensors are extra copies of replicated elements that must not enter
        # the sums; they are laid out after the counted ones, so that the sums read one prefix per buffer.
        self._counted = [True] * len(self.shapes) if counted is None else [bool(c) for c in counted]
        if len(self._counted) != len(self.shapes):
            raise ValueError(f"counted has {len(self._counted)} entries for {len(self.shapes)} tensors")
        sizes = dict.fromkeys(self._keys, 0)
        counted_sizes = dict.fromkeys(self._keys, 0)
        for t, key, c in zip(tensors, self._tensor_keys, self._counted):
            sizes[key] += t.numel()
            if c:
                counted_sizes[key] += t.numel()
        self._counted_sizes = [counted_sizes[k] for k in self._keys]
        self._attach([self._allocate(sizes[k], *k) for k in self._keys])

    def _allocate(self, numel: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Storage for the buffer of the tensors on `device` kept in `dtype`."""
        return torch.empty(numel, dtype=dtype, device=device)

    def _attach(self, flats: list[torch.Tensor]) -> None:
        """Use `flats` as storage and cut the per-tensor views out of them (counted tensors first)."""
        self.flats = flats
        offsets = dict.fromkeys(self._keys, 0)
        views: list[torch.Tensor | None] = [None] * len(self.shapes)
        for counted_pass in (True, False):
            for i, (shape, key, counted) in enumerate(zip(self.shapes, self._tensor_keys, self._counted)):
                if counted != counted_pass:
                    continue
                flat = flats[self._keys.index(key)]
                start = offsets[key]
                numel = math.prod(shape)
                views[i] = flat[start : start + numel].view(shape)
                offsets[key] = start + numel
        self.views: list[torch.Tensor] = views

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor], counted: Sequence[bool] | None = None) -> FlatCopy:
        """A new buffer holding a copy of `tensors`."""
        buffer = cls(tensors, counted)
        buffer.copy_from(tensors)
        return buffer

    def clone(self) -> FlatCopy:
        """A new buffer with the same layout and contents."""
        twin = self.empty_like()
        for mine, theirs in zip(twin.flats, self.flats):
            mine.copy_(theirs)
        return twin

    def empty_like(self) -> FlatCopy:
        """A new buffer with the same layout (uninitialised)."""
        twin = copy.copy(self)
        twin._attach([self._allocate(f.numel(), *k) for f, k in zip(self.flats, self._keys)])
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

    def subtract(self, tensors: Sequence[torch.Tensor]) -> None:
        """self <- self - tensors, in place: turns the snapshot x_(t-1) into -s_t, the displacement negated.

        AutoDrop keeps every displacement negated: angles and norms are the same, and one pass is saved.
        """
        if self.views:
            torch._foreach_sub_(self.views, list(tensors))

    def lerp_(self, other: FlatCopy, weight: float) -> None:
        """self <- self + weight * (other - self): the running weighted average step."""
        for mine, theirs in zip(self.flats, other.flats):
            mine.lerp_(theirs, weight)

    def lerp_from(self, tensors: Sequence[torch.Tensor], weight: float) -> None:
        """Like `lerp_`, from tensors of any floating dtype (buffers are few and small)."""
        for view, t in zip(self.views, tensors):
            view.lerp_(t.detach().to(view.dtype), weight)

    def sums(self, other: FlatCopy) -> torch.Tensor:
        """`[<self,other>, |self|^2, |other|^2]` in float64 over the counted tensors (see `partial_sums`)."""
        sizes = self._counted_sizes
        return partial_sums([f[:n] for f, n in zip(self.flats, sizes)], [f[:n] for f, n in zip(other.flats, sizes)])

    def state(self) -> list[torch.Tensor]:
        return self.flats

    def load(self, flats: Sequence[torch.Tensor], name: str) -> None:
        if len(flats) != len(self.flats) or any(
            not isinstance(a, torch.Tensor) or a.numel() != b.numel() or a.dtype != b.dtype
            for a, b in zip(flats, self.flats)
        ):
            have = [
                (a.numel(), str(a.dtype).removeprefix("torch.")) if isinstance(a, torch.Tensor) else type(a).__name__
                for a in flats
            ]
            need = [(b.numel(), str(b.dtype).removeprefix("torch.")) for b in self.flats]
            raise ValueError(
                f"AutoDrop state '{name}' holds buffers of (size, dtype) {have} but this model needs {need}: "
                "the state belongs to another model (or parameters of another dtype)."
            )
        for mine, saved in zip(self.flats, flats):
            mine.copy_(saved.reshape(-1))


class OffloadedFlatCopy(FlatCopy):
    """A `FlatCopy` whose buffers live in CPU memory (pinned when the tensors are on a CUDA device).

    The arithmetic runs on the tensors' device, chunk by chunk (at most a few chunks of
    `angles._CHUNK` elements of accelerator memory at a time), with copies enqueued on the current
    stream. `copy_from` (the end-of-interval snapshot) runs on a side stream so that it overlaps with the
    next steps' compute; `wait_before_overwrite()` must run before anything writes the source tensors
    again (AutoDrop calls it from an optimizer pre-step hook), and every later use of the buffer waits
    for the copy first. With CPU tensors the same code runs with plain copies.
    """

    _streams: dict = {}

    def __init__(self, tensors: Sequence[torch.Tensor], counted: Sequence[bool] | None = None):
        self._event = None  # the side-stream snapshot copy in flight, if any
        super().__init__(tensors, counted)

    def _allocate(self, numel: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        pin = device.type == "cuda" and torch.cuda.is_available()
        return torch.empty(numel, dtype=dtype, device="cpu", pin_memory=pin)

    def _cuda(self) -> bool:
        return any(d.type == "cuda" for d in self.devices)

    def _sync(self) -> None:
        """Wait for the side-stream copy before the buffer is used again."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None

    def _host_sync(self) -> None:
        """Before the CPU itself reads or writes the buffer: also wait for copies on the current stream."""
        self._sync()
        if self._cuda():
            for d in self.devices:
                if d.type == "cuda":
                    torch.cuda.current_stream(d).synchronize()

    def wait_before_overwrite(self) -> None:
        """Make the current stream wait for the snapshot copy in flight (no CPU wait)."""
        if self._event is not None:
            torch.cuda.current_stream(self._event_device).wait_event(self._event)

    def empty_like(self) -> OffloadedFlatCopy:
        twin = super().empty_like()
        twin._event = None
        return twin

    def clone(self) -> OffloadedFlatCopy:
        self._host_sync()
        return super().clone()

    def copy_from(self, tensors: Sequence[torch.Tensor]) -> None:
        self._sync()
        tensors = list(tensors)
        if not self.views:
            return
        devices = {t.device for t in tensors}
        if len(devices) == 1 and next(iter(devices)).type == "cuda":
            device = next(iter(devices))
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))  # the values are final on the main stream
            with torch.cuda.stream(stream):
                for view, t in zip(self.views, tensors):
                    view.copy_(t.detach(), non_blocking=True)
                    t.record_stream(stream)  # a temporary (e.g. an offloaded ZeRO master's copy) must outlive the copy
                self._event = torch.cuda.Event()
                self._event.record(stream)
            self._event_device = device
        else:
            for view, t in zip(self.views, tensors):
                view.copy_(t.detach(), non_blocking=True)

    def copy_to(self, tensors: Sequence[torch.Tensor]) -> None:
        self._sync()
        for view, t in zip(self.views, tensors):
            t.copy_(view, non_blocking=True)

    def subtract(self, tensors: Sequence[torch.Tensor]) -> None:
        self._sync()
        for view, t in zip(self.views, tensors):
            flat_view, flat_t = view.view(-1), t.detach().reshape(-1)
            for start in range(0, flat_t.numel(), _CHUNK):
                mine = flat_view[start : start + _CHUNK]
                diff = mine.to(t.device, non_blocking=True) - flat_t[start : start + _CHUNK]
                mine.copy_(diff, non_blocking=True)

    def lerp_(self, other: FlatCopy, weight: float) -> None:
        self._sync()
        other._sync()
        for mine, theirs, device in zip(self.flats, other.flats, self.devices):
            for start in range(0, mine.numel(), _CHUNK):
                a = mine[start : start + _CHUNK].to(device, non_blocking=True)
                a.lerp_(theirs[start : start + _CHUNK].to(device, non_blocking=True), weight)
                mine[start : start + _CHUNK].copy_(a, non_blocking=True)

    def sums(self, other: FlatCopy) -> torch.Tensor:
        self._sync()
        other._sync()
        total = torch.zeros(3, dtype=torch.float64)
        for device, n, mine, theirs in zip(self.devices, self._counted_sizes, self.flats, other.flats):
            total += partial_sums([mine[:n]], [theirs[:n]], device=device)
        return total

    def state(self) -> list[torch.Tensor]:
        self._host_sync()
        return self.flats

    def load(self, flats: Sequence[torch.Tensor], name: str) -> None:
        self._host_sync()
        super().load(flats, name)

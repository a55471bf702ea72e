"""Copies of a list of tensors, one contiguous buffer per device and precision, and the running average.

Float64 tensors are copied in float64 (a float32 copy would round updates of 1e-7 relative size and,
at a drop, the weights themselves); every other floating dtype in float32. One flat buffer per
(device, precision) turns every per-interval operation into a handful of large kernels
(`torch._foreach_*` to move between the parameters and the buffer, one elementwise op or chunked
dot on the buffer itself), whatever the number of parameter tensors. The interval step itself is one
fused pass (`FlatCopy.advance`): chunk by chunk, the snapshot becomes the displacement, the sums are
taken and the spare buffer receives the new snapshot while the chunk is still in cache, so the step
reads the memory about once; `flat_sums` takes any number of dot/norm sums in one such pass.

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

from .angles import _BLOCK, chunk_dots, chunk_elements

__all__ = ["FlatCopy", "OffloadedFlatCopy", "flat_sums"]

# Elements an offloaded buffer moves to the device at a time: bounds the accelerator memory it borrows.
_CHUNK = 1 << 20


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
        self._chunk_cache: dict = {}
        self._scratch_cache: dict = {}
        # This process's |buffer|^2 as the last `advance` computed it; None once anything else writes the buffer.
        self._norm_sq: float | None = None
        offsets = dict.fromkeys(self._keys, 0)
        views: list[torch.Tensor | None] = [None] * len(self.shapes)
        # Per buffer, (tensor index, start in the flat buffer, numel) in buffer order, for the fused pass.
        self._layout: list[list[tuple[int, int, int]]] = [[] for _ in self._keys]
        for counted_pass in (True, False):
            for i, (shape, key, counted) in enumerate(zip(self.shapes, self._tensor_keys, self._counted)):
                if counted != counted_pass:
                    continue
                d = self._keys.index(key)
                start = offsets[key]
                numel = math.prod(shape)
                views[i] = flats[d][start : start + numel].view(shape)
                self._layout[d].append((i, start, numel))
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
        self._norm_sq = None
        if self.views:
            torch._foreach_copy_(self.views, list(tensors))

    def copy_to(self, tensors: Sequence[torch.Tensor]) -> None:
        if self.views:
            torch._foreach_copy_(list(tensors), self.views)

    def subtract(self, tensors: Sequence[torch.Tensor]) -> None:
        """self <- self - tensors, in place: turns the snapshot x_(t-1) into -s_t, the displacement negated.

        AutoDrop keeps every displacement negated: angles and norms are the same, and one pass is saved.
        """
        self._norm_sq = None
        if self.views:
            torch._foreach_sub_(self.views, list(tensors))

    def lerp_(self, other: FlatCopy, weight: float) -> None:
        """self <- self + weight * (other - self): the running weighted average step."""
        self._norm_sq = None
        for mine, theirs in zip(self.flats, other.flats):
            mine.lerp_(theirs, weight)

    def lerp_from(self, tensors: Sequence[torch.Tensor], weight: float) -> None:
        """Like `lerp_`, from tensors of any floating dtype (buffers are few and small)."""
        self._norm_sq = None
        for view, t in zip(self.views, tensors):
            view.lerp_(t.detach().to(view.dtype), weight)

    def zero_(self) -> None:
        self._norm_sq = None
        for f in self.flats:
            f.zero_()

    def _chunks(self, d: int, chunk: int) -> list[tuple[int, int, list[tuple[int, int, int, int]]]]:
        """Device `d`'s buffer in chunks: `(start, end, pieces)`, each piece `(tensor, start in it, start in buffer, numel)`."""
        cache = self._chunk_cache
        if (d, chunk) not in cache:
            chunks = []
            for lo in range(0, self.flats[d].numel(), chunk):
                hi = min(lo + chunk, self.flats[d].numel())
                pieces = []
                for i, start, numel in self._layout[d]:
                    a, b = max(lo, start), min(hi, start + numel)
                    if a < b:
                        pieces.append((i, a - start, a, b - a))
                chunks.append((lo, hi, pieces))
            cache[(d, chunk)] = chunks
        return cache[(d, chunk)]

    def _targets(self, d: int, chunk: int) -> list[list[torch.Tensor]]:
        """Per chunk of `_chunks(d, chunk)`, the views of this buffer its pieces are written through: a
        tensor's own shaped view when the piece is the whole tensor, else a flat slice. Built once (the
        per-interval cost of a model's worth of small views is what a small model notices)."""
        key = ("targets", d, chunk)
        cache = self._chunk_cache
        if key not in cache:
            flat = self.flats[d]
            cache[key] = [
                [self.views[i] if a == 0 and n == self.views[i].numel() else flat[f : f + n] for i, a, f, n in pieces]
                for _, _, pieces in self._chunks(d, chunk)
            ]
        return cache[key]

    def _source(self, tensor: torch.Tensor, i: int, a: int, n: int) -> torch.Tensor:
        """Elements `a:a+n` of `tensor` (the `i`-th), shaped like the matching entry of `_targets`."""
        shape = self.shapes[i]
        if a == 0 and n == self.views[i].numel():
            return tensor if tensor.shape == shape else tensor.reshape(shape)
        return tensor.reshape(-1)[a : a + n]

    def advance(self, tensors: Sequence[torch.Tensor], spare: FlatCopy, extra: Sequence[tuple] = ()) -> torch.Tensor:
        """The end of an interval in one pass: `self <- self - tensors`, the sums, then `spare <- tensors`.

        With `self` holding the snapshot x_(t-1) and `spare` the negated last displacement -s_(t-1),
        `self` becomes -s_t and `spare` the new snapshot x_t. Returns, in float64 over the counted
        tensors, `[<-s_t, -s_(t-1)>, |s_t|^2, |s_(t-1)|^2]` followed by one sum per `extra` pair (as
        `flat_sums` takes them), evaluated on the buffers' new contents (`spare` holds x_t by then).
        Chunk by chunk, so that each chunk is read from memory once and reused from the cache.
        |s_(t-1)|^2 is the one the previous `advance` computed, unless the buffer was written since.
        """
        self._before_read()
        spare._before_read()
        known = spare._norm_sq
        pairs = 2 if known is not None else 3
        total = torch.zeros(pairs + len(extra), dtype=torch.float64)
        with torch.no_grad():  # the sources are only read; no per-tensor detach needed
            for d, device in enumerate(self.devices):
                mine, theirs = self.flats[d], spare.flats[d]
                chunk = chunk_elements(device)
                counted = self._counted_sizes[d]
                table = torch.empty((-(-counted // chunk), pairs + len(extra)), dtype=torch.float64, device=device)
                scratch = self._scratch(d, chunk, counted, max(pairs, len(extra)))
                for row, ((lo, hi, pieces), targets, spare_targets) in enumerate(
                    zip(self._chunks(d, chunk), self._targets(d, chunk), spare._targets(d, chunk))
                ):
                    sources = [self._source(tensors[i], i, a, n) for i, a, _, n in pieces]
                    torch._foreach_sub_(targets, sources)
                    end = min(hi, counted)  # elements past the counted prefix enter no sum
                    if end > lo:
                        x, y = mine[lo:end], theirs[lo:end]
                        chunk_dots([(x, y), (x, x), (y, y)][:pairs], table[row], scratch)
                    torch._foreach_copy_(spare_targets, sources)
                    if end > lo and extra:
                        chunk_dots(_chunk_pairs(extra, d, lo, end, device), table[row, pairs:], scratch)
                total += table.sum(0).cpu()
        return self._finish_advance(spare, total, known)

    def _finish_advance(self, spare: FlatCopy, total: torch.Tensor, known: float | None) -> torch.Tensor:
        """Insert the remembered |s_(t-1)|^2 into `total` and remember |s_t|^2 for the next interval."""
        if known is not None:
            total = torch.cat([total[:2], torch.tensor([known], dtype=torch.float64), total[2:]])
        spare._norm_sq = None
        self._norm_sq = float(total[1])
        return total

    def _scratch(self, d: int, chunk: int, counted: int, pairs: int) -> torch.Tensor:
        """Room for the products of one chunk on device `d` and its block sums (see `angles.chunk_dots`).

        Kept between intervals on the CPU (a few MiB), where a fresh allocation of that size costs page
        faults at every interval; accelerators' caching allocators reuse their blocks by themselves.
        """
        blocks = -(-min(chunk, max(counted, 1)) // _BLOCK)
        numel = blocks * (_BLOCK + pairs)
        device = self.devices[d]
        scratch = self._scratch_cache.get(d)
        if scratch is None or scratch.numel() < numel:
            scratch = torch.empty(numel, dtype=torch.float32, device=device)
            if device.type == "cpu":
                self._scratch_cache[d] = scratch
        return scratch

    def _before_read(self) -> None:
        """Wait for whatever is still writing the buffer (nothing here; see `OffloadedFlatCopy`)."""

    def state(self) -> list[torch.Tensor]:
        return self.flats

    def load(self, flats: Sequence[torch.Tensor], name: str) -> None:
        self._norm_sq = None
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
    `_CHUNK` elements of accelerator memory at a time), with copies enqueued on the current
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
        self._norm_sq = None
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
        self._norm_sq = None
        self._sync()
        for view, t in zip(self.views, tensors):
            flat_view, flat_t = view.view(-1), t.detach().reshape(-1)
            for start in range(0, flat_t.numel(), _CHUNK):
                mine = flat_view[start : start + _CHUNK]
                diff = mine.to(t.device, non_blocking=True) - flat_t[start : start + _CHUNK]
                mine.copy_(diff, non_blocking=True)

    def lerp_(self, other: FlatCopy, weight: float) -> None:
        self._norm_sq = None
        self._sync()
        other._sync()
        for mine, theirs, device in zip(self.flats, other.flats, self.devices):
            for start in range(0, mine.numel(), _CHUNK):
                a = mine[start : start + _CHUNK].to(device, non_blocking=True)
                a.lerp_(theirs[start : start + _CHUNK].to(device, non_blocking=True), weight)
                mine[start : start + _CHUNK].copy_(a, non_blocking=True)

    def _before_read(self) -> None:
        self._sync()

    def advance(self, tensors: Sequence[torch.Tensor], spare: FlatCopy, extra: Sequence[tuple] = ()) -> torch.Tensor:
        # Three streamed passes instead of one fused pass: the snapshot copy runs on the side stream.
        known = spare._norm_sq
        self.subtract(tensors)
        pairs = [(self, spare), (self, self), (spare, spare)]
        sums = flat_sums(pairs[:2] if known is not None else pairs)
        spare.copy_from(tensors)
        if extra:
            sums = torch.cat([sums, flat_sums(extra)])
        return self._finish_advance(spare, sums, known)

    def state(self) -> list[torch.Tensor]:
        self._host_sync()
        return self.flats

    def load(self, flats: Sequence[torch.Tensor], name: str) -> None:
        self._norm_sq = None
        self._host_sync()
        super().load(flats, name)


def _chunk_pairs(pairs: Sequence[tuple], d: int, lo: int, hi: int, device: torch.device) -> list:
    """The elements `lo:hi` of the buffers of device `d` of every term of `pairs`, on `device`."""

    def piece(term):
        if isinstance(term, FlatCopy):
            return term.flats[d][lo:hi].to(device, non_blocking=True)
        a, b = term
        return piece(a) - piece(b)

    out = []
    for left, right in pairs:
        x = piece(left)
        out.append((x, x if right is left or right == left else piece(right)))  # |a - b|^2: one difference
    return out


def flat_sums(pairs: Sequence[tuple]) -> torch.Tensor:
    """`<u, v>` for every pair `(u, v)` in one chunked pass, in float64 on the CPU, over the counted tensors.

    Each term is a `FlatCopy` or a tuple `(a, b)` standing for `a - b`; all of one layout. The sums
    are the fast ones of `angles` (float32 chunks summed in float64): `[(u, u)]` gives `|u|^2`,
    `[((x, y), (x, y))]` gives `|x - y|^2` without a buffer for the difference.
    """
    copies = []
    for pair in pairs:
        for term in pair:
            copies.extend([term] if isinstance(term, FlatCopy) else term)
    if not copies:
        return torch.zeros(0, dtype=torch.float64)
    for c in copies:
        c._before_read()
    layout = copies[0]
    offloaded = any(isinstance(c, OffloadedFlatCopy) for c in copies)
    total = torch.zeros(len(pairs), dtype=torch.float64)
    for d, device in enumerate(layout.devices):
        # Chunks of offloaded buffers travel to the device: no larger than the transfers elsewhere.
        chunk = min(chunk_elements(device), _CHUNK) if offloaded else chunk_elements(device)
        counted = layout._counted_sizes[d]
        table = torch.empty((-(-counted // chunk), len(pairs)), dtype=torch.float64, device=device)
        scratch = layout._scratch(d, chunk, counted, len(pairs))
        for row, lo in enumerate(range(0, counted, chunk)):
            hi = min(lo + chunk, counted)
            chunk_dots(_chunk_pairs(pairs, d, lo, hi, device), table[row], scratch)
        total += table.sum(0).cpu()
    return total

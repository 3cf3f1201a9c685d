"""Several processes (``accelerate launch --num_processes N``) with no branch on N.

Everything here does the same thing on one process as on N; with one process the collectives
are no-ops.

* :class:`MicroBatch`: the randomness of one micro-batch (diffusion timesteps and noise, the
  classifier-free-guidance drop, the autoencoder's latent noise), drawn so that it does not depend on
  the process count; and :meth:`MicroBatch.global_mean`, for means over a count that varies between
  micro-batches (real segments, target tokens). Every process seeds the same generator from ``(seed, step, micro-batch)``,
  draws the rows of the whole global batch (``rows x num_processes``) and keeps its own slice, so
  row ``j`` of the global batch gets the same numbers whether one process holds the whole batch
  or N processes hold a part each. Per-batch choices (the self-conditioning coin) are drawn
  whole and agree on every process. ``fit`` sets one around every ``loss_fn`` call;
  :func:`micro_batch` returns it (None outside training, where callers fall back to the global
  RNG or their own generator). Dropout masks still come from each process's torch RNG.
* :func:`global_mean`: ``total / count`` with the count summed over the processes (times the
  process count, since DDP averages the processes' gradients): each process's loss term then
  trains and logs as the mean over the whole global batch, not the mean of the processes' means
  (which differ when one process holds more real segments or tokens than another).
* :func:`map_shards`: split evaluation work (generation, reconstruction) between the processes
  in chunks, run it, and gather the results in their original order on every process. Chunks go
  round-robin and are gathered as Python objects, so nothing is padded and there is no padded
  tail to drop; a chunk's seed is its index, so the outputs do not depend on the process count.
* :func:`is_main_process`: for evaluation code that writes files (once).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, reduce

T = TypeVar("T")
R = TypeVar("R")

_current: contextvars.ContextVar[MicroBatch | None] = contextvars.ContextVar("sld_micro_batch", default=None)


def _mix(*numbers: int) -> int:
    """A 63-bit seed from a few integers (splitmix64 steps; stable across Python runs)."""
    value = 0x9E3779B97F4A7C15
    for number in numbers:
        value = (value ^ (number & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


class MicroBatch:
    """Randomness of one micro-batch that is the same for the global batch on any process count.

    ``draw(fn, device, *args, size)`` calls a torch random function (``torch.randn``,
    ``torch.rand``, ``torch.randint``) whose last argument is the size. A size with a first
    dimension is a per-row draw: ``rows x num_processes`` rows are drawn and rows
    ``[process_index x rows, (process_index + 1) x rows)`` returned (every process of a step must
    hold the same number of rows, as accelerate's even batches ensure). A size of ``()`` is a
    per-batch draw, the same on every process. One generator per device type, seeded alike.
    """

    def __init__(self, seed: int, process_index: int = 0, num_processes: int = 1) -> None:
        self.seed = seed
        self.process_index = process_index
        self.num_processes = num_processes
        self._generators: dict[str, torch.Generator] = {}

    @classmethod
    def for_micro_batch(cls, seed: int, step: int, micro_batch: int) -> MicroBatch:
        """The randomness of micro-batch ``micro_batch`` of optimizer step ``step`` (0-based)."""
        state = PartialState()
        return cls(_mix(seed, step, micro_batch), state.process_index, state.num_processes)

    def generator(self, device: torch.device | str) -> torch.Generator:
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def draw(self, fn: Callable[..., torch.Tensor], device: torch.device | str, *args: Any) -> torch.Tensor:
        *head, size = args
        size = tuple(size)
        generator = self.generator(device)
        if not size:
            return fn(*head, size, generator=generator, device=device)
        rows = size[0]
        full = fn(*head, (rows * self.num_processes, *size[1:]), generator=generator, device=device)
        return full[self.process_index * rows : (self.process_index + 1) * rows]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x`` (rows along its first dimension)."""
        return self.draw(torch.randn, x.device, x.shape).to(x.dtype)

    def global_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``total`` over the global batch's ``count`` (summed over the processes: a collective,
        with no host sync), times the process count: averaged over the processes as DDP averages
        their gradients, this is the mean over the global batch."""
        everywhere = reduce(count.detach().float(), reduction="sum")
        return total * self.num_processes / everywhere.clamp_min(1.0)


def micro_batch() -> MicroBatch | None:
    """The :class:`MicroBatch` of the micro-batch being trained (None outside ``fit``'s loss call)."""
    return _current.get()


@contextmanager
def in_micro_batch(random: MicroBatch | None) -> Iterator[MicroBatch | None]:
    """Make ``random`` what :func:`micro_batch` returns inside the block."""
    token = _current.set(random)
    try:
        yield random
    finally:
        _current.reset(token)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Noise like ``x``: from the micro-batch's :class:`MicroBatch` when training, else the torch RNG."""
    random = micro_batch()
    return random.randn_like(x) if random is not None else torch.randn_like(x)


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` (a count of 0 counts as 1); inside ``fit``, over the global batch
    (:meth:`MicroBatch.global_mean`; every process of the step must call it alike)."""
    current = micro_batch()
    if current is not None:
        return current.global_mean(total, count)
    return total / count.detach().float().clamp_min(1.0)


def is_main_process() -> bool:
    return PartialState().is_main_process


def map_shards(fn: Callable[[list[T], int], Sequence[R]], items: Sequence[T], chunk_size: int) -> list[R]:
    """``fn(chunk, chunk_index)`` over ``items`` in chunks of ``chunk_size``, split between processes.

    Chunk ``k`` runs on process ``k % num_processes``; every process gets all results back, in
    the order of ``items`` (``fn`` returns one result per item of its chunk). Every process must
    call this (it gathers). Seed any randomness in ``fn`` from ``chunk_index`` so the results do
    not depend on the process count.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    state = PartialState()
    starts = range(0, len(items), chunk_size)
    mine = []
    for index, start in enumerate(starts):
        if index % state.num_processes == state.process_index:
            chunk = list(items[start : start + chunk_size])
            results = list(fn(chunk, index))
            if len(results) != len(chunk):
                raise ValueError(f"map_shards: {len(results)} results for a chunk of {len(chunk)} items")
            mine.append((index, results))
    gathered = gather_object(mine)
    return [result for _, results in sorted(gathered, key=lambda pair: pair[0]) for result in results]


__all__ = [
    "MicroBatch",
    "global_mean",
    "in_micro_batch",
    "is_main_process",
    "map_shards",
    "micro_batch",
    "randn_like",
]

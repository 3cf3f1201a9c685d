"""The CUDA caching allocator's counters in a training run's log rows (CUDA only).

A step whose tensors change size from batch to batch (length-grouped batches, buckets) can leave
the caching allocator unable to reuse its cached blocks: it then calls ``cudaMalloc`` / ``cudaFree``
again, and when a request fails it frees every cached block and retries, synchronising the device.
Peak allocated memory does not show that; these counters do. Every log row of ``fit`` on a GPU
gets, since the row before (the first row: since the process started):

* ``train/cuda_mallocs`` and ``train/cuda_frees``: ``cudaMalloc`` / ``cudaFree`` calls (once its cache
  holds what a step needs, a run whose steps repeat their shapes makes none);
* ``train/allocator_retries``: failed requests retried after freeing the cache (each a device sync);

and ``train/reserved_gib``, the memory the allocator holds now. They come from
``torch.cuda.memory_stats`` (host-side counters, no device sync); a counter a torch release lacks is
left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["AllocatorCounters", "cuda_memory_row"]

# torch.cuda.memory_stats key -> log key (counted since the previous row)
COUNTERS = {
    "num_device_alloc": "train/cuda_mallocs",
    "num_device_free": "train/cuda_frees",
    "num_alloc_retries": "train/allocator_retries",
}


class AllocatorCounters:
    """Turns successive ``torch.cuda.memory_stats`` dicts into log-row entries (module docstring)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def row(self, stats: Mapping[str, int]) -> dict[str, float]:
        """The entries of one log row from ``stats`` (one ``torch.cuda.memory_stats(device)``)."""
        row: dict[str, float] = {}
        if "reserved_bytes.all.current" in stats:
            row["train/reserved_gib"] = stats["reserved_bytes.all.current"] / 2**30
        for key, name in COUNTERS.items():
            if key in stats:
                row[name] = stats[key] - self._last.get(key, 0)
                self._last[key] = stats[key]
        return row


def cuda_memory_row(device: torch.device, counters: AllocatorCounters) -> dict[str, float]:
    """A GPU log row's memory entries: ``train/peak_memory_gib`` (``max_memory_allocated``) and
    ``counters``' entries for ``device`` (host-side counters: no device sync)."""
    return {
        "train/peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        **counters.row(torch.cuda.memory_stats(device)),
    }

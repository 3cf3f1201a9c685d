"""How the benchmarks time generation and measure its memory, on a GPU or a CPU.

* ``synchronize``: wait for queued GPU work, so that a timer reads real compute time; every timed
  region starts and ends with one.
* ``timed_runs``: an untimed warm-up call (kernel selection, allocator, caches), then ``repeats``
  timed calls; the benchmarks report the median.
* ``MemoryMonitor``: peak working memory of a block of code. On a GPU
  ``torch.cuda.max_memory_allocated`` minus the allocation at the start (loaded weights excluded);
  on a CPU the growth of the process's resident set (peak RSS above the RSS at the start when Linux
  lets the peak be reset, else the RSS after minus before); "n/a" elsewhere. ``measure`` says which.
* ``parameter_mib`` (weights, reported apart) and ``device_description`` (the report header).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MEMORY_CUDA",
    "MEMORY_NA",
    "MEMORY_PEAK_RSS",
    "MEMORY_RSS_DELTA",
    "MemoryMonitor",
    "cuda_graph_skips",
    "device_description",
    "median",
    "parameter_mib",
    "profile_call",
    "synchronize",
    "timed_runs",
]

MEMORY_CUDA = "CUDA max_memory_allocated above the start (MiB, loaded weights excluded)"
MEMORY_PEAK_RSS = "CPU peak RSS above start (MiB)"
MEMORY_RSS_DELTA = "CPU RSS after - before (MiB)"
MEMORY_NA = "n/a"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer reads real compute time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True
) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn``, each between two device synchronisations.

    With ``warmup`` one untimed call runs first.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup:
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no timed runs")
    return float(statistics.median(values))


def _proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryMonitor:
    """Peak memory over a block of code (see the module docstring for what is measured where).

    Use as ``with MemoryMonitor(device) as mem: ...``; then ``mem.peak_mib`` and ``mem.measure``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None
        self.measure = MEMORY_NA
        self._start_rss: float | None = None
        self._start_allocated = 0
        self._peak_reset = False

    def __enter__(self) -> MemoryMonitor:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_allocated = torch.cuda.memory_allocated(self.device)
            return self
        self._start_rss = _proc_status_mib("VmRSS")
        try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self._peak_reset = True
        except OSError:
            self._peak_reset = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._start_allocated) / 2**20
            self.measure = MEMORY_CUDA
            return
        if self._start_rss is None:
            return
        end = _proc_status_mib("VmHWM" if self._peak_reset else "VmRSS")
        if end is None:
            return
        self.peak_mib = max(0.0, end - self._start_rss)
        self.measure = MEMORY_PEAK_RSS if self._peak_reset else MEMORY_RSS_DELTA


def parameter_mib(*modules: torch.nn.Module) -> float:
    """Memory of the parameters and buffers of ``modules`` in MiB (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values()) / 2**20


def device_description(device: torch.device) -> str:
    """The device in words, for the report header."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{device.type} ({torch.get_num_threads()} threads, torch {torch.__version__})"


def cuda_graph_skips() -> int:
    """How many compiled functions torch has run without CUDA graphs in this process so far.

    torch's ``cudagraph_skips`` counter: the CUDA-graph backend of the static-cache token step and the
    graphed denoiser (``sld.models.cuda_graphs.replay_backend``: torch's ``cudagraphs`` or sld's
    ``static_graphs``) falls back to running its traced graph kernel by kernel (with a log warning) when a graph cannot be recorded,
    e.g. on writes into a copied input or CPU tensors. A benchmark reports it so
    that "static" rows say whether they were replayed as graphs.
    """
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def profile_call(fn: Callable[[], Any], device: torch.device, path: str | Path, title: str) -> Path:
    """Run ``fn`` once under torch.profiler (CPU, and CUDA on a GPU) and write the summary tables to
    ``path``: where one call's time goes, by operator and by the ``sld.*`` ranges of generation
    (``sld.context``, ``sld.denoise``, ``sld.decode``, ``sld.token_steps``). Warm ``fn`` up first."""
    from sld.profile_digest import profile_tables

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    path = Path(path)
    header = (
        f"torch.profiler summary of one call: {title} on {device} ({seconds:.3f} s with the profiler on).\n"
    )
    path.write_text(profile_tables(profiler, device, header))
    return path

"""Timing harness: warm-up and repeats, and what the memory monitor reports on a CPU."""

from __future__ import annotations

import pytest
import torch

from sld.eval.timing import (
    MEMORY_NA,
    MEMORY_PEAK_RSS,
    MEMORY_RSS_DELTA,
    MemoryMonitor,
    cuda_graph_skips,
    median,
    timed_runs,
)


def test_timed_runs_warm_up_then_repeat():
    calls = []
    seconds = timed_runs(lambda: calls.append(1), torch.device("cpu"), repeats=3)
    assert len(calls) == 4 and len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert len(timed_runs(lambda: calls.append(1), torch.device("cpu"), repeats=2, warmup=False)) == 2
    assert len(calls) == 6
    with pytest.raises(ValueError):
        timed_runs(lambda: None, torch.device("cpu"), repeats=0)


def test_memory_monitor_on_cpu_reports_what_it_measured():
    with MemoryMonitor(torch.device("cpu")) as memory:
        block = torch.ones(8 * 2**20 // 4)  # 8 MiB
        block.add_(1)
    assert memory.measure in (MEMORY_PEAK_RSS, MEMORY_RSS_DELTA, MEMORY_NA)
    if memory.measure != MEMORY_NA:
        assert memory.peak_mib is not None and memory.peak_mib >= 0


def test_median():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0]) == 1.5
    with pytest.raises(ValueError):
        median([])


def test_cuda_graph_skips_counts_functions_the_cudagraphs_backend_ran_without_graphs():
    """On CPU tensors the ``cudagraphs`` backend cannot record a graph: it runs the traced graph and
    bumps the counter the benchmark reports (the key is torch's; a rename would show here)."""
    before = cuda_graph_skips()
    step = torch.compile(lambda x: x * 2 + 1, backend="cudagraphs", fullgraph=True)
    assert torch.equal(step(torch.ones(3)), torch.full((3,), 3.0))
    assert cuda_graph_skips() == before + 1

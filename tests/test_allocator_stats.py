"""sld.allocator_stats: the caching allocator's counters per log row, from memory_stats dicts."""

from __future__ import annotations

from sld.allocator_stats import AllocatorCounters


def memory_stats(allocs: int, frees: int, retries: int, reserved: int) -> dict[str, int]:
    """The ``torch.cuda.memory_stats`` entries the counters read (totals since the process started)."""
    return {
        "num_device_alloc": allocs,
        "num_device_free": frees,
        "num_alloc_retries": retries,
        "reserved_bytes.all.current": reserved,
    }


def logged(mallocs: float, frees: float, retries: float, reserved_gib: float) -> dict[str, float]:
    return {
        "train/reserved_gib": reserved_gib,
        "train/cuda_mallocs": mallocs,
        "train/cuda_frees": frees,
        "train/allocator_retries": retries,
    }


def test_counters_are_counted_since_the_previous_row_and_reserved_memory_is_current():
    counters = AllocatorCounters()
    assert counters.row(memory_stats(40, 2, 0, 2**31)) == logged(40, 2, 0, 2.0)
    assert counters.row(memory_stats(43, 5, 1, 2**30)) == logged(3, 3, 1, 1.0)


def test_a_counter_the_torch_release_lacks_is_left_out():
    assert AllocatorCounters().row({"num_device_alloc": 7}) == {"train/cuda_mallocs": 7}
    assert AllocatorCounters().row({}) == {}


def test_a_gpu_rows_memory_entries_come_from_the_devices_counters(monkeypatch):
    import torch

    from sld.allocator_stats import cuda_memory_row

    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: asked.append(device) or 3 * 2**30)
    monkeypatch.setattr(
        torch.cuda, "memory_stats", lambda device: asked.append(device) or {"num_device_alloc": 5}
    )
    device = torch.device("cuda", 1)
    counters = AllocatorCounters()
    assert cuda_memory_row(device, counters) == {"train/peak_memory_gib": 3.0, "train/cuda_mallocs": 5}
    assert cuda_memory_row(device, counters)["train/cuda_mallocs"] == 0  # none since the row before
    assert asked == [device] * 4

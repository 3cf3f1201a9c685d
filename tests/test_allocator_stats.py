"""sld.allocator_stats: the caching allocator's counters per log row, from memory_stats dicts."""

from __future__ import annotations

from sld.allocator_stats import AllocatorCounters


def test_counters_are_counted_since_the_previous_row_and_reserved_memory_is_current():
    counters = AllocatorCounters()
    first = counters.row(
        {
            "num_device_alloc": 40,
            "num_device_free": 2,
            "num_alloc_retries": 0,
            "reserved_bytes.all.current": 2**31,
        }
    )
    assert first == {
        "train/reserved_gib": 2.0,
        "train/cuda_mallocs": 40,
        "train/cuda_frees": 2,
        "train/allocator_retries": 0,
    }
    second = counters.row(
        {
            "num_device_alloc": 43,
            "num_device_free": 5,
            "num_alloc_retries": 1,
            "reserved_bytes.all.current": 2**30,
        }
    )
    assert second == {
        "train/reserved_gib": 1.0,
        "train/cuda_mallocs": 3,
        "train/cuda_frees": 3,
        "train/allocator_retries": 1,
    }


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

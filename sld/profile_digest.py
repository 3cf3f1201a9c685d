"""What a torch.profiler run says about a step: the per-step digest and the summary tables.

``profile_tables`` writes the text of ``profile.txt`` (``loop.profile_steps``, ``sld.loop_timing``;
``sld.eval.timing`` for one generation call): ``step_digest``'s per-step lines (the device's busy time,
kernel launches, host syncs, data loading, the named ranges), on a GPU ``device_idle``'s line (the
device's idle time between kernels, charged to what the host was doing meanwhile) and
``kernel_kinds``' (the busy time by what the kernels do), then the top operators by self CUDA and CPU
time. ``examples/step_breakdown.py`` reads those files back.
"""

from __future__ import annotations

from typing import Any

import torch

# host-side calls that start a kernel, and those that make the host wait for the device
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
HOST_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
DATA_LOADING = "enumerate(DataLoader)"
# A "Command Buffer Full" row (CUPTI's record of the host blocked on a full queue of launches) is a
# host event: its "self CUDA" time is that of the kernels launched while it blocked, which their own
# rows count already, so torch's device total and the digest's busy time leave it out. (On an H100,
# 2026-12-05: the compiled denoiser's busy 178.8 ms a step, the table's total, plus 5.6 ms idle
# between kernels matched an unprofiled step's 186 ms; the row's 12.6 ms were not extra device work.)


def step_digest(averages: Any, steps: int, wall_ms_per_step: float) -> list[str]:
    """Where a profiled step's time went, per step: the device's busy time (the self time of every
    device event but the ``record_function`` ranges, as torch's table totals it) against the wall
    time, kernel launches, host syncs (a sync inside a step keeps the host from queueing the next
    kernels while the device works) and data loading. ``averages``: a profiler's ``key_averages()``
    (events with ``key``, ``count``, ``device_type``, ``self_device_time_total``,
    ``is_user_annotation`` and ``cpu_time_total`` in microseconds)."""
    from torch.autograd import DeviceType

    steps = max(1, steps)
    on_device = [e for e in averages if e.device_type != DeviceType.CPU]
    # record_function ranges drawn on the device's timeline span kernels counted on their own
    ranges = [e for e in on_device if getattr(e, "is_user_annotation", False)]
    kernels = [e for e in on_device if not getattr(e, "is_user_annotation", False)]
    device_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in averages if e.key in KERNEL_LAUNCHES)
    syncs = [e for e in averages if e.key in HOST_SYNCS]
    loading = [e for e in averages if e.key.startswith(DATA_LOADING)]
    lines = [f"Per step: {wall_ms_per_step:.1f} ms of wall time with the profiler on"]
    if device_us:
        busy = device_us / 1000 / steps
        lines.append(
            f"  device busy {busy:.1f} ms ({busy / wall_ms_per_step:.0%} of the wall time; the rest the "
            f"device waited on the host), {launches / steps:,.0f} kernel launches"
        )
    sync_ms = sum(e.cpu_time_total for e in syncs) / 1000 / steps
    lines.append(
        f"  host syncs: {sum(e.count for e in syncs) / steps:.1f} a step, {sync_ms:.1f} ms waiting"
        + (" (" + ", ".join(f"{e.key} x{e.count}" for e in syncs) + ")" if syncs else "")
    )
    if loading:
        load_ms = sum(e.cpu_time_total for e in loading) / 1000 / steps
        lines.append(f"  data loading (next batch): {load_ms:.1f} ms")
    if ranges:  # the span of each named range, nested ones too, longest first
        ranges.sort(key=lambda e: -e.self_device_time_total)
        spans = ", ".join(f"{e.key} {e.self_device_time_total / 1000 / steps:.1f}" for e in ranges)
        lines.append(f"  named ranges on the device, ms a step: {spans}")
    return lines


# What a kernel's name says it does, first match wins (lower-case substrings; a kind may come twice):
# Inductor's kernels first, by their prefix (``triton_tem_`` its matrix-product templates, ``triton_poi_``
# fused pointwise, ``triton_per_`` / ``triton_red_`` fused reductions), since their names list the ops
# they fused (an input copy for an attention kernel names the attention); then attention before matrix
# products, since PyTorch's memory-efficient attention kernels are named after CUTLASS.
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matrix products", ("triton_tem_",)),
    ("fused pointwise (Triton)", ("triton_poi_",)),
    ("fused reductions (Triton)", ("triton_per_", "triton_red_")),
    ("attention", ("fmha", "flash", "attention", "attn")),
    ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm80_", "sm90_")),
    ("optimizer", ("multi_tensor_apply", "adam", "foreach")),
    ("norms", ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "batch_norm", "group_norm")),
    ("copies and fills", ("memcpy", "memset", "copy", "fill")),
    ("softmax and cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("reductions (aten)", ("reduce_kernel", "reduction")),
    ("elementwise (aten)", ("elementwise_kernel",)),
)
KINDS_NOTE = "device time by kernel kind, ms a step"


def kernel_kind(name: str) -> str:
    """The ``KERNEL_KINDS`` entry a kernel's name matches, else "other"."""
    lowered = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other"


def kernel_kinds(averages: Any, steps: int) -> str | None:
    """The device's busy time a step split by what its kernels do (``kernel_kind`` of each kernel's
    name: matrix products, attention, Triton's fused kernels, norms, copies, aten elementwise...),
    largest first; every kernel is counted, not only the table's top rows. ``averages`` as for
    ``step_digest``. None without device work."""
    from torch.autograd import DeviceType

    totals: dict[str, float] = {}
    for event in averages:
        if event.device_type == DeviceType.CPU or getattr(event, "is_user_annotation", False):
            continue
        kind = kernel_kind(event.key)
        totals[kind] = totals.get(kind, 0.0) + event.self_device_time_total
    if not any(totals.values()):
        return None
    per_step = max(1, steps) * 1000.0
    parts = sorted(totals.items(), key=lambda item: -item[1])
    return f"  {KINDS_NOTE}: " + ", ".join(f"{kind} {us / per_step:.1f}" for kind, us in parts)


# the host-side phases a device gap is charged to (in this order, should two overlap)
HOST_PHASES = ("sld.loss_fn", "sld.backward", "sld.optimizer", DATA_LOADING)
IDLE_NOTE = "device idle between kernels"


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, overlapping or touching (start, end) intervals merged into disjoint ones."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def device_idle(events: Any, steps: int) -> str | None:
    """Where the device sat idle between the profiled steps' first and last kernel, charged to what
    the host was doing meanwhile, in ms a step: a gap while the host is inside ``sld.loss_fn`` means
    the forward's kernels were issued more slowly than the device ran them, and so on for each of
    ``HOST_PHASES``; "between phases" is host time outside them (the loop's own work, logging).

    ``events``: a stopped profiler's ``events()`` (each with ``name``, ``device_type``,
    ``is_user_annotation`` and ``time_range.start`` / ``.end`` in microseconds, the device's on the
    host's clock). Device work is every device event but the ``record_function`` ranges. None
    without device work.
    """
    from torch.autograd import DeviceType

    busy: list[tuple[float, float]] = []
    phases: dict[str, list[tuple[float, float]]] = {phase: [] for phase in HOST_PHASES}
    for event in events:
        span = (float(event.time_range.start), float(event.time_range.end))
        if event.device_type != DeviceType.CPU:
            if not getattr(event, "is_user_annotation", False):
                busy.append(span)
            continue
        for phase in HOST_PHASES:
            if event.name.startswith(phase):
                phases[phase].append(span)
                break
    busy = _merged(busy)
    if not busy:
        return None
    gaps = [(end, start) for (_, end), (start, _) in zip(busy, busy[1:], strict=False) if start > end]
    charged = dict.fromkeys(HOST_PHASES, 0.0)
    total = sum(end - start for start, end in gaps)
    for phase in HOST_PHASES:  # each gap's part inside the phase is charged to it and taken off the gap
        spans = _merged(phases[phase])
        left = [piece for start, end in gaps for piece in _outside(start, end, spans)]
        charged[phase] = sum(end - start for start, end in gaps) - sum(end - start for start, end in left)
        gaps = left
    per_step = max(1, steps) * 1000.0
    names = {DATA_LOADING: "data loading"}
    parts = [f"{names.get(phase, phase)} {charged[phase] / per_step:.1f}" for phase in HOST_PHASES]
    parts.append(f"between phases {sum(end - start for start, end in gaps) / per_step:.1f}")
    return f"  {IDLE_NOTE}: {total / per_step:.1f} ms a step, while the host was in " + ", ".join(parts)


def _outside(start: float, end: float, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The pieces of [start, end) that none of the disjoint sorted ``spans`` covers."""
    pieces = []
    for s_start, s_end in spans:
        if s_end <= start or s_start >= end:
            continue
        if s_start > start:
            pieces.append((start, s_start))
        start = max(start, s_end)
    if start < end:
        pieces.append((start, end))
    return pieces


def profile_tables(
    profiler: Any,
    device: torch.device,
    header: str,
    rows: int = 30,
    steps: int = 0,
    wall_ms_per_step: float = 0.0,
) -> str:
    """A stopped ``torch.profiler.profile``'s summary: ``header``, the ``step_digest`` when ``steps``
    is given, then the top ``rows`` operators and ranges by self CUDA time (on a GPU) and by self CPU
    time."""
    averages = profiler.key_averages()
    parts = [header]
    if steps:
        digest = step_digest(averages, steps, wall_ms_per_step)
        if device.type == "cuda" and (idle := device_idle(profiler.events(), steps)) is not None:
            digest.insert(2, idle)
        if (kinds := kernel_kinds(averages, steps)) is not None:
            digest.append(kinds)
        parts.append("\n".join(digest) + "\n")
    if device.type == "cuda":
        parts.append("\nTop operators by self CUDA time:\n")
        parts.append(averages.table(sort_by="self_device_time_total", row_limit=rows))
    parts.append("\nTop operators by self CPU time:\n")
    parts.append(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(parts) + "\n"


__all__ = [
    "DATA_LOADING",
    "HOST_PHASES",
    "HOST_SYNCS",
    "IDLE_NOTE",
    "KERNEL_KINDS",
    "KERNEL_LAUNCHES",
    "KINDS_NOTE",
    "device_idle",
    "kernel_kind",
    "kernel_kinds",
    "profile_tables",
    "step_digest",
]

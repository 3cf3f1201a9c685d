"""Where a training step's time goes, several runs side by side, from their ``profile.txt`` (host only).

    python examples/step_breakdown.py results/throughput_before_prof_profile.txt results/throughput_after_prof_profile.txt

A run with ``loop.profile_steps=N`` writes a torch.profiler summary of N steps to ``profile.txt``
(``sld.loop_timing``, ``sld.profile_digest``). This prints one Markdown row per file: the profiled steps, the wall time of a
step with the profiler on, the device's busy time (and its share of the wall time), its idle time
between kernels with the host phase that had most of it (``sld.profile_digest.device_idle``), kernel launches,
host syncs and data loading a step, and the matrix products' and attention kernels' share of the
device time, then the largest ``aten`` operators by device time (shares and operators from the rows
of the summary's table, its 30 largest entries: a lower bound where smaller ones add up); then, for
summaries that have the digest's kernel-kind line (``sld.profile_digest.kernel_kinds``, every kernel
counted), a second table of the busy time a step by kernel kind. Older codes' summaries lack the
per-step digest; their device time then comes from the table's "Self CUDA time total" line and the
columns they lack read "-". A profiled step is slower than an unprofiled one: compare profiles with
profiles, and rates from timed runs (``examples/throughput_window.py``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sld.errors import DataError

HEADER = re.compile(
    r"torch\.profiler summary of (\d+) optimizer steps .*\(([\d.]+) ms per step with the profiler on\)"
)
BUSY = re.compile(r"device busy ([\d.]+) ms .*?, ([\d,]+) kernel launches")
SYNCS = re.compile(r"host syncs: ([\d.]+) a step, ([\d.]+) ms waiting")
LOADING = re.compile(r"data loading \(next batch\): ([\d.]+) ms")
IDLE = re.compile(r"device idle between kernels: ([\d.]+) ms a step, while the host was in (.*)")
IDLE_PART = re.compile(r"(\S[^,]*?) ([\d.]+)(?:,|$)")
KINDS = re.compile(r"device time by kernel kind, ms a step: (.*)")
CUDA_TOTAL = re.compile(r"Self CUDA time total: ([\d.]+)(us|ms|s)\b")
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
TABLE_TITLE = "Top operators by self CUDA time:"
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm")


@dataclass
class StepProfile:
    """The per-step figures of one ``profile.txt`` (None where the file does not give one)."""

    steps: int
    wall_ms: float
    busy_ms: float | None = None
    launches: float | None = None
    syncs: float | None = None
    loading_ms: float | None = None
    # the device's idle time between kernels a step, and where the host was meanwhile: (phase, ms)
    idle_ms: float | None = None
    idle_parts: list[tuple[str, float]] = field(default_factory=list)
    # self device time per step of each aten operator of the CUDA table, largest first: (name, ms)
    operators: list[tuple[str, float]] = field(default_factory=list)
    # the busy time a step by kernel kind (sld.profile_digest.kernel_kinds), largest first: (kind, ms)
    kinds: list[tuple[str, float]] = field(default_factory=list)


def _duration_ms(text: str) -> float:
    """'840.828ms', '1.491s', '997.000us' -> milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * UNIT_MS[match.group(2)]


def cuda_operators(text: str, steps: int) -> list[tuple[str, float]]:
    """The ``aten::`` rows of the table sorted by self CUDA time: (name, self CUDA ms a step)."""
    if TABLE_TITLE not in text:
        return []
    table = text.split(TABLE_TITLE, 1)[1]
    lines = table.splitlines()
    header = next((line for line in lines if "Self CUDA" in line and "Name" in line), None)
    if header is None:
        return []
    column = re.split(r"\s{2,}", header.strip()).index("Self CUDA")
    operators = []
    for line in lines[lines.index(header) + 1 :]:
        if line.startswith("Self CPU time total"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < column + 1 or not cells[0].startswith("aten::"):
            continue
        try:
            operators.append((cells[0], _duration_ms(cells[column]) / steps))
        except ValueError:
            continue
    return operators


def read_profile(path: Path) -> StepProfile:
    """Parse a ``profile.txt`` written by ``loop.profile_steps``; DataError names a file that is not one."""
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    header = HEADER.search(text)
    if header is None:
        raise DataError(
            f"{path}: not a profile.txt of loop.profile_steps (no 'torch.profiler summary of N optimizer steps' line)"
        )
    steps, wall_ms = int(header.group(1)), float(header.group(2))
    profile = StepProfile(steps=steps, wall_ms=wall_ms, operators=cuda_operators(text, steps))
    if busy := BUSY.search(text):
        profile.busy_ms, profile.launches = float(busy.group(1)), float(busy.group(2).replace(",", ""))
    elif total := CUDA_TOTAL.search(text):
        profile.busy_ms = float(total.group(1)) * UNIT_MS[total.group(2)] / steps
    if idle := IDLE.search(text):
        profile.idle_ms = float(idle.group(1))
        profile.idle_parts = [
            (part.group(1), float(part.group(2))) for part in IDLE_PART.finditer(idle.group(2))
        ]
    if kinds := KINDS.search(text):
        profile.kinds = [(part.group(1), float(part.group(2))) for part in IDLE_PART.finditer(kinds.group(1))]
    if syncs := SYNCS.search(text):
        profile.syncs = float(syncs.group(1))
    if loading := LOADING.search(text):
        profile.loading_ms = float(loading.group(1))
    return profile


def _share(profile: StepProfile, picks: Callable[[str], bool]) -> str:
    """The share of the device's busy time spent in the table's operators that ``picks`` names."""
    if not profile.busy_ms:
        return "-"
    picked = sum(ms for name, ms in profile.operators if picks(name))
    return f"{100 * picked / profile.busy_ms:.0f}%"


def _idle(profile: StepProfile) -> str:
    """The idle time and the host phase that had the largest part of it ("-" in older summaries)."""
    if profile.idle_ms is None:
        return "-"
    if not profile.idle_parts:
        return f"{profile.idle_ms:.1f}"
    phase, ms = max(profile.idle_parts, key=lambda part: part[1])
    return f"{profile.idle_ms:.1f} ({phase} {ms:.1f})"


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def table(paths: list[Path], top: int = 4) -> list[str]:
    """The Markdown lines of the comparison (see the module docstring)."""
    lines = [
        "| run | steps | ms a step (profiler on) | device busy ms (share) | device idle ms (host mostly in) | "
        "launches | host syncs | data loading ms | matmul | attention | largest aten operators, ms a step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    profiles = [(path, read_profile(path)) for path in paths]
    for path, p in profiles:
        busy = "-" if p.busy_ms is None else f"{p.busy_ms:.1f} ({p.busy_ms / p.wall_ms:.0%})"
        largest = (
            ", ".join(f"{name.removeprefix('aten::')} {ms:.1f}" for name, ms in p.operators[:top]) or "-"
        )
        lines.append(
            f"| {path.name.removesuffix('.txt')} | {p.steps} | {p.wall_ms:.1f} | {busy} | "
            f"{_idle(p)} | {_number(p.launches, ',.0f')} | "
            f"{_number(p.syncs, '.1f')} | {_number(p.loading_ms, '.1f')} | {_share(p, MATMULS.__contains__)} | "
            f"{_share(p, lambda name: 'attention' in name)} | {largest} |"
        )
    return lines + kinds_table(profiles)


def kinds_table(profiles: list[tuple[Path, StepProfile]]) -> list[str]:
    """The device's busy ms a step by kernel kind, one row per run that has the digest's line (every
    kernel counted, not only the table's top rows); no lines when none has it."""
    kinds: list[str] = []
    for _, p in profiles:
        kinds += [kind for kind, _ in p.kinds if kind not in kinds]
    if not kinds:
        return []
    lines = ["", "Device ms a step by kernel kind:", "", "| run | " + " | ".join(kinds) + " |"]
    lines.append("|---" * (len(kinds) + 1) + "|")
    for path, p in profiles:
        if p.kinds:
            ms = dict(p.kinds)
            cells = [f"{ms[kind]:.1f}" if kind in ms else "0.0" for kind in kinds]
            lines.append(f"| {path.name.removesuffix('.txt')} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profiles", nargs="+", type=Path, help="profile.txt files (loop.profile_steps)")
    parser.add_argument("--top", type=int, default=4, help="largest aten operators to name per run")
    args = parser.parse_args(argv)
    try:
        lines = table(args.profiles, args.top)
    except DataError as error:  # names the file
        raise SystemExit(str(error)) from None
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()

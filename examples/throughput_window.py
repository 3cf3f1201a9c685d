"""Throughput of training runs over the same window of steps, from their ``metrics.jsonl`` (host only).

    python examples/throughput_window.py --steps 100 250 results/throughput_*_metrics.jsonl

A run's ``summary.json`` reports the mean of its last logged rows, which differ from run to run: a
3-minute run ends on other rows than a 1-minute one, and a compiled run's first rows hold its
compilation. Comparing the rows of one window of steps (after every run's warm-up) compares like with
like. Prints a Markdown table: each file's name, its logged rows in the window, their mean items/s
(segments/s, documents/s), the ratio to the first file, their mean MFU (``train/mfu``, a percentage;
"-" where a run logged none), every other logged ``train/`` metric named with ``--metric`` at the
window's last row, and the sum over the window's rows of each named with ``--total`` (a counter logged
per row, e.g. the caching allocator's ``train/cuda_mallocs`` or ``train/allocator_retries``:
``sld.allocator_stats``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from sld.errors import DataError
from sld.run_log import read_metrics

RATE = "train/items_per_second"
MFU = "train/mfu"


def window_rows(path: Path, first: int, last: int) -> list[dict]:
    """The logged training rows of a ``metrics.jsonl`` whose step is in [first, last]."""
    return [row for row in read_metrics(path) if RATE in row and first <= row["step"] <= last]


def table(
    paths: list[Path], first: int, last: int, metrics: list[str], totals: Sequence[str] = ()
) -> list[str]:
    """The Markdown lines of the comparison (see the module docstring)."""
    lines = [
        "| run | rows | items/s | x the first | MFU |"
        + "".join(f" {m} |" for m in metrics)
        + "".join(f" {m} (sum) |" for m in totals),
        "|---|---|---|---|---|" + "---|" * (len(metrics) + len(totals)),
    ]
    reference = None
    for path in paths:
        rows = window_rows(path, first, last)
        # no logged row in the window (a run whose budget went to compiling): '-', not nan
        rate = sum(r[RATE] for r in rows) / len(rows) if rows else math.nan
        reference = rate if reference is None else reference
        name = path.name.removesuffix("_metrics.jsonl").removesuffix(".jsonl")
        ratio = f"{rate / reference:.2f}x" if rows and reference and not math.isnan(reference) else "-"
        shown = f"{rate:,.0f}" if rows else "-"
        mfus = [r[MFU] for r in rows if MFU in r]
        mfu = f"{100 * sum(mfus) / len(mfus):.2f}%" if mfus else "-"
        end = rows[-1] if rows else {}
        values = "".join(f" {end[m]:.4g} |" if m in end else " - |" for m in metrics)
        for m in totals:
            logged = [r[m] for r in rows if m in r]
            values += f" {sum(logged):.4g} |" if logged else " - |"
        lines.append(f"| {name} | {len(rows)} | {shown} | {ratio} | {mfu} |{values}")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "metrics", type=Path, nargs="+", help="metrics.jsonl files; the first is the reference"
    )
    parser.add_argument("--steps", type=int, nargs=2, default=(100, 400), metavar=("FIRST", "LAST"))
    parser.add_argument(
        "--metric", action="append", default=[], help="a train/ metric to show at the window's last row"
    )
    parser.add_argument(
        "--total", action="append", default=[], help="a train/ counter to sum over the window's rows"
    )
    args = parser.parse_args(argv)
    try:
        lines = table(args.metrics, *args.steps, args.metric, args.total)
    except DataError as error:  # names the file and line
        raise SystemExit(str(error)) from None
    print(f"steps {args.steps[0]}-{args.steps[1]}")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()

"""What a training run leaves beside its weights: ``summary.json`` and one line per evaluation.

Shared by the training entry points: ``training_summary`` starts the summary every run writes
(steps, why it stopped, seconds), ``evaluation_rows`` picks the evaluations out of ``fit``'s
history, ``format_evaluation`` writes one of them as a line for the terminal, and ``TrainedRun``
is what every trainer returns (each says in ``describe`` which lines its stage prints).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sld.training import FitResult

SUMMARY_FILE = "summary.json"


@dataclass
class TrainedRun:
    """A finished training run: where it saved its model, and ``summary.json``'s content (None on
    processes other than the main one, which neither save nor summarise)."""

    output_dir: Path
    summary: dict[str, Any] | None

    def summary_lines(self) -> list[str]:
        """What the run's stage prints at the end; nothing on processes other than the main one."""
        return [] if self.summary is None else self.describe(self.summary)

    def describe(self, summary: dict[str, Any]) -> list[str]:
        """The printed lines of the main process's summary (each trainer's result says its own)."""
        raise NotImplementedError


def evaluation_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a ``fit`` history that hold evaluation scores (``eval/...`` keys), in order."""
    return [dict(row) for row in history if any(key.startswith("eval/") for key in row)]


# logged rates averaged over the last rows of a run (the first rows include warm-up and compilation)
RATE_KEYS = ("train/items_per_second", "train/tokens_per_second", "train/tflops_per_second", "train/mfu")
RATE_ROWS = 5


def throughput_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Throughput of a run from its logged rows: the mean of each rate over the last ``RATE_ROWS``
    rows that hold it (``RATE_KEYS``; global over the processes, as logged), never the first of two or
    more (its interval holds the warm-up, and a compiled run's compilation: a 70-s denoiser run on an
    H200 summarised 3,459 documents/s from its two rows, the second alone 6,088; 2026-12-04), and the
    largest ``train/peak_memory_gib``. Keys that were never logged (MFU on a CPU, memory without CUDA)
    are left out."""
    summary: dict[str, float] = {}
    for key in RATE_KEYS:
        logged = [float(row[key]) for row in history if key in row]
        values = (logged[1:] if len(logged) > 1 else logged)[-RATE_ROWS:]
        if values:
            summary[key] = sum(values) / len(values)
    peaks = [float(row["train/peak_memory_gib"]) for row in history if "train/peak_memory_gib" in row]
    if peaks:
        summary["train/peak_memory_gib"] = max(peaks)
    return summary


def training_summary(result: FitResult, **extra: Any) -> dict[str, Any]:
    """``steps``, ``stopped_by`` and ``train_seconds`` of a finished ``fit``, its throughput
    (``throughput_summary`` of its history), then ``extra``. ``train_seconds`` are the run's wall
    seconds inside ``fit`` (evaluations included), summed over its resumes: a run resumed at its
    last step keeps the seconds it trained, not the second it took to find nothing left to do."""
    return {
        "steps": result.state.step,
        "stopped_by": result.stopped_by,
        "train_seconds": round(result.state.elapsed_seconds, 1),
        **throughput_summary(result.history),
        **extra,
    }


def write_summary(output_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as indented JSON to ``output_dir/summary.json``."""
    path = Path(output_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def format_evaluation(row: Mapping[str, Any], fields: Sequence[tuple[str, str, str]]) -> str:
    """``step <n>: valid <label>=<value> ...`` for the ``(key, label, format spec)`` fields present
    in ``row`` as ``eval/<key>``; e.g. ``("count_accuracy", "count_acc", ".2f")``."""
    shown = [f"{label}={row[f'eval/{key}']:{spec}}" for key, label, spec in fields if f"eval/{key}" in row]
    return f"step {row['step']}: valid " + " ".join(shown)

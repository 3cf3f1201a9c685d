"""What a training run logs: ``metrics.jsonl`` rows, an Accelerate tracker, and their repair on resume.

Every ``loop.log_every`` steps :class:`MetricLogger` writes one row: ``step``, every loss term
averaged over the interval as ``train/<term>``, ``train/items_per_second``, ``train/tokens_per_second``
(with a token counter), ``train/tflops_per_second`` and ``train/mfu`` (see :mod:`sld.throughput`),
``lr``; evaluations add ``eval/<name>`` rows. The same rows go to the tracker that ``loop.tracker``
picks (TensorBoard in ``<output_dir>/tensorboard`` when installed). A resumed run first drops the
rows that the interrupted run logged after its last checkpoint (:func:`truncate_metrics`), so the
file reads as if the run had never stopped, and reads the rest back (:func:`read_metrics`) as the
start of its history.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_tensorboard_available

from sld.config import ConfigError
from sld.errors import DataError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def tracker_names(tracker: str) -> list[str] | None:
    """Accelerate ``log_with`` for ``loop.tracker``; ConfigError if TensorBoard is asked for but missing."""
    if tracker == "none":
        return None
    if is_tensorboard_available():
        return ["tensorboard"]
    if tracker == "tensorboard":
        raise ConfigError(
            "loop.tracker=tensorboard, but the tensorboard package is not installed: "
            "pip install tensorboard, or set loop.tracker=none (metrics.jsonl is always written)"
        )
    return None


def tracker_config(*sections: tuple[str, Any]) -> dict[str, Any]:
    """Hyper-parameters for the tracker: plain scalars only (TensorBoard's hparams refuse None)."""
    flat: dict[str, Any] = {}
    for prefix, cfg in sections:
        for key, value in cfg.__dict__.items():
            if isinstance(value, (bool, int, float, str)):
                flat[f"{prefix}.{key}"] = value
    return flat


class MetricLogger:
    """Averages every logged term over the log interval and appends rows to ``metrics.jsonl``.

    Each micro-batch's terms stay on the device as the one vector :func:`stack_terms` made (no op per
    step); :meth:`flush` reads them all with one sync and averages on the host. A group of terms
    with a NaN or inf in it (a micro-batch the NaN guard rejected) is left out of the averages.

    ``gather`` (accelerate's ``gather_object``) makes the rows global when several processes
    train: every process calls :meth:`flush` at the same step, the per-process sums, counts, items
    and tokens are gathered, terms are averaged over all processes' micro-batches, items and tokens
    summed, and the interval lasts as long as its slowest process. One process: the identity.
    """

    def __init__(
        self, path: Path, enabled: bool, gather: Callable[[list[Any]], list[Any]] | None = None
    ) -> None:
        self.path = path
        self.enabled = enabled
        self.gather = gather or (lambda parts: parts)
        self.groups: list[tuple[tuple[str, ...], torch.Tensor]] = []
        self.host_terms: list[tuple[str, float]] = []
        self.tokens: list[Any] = []
        self.items = 0
        self.micro_batches = 0
        self.started = time.perf_counter()

    def add(
        self, names: tuple[str, ...], values: torch.Tensor | None, host_terms: Mapping[str, Any] = {}
    ) -> None:  # noqa: B006 (never mutated)
        """One group of terms: ``values`` (T,) on the device for ``names``, plus plain-number terms."""
        if values is not None:
            self.groups.append((names, values))
        self.host_terms.extend((name, float(value)) for name, value in host_terms.items())

    def add_batch(self, items: int, tokens: Any) -> None:
        self.items += items
        self.micro_batches += 1
        if tokens is not None:
            self.tokens.append(tokens)

    def flush(self, step: int) -> tuple[dict[str, Any], dict[str, float]]:
        """The averaged row (not yet written) and the interval's rates per second."""
        device_tokens = [t for t in self.tokens if torch.is_tensor(t)]
        parts = [values for _, values in self.groups] + [t.detach().float().reshape(1) for t in device_tokens]
        flat = torch.cat(parts).tolist() if parts else []  # the one sync of a log interval
        seconds = max(1e-9, time.perf_counter() - self.started)  # after the sync: device work included
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        position = 0
        for names, _ in self.groups:
            values = flat[position : position + len(names)]
            position += len(names)
            if all(math.isfinite(v) for v in values):
                for name, value in zip(names, values):
                    sums[name] = sums.get(name, 0.0) + value
                    counts[name] = counts.get(name, 0) + 1
        for name, value in self.host_terms:
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
        tokens = None
        if self.tokens:
            tokens = sum(flat[position:]) + sum(float(t) for t in self.tokens if not torch.is_tensor(t))
        local = {
            "sums": sums,
            "counts": counts,
            "items": self.items,
            "micro_batches": self.micro_batches,
            "tokens": tokens,
            "seconds": seconds,
        }
        parts = self.gather([local])  # every process's numbers (a collective when there are several)
        sums, counts = {}, {}
        for part in parts:
            for name, value in part["sums"].items():  # insertion order: the first process's names first
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + part["counts"][name]
        seconds = max(part["seconds"] for part in parts)
        row: dict[str, Any] = {"step": step}
        row.update({f"train/{k}": sums[k] / counts[k] for k in sums})
        rates = {
            "items": sum(part["items"] for part in parts) / seconds,
            "micro_batches": sum(part["micro_batches"] for part in parts) / seconds,
        }
        row["train/items_per_second"] = rates["items"]
        if tokens is not None:
            rates["tokens"] = sum(part["tokens"] or 0.0 for part in parts) / seconds
            row["train/tokens_per_second"] = rates["tokens"]
        self.groups, self.host_terms, self.tokens = [], [], []
        self.items = self.micro_batches = 0
        self.started = time.perf_counter()
        return row, rates

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """Rows of a run folder's ``metrics.jsonl`` (or of that file given directly), in file order."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found (is {run} a training run folder?)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: not valid JSON: {err}") from err
            if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
                raise DataError(f"{path}:{line_no}: a metrics row must be an object with a numeric 'step'")
            rows.append(row)
    return rows


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the rows after ``step`` (logged by a run that was killed before its next checkpoint) and
    any line a kill cut short; return how many lines were dropped. The file is replaced atomically."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and row.get("step", 0) <= step
        except json.JSONDecodeError:
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(temp, path)
    return dropped


__all__ = [
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "MetricLogger",
    "read_metrics",
    "tracker_config",
    "tracker_names",
    "truncate_metrics",
]

"""Speed and quality of SLD against the autoregressive baseline, measured on one device in one run.

The harness (``measure``) times one generation setting at one batch size on a fixed list of
sources: one warm-up batch first (kernel selection, allocator, caches), then ``repeats`` timed runs
over all documents, with ``torch.cuda.synchronize`` around each timed region on a GPU. It records
the wall time of every run, SLD's split of it into context / denoise / decode (``SLDOutput.timings``),
peak memory, and the texts, which are scored for quality (ROUGE-L, distinct-2, distinct outputs).

Everything after the measurement is bookkeeping in pure functions that need no model and are
tested on made-up timings: ``summarize`` (throughput, latency, time shares), ``add_speed_ratios``
(every row against the AR baseline's greedy decoding at the same batch size, from the same run),
``markdown_table`` and ``plot_quality_vs_speed``.

Peak memory is the working memory of generation above what was allocated before the timed runs
(both models' weights stay loaded the whole run, so they are excluded; ``parameter_mib`` gives
them separately): on a GPU ``torch.cuda.max_memory_allocated`` minus the allocation at the start;
on a CPU the growth of the process's resident set (peak RSS above the RSS at the start when Linux
lets the peak be reset, else the RSS after minus before); "n/a" elsewhere. ``memory_measure`` says
which one a row holds.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sld.diffusion.sampling import SchedulerName
from sld.eval.metrics import distinct_n, num_distinct_outputs, rouge_scores

logger = logging.getLogger(__name__)

SLD = "SLD"
AR = "AR"
REFERENCE_SETTING = "greedy"  # speed ratios are taken against AR greedy at the same batch size

MEMORY_CUDA = "CUDA max_memory_allocated above the start (MiB, loaded weights excluded)"
MEMORY_PEAK_RSS = "CPU peak RSS above start (MiB)"
MEMORY_RSS_DELTA = "CPU RSS after - before (MiB)"
MEMORY_NA = "n/a"

# A generation function: sources -> (texts, time split in seconds; may be empty).
GenerateFn = Callable[[Sequence[str | None]], tuple[list[str], dict[str, float]]]


@dataclass(frozen=True)
class SamplerSetting:
    """One SLD sampling setting: a diffusers scheduler and its number of inference steps."""

    scheduler: SchedulerName = "dpm++"
    steps: int = 25

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def label(self) -> str:
        return f"{self.scheduler} {self.steps}"


@dataclass(frozen=True)
class DecodingSetting:
    """One AR decoding setting (``num_beams`` 1 = greedy); KV cache always on."""

    name: str = REFERENCE_SETTING
    num_beams: int = 1
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")


@dataclass
class Measurement:
    """The raw result of one (system, setting, batch size) cell.

    ``seconds`` holds the wall time of each timed run over all ``num_documents``; ``parts`` the
    matching time split of each run (SLD: ``context``, ``denoise``, ``decode``; AR: empty).
    """

    system: str
    setting: str
    batch_size: int
    num_documents: int
    seconds: list[float]
    parts: list[dict[str, float]] = field(default_factory=list)
    steps: int | None = None
    peak_memory_mib: float | None = None
    memory_measure: str = MEMORY_NA
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_documents / self.batch_size)


# --------------------------------------------------------------------------------------- bookkeeping


def aggregate_timings(seconds: Sequence[float], parts: Sequence[dict[str, float]] = ()) -> dict[str, float]:
    """Median, min and max of the run times, and the mean of every time part over the runs."""
    if not seconds:
        raise ValueError("no timed runs to aggregate")
    out = {"seconds": statistics.median(seconds), "seconds_min": min(seconds), "seconds_max": max(seconds)}
    names = sorted({name for run in parts for name in run})
    for name in names:
        out[name] = sum(run.get(name, 0.0) for run in parts) / len(parts)
    return out


def summarize(m: Measurement) -> dict[str, Any]:
    """One table row from a measurement: throughput, latency, time split and quality (JSON-ready).

    Keys: ``system, setting, batch_size, num_documents, num_batches, steps, seconds (median),
    seconds_min, seconds_max, docs_per_second, ms_per_document`` (amortised: 1000 / throughput),
    ``seconds_per_batch`` (what one user waits in a full batch), per part ``<part>_seconds`` and
    ``<part>_share`` (of the parts' sum), ``ms_per_step`` (SLD: denoise time of one sampling step of
    one batch), ``peak_memory_mib, memory_measure`` and every quality score.
    """
    timing = aggregate_timings(m.seconds, m.parts)
    seconds = max(timing["seconds"], 1e-12)
    row: dict[str, Any] = {
        "system": m.system,
        "setting": m.setting,
        "batch_size": m.batch_size,
        "num_documents": m.num_documents,
        "num_batches": m.num_batches,
        "steps": m.steps,
        "seconds": timing["seconds"],
        "seconds_min": timing["seconds_min"],
        "seconds_max": timing["seconds_max"],
        "docs_per_second": m.num_documents / seconds,
        "ms_per_document": 1000.0 * seconds / max(m.num_documents, 1),
        "seconds_per_batch": seconds / max(m.num_batches, 1),
    }
    part_names = [k for k in timing if not k.startswith("seconds")]
    part_total = sum(timing[k] for k in part_names)
    for name in part_names:
        row[f"{name}_seconds"] = timing[name]
        row[f"{name}_share"] = timing[name] / part_total if part_total > 0 else None
    row["ms_per_step"] = (
        1000.0 * timing["denoise"] / (m.steps * m.num_batches) if m.steps and "denoise" in timing else None
    )
    row["peak_memory_mib"] = m.peak_memory_mib
    row["memory_measure"] = m.memory_measure
    row.update(m.quality)
    return row


def add_speed_ratios(
    rows: Sequence[dict[str, Any]], reference_system: str = AR, reference_setting: str = REFERENCE_SETTING
) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``speed_vs_ar_greedy``: docs/s over the reference's docs/s at the same batch size.

    Above 1 the row is faster than the AR baseline's greedy decoding. ``None`` where the run has no
    reference row at that batch size.
    """
    reference = {
        r["batch_size"]: r["docs_per_second"]
        for r in rows
        if r["system"] == reference_system and r["setting"] == reference_setting
    }
    out = []
    for r in rows:
        ref = reference.get(r["batch_size"])
        out.append({**r, "speed_vs_ar_greedy": r["docs_per_second"] / ref if ref else None})
    return out


def benchmark_rows(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Every measurement summarised, with speed ratios against AR greedy at the same batch size."""
    return add_speed_ratios([summarize(m) for m in measurements])


def quality_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-L (F1 x 100), distinct-2, and the number of distinct outputs beside the references'."""
    return {
        "rougeL": rouge_scores(predictions, references)["rougeL"],
        "distinct_2": distinct_n(predictions, 2),
        "num_distinct_outputs": num_distinct_outputs(predictions),
        "ref_num_distinct": num_distinct_outputs(references),
    }


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _split(row: dict[str, Any]) -> str:
    shares = [row.get(f"{p}_share") for p in ("context", "denoise", "decode")]
    if any(s is None for s in shares):
        return "-"
    return " / ".join(f"{100 * s:.0f}" for s in shares)


TABLE_HEADER = (
    "| system | setting | batch | docs | docs/s | ms/doc | s/batch | x AR greedy | "
    "ctx/denoise/decode % | ms/step | work MiB | ROUGE-L | distinct-2 | distinct outputs |"
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (one line per row, ``n/a`` for what was not measured)."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for r in rows:
        ratio = r.get("speed_vs_ar_greedy")
        distinct = r.get("num_distinct_outputs")
        cells = [
            r["system"],
            r["setting"],
            str(r["batch_size"]),
            str(r["num_documents"]),
            _fmt(r["docs_per_second"], ".2f"),
            _fmt(r["ms_per_document"], ".1f"),
            _fmt(r["seconds_per_batch"], ".3f"),
            "n/a" if ratio is None else f"{ratio:.2f}x",
            _split(r),
            _fmt(r.get("ms_per_step"), ".2f"),
            _fmt(r.get("peak_memory_mib"), ".1f"),
            _fmt(r.get("rougeL"), ".2f"),
            _fmt(r.get("distinct_2"), ".3f"),
            "n/a"
            if distinct is None
            else f"{distinct}/{r['num_documents']} (refs {r.get('ref_num_distinct')})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_quality_vs_speed(rows: Sequence[dict[str, Any]], stem: str | Path, title: str = "") -> list[Path]:
    """ROUGE-L and distinct-2 against documents/s (log scale); writes ``<stem>.png`` and ``<stem>.svg``.

    One colour per (system, setting), circles for SLD, squares for AR; each point is labelled with its
    batch size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["system"], r["setting"]), []).append(r)
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for (system, setting), points in series.items():
        points = sorted(points, key=lambda p: p["batch_size"])
        colour = colours(len([k for k in series if k < (system, setting)]) % 10)
        marker = "s" if system == AR else "o"
        for ax, metric in zip(axes, ("rougeL", "distinct_2")):
            xs = [p["docs_per_second"] for p in points]
            ys = [p.get(metric) if p.get(metric) is not None else float("nan") for p in points]
            ax.plot(
                xs, ys, marker=marker, color=colour, linestyle="-", alpha=0.85, label=f"{system} {setting}"
            )
            for p, x, y in zip(points, xs, ys):
                ax.annotate(
                    f"b{p['batch_size']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
    for ax, label in zip(axes, ("ROUGE-L", "distinct-2")):
        ax.set_xscale("log")
        ax.set_xlabel("documents / second (log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------ harness


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer reads real compute time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def measure(
    system: str,
    setting: str,
    generate_fn: GenerateFn,
    sources: Sequence[str | None],
    references: Sequence[str],
    batch_size: int,
    device: torch.device,
    repeats: int = 1,
    warmup: bool = True,
    steps: int | None = None,
) -> tuple[Measurement, list[str]]:
    """Time ``generate_fn`` over all ``sources`` (it batches them by ``batch_size`` itself).

    A warm-up call on the first batch runs untimed; then ``repeats`` timed calls, each between two
    device synchronisations. Quality is scored on the texts of the last call. Returns the
    measurement and those texts.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup:
        generate_fn(sources[:batch_size])
    seconds: list[float] = []
    parts: list[dict[str, float]] = []
    texts: list[str] = []
    with MemoryMonitor(device) as memory:
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            texts, split = generate_fn(sources)
            synchronize(device)
            seconds.append(time.perf_counter() - started)
            if split:
                parts.append(dict(split))
    result = Measurement(
        system=system,
        setting=setting,
        batch_size=batch_size,
        num_documents=len(sources),
        seconds=seconds,
        parts=parts,
        steps=steps,
        peak_memory_mib=memory.peak_mib,
        memory_measure=memory.measure,
        quality=quality_scores(texts, references),
    )
    logger.info(
        "%s %s batch %d: %.2f docs/s (%.2f s for %d documents)",
        system,
        setting,
        batch_size,
        len(sources) / max(statistics.median(seconds), 1e-12),
        statistics.median(seconds),
        len(sources),
    )
    return result, texts


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


__all__ = [
    "AR",
    "DecodingSetting",
    "GenerateFn",
    "MEMORY_CUDA",
    "MEMORY_NA",
    "MEMORY_PEAK_RSS",
    "MEMORY_RSS_DELTA",
    "Measurement",
    "MemoryMonitor",
    "REFERENCE_SETTING",
    "SLD",
    "SamplerSetting",
    "add_speed_ratios",
    "aggregate_timings",
    "benchmark_rows",
    "device_description",
    "markdown_table",
    "measure",
    "parameter_mib",
    "plot_quality_vs_speed",
    "quality_scores",
    "summarize",
    "synchronize",
]

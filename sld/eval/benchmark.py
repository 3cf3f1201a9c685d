"""The speed benchmark: SLD against the AR baseline on one device, in one run (``sld benchmark mode=speed``).

For every batch size the AR baseline runs each decoding setting (greedy, beam search) and SLD each
sampling setting (scheduler, steps), on the same first documents of a stage-1 split, under the same
decoding rules (``sld.eval.decoding_rules``: one repetition control, one token-budget principle).
``measure`` times one cell (an untimed warm-up pass over its documents, then ``repeats`` timed runs
between device synchronisations, ``sld.eval.timing``), records SLD's context / denoise / decode split,
peak memory and the texts, which are scored (ROUGE-L, distinct-2, distinct outputs).

**The speed ratio** of every row is taken against one AR setting per batch size, the *AR reference*:
the fastest AR setting whose ROUGE-L is within ``tolerance`` (1 point) of the best AR setting's.
Each AR setting's ROUGE-L is read from its cell with the most documents (decoding is deterministic,
so a setting's quality does not depend on the batch size); among the settings that qualify, the
fastest at each batch size is the reference there. So a faster but clearly worse AR decoding does
not flatter AR, and a slow AR setting that buys no quality does not flatter SLD. The report names
the reference and the quality it was chosen on.

Everything after the measurement is bookkeeping in pure functions tested on made-up timings:
``summarize``, ``choose_ar_reference``, ``add_speed_ratios``, ``markdown_table``,
``plot_quality_vs_speed``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sld.diffusion.sampling import SchedulerName
from sld.eval.metrics import distinct_n, num_distinct_outputs, rouge_scores
from sld.eval.timing import MEMORY_NA
from sld.models.cuda_graphs import GRAPH_BACKENDS
from sld.viz.figures import new_figure, save_figure

logger = logging.getLogger(__name__)

__all__ = [
    "AR",
    "DecodingSetting",
    "Measurement",
    "SLD",
    "SamplerSetting",
    "SpeedConfig",
    "add_speed_ratios",
    "aggregate_timings",
    "ar_quality_by_setting",
    "benchmark_rows",
    "choose_ar_reference",
    "markdown_table",
    "plot_quality_vs_speed",
    "quality_scores",
    "reference_summary",
    "summarize",
    "token_step",
    "token_step_mismatch",
    "write_speed_report",
]

SLD = "SLD"
AR = "AR"


@dataclass(frozen=True)
class SamplerSetting:
    """One SLD sampling setting: a diffusers scheduler, its number of inference steps, whether the
    segments decode from a static KV cache (``sld.models.static_decoding``; causal-LM decoders), and
    its own classifier-free guidance weight (None: the run's ``guidance_scale``, else the pipeline's).
    At ``guidance_scale: 1`` a denoising step runs the denoiser over B rows instead of 2B (no
    unconditional pass): a speed setting whose ROUGE-L column says what it costs.
    ``denoiser_backend``: the CUDA-graph backend of the denoiser's replays in this setting alone (one of
    ``sld.models.cuda_graphs.GRAPH_BACKENDS``; None: ``$SLD_DENOISER_GRAPH_BACKEND``, else the global
    one): an A/B of the denoiser's kernels within one benchmark run, on the same models and AR rows.
    ``graph_backend``: the backend of every graph of this setting (the LM's token step, the context
    encoder, the denoiser unless ``denoiser_backend`` is set), before the environment's; its label
    ends in ``[backend]``."""

    scheduler: SchedulerName = "dpm++"
    steps: int = 25
    static_cache: bool = False
    guidance_scale: float | None = None
    denoiser_backend: str | None = None
    graph_backend: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        _check_backend("denoiser_backend", self.denoiser_backend)
        _check_backend("graph_backend", self.graph_backend)

    def guidance_or(self, default: float | None) -> float | None:
        """The guidance weight this setting samples with: its own, else ``default`` (the run's)."""
        return default if self.guidance_scale is None else self.guidance_scale

    @property
    def label(self) -> str:
        label = f"{self.scheduler} {self.steps}" + (" static" if self.static_cache else "")
        label = label if self.guidance_scale is None else f"{label} w{self.guidance_scale:g}"
        label = label if self.denoiser_backend is None else f"{label} {self.denoiser_backend}"
        return label if self.graph_backend is None else f"{label} [{self.graph_backend}]"


@dataclass(frozen=True)
class DecodingSetting:
    """One AR decoding setting (``num_beams`` 1 = greedy; ``static_cache``: a static KV cache with the
    token step as a CUDA graph, causal-LM baselines only); the repetition control is the run's, shared.
    ``graph_backend``: the backend of that graph in this setting alone (as ``SamplerSetting``'s); its
    label is ``name [backend]``."""

    name: str = "greedy"
    num_beams: int = 1
    static_cache: bool = False
    graph_backend: str | None = None

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        _check_backend("graph_backend", self.graph_backend)

    @property
    def label(self) -> str:
        return self.name if self.graph_backend is None else f"{self.name} [{self.graph_backend}]"


def _check_backend(key: str, backend: str | None) -> None:
    if backend is not None and backend not in GRAPH_BACKENDS:
        raise ValueError(f"{key} must be one of {', '.join(GRAPH_BACKENDS)}, got {backend!r}")


def _default_samplers() -> list[SamplerSetting]:
    return [
        SamplerSetting("ddpm", 250),
        SamplerSetting("dpm++", 25),
        SamplerSetting("dpm++", 10),
        SamplerSetting("dpm++", 5),
    ]


def _default_decodings() -> list[DecodingSetting]:
    return [DecodingSetting("greedy", 1), DecodingSetting("beam 4", 4)]


@dataclass
class SpeedConfig:
    """The speed benchmark's settings.

    ``max_batches`` caps the documents of one cell at ``max_batches x batch_size`` (keeps batch 1
    cheap; null = all ``num_documents`` at every batch size). ``quality_tolerance``: how many
    ROUGE-L points below the best AR setting an AR setting may be and still be the reference.
    ``guidance_scale`` / ``sld_num_beams`` null = the pipeline's saved defaults.
    """

    num_documents: int = 256
    max_batches: int | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [16, 64])
    samplers: list[SamplerSetting] = field(default_factory=_default_samplers)
    decodings: list[DecodingSetting] = field(default_factory=_default_decodings)
    quality_tolerance: float = 1.0
    guidance_scale: float | None = None
    sld_num_beams: int | None = None
    repeats: int = 1
    warmup: bool = True
    save_predictions: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        if self.num_documents < 1:
            raise ValueError(f"num_documents must be >= 1, got {self.num_documents}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(
                f"batch_sizes must be a non-empty list of positive sizes, got {self.batch_sizes}"
            )
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or null, got {self.max_batches}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.quality_tolerance < 0:
            raise ValueError(f"quality_tolerance must be >= 0, got {self.quality_tolerance}")


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
    seconds_min, seconds_max, timed_runs, docs_per_second, ms_per_document`` (amortised: 1000 / throughput),
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
        "timed_runs": len(m.seconds),
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


def ar_quality_by_setting(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """ROUGE-L of every AR setting, from its row with the most documents (ties: the larger batch)."""
    best_row: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["system"] != AR or r.get("rougeL") is None:
            continue
        seen = best_row.get(r["setting"])
        if seen is None or (r["num_documents"], r["batch_size"]) > (
            seen["num_documents"],
            seen["batch_size"],
        ):
            best_row[r["setting"]] = r
    return {setting: float(r["rougeL"]) for setting, r in best_row.items()}


def token_step(static_cache: bool, graph_backend: str | None, default_backend: str) -> str:
    """How a setting's tokens are stepped on a GPU: ``"dynamic"`` (transformers' ``generate`` on a
    dynamic KV cache) or, on a static cache, the name of its CUDA-graph backend (its own, else
    ``default_backend``, the run's ``$SLD_GRAPH_BACKEND``)."""
    return (graph_backend or default_backend) if static_cache else "dynamic"


def token_step_mismatch(
    samplers: Sequence[SamplerSetting],
    decodings: Sequence[DecodingSetting],
    default_backend: str,
    static_everywhere: bool = False,
) -> str | None:
    """A Markdown line naming the SLD settings whose token step no AR setting of the run used, or None.

    Both systems decode with the same LM step, so a ratio is like for like only when the AR reference
    steps its tokens the same way: on an H200 Inductor's token step doubled both systems' documents/s
    (docs/results.md), so SLD on Inductor against AR on the static graphs overstates SLD by about 2x.
    ``samplers`` / ``decodings``: the settings that ran; ``static_everywhere``: the run's
    ``static_cache`` (every setting on the static cache).
    """
    ar_steps = {
        token_step(d.static_cache or static_everywhere, d.graph_backend, default_backend) for d in decodings
    }
    if not ar_steps:
        return None
    unmatched = [
        (s.label, step)
        for s in samplers
        if (step := token_step(s.static_cache or static_everywhere, s.graph_backend, default_backend))
        not in ar_steps
    ]
    if not unmatched:
        return None
    named = "; ".join(f"{label}: {step}" for label, step in unmatched)
    return (
        f"- token steps not like for like: SLD {named}, a token step no AR setting of this run used "
        f"(AR: {', '.join(sorted(ar_steps))}); their x AR ref compares different token steps (give the AR "
        "decodings a setting with the same static_cache and graph_backend)"
    )


def choose_ar_reference(rows: Sequence[dict[str, Any]], tolerance: float = 1.0) -> dict[int, str]:
    """Batch size -> the AR setting every row at that batch size is compared with.

    It is the fastest (documents/s) AR setting at that batch size among those whose ROUGE-L
    (``ar_quality_by_setting``) is at least the best AR setting's minus ``tolerance``. Batch sizes
    without a qualifying AR row are left out.
    """
    quality = ar_quality_by_setting(rows)
    if not quality:
        return {}
    floor = max(quality.values()) - tolerance
    eligible = {setting for setting, score in quality.items() if score >= floor}
    fastest: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["system"] == AR and r["setting"] in eligible:
            seen = fastest.get(r["batch_size"])
            if seen is None or r["docs_per_second"] > seen["docs_per_second"]:
                fastest[r["batch_size"]] = r
    return {batch: r["setting"] for batch, r in sorted(fastest.items())}


def add_speed_ratios(rows: Sequence[dict[str, Any]], references: dict[int, str]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``ar_reference`` (the reference's setting at the row's batch size) and
    ``speed_vs_ar``: the row's documents/s over the reference's (above 1 = faster than AR); both
    ``None`` where the batch size has no reference. SLD rows also get ``decode_only_vs_ar``: the ratio
    with the context encoding and the denoising taking no time (``speed_vs_ar / decode_share``), the
    ceiling that faster denoising could approach (None without a ratio or a decode share)."""
    speed = {(r["batch_size"], r["setting"]): r["docs_per_second"] for r in rows if r["system"] == AR}
    out = []
    for r in rows:
        setting = references.get(r["batch_size"])
        ref_speed = speed.get((r["batch_size"], setting)) if setting is not None else None
        ratio = r["docs_per_second"] / ref_speed if ref_speed else None
        row = {**r, "ar_reference": setting, "speed_vs_ar": ratio}
        if r["system"] == SLD:
            share = r.get("decode_share")
            row["decode_only_vs_ar"] = ratio / share if ratio is not None and share else None
        out.append(row)
    return out


def benchmark_rows(
    measurements: Sequence[Measurement], tolerance: float = 1.0
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Every measurement summarised with its speed ratio, and the AR reference per batch size."""
    rows = [summarize(m) for m in measurements]
    references = choose_ar_reference(rows, tolerance)
    return add_speed_ratios(rows, references), references


def reference_summary(rows: Sequence[dict[str, Any]], references: dict[int, str], tolerance: float) -> str:
    """One Markdown paragraph: which AR setting is the reference at each batch size, and why."""
    quality = ar_quality_by_setting(rows)
    if not references:
        return "- x AR ref: no AR baseline rows in this run, so no speed ratios."
    best = max(quality, key=lambda s: quality[s])
    scores = ", ".join(f"{s} {q:.2f}" for s, q in quality.items())
    chosen = "; ".join(f"batch {b}: **{s}**" for b, s in references.items())
    return (
        f"- x AR ref: documents/s over the AR reference at the same batch size, the fastest AR setting "
        f"whose ROUGE-L is within {tolerance:g} of the best AR setting ({best}); AR ROUGE-L: {scores}. "
        f'Reference: {chosen}. An SLD row\'s "decode alone" is its ratio if encoding the context and '
        "denoising took no time (its decode's share of the batch time): the most faster denoising can give."
    )


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


def _ratio(row: dict[str, Any]) -> str:
    ratio = row.get("speed_vs_ar")
    if ratio is None:
        return "n/a"
    is_reference = row["system"] == AR and row["setting"] == row.get("ar_reference")
    ceiling = row.get("decode_only_vs_ar")
    return (
        f"{ratio:.2f}x"
        + (" (ref)" if is_reference else "")
        + (f" (decode alone {ceiling:.2f}x)" if ceiling is not None else "")
    )


def _spread(row: dict[str, Any]) -> str:
    """How far the timed runs of a cell lay apart: (slowest - fastest) / median, in % ("-": one run)."""
    low, high, middle = row.get("seconds_min"), row.get("seconds_max"), row.get("seconds")
    if row.get("timed_runs", 1) < 2 or low is None or high is None or not middle:
        return "-"
    return f"{100 * (high - low) / middle:.0f}%"


TABLE_HEADER = (
    "| system | setting | batch | docs | docs/s | spread | ms/doc | s/batch | x AR ref | "
    "ctx/denoise/decode % | ms/step | work MiB | ROUGE-L | distinct-2 | distinct outputs |"
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (one line per row, ``n/a`` for what was not measured)."""
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count(" | ") + 1)]
    for r in rows:
        distinct = r.get("num_distinct_outputs")
        cells = [
            r["system"],
            r["setting"],
            str(r["batch_size"]),
            str(r["num_documents"]),
            _fmt(r["docs_per_second"], ".2f"),
            _spread(r),
            _fmt(r["ms_per_document"], ".1f"),
            _fmt(r["seconds_per_batch"], ".3f"),
            _ratio(r),
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


def plot_quality_vs_speed(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """ROUGE-L and distinct-2 against documents/s (log scale), one line per (system, setting).

    One colour per (system, setting), circles for SLD, squares for AR; each point is labelled with
    its batch size. Save with ``sld.viz.figures.save_figure``.
    """
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["system"], r["setting"]), []).append(r)
    figure = new_figure(12, 4.8)
    axes = figure.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(series))]
    for colour, ((system, setting), points) in zip(colours, sorted(series.items())):
        points = sorted(points, key=lambda p: p["batch_size"])
        marker = "s" if system == AR else "o"
        for ax, metric in zip(axes, ("rougeL", "distinct_2")):
            xs = [p["docs_per_second"] for p in points]
            ys = [p.get(metric) if p.get(metric) is not None else float("nan") for p in points]
            ax.plot(xs, ys, marker=marker, color=colour, alpha=0.85, label=f"{system} {setting}")
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
        figure.suptitle(title)
    return figure


# ------------------------------------------------------------------------------------------ writing


def write_speed_report(
    output_dir: str | Path,
    rows: list[dict[str, Any]],
    references: dict[int, str],
    header: Sequence[str],
    tolerance: float,
    extra: dict[str, Any] | None = None,
    plot_title: str | None = None,
) -> str:
    """Write ``benchmark.json``, ``benchmark.md`` and (``plot_title`` given) ``benchmark.png``/``.svg``.

    ``header`` holds the Markdown lines above the table (device, inputs, decoding rules);
    ``extra`` goes into the JSON beside ``rows`` and ``ar_reference``. Returns the Markdown.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    measures = sorted({r["memory_measure"] for r in rows})
    lines = [
        "# SLD vs AR baseline: speed",
        "",
        *header,
        f"- work MiB: peak memory of generation, {'; '.join(measures)}",
        reference_summary(rows, references, tolerance),
        "- ms/doc = wall time / documents; s/batch = wall time of one full batch; ms/step = denoising time "
        "of one sampling step of one batch; spread = (slowest - fastest) / median of a cell's timed runs.",
        "",
        markdown_table(rows),
        "",
    ]
    markdown = "\n".join(lines)
    (output_dir / "benchmark.md").write_text(markdown)
    report = {
        **(extra or {}),
        "memory_measure": measures,
        "quality_tolerance": tolerance,
        "ar_quality": ar_quality_by_setting(rows),
        "ar_reference": {str(b): s for b, s in references.items()},
        "rows": rows,
    }
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    if plot_title is not None:
        save_figure(plot_quality_vs_speed(rows, title=plot_title), output_dir, "benchmark")
    return markdown

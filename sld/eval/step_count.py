"""Fewest sampling steps: the smallest DPM-Solver++ / DDIM step count as good as 250-step DDPM.

``sld benchmark mode=steps`` generates the same validation documents with one SLD pipeline under
the reference sampler (the paper's DDPM with 250 steps) and under each fast scheduler at each step
count, all with the same seed (the same initial noise) and the same decoding rules
(``sld.eval.decoding_rules``), and scores every output set with ROUGE-L against the references.

``fewest_steps`` then reads, per scheduler, the smallest step count whose ROUGE-L is at least the
reference's minus ``tolerance`` (1 point), and the smallest over all schedulers. Because every
setting decodes the same documents, the report also gives each setting's paired difference to the
reference with its standard error (``paired_difference``): a difference smaller than about two
standard errors is within the noise of the validation set.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from sld.data.segmented import SegmentedDocument
from sld.diffusion.sampling import SchedulerName
from sld.eval.benchmark import SamplerSetting
from sld.eval.decoding_rules import DecodingRules
from sld.eval.metrics import rouge_per_example
from sld.eval.runner import sld_generate_fn
from sld.eval.timing import synchronize
from sld.viz.figures import new_figure, save_figure

logger = logging.getLogger(__name__)

__all__ = [
    "StepsConfig",
    "fewest_steps",
    "paired_difference",
    "plot_steps",
    "run_steps",
    "steps_markdown",
    "write_steps_report",
]


def _default_reference() -> SamplerSetting:
    return SamplerSetting("ddpm", 250)


@dataclass
class StepsConfig:
    """Settings of ``mode=steps``: the fast ``schedulers`` at every step count in ``counts`` against
    ``reference``, on the first ``num_documents`` documents, ``batch_size`` at a time."""

    schedulers: list[SchedulerName] = field(default_factory=lambda: ["dpm++", "ddim"])
    counts: list[int] = field(default_factory=lambda: [3, 5, 10, 15, 25, 50])
    reference: SamplerSetting = field(default_factory=_default_reference)
    tolerance: float = 1.0
    num_documents: int = 512
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.schedulers or not self.counts:
            raise ValueError("steps.schedulers and steps.counts must not be empty")
        if any(c < 1 for c in self.counts):
            raise ValueError(f"steps.counts must be positive, got {self.counts}")
        if self.tolerance < 0:
            raise ValueError(f"steps.tolerance must be >= 0, got {self.tolerance}")
        if self.num_documents < 1 or self.batch_size < 1:
            raise ValueError("steps.num_documents and steps.batch_size must be >= 1")


def paired_difference(scores: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Mean of ``scores[i] - reference[i]`` and its standard error (0 with fewer than two pairs)."""
    if len(scores) != len(reference) or not scores:
        raise ValueError(
            f"paired_difference needs equally many scores, got {len(scores)} and {len(reference)}"
        )
    diffs = [a - b for a, b in zip(scores, reference)]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return mean, se


def fewest_steps(
    results: Sequence[dict[str, Any]], reference_rouge_l: float, tolerance: float = 1.0
) -> dict[str, Any]:
    """The smallest step counts whose ROUGE-L is within ``tolerance`` of the reference (or above it).

    ``results`` are rows with ``scheduler``, ``steps`` and ``rougeL``. Returns ``{"threshold":
    reference - tolerance, "per_scheduler": {scheduler: steps or None}, "fewest": {"scheduler",
    "steps", "rougeL"} or None}``; ``fewest`` is the smallest count over all schedulers (ties: the
    higher ROUGE-L, then the first scheduler listed).
    """
    threshold = reference_rouge_l - tolerance
    per_scheduler: dict[str, int | None] = {}
    candidates = []
    for order, r in enumerate(results):
        per_scheduler.setdefault(r["scheduler"], None)
        if r["rougeL"] >= threshold:
            best = per_scheduler[r["scheduler"]]
            if best is None or r["steps"] < best:
                per_scheduler[r["scheduler"]] = r["steps"]
            candidates.append((r["steps"], -r["rougeL"], order, r))
    fewest = None
    if candidates:
        r = min(candidates, key=lambda c: c[:3])[3]
        fewest = {"scheduler": r["scheduler"], "steps": r["steps"], "rougeL": r["rougeL"]}
    return {"threshold": threshold, "per_scheduler": per_scheduler, "fewest": fewest}


def _score(
    pipe: Any,
    sampler: SamplerSetting,
    docs: Sequence[SegmentedDocument],
    rules: DecodingRules,
    cfg: StepsConfig,
    device: torch.device,
    guidance_scale: float | None,
    num_beams: int | None,
    seed: int,
) -> tuple[dict[str, Any], list[float]]:
    generate = sld_generate_fn(pipe, sampler, rules, cfg.batch_size, guidance_scale, num_beams, seed)
    synchronize(device)
    started = time.perf_counter()
    texts, _ = generate([doc.source for doc in docs])
    synchronize(device)
    seconds = time.perf_counter() - started
    per_doc = [rouge_per_example(text, " ".join(doc.segments))["rougeL"] for text, doc in zip(texts, docs)]
    row = {
        "scheduler": sampler.scheduler,
        "steps": sampler.steps,
        "rougeL": statistics.fmean(per_doc),
        "seconds": seconds,
        "docs_per_second": len(docs) / max(seconds, 1e-12),
    }
    logger.info("%s: ROUGE-L %.2f, %.1f docs/s", sampler.label, row["rougeL"], row["docs_per_second"])
    return row, per_doc


def run_steps(
    cfg: StepsConfig,
    pipe: Any,
    docs: Sequence[SegmentedDocument],
    rules: DecodingRules,
    device: torch.device,
    guidance_scale: float | None = None,
    num_beams: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Score the reference and every (scheduler, count) on ``docs``; returns the JSON-ready report.

    The first call of the run is an untimed warm-up batch, so the timings (one run each, reported
    for orientation; ``mode=speed`` is the speed measurement) do not include start-up costs.
    """
    docs = list(docs[: cfg.num_documents])
    args = (rules, cfg, device, guidance_scale, num_beams, seed)
    _score(pipe, SamplerSetting(cfg.schedulers[0], min(cfg.counts)), docs[: cfg.batch_size], *args)
    reference, reference_per_doc = _score(pipe, cfg.reference, docs, *args)
    rows = []
    for scheduler in cfg.schedulers:
        for steps in sorted(cfg.counts):
            row, per_doc = _score(pipe, SamplerSetting(scheduler, steps), docs, *args)
            row["delta"], row["delta_se"] = paired_difference(per_doc, reference_per_doc)
            rows.append(row)
    return {
        "num_documents": len(docs),
        "reference": reference,
        "tolerance": cfg.tolerance,
        "rows": rows,
        "finding": fewest_steps(rows, reference["rougeL"], cfg.tolerance),
    }


def steps_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the finding, then one row per setting."""
    ref, finding = report["reference"], report["finding"]
    fewest = finding["fewest"]
    headline = (
        f"**{fewest['scheduler']} {fewest['steps']}** (ROUGE-L {fewest['rougeL']:.2f})"
        if fewest
        else "**none** of the settings tried"
    )
    if fewest and report["rows"] and fewest["steps"] == min(r["steps"] for r in report["rows"]):
        headline += " (the smallest count tried: fewer steps may be as good)"
    per = ", ".join(f"{s}: {n if n is not None else 'none'}" for s, n in finding["per_scheduler"].items())
    lines = [
        f"- reference: {ref['scheduler']} {ref['steps']}, ROUGE-L {ref['rougeL']:.2f} on "
        f"{report['num_documents']} documents; within {report['tolerance']:g} means ROUGE-L >= "
        f"{finding['threshold']:.2f}",
        f"- fewest steps within {report['tolerance']:g} ROUGE-L of the reference: {headline}; per scheduler: {per}",
        "- delta: paired mean difference to the reference over the same documents, +- 1 standard error",
        "",
        "| scheduler | steps | ROUGE-L | delta | docs/s |",
        "|---|---|---|---|---|",
        f"| {ref['scheduler']} | {ref['steps']} | {ref['rougeL']:.2f} | reference | {ref['docs_per_second']:.1f} |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['scheduler']} | {r['steps']} | {r['rougeL']:.2f} | {r['delta']:+.2f} +- {r['delta_se']:.2f} "
            f"| {r['docs_per_second']:.1f} |"
        )
    return "\n".join(lines)


def plot_steps(report: dict[str, Any], title: str = "") -> Figure:
    """ROUGE-L against steps (log) per scheduler, with the reference and its tolerance band."""
    figure = new_figure(6.4, 4.4)
    ax = figure.subplots()
    ref = report["reference"]
    ax.axhline(ref["rougeL"], color="black", lw=1, label=f"{ref['scheduler']} {ref['steps']}")
    ax.axhspan(
        report["finding"]["threshold"], ref["rougeL"], color="grey", alpha=0.2, label="within tolerance"
    )
    by_scheduler: dict[str, list[dict[str, Any]]] = {}
    for r in report["rows"]:
        by_scheduler.setdefault(r["scheduler"], []).append(r)
    for scheduler, rows in by_scheduler.items():
        rows = sorted(rows, key=lambda r: r["steps"])
        ax.errorbar(
            [r["steps"] for r in rows],
            [r["rougeL"] for r in rows],
            yerr=[r["delta_se"] for r in rows],
            marker="o",
            capsize=3,
            label=scheduler,
        )
    ax.set_xscale("log")
    counts = sorted({r["steps"] for r in report["rows"]})
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("sampling steps (log)")
    ax.set_ylabel("ROUGE-L")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return figure


def write_steps_report(report: dict[str, Any], output_dir: str | Path, header: Sequence[str] = ()) -> str:
    """Write ``steps.json``, ``steps.md`` and ``steps.png``/``.svg``; returns the Markdown."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join(["# SLD: fewest sampling steps", "", *header, steps_markdown(report), ""])
    (output_dir / "steps.md").write_text(markdown)
    (output_dir / "steps.json").write_text(json.dumps(report, indent=2) + "\n")
    save_figure(plot_steps(report, "ROUGE-L against sampling steps"), output_dir, "steps")
    return markdown

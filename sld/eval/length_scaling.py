"""Length scaling: how SLD's and AR's generation time grows with the length of the document.

``sld benchmark mode=length_scaling`` writes documents of S = 1, 2, 5, 10, 20 segments with both
systems and measures, for each S, the latency of one document (batch 1) and the throughput at
batch 64. The seed's claim is that SLD decodes all segments of a document in parallel, so its cost
grows slowly with S, while AR writes one token after the other.

What makes the comparison fair:

* **the same amount of text**: every segment is exactly T tokens and every AR document exactly
  S x T tokens (``min_new_tokens = max_new_tokens``, so the end token cannot stop either system
  early, and neither decodes padding). T defaults to the median length of a synthetic story
  sentence in the SLD decoder's tokens.
* **the same decoding**: greedy for both, no repetition control (HF's no-repeat-n-gram check is
  Python work per row and token that would grow with the AR document only).
* **SLD as it would be built for S segments**: the denoiser attends over exactly S segment slots
  (no padding up to its ``max_segments``) and the segment count is given, not predicted. When the
  trained denoiser has fewer than S slots, a denoiser of the same architecture with S slots and
  RANDOM weights is timed instead (compute does not depend on the weights); the report says so.
* **the same inputs**: the first sentences of seeded synthetic stories (``sld.data.synthetic``) as
  sources, batch 1 = the first of them.

Timing (``sld.eval.timing``): one untimed warm-up call per cell, then ``repeats`` timed calls
between device synchronisations; the median is reported. The numbers are pure timing: the texts
are not scored (with random weights they are noise).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.profiler import record_function

from sld.data.synthetic import generate_stories
from sld.diffusion.sampling import make_scheduler, sample_latents
from sld.eval.benchmark import AR, SLD, SamplerSetting
from sld.eval.decoding_rules import token_lengths
from sld.eval.timing import median, profile_call, timed_runs
from sld.models.denoiser import SegmentDiT
from sld.pipeline import CONTEXT_BUCKET
from sld.shapes import fold_segments
from sld.viz.figures import new_figure, save_figure

logger = logging.getLogger(__name__)

__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "LengthScalingConfig",
    "ar_forced_length_fn",
    "default_tokens_per_segment",
    "denoiser_for_segments",
    "growth",
    "length_scaling_markdown",
    "plot_length_scaling",
    "run_length_scaling",
    "sld_forced_length_fn",
    "synthetic_sources",
    "write_length_scaling_report",
]

LATENCY = "latency"
THROUGHPUT = "throughput"

# A forced-length generation of one batch: () -> texts.
BatchFn = Callable[[], list[str]]


def _default_sampler() -> SamplerSetting:
    return SamplerSetting("dpm++", 10)


@dataclass
class LengthScalingConfig:
    """Settings of ``mode=length_scaling`` (see the module docstring).

    ``tokens_per_segment`` null = the median synthetic sentence length in the SLD decoder's tokens
    (the AR decoder's when no SLD model is given). ``growth_from``: latency growth is reported from
    this segment count to the largest (the issue's target: from 5 to 20). ``static_cache``: both
    systems decode from a static KV cache with the token step as a CUDA graph
    (``sld.models.static_decoding``; causal-LM decoders only), and SLD's denoiser steps are CUDA
    graphs too (``sld.diffusion.sampling.graphed_denoiser``). ``profile_segments``: after timing that
    segment count, one throughput batch of each system runs under torch.profiler (``profile_sld.txt``,
    ``profile_ar.txt`` beside the report; see ``sld.eval.timing.profile_call``).
    """

    segment_counts: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    tokens_per_segment: int | None = None
    latency_batch_size: int = 1
    throughput_batch_size: int = 64
    latency_repeats: int = 5
    throughput_repeats: int = 3
    sampler: SamplerSetting = field(default_factory=_default_sampler)
    growth_from: int = 5
    static_cache: bool = False
    profile_segments: int | None = None

    def __post_init__(self) -> None:
        if not self.segment_counts or any(s < 1 for s in self.segment_counts):
            raise ValueError(f"length_scaling.segment_counts must be positive, got {self.segment_counts}")
        if self.tokens_per_segment is not None and self.tokens_per_segment < 1:
            raise ValueError(f"length_scaling.tokens_per_segment must be >= 1, got {self.tokens_per_segment}")
        if min(self.latency_batch_size, self.throughput_batch_size) < 1:
            raise ValueError("length_scaling batch sizes must be >= 1")
        if min(self.latency_repeats, self.throughput_repeats) < 1:
            raise ValueError("length_scaling repeats must be >= 1")
        if self.profile_segments is not None and self.profile_segments not in self.segment_counts:
            raise ValueError(
                f"length_scaling.profile_segments={self.profile_segments} is not one of "
                f"segment_counts {self.segment_counts}"
            )


def synthetic_sources(n: int, seed: int = 0) -> list[str]:
    """``n`` sources: the first sentence of each of ``n`` seeded synthetic stories."""
    return [story.sentences[0] for story in generate_stories(n, seed, "length-scaling")]


def default_tokens_per_segment(tokenizer: Any, seed: int = 0, n: int = 200) -> int:
    """The median token length of synthetic story sentences (without special tokens), at least 1."""
    sentences = [s for story in generate_stories(n // 4, seed, "length-scaling") for s in story.sentences]
    return max(1, round(statistics.median(token_lengths(tokenizer, sentences))))


def denoiser_for_segments(denoiser: SegmentDiT, num_segments: int, seed: int = 0) -> tuple[SegmentDiT, str]:
    """``denoiser`` when it has ``num_segments`` slots, else a random-weight copy of its architecture
    with that many (on the same device and dtype); and a note on which weights are timed."""
    have = int(denoiser.config.max_segments)
    if have >= num_segments:
        return denoiser, "trained weights as loaded"
    torch.manual_seed(seed)
    wider = SegmentDiT.from_config({**dict(denoiser.config), "max_segments": num_segments})
    wider = wider.to(device=denoiser.device, dtype=denoiser.dtype).eval()
    return wider, (
        f"RANDOM weights: the loaded denoiser has max_segments={have} < {num_segments}, so a denoiser of "
        "the same architecture with more segment slots is timed (timing only)"
    )


def sld_forced_length_fn(
    pipe: Any,
    denoiser: SegmentDiT,
    sources: Sequence[str | None],
    num_segments: int,
    tokens_per_segment: int,
    sampler: SamplerSetting,
    guidance_scale: float | None = None,
    seed: int = 0,
    static_cache: bool = False,
) -> BatchFn:
    """One SLD batch: context -> (B, S, N, D) latents over exactly S slots -> B x S segments of T tokens.

    ``pipe`` is an ``SLDPipeline`` (its context encoder, autoencoder and config are used);
    ``denoiser`` may be a wider stand-in (``denoiser_for_segments``).
    """
    config = pipe.config
    scheduler = make_scheduler(sampler.scheduler, config.num_train_timesteps, config.prediction_type)
    guidance = sampler.guidance_or(config.guidance_scale if guidance_scale is None else guidance_scale)
    autoencoder = pipe.autoencoder
    device = denoiser.device
    sources = list(sources)
    b, s, t = len(sources), num_segments, tokens_per_segment

    @torch.no_grad()
    def run() -> list[str]:
        generator = torch.Generator(device=device).manual_seed(seed)
        with record_function("sld.context"):  # the pipeline's phases, named for profile_call
            # static: the encoder as a CUDA graph per bucketed length, as in the pipeline
            context, context_mask = pipe.context_encoder.encode(
                sources, CONTEXT_BUCKET if static_cache else None
            )
        with record_function("sld.denoise"):
            z = sample_latents(
                denoiser,
                scheduler,
                context.to(device, denoiser.dtype),
                context_mask.to(device),
                segment_mask=torch.ones(b, s, dtype=torch.bool, device=device),
                num_inference_steps=sampler.steps,
                guidance_scale=guidance,
                generator=generator,
                renormalize=autoencoder.normalize_latents,
                graphed=static_cache,
            )  # (B, S, N, D)
        with record_function("sld.decode"):
            segments = autoencoder.decode_latents(
                fold_segments(z).to(autoencoder.dtype),
                max_new_tokens=t,
                min_new_tokens=t,
                num_beams=1,
                no_repeat_ngram_size=0,
                static_cache=static_cache,
            )
        return [" ".join(segments[i * s : (i + 1) * s]) for i in range(b)]

    return run


def ar_forced_length_fn(
    baseline: Any, sources: Sequence[str | None], num_tokens: int, static_cache: bool = False
) -> BatchFn:
    """One AR batch: every document exactly ``num_tokens`` tokens, greedy (a ``BaselineModel``)."""
    sources = list(sources)

    def run() -> list[str]:
        return baseline.generate_texts(
            sources,
            batch_size=len(sources),
            num_beams=1,
            no_repeat_ngram_size=0,
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            static_cache=static_cache,
        )

    return run


def _cell(
    system: str,
    kind: str,
    fn: BatchFn,
    segments: int,
    tokens_per_document: int,
    batch_size: int,
    repeats: int,
    device: torch.device,
    tokenizer: Any,
) -> dict[str, Any]:
    texts: list[str] = []

    def call() -> None:
        nonlocal texts
        texts = fn()

    seconds = timed_runs(call, device, repeats, warmup=True)
    middle = median(seconds)
    lengths = token_lengths(tokenizer, texts)
    row = {
        "system": system,
        "measure": kind,
        "segments": segments,
        "tokens_per_document": tokens_per_document,
        "batch_size": batch_size,
        "seconds": middle,
        "seconds_all": seconds,
        "docs_per_second": batch_size / max(middle, 1e-12),
        "tokens_per_second": batch_size * tokens_per_document / max(middle, 1e-12),
        "retokenized_output_tokens_mean": statistics.fmean(lengths) if lengths else 0.0,
    }
    logger.info("%s %s S=%d batch %d: %.4f s", system, kind, segments, batch_size, middle)
    return row


def run_length_scaling(
    cfg: LengthScalingConfig,
    pipe: Any,
    baseline: Any,
    device: torch.device,
    guidance_scale: float | None = None,
    seed: int = 0,
    profile_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Time both systems (either may be None) at every segment count; returns the JSON-ready report.

    With ``cfg.profile_segments`` and ``profile_dir``, the profiles of one throughput batch of each
    system at that count go to ``profile_dir`` (their paths under the report's ``profiles``)."""
    if pipe is None and baseline is None:
        raise ValueError("length scaling needs an SLD pipeline or an AR baseline")
    sld_tokenizer = pipe.autoencoder.decoder_tokenizer if pipe is not None else None
    ar_tokenizer = baseline.decoder_tokenizer if baseline is not None else None
    t = cfg.tokens_per_segment or default_tokens_per_segment(sld_tokenizer or ar_tokenizer, seed)
    sources = synthetic_sources(max(cfg.latency_batch_size, cfg.throughput_batch_size), seed)
    cells = [
        (LATENCY, cfg.latency_batch_size, cfg.latency_repeats),
        (THROUGHPUT, cfg.throughput_batch_size, cfg.throughput_repeats),
    ]
    denoiser, sld_weights = None, None
    if pipe is not None:
        denoiser, sld_weights = denoiser_for_segments(pipe.denoiser, max(cfg.segment_counts), seed)
    rows = []
    profiles: dict[str, str] = {}
    for s in sorted(cfg.segment_counts):
        for kind, batch_size, repeats in cells:
            batch = sources[:batch_size]
            fns = {}
            if pipe is not None:
                fns[SLD] = sld_forced_length_fn(
                    pipe, denoiser, batch, s, t, cfg.sampler, guidance_scale, seed, cfg.static_cache
                )
                rows.append(_cell(SLD, kind, fns[SLD], s, s * t, batch_size, repeats, device, sld_tokenizer))
            if baseline is not None:
                fns[AR] = ar_forced_length_fn(baseline, batch, s * t, cfg.static_cache)
                rows.append(_cell(AR, kind, fns[AR], s, s * t, batch_size, repeats, device, ar_tokenizer))
            if kind == THROUGHPUT and s == cfg.profile_segments and profile_dir is not None:
                for system, fn in fns.items():  # warmed up by their timed runs
                    path = Path(profile_dir) / f"profile_{system.lower()}.txt"
                    title = f"{system}, {s} segments of {t} tokens, batch {batch_size}"
                    profiles[system] = str(profile_call(fn, device, path, title))
    return {
        "tokens_per_segment": t,
        "sources": "first sentences of seeded synthetic stories (sld.data.synthetic)",
        "sld_sampler": cfg.sampler.label if pipe is not None else None,
        "sld_weights": sld_weights,
        "ar_weights": "as loaded" if baseline is not None else None,
        "timing_only": True,
        "static_cache": cfg.static_cache,
        "rows": rows,
        "growth": growth(rows, cfg.growth_from),
        "profiles": profiles,
    }


def _value(rows: Sequence[dict[str, Any]], kind: str, segments: int, key: str) -> float | None:
    found = [r[key] for r in rows if r["measure"] == kind and r["segments"] == segments]
    return found[0] if found else None


def growth(rows: Sequence[dict[str, Any]], from_segments: int) -> dict[str, dict[str, Any]]:
    """Per system: latency at the largest S over latency at ``from_segments`` (the smallest S when
    that was not run or is the largest), and throughput at ``from_segments`` over throughput at the
    largest S. Either ratio is None when a cell is missing."""
    out: dict[str, dict[str, Any]] = {}
    for system in sorted({r["system"] for r in rows}):
        mine = [r for r in rows if r["system"] == system]
        counts = sorted({r["segments"] for r in mine})
        end = counts[-1]
        start = from_segments if from_segments in counts and from_segments < end else counts[0]
        lat0, lat1 = _value(mine, LATENCY, start, "seconds"), _value(mine, LATENCY, end, "seconds")
        thr0 = _value(mine, THROUGHPUT, start, "docs_per_second")
        thr1 = _value(mine, THROUGHPUT, end, "docs_per_second")
        out[system] = {
            "from_segments": start,
            "to_segments": end,
            "latency_growth": lat1 / lat0 if lat0 and lat1 is not None else None,
            "throughput_drop": thr0 / thr1 if thr0 is not None and thr1 else None,
        }
    return out


def length_scaling_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the settings, the growth summary and one row per cell."""
    lines = [
        f"- every segment exactly {report['tokens_per_segment']} tokens, every AR document exactly S x "
        f"{report['tokens_per_segment']}; greedy, no repetition control; sources: {report['sources']}",
        f"- SLD: {report['sld_sampler']}, {report['sld_weights']}; AR: {report['ar_weights']}",
        "- timing only: texts are not scored; median of the timed runs after one warm-up call",
        "- decoding: "
        + (
            "static KV cache, token step (and SLD's denoiser step) replayed as a CUDA graph on a GPU "
            "(static_cache=true)"
            if report.get("static_cache")
            else "dynamic KV cache, finished rows leave the batch"
        ),
    ]
    for system, g in report["growth"].items():
        lat = "n/a" if g["latency_growth"] is None else f"x{g['latency_growth']:.2f}"
        thr = "n/a" if g["throughput_drop"] is None else f"/{g['throughput_drop']:.2f}"
        lines.append(
            f"- {system} from {g['from_segments']} to {g['to_segments']} segments: latency {lat}, "
            f"throughput {thr}"
        )
    for system, path in report.get("profiles", {}).items():
        lines.append(f"- {system}: torch.profiler summary of one throughput batch in {path}")
    lines += ["", "| system | segments | tokens/doc | measure | batch | s (median) | docs/s | tokens/s |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        lines.append(
            f"| {r['system']} | {r['segments']} | {r['tokens_per_document']} | {r['measure']} | "
            f"{r['batch_size']} | {r['seconds']:.4f} | {r['docs_per_second']:.2f} | {r['tokens_per_second']:.0f} |"
        )
    return "\n".join(lines)


def plot_length_scaling(report: dict[str, Any], title: str = "") -> Figure:
    """Latency (batch 1) and throughput (batch 64) against segments per document, one curve per system."""
    figure = new_figure(11, 4.4)
    axes = figure.subplots(1, 2)
    panels = (
        (LATENCY, "seconds", "latency per document (s)"),
        (THROUGHPUT, "docs_per_second", "documents / s"),
    )
    for ax, (kind, key, label) in zip(axes, panels):
        batch = None
        for system, marker in ((SLD, "o"), (AR, "s")):
            points = sorted(
                (r for r in report["rows"] if r["system"] == system and r["measure"] == kind),
                key=lambda r: r["segments"],
            )
            if points:
                batch = points[0]["batch_size"]
                ax.plot(
                    [r["segments"] for r in points], [r[key] for r in points], marker=marker, label=system
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        counts = sorted({r["segments"] for r in report["rows"]})
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_xticks([], minor=True)
        ax.set_xlabel(f"segments per document ({report['tokens_per_segment']} tokens each, log)")
        ax.set_ylabel(f"{label} (log)")
        ax.set_title(f"{kind} at batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return figure


def write_length_scaling_report(
    report: dict[str, Any], output_dir: str | Path, header: Sequence[str] = ()
) -> str:
    """Write ``length_scaling.json``, ``.md`` and ``.png``/``.svg``; returns the Markdown."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    title = "# SLD vs AR: generation time against document length"
    markdown = "\n".join([title, "", *header, length_scaling_markdown(report), ""])
    (output_dir / "length_scaling.md").write_text(markdown)
    (output_dir / "length_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    save_figure(
        plot_length_scaling(report, "SLD vs AR: time against document length"), output_dir, "length_scaling"
    )
    return markdown

"""Running both systems' generation settings on one device, timed, under one set of decoding rules.

``load_models`` opens the SLD pipeline and / or the AR baseline of a benchmark; ``sld_generate_fn``
and ``ar_generate_fn`` wrap them as ``GenerateFn`` (sources -> texts and SLD's time split) with the
run's ``DecodingRules``; ``measure`` times one (system, setting, batch size) cell
(an untimed warm-up pass over all its documents, then ``repeats`` timed runs between device
synchronisations, ``sld.eval.timing``) and scores its texts; ``run_speed`` measures every cell of
``mode=speed``; ``predictions_writer`` saves each cell's texts in the format ``sld evaluate`` reads.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sld.data.segmented import SegmentedDocument, read_segmented
from sld.errors import DataError, UserError
from sld.eval.benchmark import (
    AR,
    SLD,
    DecodingSetting,
    Measurement,
    SamplerSetting,
    SpeedConfig,
    quality_scores,
)
from sld.eval.decoding_rules import DecodingRules
from sld.eval.timing import MemoryMonitor, parameter_mib, timed_runs
from sld.models.cuda_graphs import denoiser_graph_backend, graph_backend

logger = logging.getLogger(__name__)

__all__ = [
    "GenerateFn",
    "PredictionsSink",
    "ar_generate_fn",
    "load_documents",
    "load_models",
    "measure",
    "predictions_writer",
    "run_speed",
    "sld_generate_fn",
    "unavailable_decodings",
    "unavailable_samplers",
    "weights_mib",
]

# A generation function: sources -> (texts, time split in seconds; may be empty).
GenerateFn = Callable[[Sequence[str | None]], tuple[list[str], dict[str, float]]]


def load_documents(path: str, limit: int) -> list[SegmentedDocument]:
    """The first ``limit`` documents of a stage-1 split file."""
    if not Path(path).is_file():
        raise DataError(
            f"input={path!r}: not found (a stage-1 <split>.jsonl file, e.g. runs/segmented/valid.jsonl)"
        )
    docs = read_segmented(path)[:limit]
    if not docs:
        raise DataError(f"{path}: no documents")
    return docs


def load_models(
    sld_model: str | None, baseline_model: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """The ``SLDPipeline`` and the ``BaselineModel`` of the given folders (None where not given)."""
    # Once sld.loading.load_model(folder) exists it opens either kind of folder: use it here.
    pipe = baseline = None
    if sld_model:
        from sld.pipeline import SLDPipeline

        pipe = SLDPipeline.from_pretrained(sld_model, device=device, dtype=dtype)
    if baseline_model:
        from sld.models.baseline import BaselineModel

        baseline = BaselineModel.from_pretrained(baseline_model, device=device, dtype=dtype)
    if pipe is None and baseline is None:
        raise UserError("nothing to benchmark: set sld_model and/or baseline_model")
    return pipe, baseline


def weights_mib(pipe: Any, baseline: Any) -> dict[str, float]:
    """Parameter memory of each loaded system (MiB), reported beside the working memory of the rows."""
    out = {}
    if pipe is not None:
        out[SLD] = parameter_mib(pipe.denoiser, pipe.autoencoder, pipe.context_encoder)
    if baseline is not None:
        out[AR] = parameter_mib(baseline)
    return out


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

    A warm-up call over all ``sources`` runs untimed, so that every batch shape the timed calls meet
    has been traced and recorded (a static-cache decode traces once per row bucket, and SLD's row
    count changes with each batch's segments: on an H200 a bucket first met inside a timed call
    cost it about 13 s; the warm-up was once the first batch only). Then ``repeats`` timed calls,
    each between two device synchronisations. Quality is scored on the texts of the last call.
    Returns the measurement and those texts.
    """
    if warmup:
        generate_fn(sources)
    parts: list[dict[str, float]] = []
    texts: list[str] = []

    def one_run() -> None:
        nonlocal texts
        texts, split = generate_fn(sources)
        if split:
            parts.append(dict(split))

    with MemoryMonitor(device) as memory:
        seconds = timed_runs(one_run, device, repeats, warmup=False)
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
    # one line per cell as it ends: a run cut short still leaves its finished rows in the log
    shares = ""
    if parts and sum(parts[-1].values()) > 0:
        total = sum(parts[-1].values())
        shares = ", " + " / ".join(f"{name} {100 * value / total:.0f}%" for name, value in parts[-1].items())
    logger.info(
        "%s %s batch %d: %.2f docs/s (%.2f s for %d documents), ROUGE-L %.2f%s",
        system,
        setting,
        batch_size,
        len(sources) / max(statistics.median(seconds), 1e-12),
        statistics.median(seconds),
        len(sources),
        result.quality["rougeL"],
        shares,
    )
    return result, texts


def sld_generate_fn(
    pipe: Any,
    sampler: SamplerSetting,
    rules: DecodingRules,
    batch_size: int,
    guidance_scale: float | None = None,
    num_beams: int | None = None,
    seed: int = 0,
) -> GenerateFn:
    """SLD generation under the run's decoding rules (an ``SLDPipeline``; the same seed every call);
    the sampler's own ``guidance_scale`` before the run's, its ``graph_backend`` for every graph and its
    ``denoiser_backend`` for the denoiser's."""

    def generate(sources: Sequence[str | None]) -> tuple[list[str], dict[str, float]]:
        with graph_backend(sampler.graph_backend), denoiser_graph_backend(sampler.denoiser_backend):
            out = pipe(
                list(sources),
                num_inference_steps=sampler.steps,
                scheduler=sampler.scheduler,
                guidance_scale=sampler.guidance_or(guidance_scale),
                num_beams=num_beams,
                no_repeat_ngram_size=rules.no_repeat_ngram_size,
                max_new_tokens=rules.sld_max_new_tokens,
                seed=seed,
                batch_size=batch_size,
                static_cache=rules.static_cache or sampler.static_cache,
            )
        return out.texts, dict(out.timings)

    return generate


def ar_generate_fn(
    baseline: Any, decoding: DecodingSetting, rules: DecodingRules, batch_size: int
) -> GenerateFn:
    """AR generation under the run's decoding rules (a ``BaselineModel``), its graphs under the setting's
    ``graph_backend``."""

    def generate(sources: Sequence[str | None]) -> tuple[list[str], dict[str, float]]:
        with graph_backend(decoding.graph_backend):
            texts = baseline.generate_texts(
                list(sources),
                batch_size=batch_size,
                num_beams=decoding.num_beams,
                no_repeat_ngram_size=rules.no_repeat_ngram_size,
                max_new_tokens=rules.ar_max_new_tokens,
                static_cache=rules.static_cache or decoding.static_cache,
            )
        return texts, {}

    return generate


def unavailable_decodings(baseline: Any, decodings: Sequence[DecodingSetting]) -> list[str]:
    """Names of the AR decodings the baseline cannot run: beam search with a causal-LM decoder, a
    static KV cache with an encoder-decoder."""
    if baseline is None:
        return []
    if getattr(baseline, "is_causal", False):
        return [d.label for d in decodings if d.num_beams > 1]
    return [d.label for d in decodings if d.static_cache]


def unavailable_samplers(pipe: Any, samplers: Sequence[SamplerSetting]) -> list[str]:
    """Labels of the SLD settings the pipeline cannot run: a static KV cache with an encoder-decoder
    segment decoder."""
    if pipe is None or getattr(pipe.autoencoder, "is_causal", False):
        return []
    return [s.label for s in samplers if s.static_cache]


# Called with (system, setting, batch size, documents, references, texts) after every cell.
PredictionsSink = Callable[[str, str, int, Sequence[SegmentedDocument], Sequence[str], Sequence[str]], None]


def run_speed(
    cfg: SpeedConfig,
    pipe: Any,
    baseline: Any,
    docs: Sequence[SegmentedDocument],
    rules: DecodingRules,
    device: torch.device,
    seed: int = 0,
    on_predictions: PredictionsSink | None = None,
) -> list[Measurement]:
    """Every (batch size, setting) cell, AR decodings first, in one process on one device.

    Settings a system cannot run (``unavailable_decodings``, ``unavailable_samplers``) are left out.
    """
    measurements: list[Measurement] = []
    for batch_size in cfg.batch_sizes:
        count = len(docs) if cfg.max_batches is None else min(len(docs), cfg.max_batches * batch_size)
        cell_docs = docs[:count]
        sources = [doc.source for doc in cell_docs]
        references = [" ".join(doc.segments) for doc in cell_docs]
        cells: list[tuple[str, str, GenerateFn, int | None]] = []
        if baseline is not None:
            skip = set(unavailable_decodings(baseline, cfg.decodings))
            for decoding in (d for d in cfg.decodings if d.label not in skip):
                cells.append(
                    (AR, decoding.label, ar_generate_fn(baseline, decoding, rules, batch_size), None)
                )
        if pipe is not None:
            skip = set(unavailable_samplers(pipe, cfg.samplers))
            for sampler in (s for s in cfg.samplers if s.label not in skip):
                fn = sld_generate_fn(
                    pipe, sampler, rules, batch_size, cfg.guidance_scale, cfg.sld_num_beams, seed
                )
                cells.append((SLD, sampler.label, fn, sampler.steps))
        for system, setting, fn, steps in cells:
            result, texts = measure(
                system,
                setting,
                fn,
                sources,
                references,
                batch_size,
                device,
                repeats=cfg.repeats,
                warmup=cfg.warmup,
                steps=steps,
            )
            measurements.append(result)
            if on_predictions is not None:
                on_predictions(system, setting, batch_size, cell_docs, references, texts)
    return measurements


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def predictions_writer(folder: str | Path) -> PredictionsSink:
    """A ``run_speed`` sink writing ``<folder>/<system>_<setting>_b<batch>.jsonl`` (``sld evaluate`` format)."""
    folder = Path(folder)

    def write(
        system: str,
        setting: str,
        batch_size: int,
        docs: Sequence[SegmentedDocument],
        references: Sequence[str],
        texts: Sequence[str],
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_slug(system)}_{_slug(setting)}_b{batch_size}.jsonl"
        with path.open("w") as handle:
            for doc, ref, text in zip(docs, references, texts):
                row = {
                    "id": doc.id,
                    "source": doc.source,
                    "prediction": text,
                    "reference": ref,
                    "reference_segments": doc.segments,
                }
                handle.write(json.dumps(row) + "\n")

    return write

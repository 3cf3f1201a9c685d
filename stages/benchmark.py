"""Benchmark SLD against the AR baseline: speed, memory and quality on one device, in one run.

    sld benchmark -c configs/benchmark.yaml input=runs/roc/segmented/valid.jsonl \
        sld_model=runs/roc/diffusion baseline_model=runs/roc/baseline output_dir=runs/roc/benchmark

For every batch size, times the AR baseline for each decoding (greedy, beam; KV cache on) and SLD
for each (scheduler, steps) sampling setting on the same first ``num_documents`` documents of a
stage-1 split file, after one untimed warm-up batch per setting. Reports documents/s, latency,
SLD's context / denoise / decode split, peak memory, ROUGE-L, distinct-2 and distinct outputs, and
each setting's throughput relative to AR greedy at the same batch size. Writes ``benchmark.json``,
``benchmark.md``, ``benchmark.png`` / ``.svg`` (quality against speed) and, optionally, every
setting's predictions in the format ``sld evaluate`` reads. Either model may be left out.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sld.cli import run_stage
from sld.config import config_to_dict, save_config
from sld.data.segmented import SegmentedDocument, read_segmented
from sld.errors import DataError, UserError
from sld.eval.benchmark import (
    AR,
    SLD,
    DecodingSetting,
    Measurement,
    SamplerSetting,
    benchmark_rows,
    device_description,
    markdown_table,
    measure,
    parameter_mib,
    plot_quality_vs_speed,
)

logger = logging.getLogger("sld.benchmark")


def _default_samplers() -> list[SamplerSetting]:
    return [
        SamplerSetting("ddpm", 250),
        SamplerSetting("dpm++", 50),
        SamplerSetting("dpm++", 25),
        SamplerSetting("dpm++", 10),
    ]


def _default_decodings() -> list[DecodingSetting]:
    return [DecodingSetting("greedy", 1, 0), DecodingSetting("beam 4", 4, 3)]


@dataclass
class Config:
    """``max_batches`` caps the documents of one cell at ``max_batches x batch_size`` (keeps batch 1
    cheap); null = all ``num_documents`` at every batch size. ``sld_*`` decoding settings apply to
    the segment decoder (``guidance_scale`` null = the pipeline's saved default); ``*_max_new_tokens``
    null = per segment the autoencoder's segment length, per document the baseline's target length."""

    output_dir: str = "runs/benchmark"
    input: str = "runs/segmented/valid.jsonl"
    num_documents: int = 256
    max_batches: int | None = None
    sld_model: str | None = "runs/diffusion"
    baseline_model: str | None = "runs/baseline"
    batch_sizes: list[int] = field(default_factory=lambda: [16, 64])
    samplers: list[SamplerSetting] = field(default_factory=_default_samplers)
    decodings: list[DecodingSetting] = field(default_factory=_default_decodings)
    guidance_scale: float | None = None
    sld_num_beams: int = 1
    sld_no_repeat_ngram_size: int = 0
    sld_max_new_tokens: int | None = None
    ar_max_new_tokens: int | None = None
    repeats: int = 1
    warmup: bool = True
    seed: int = 0
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
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


def _load_models(cfg: Config, device: torch.device) -> tuple[Any, Any]:
    dtype = getattr(torch, cfg.dtype)
    pipe = baseline = None
    if cfg.sld_model:
        from sld.pipeline import SLDPipeline

        pipe = SLDPipeline.from_pretrained(cfg.sld_model, device=device, dtype=dtype)
    if cfg.baseline_model:
        from sld.models.baseline import BaselineModel

        baseline = BaselineModel.from_pretrained(cfg.baseline_model, device=device, dtype=dtype)
    if pipe is None and baseline is None:
        raise UserError("nothing to benchmark: set sld_model and/or baseline_model")
    return pipe, baseline


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _write_predictions(
    path: Path, docs: Sequence[SegmentedDocument], references: Sequence[str], texts: Sequence[str]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def run_measurements(
    cfg: Config, pipe: Any, baseline: Any, docs: Sequence[SegmentedDocument], device: torch.device
) -> list[Measurement]:
    """Every (batch size, setting) cell, AR decodings first, in one process on one device."""
    output_dir = Path(cfg.output_dir)
    measurements: list[Measurement] = []
    for batch_size in cfg.batch_sizes:
        count = len(docs) if cfg.max_batches is None else min(len(docs), cfg.max_batches * batch_size)
        cell_docs = docs[:count]
        sources = [doc.source for doc in cell_docs]
        references = [" ".join(doc.segments) for doc in cell_docs]

        cells: list[tuple[str, str, Any, int | None]] = []
        if baseline is not None:
            for decoding in cfg.decodings:

                def ar_fn(srcs, d=decoding, b=batch_size):
                    texts = baseline.generate_texts(
                        list(srcs),
                        batch_size=b,
                        num_beams=d.num_beams,
                        no_repeat_ngram_size=d.no_repeat_ngram_size,
                        max_new_tokens=cfg.ar_max_new_tokens,
                    )
                    return texts, {}

                cells.append((AR, decoding.name, ar_fn, None))
        if pipe is not None:
            for sampler in cfg.samplers:

                def sld_fn(srcs, s=sampler, b=batch_size):
                    out = pipe(
                        list(srcs),
                        num_inference_steps=s.steps,
                        scheduler=s.scheduler,
                        guidance_scale=cfg.guidance_scale,
                        num_beams=cfg.sld_num_beams,
                        no_repeat_ngram_size=cfg.sld_no_repeat_ngram_size,
                        max_new_tokens=cfg.sld_max_new_tokens,
                        seed=cfg.seed,
                        batch_size=b,
                    )
                    return out.texts, dict(out.timings)

                cells.append((SLD, sampler.label, sld_fn, sampler.steps))

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
            if cfg.save_predictions:
                name = f"{_slug(system)}_{_slug(setting)}_b{batch_size}.jsonl"
                _write_predictions(output_dir / "predictions" / name, cell_docs, references, texts)
    return measurements


def weights_mib(pipe: Any, baseline: Any) -> dict[str, float]:
    """Parameter memory of each loaded system (MiB), reported beside the working memory of the rows."""
    out = {}
    if pipe is not None:
        out[SLD] = parameter_mib(pipe.denoiser, pipe.autoencoder, pipe.context_encoder)
    if baseline is not None:
        out[AR] = parameter_mib(baseline)
    return out


def write_report(
    cfg: Config, rows: list[dict[str, Any]], device_text: str, weights: dict[str, float] | None = None
) -> str:
    """Write ``benchmark.json`` and ``benchmark.md`` (and the plot); return the Markdown."""
    output_dir = Path(cfg.output_dir)
    measures = sorted({r["memory_measure"] for r in rows})
    table = markdown_table(rows)
    lines = [
        "# SLD vs AR baseline benchmark",
        "",
        f"- device: {device_text}, dtype {cfg.dtype}",
        f"- input: {cfg.input} (first {max(r['num_documents'] for r in rows)} documents at most)",
        f"- SLD: {cfg.sld_model or 'not run'}; AR baseline: {cfg.baseline_model or 'not run'}",
        f"- timed runs per cell: {cfg.repeats} (median shown), warm-up batch: {'yes' if cfg.warmup else 'no'}",
        f"- work MiB: peak memory of generation, {'; '.join(measures)}",
        "- weights (MiB): " + (", ".join(f"{k} {v:.1f}" for k, v in (weights or {}).items()) or "n/a"),
        "- x AR greedy: documents/s relative to the AR baseline's greedy decoding at the same batch size, "
        "measured in this run (above 1 = faster than AR).",
        "- ms/doc = wall time / documents; s/batch = wall time of one full batch; ms/step = denoising time "
        "of one sampling step of one batch.",
        "",
        table,
        "",
    ]
    markdown = "\n".join(lines)
    (output_dir / "benchmark.md").write_text(markdown)
    report = {
        "device": device_text,
        "dtype": cfg.dtype,
        "memory_measure": measures,
        "weights_mib": weights or {},
        "config": config_to_dict(cfg),
        "rows": rows,
    }
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    if cfg.plot:
        plot_quality_vs_speed(rows, output_dir / "benchmark", title=f"SLD vs AR on {device_text}")
    return markdown


def run(cfg: Config) -> list[dict[str, Any]]:
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    docs = load_documents(cfg.input, cfg.num_documents)
    pipe, baseline = _load_models(cfg, device)
    measurements = run_measurements(cfg, pipe, baseline, docs, device)
    rows = benchmark_rows(measurements)
    markdown = write_report(cfg, rows, device_description(device), weights_mib(pipe, baseline))
    print(markdown)
    print(f"benchmark written to {output_dir}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

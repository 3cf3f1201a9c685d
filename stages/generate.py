"""Generate texts with a trained SLD pipeline (or an AR baseline) from a JSONL file or the command line.

    sld generate model=runs/quickstart/diffusion texts='["The Lost Dog"]'
    sld generate model=runs/roc/diffusion input=runs/roc/segmented/valid.jsonl output=runs/roc/predictions.jsonl

``input`` is a JSONL with a ``source`` field (stage-1 output files work as they are: their
``segments`` become the reference). Each output line holds ``id``, ``source``, ``prediction``,
``segments`` (SLD), ``num_segments`` and, when the input had them, ``reference`` and
``reference_segments``: the format ``sld evaluate`` reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from sld.cli import run_stage
from sld.data.records import iter_jsonl_numbered
from sld.errors import UserError

logger = logging.getLogger("sld.generate")


@dataclass
class Config:
    model: str = "runs/diffusion"
    input: str | None = None
    texts: list[str] = field(default_factory=list)
    output: str | None = None
    source_field: str = "source"
    reference_field: str | None = None
    limit: int | None = None
    batch_size: int = 64
    seed: int = 0
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # SLD sampling (None = the pipeline's saved defaults)
    scheduler: Literal["ddpm", "ddim", "dpm++"] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    num_candidates: int = 1
    # decoding (SLD segment decoder and AR baseline)
    num_beams: int | None = None
    no_repeat_ngram_size: int | None = None
    max_new_tokens: int | None = None


@dataclass
class GenerationInput:
    id: str
    source: str | None
    reference: str | None = None
    reference_segments: list[str] | None = None


def read_inputs(cfg: Config) -> list[GenerationInput]:
    """Inputs from ``cfg.input`` (JSONL) and/or ``cfg.texts``; ``limit`` keeps the first ones."""
    inputs = [GenerationInput(id=f"text-{i}", source=t) for i, t in enumerate(cfg.texts)]
    if cfg.input:
        given = len(inputs)
        for line_no, row in iter_jsonl_numbered(cfg.input):
            if cfg.source_field not in row:
                raise UserError(
                    f"{cfg.input}, line {line_no}: no '{cfg.source_field}' field (set source_field=...)"
                )
            segments = row.get("segments")
            reference = row.get(cfg.reference_field) if cfg.reference_field else None
            if reference is None and isinstance(segments, list):
                reference = " ".join(segments)
            inputs.append(
                GenerationInput(
                    id=str(row.get("id", f"{Path(cfg.input).stem}-{line_no}")),
                    source=row[cfg.source_field],
                    reference=reference,
                    reference_segments=segments if isinstance(segments, list) else None,
                )
            )
        if len(inputs) == given:
            raise UserError(f"{cfg.input}: no input records (an empty file)")
    if not inputs:
        raise UserError("nothing to generate: give input=FILE.jsonl or texts='[\"...\"]'")
    return inputs[: cfg.limit] if cfg.limit else inputs


def load_generator(cfg: Config):
    """An ``SLDPipeline`` or an AR ``BaselineModel``, told apart by the files in ``cfg.model``."""
    folder = Path(cfg.model)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float32 is what the folders hold: no cast (casting a diffusers model to its own dtype warns)
    dtype = None if cfg.dtype == "float32" else getattr(torch, cfg.dtype)
    if (folder / "pipeline_config.json").is_file():
        from sld.pipeline import SLDPipeline

        return SLDPipeline.from_pretrained(folder, device=device, dtype=dtype)
    if (folder / "baseline_config.json").is_file():
        from sld.models.baseline import BaselineModel

        return BaselineModel.from_pretrained(folder, device=device, dtype=dtype).eval()
    raise UserError(f"model={cfg.model!r} is neither an SLD pipeline folder nor an AR baseline folder")


def generate(cfg: Config, model, inputs: Sequence[GenerationInput]) -> tuple[list[dict], dict[str, float]]:
    """Run the model over the inputs; returns output rows and timings (seconds)."""
    sources = [item.source for item in inputs]
    started = time.perf_counter()
    from sld.pipeline import SLDPipeline

    if isinstance(model, SLDPipeline):
        out = model(
            sources,
            num_inference_steps=cfg.num_inference_steps,
            scheduler=cfg.scheduler,
            guidance_scale=cfg.guidance_scale,
            num_candidates=cfg.num_candidates,
            num_beams=cfg.num_beams,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=True,
        )
        predictions, segments, timings = out.texts, out.segments, dict(out.timings)
    else:
        predictions = model.generate_texts(
            sources,
            batch_size=cfg.batch_size,
            num_beams=cfg.num_beams or 1,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size or 0,
            max_new_tokens=cfg.max_new_tokens,
            progress=True,
        )
        segments, timings = [None] * len(predictions), {}
    timings["total"] = time.perf_counter() - started
    rows = []
    for item, prediction, segs in zip(inputs, predictions, segments):
        row = {"id": item.id, "source": item.source, "prediction": prediction}
        if segs is not None:
            row["segments"] = segs
            row["num_segments"] = len(segs)
        if item.reference is not None:
            row["reference"] = item.reference
        if item.reference_segments is not None:
            row["reference_segments"] = item.reference_segments
        rows.append(row)
    return rows, timings


def run(cfg: Config) -> list[dict]:
    inputs = read_inputs(cfg)
    model = load_generator(cfg)
    rows, timings = generate(cfg, model, inputs)
    if cfg.output:
        path = Path(cfg.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {len(rows)} predictions to {path} in {timings['total']:.1f} s")
    else:
        for row in rows:
            print(f"[{row['source']}]\n  -> {row['prediction']}\n")
    logger.info("timings: %s", ", ".join(f"{k}={v:.2f}s" for k, v in timings.items()))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

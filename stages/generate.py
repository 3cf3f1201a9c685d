"""Generate texts with a trained SLD pipeline (or an AR baseline) from a JSONL file or the command line.

    sld generate model=runs/quickstart/diffusion texts='["The Lost Dog"]'
    sld generate model=runs/roc/diffusion input=runs/roc/segmented/valid.jsonl output=runs/roc/predictions.jsonl

``input`` is a JSONL with a ``source`` field (stage-1 output files work as they are: their
``segments`` become the reference). Each output line holds ``id``, ``source``, ``prediction``,
``segments`` (SLD), ``num_segments`` and, when the input had them, ``reference`` and
``reference_segments``: the format ``sld evaluate`` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sld.cli import run_stage
from sld.data.records import write_jsonl
from sld.generation import generate_texts, prediction_rows, read_generation_inputs
from sld.loading import load_model

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
    # causal-LM decoders: static KV cache; on a GPU the token step (and SLD's denoiser step) as CUDA graphs
    static_cache: bool = False


def run(cfg: Config) -> list[dict]:
    """Generate for every input; write the rows to ``cfg.output`` (or print them) and return them."""
    inputs = read_generation_inputs(cfg.input, cfg.texts, cfg.source_field, cfg.reference_field, cfg.limit)
    model = load_model(cfg.model, cfg.device, cfg.dtype, kinds=("pipeline", "baseline"), what="model")
    generated = generate_texts(
        model,
        [item.source for item in inputs],
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        scheduler=cfg.scheduler,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        num_candidates=cfg.num_candidates,
        num_beams=cfg.num_beams,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        max_new_tokens=cfg.max_new_tokens,
        progress=True,
        static_cache=cfg.static_cache,
    )
    rows = prediction_rows(inputs, generated)
    timings = generated.timings
    if cfg.output:
        write_jsonl(Path(cfg.output), rows)
        print(f"wrote {len(rows)} predictions to {cfg.output} in {timings['total']:.1f} s")
    else:
        for row in rows:
            print(f"[{row['source']}]\n  -> {row['prediction']}\n")
    logger.info("timings: %s", ", ".join(f"{k}={v:.2f}s" for k, v in timings.items()))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

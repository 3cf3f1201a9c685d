"""Generation from a saved model, as ``sld generate`` does it: inputs in, prediction rows out.

* ``read_generation_inputs``: sources (and references, when the file has them) from a JSONL file
  and/or a list of texts; stage-1 ``<split>.jsonl`` files work as they are (their ``segments``
  become the reference);
* ``generate_texts``: one text per source with an ``SLDPipeline`` or an AR ``BaselineModel`` (open
  either with ``sld.loading.load_model``), with the same decoding settings for both;
* ``prediction_rows``: the rows ``sld evaluate`` reads (``id``, ``source``, ``prediction``,
  ``segments``, ``num_segments``, ``reference``, ``reference_segments``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sld.data.records import iter_jsonl_numbered
from sld.diffusion.sampling import SchedulerName
from sld.errors import UserError
from sld.models.baseline import BaselineModel
from sld.pipeline import SLDPipeline


@dataclass
class GenerationInput:
    """One source to generate from, with its reference text and segments when known."""

    id: str
    source: str | None
    reference: str | None = None
    reference_segments: list[str] | None = None


@dataclass
class GeneratedTexts:
    """One text per source; ``segments`` per source for SLD (None for the AR baseline).

    ``timings`` holds seconds: ``total`` always, and the pipeline's ``context``, ``denoise`` and
    ``decode`` split for SLD.
    """

    texts: list[str]
    segments: list[list[str] | None]
    timings: dict[str, float] = field(default_factory=dict)


def read_generation_inputs(
    path: str | Path | None,
    texts: Sequence[str] = (),
    source_field: str = "source",
    reference_field: str | None = None,
    limit: int | None = None,
) -> list[GenerationInput]:
    """The ``texts`` (ids ``text-<i>``), then the lines of the JSONL file ``path``; the first ``limit``.

    A line's reference is its ``reference_field`` when set and present, else its ``segments``
    joined with spaces. A line without ``source_field`` is a ``UserError`` naming file and line.
    """
    inputs = [GenerationInput(id=f"text-{i}", source=t) for i, t in enumerate(texts)]
    if path:
        given = len(inputs)
        for line_no, row in iter_jsonl_numbered(path):
            if source_field not in row:
                raise UserError(f"{path}, line {line_no}: no '{source_field}' field (set source_field=...)")
            segments = row.get("segments")
            reference = row.get(reference_field) if reference_field else None
            if reference is None and isinstance(segments, list):
                reference = " ".join(segments)
            inputs.append(
                GenerationInput(
                    id=str(row.get("id", f"{Path(path).stem}-{line_no}")),
                    source=row[source_field],
                    reference=reference,
                    reference_segments=segments if isinstance(segments, list) else None,
                )
            )
        if len(inputs) == given:
            raise UserError(f"{path}: no input records (an empty file)")
    if not inputs:
        raise UserError("nothing to generate: give input=FILE.jsonl or texts='[\"...\"]'")
    return inputs[:limit] if limit else inputs


def generate_texts(
    model: SLDPipeline | BaselineModel,
    sources: Sequence[str | None],
    *,
    batch_size: int = 64,
    seed: int | None = 0,
    scheduler: SchedulerName | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    num_candidates: int = 1,
    num_beams: int | None = None,
    no_repeat_ngram_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = False,
    static_cache: bool = False,
) -> GeneratedTexts:
    """One text per source. Settings left None take the pipeline's saved defaults (SLD) or greedy
    decoding without an n-gram block (AR baseline); the sampling settings apply to SLD only.
    ``static_cache``: a causal-LM decoder (either system) decodes from a static KV cache, the token
    step replayed as a CUDA graph on a GPU (``sld.models.static_decoding``)."""
    started = time.perf_counter()
    if isinstance(model, SLDPipeline):
        out = model(
            list(sources),
            num_inference_steps=num_inference_steps,
            scheduler=scheduler,
            guidance_scale=guidance_scale,
            num_candidates=num_candidates,
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            static_cache=static_cache,
        )
        result = GeneratedTexts(list(out.texts), list(out.segments), dict(out.timings))
    else:
        texts = model.generate_texts(
            list(sources),
            batch_size=batch_size,
            num_beams=num_beams or 1,
            no_repeat_ngram_size=no_repeat_ngram_size or 0,
            max_new_tokens=max_new_tokens,
            progress=progress,
            static_cache=static_cache,
        )
        result = GeneratedTexts(texts, [None] * len(texts))
    result.timings["total"] = time.perf_counter() - started
    return result


def prediction_rows(inputs: Sequence[GenerationInput], generated: GeneratedTexts) -> list[dict[str, Any]]:
    """The predictions rows of ``sld generate`` (the format ``sld evaluate`` reads), in input order."""
    if len(inputs) != len(generated.texts):
        raise ValueError(f"{len(inputs)} inputs but {len(generated.texts)} generated texts")
    rows = []
    for item, prediction, segments in zip(inputs, generated.texts, generated.segments):
        row: dict[str, Any] = {"id": item.id, "source": item.source, "prediction": prediction}
        if segments is not None:
            row["segments"] = segments
            row["num_segments"] = len(segments)
        if item.reference is not None:
            row["reference"] = item.reference
        if item.reference_segments is not None:
            row["reference_segments"] = item.reference_segments
        rows.append(row)
    return rows

"""Predictions files of several systems, checked and scored against their references (``sld evaluate``).

One predictions JSONL per system, as ``sld generate`` writes it, one document per line::

    {"id": str, "source": str | null, "prediction": str, "segments": [str, ...],
     "reference": str | [str, ...] | null, "reference_segments": [str, ...]}

``prediction`` is the plain joined text that is scored. The references are either inside the
predictions file (``reference_field``; a list means several acceptable references) or in a separate
JSONL file joined on ``id_field`` (``references=FILE``). ``segments`` / ``reference_segments`` are
optional and add segment-count metrics when present on every line. A missing file, bad line,
missing field or unknown id is a ``DataError`` naming the file and line.

``evaluate_files`` reads every file, scores each system with ``sld.eval.report.evaluate_predictions``
and writes ``metrics.json``, ``metrics.md`` and ``config.yaml`` into ``output_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sld.config import save_config
from sld.data.records import LoadReport, iter_jsonl_numbered
from sld.errors import DataError
from sld.eval.report import evaluate_predictions, write_metrics
from sld.eval.semantic import load_embedder

logger = logging.getLogger(__name__)


@dataclass
class EvaluationConfig:
    """``sld evaluate`` options (see configs/evaluate.yaml)."""

    # system name -> predictions JSONL, or a single path (named after its folder if the file is predictions.jsonl).
    predictions: dict[str, str] | str
    output_dir: str = "runs/evaluate"
    prediction_field: str = "prediction"
    # Optional per-line fields; used when present on every line of a file.
    segments_field: str | None = "segments"
    source_field: str | None = "source"
    reference_field: str = "reference"
    reference_segments_field: str | None = "reference_segments"
    # A separate references JSONL joined on id_field; null: references are inside the predictions files.
    references: str | None = None
    id_field: str = "id"
    # "minilm" (packaged all-MiniLM-L6-v2), a sentence-transformers folder or hub name; null skips it and MAUVE.
    semantic_model: str | None = "minilm"
    mauve: bool = True
    seed: int = 25

    def __post_init__(self) -> None:
        if isinstance(self.predictions, dict) and not self.predictions:
            raise ValueError("predictions needs at least one system: name -> JSONL path")
        if not self.predictions:
            raise ValueError("predictions must name a predictions JSONL file")


@dataclass
class PredictionRecords:
    """The columns read from one predictions file (reference fields filled in later if joined)."""

    ids: list[str | None]
    lines: list[int]
    predictions: list[str]
    references: list[str | list[str] | None]
    sources: list[str | None] | None
    segments: list[list[str]] | None
    reference_segments: list[list[str]] | None


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every line of a JSONL file; a bad line is a ``DataError`` naming it."""
    report = LoadReport(str(path))
    rows = list(iter_jsonl_numbered(path, skip_bad_records=True, report=report))
    if report.num_skipped:
        line, reason = min((lines[0], reason) for reason, lines in report.skipped_lines.items() if lines)
        raise DataError(f"{path}, line {line}: {reason.removeprefix('bad record: ')}")
    return rows


def system_paths(predictions: dict[str, str] | str) -> dict[str, Path]:
    """``{system: path}``; a single path is named after its file, or its folder for ``predictions.jsonl``."""
    if isinstance(predictions, dict):
        return {name: Path(path) for name, path in predictions.items()}
    path = Path(predictions)
    stem = path.name.split(".")[0]
    name = path.resolve().parent.name if stem == "predictions" and path.resolve().parent.name else stem
    return {name: path}


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _reference(value: Any, where: str, field: str) -> str | list[str]:
    if isinstance(value, str):
        return value
    if _string_list(value) and value:
        return list(value)
    raise DataError(
        f"{where}: field '{field}' should be a string or a non-empty list of strings, got {value!r}"
    )


def _record_id(record: dict[str, Any], field: str) -> str | None:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def _optional_column(
    rows: Sequence[tuple[int, dict[str, Any]]], field: str | None, path: Path
) -> list[list[str]] | None:
    """An optional list-of-strings field: ``None`` when no line has it, an error when only some have it."""
    if field is None:
        return None
    present = [record.get(field) is not None for _, record in rows]
    if not any(present):
        return None
    if not all(present):
        line = rows[present.index(False)][0]
        raise DataError(f"{path}, line {line}: field '{field}' is missing here but present on other lines")
    values = []
    for line, record in rows:
        value = record[field]
        if not _string_list(value):
            raise DataError(
                f"{path}, line {line}: field '{field}' should be a list of strings, got {value!r}"
            )
        values.append(value)
    return values


def _sources(
    rows: Sequence[tuple[int, dict[str, Any]]], field: str | None, path: Path
) -> list[str | None] | None:
    """The source of each line (``None`` where missing or null); ``None`` when no line has one."""
    if field is None:
        return None
    sources = []
    for line, record in rows:
        value = record.get(field)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{path}, line {line}: field '{field}' should be a string or null, got {value!r}")
        sources.append(value)
    return sources if any(s is not None for s in sources) else None


def read_predictions(path: Path, cfg: EvaluationConfig) -> PredictionRecords:
    """Read and check one predictions file."""
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no predictions in the file")
    predictions, references = [], []
    for line, record in rows:
        where = f"{path}, line {line}"
        if cfg.prediction_field not in record:
            raise DataError(f"{where}: missing field '{cfg.prediction_field}' (set prediction_field=...)")
        pred = record[cfg.prediction_field]
        if not isinstance(pred, str):
            raise DataError(f"{where}: field '{cfg.prediction_field}' should be a string, got {pred!r}")
        predictions.append(pred)
        if cfg.references is None:
            ref = record.get(cfg.reference_field)
            if ref is None:
                raise DataError(
                    f"{where}: no reference (field '{cfg.reference_field}' is missing or null); "
                    "set reference_field=... or references=FILE with an id join"
                )
            references.append(_reference(ref, where, cfg.reference_field))
        else:
            references.append(None)
    ids = [_record_id(record, cfg.id_field) for _, record in rows]
    return PredictionRecords(
        ids=ids,
        lines=[line for line, _ in rows],
        predictions=predictions,
        references=references,
        sources=_sources(rows, cfg.source_field, path),
        segments=_optional_column(rows, cfg.segments_field, path),
        reference_segments=(
            _optional_column(rows, cfg.reference_segments_field, path) if cfg.references is None else None
        ),
    )


def read_references(path: Path, cfg: EvaluationConfig) -> dict[str, tuple[str | list[str], list[str] | None]]:
    """``{id: (reference, reference segments or None)}`` from a separate references file."""
    rows = read_jsonl(path)
    seg_column = _optional_column(rows, cfg.reference_segments_field, path)
    out: dict[str, tuple[str | list[str], list[str] | None]] = {}
    for i, (line, record) in enumerate(rows):
        where = f"{path}, line {line}"
        key = _record_id(record, cfg.id_field)
        if key is None:
            raise DataError(f"{where}: missing or invalid id field '{cfg.id_field}' (a string or integer)")
        if key in out:
            raise DataError(f"{where}: duplicate id {key!r}")
        if record.get(cfg.reference_field) is None:
            raise DataError(f"{where}: missing field '{cfg.reference_field}' (set reference_field=...)")
        ref = _reference(record[cfg.reference_field], where, cfg.reference_field)
        out[key] = (ref, seg_column[i] if seg_column is not None else None)
    return out


def join_references(
    records: PredictionRecords,
    path: Path,
    refs: dict[str, tuple[str | list[str], list[str] | None]],
    refs_path: Path,
    id_field: str,
) -> None:
    """Fill ``records``' references (and reference segments) from ``refs`` by id."""
    seen: set[str] = set()
    has_segments = all(segs is not None for _, segs in refs.values())
    ref_segments: list[list[str]] = []
    for i, (key, line) in enumerate(zip(records.ids, records.lines)):
        if key is None:
            raise DataError(
                f"{path}, line {line}: missing or invalid id field '{id_field}' (needed to join references)"
            )
        if key in seen:
            raise DataError(f"{path}, line {line}: duplicate id {key!r}")
        seen.add(key)
        if key not in refs:
            raise DataError(f"{path}, line {line}: id {key!r} is not in the references file {refs_path}")
        ref, segs = refs[key]
        records.references[i] = ref
        if segs is not None:
            ref_segments.append(segs)
    records.reference_segments = ref_segments if has_segments else None
    if len(seen) < len(refs):
        logger.warning("%s: %d of %d references have no prediction", path, len(refs) - len(seen), len(refs))


def evaluate_files(cfg: EvaluationConfig) -> dict[str, dict[str, Any]]:
    """Score every system; write metrics.json, metrics.md and config.yaml; return ``{system: metrics}``."""
    out_dir = Path(cfg.output_dir)
    save_config(cfg, out_dir / "config.yaml")
    paths = system_paths(cfg.predictions)
    refs = read_references(Path(cfg.references), cfg) if cfg.references is not None else None

    systems: dict[str, PredictionRecords] = {}
    for name, path in paths.items():
        records = read_predictions(path, cfg)
        if refs is not None:
            assert cfg.references is not None
            join_references(records, path, refs, Path(cfg.references), cfg.id_field)
        systems[name] = records
    id_sets = {name: frozenset(r.ids) for name, r in systems.items()}
    if len(set(id_sets.values())) > 1:
        logger.warning(
            "the systems cover different documents (%s): compare with care",
            ", ".join(f"{name}: {len(r.predictions)}" for name, r in systems.items()),
        )

    embedder = load_embedder(cfg.semantic_model) if cfg.semantic_model is not None else None
    results: dict[str, dict[str, Any]] = {}
    for name, records in systems.items():
        logger.info("scoring %s: %d predictions from %s", name, len(records.predictions), paths[name])
        references = [r for r in records.references if r is not None]
        assert len(references) == len(records.predictions)
        results[name] = evaluate_predictions(
            records.predictions,
            references,
            sources=records.sources,
            pred_segments=records.segments,
            ref_segments=records.reference_segments,
            semantic_model=embedder,
            mauve=cfg.mauve,
            seed=cfg.seed,
        )
    json_path, md_path = write_metrics(results, out_dir)
    logger.info("wrote %s and %s", json_path, md_path)
    return results

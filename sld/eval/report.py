"""Score a set of predictions and write the comparison table (``metrics.json`` + ``metrics.md``).

``evaluate_predictions`` computes every generation metric of method.md ("Metrics used here") for
one system; ``write_metrics`` and ``format_table`` put several systems (SLD, the AR baseline, ...)
side by side, one row per system. Diversity (distinct-2 and the number of distinct outputs) always
stands beside ROUGE, because ROUGE alone hides a collapsed model (method.md, "Measured here").
A metric that could not be computed is ``null`` in JSON and "n/a" (with the reason) in the table,
never a made-up number.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sld.eval import metrics as M
from sld.eval.mauve_score import (
    INSTALL_HINT,
    MIN_SAMPLES,
    STATUS_DISABLED,
    STATUS_NOT_INSTALLED,
    STATUS_TOO_FEW,
    mauve_from_features,
)
from sld.eval.semantic import DEFAULT_MODEL, SentenceEmbedder, embed_pairs, load_embedder

logger = logging.getLogger(__name__)

# Literal text that the reference code used as padding segments; it must never reach metrics.
FILLER_SEGMENT = "empty sentence"


def _segment_count(segments: Sequence[str]) -> int:
    """Number of real segments: empty strings are not segments."""
    return sum(bool(s.strip()) for s in segments)


def _segment_counts(name: str, segment_lists: Sequence[Sequence[str]], n: int) -> list[int]:
    """Real segments per document of ``n`` documents, warning about filler text."""
    if len(segment_lists) != n:
        raise ValueError(f"{n} predictions but {len(segment_lists)} {name} segment lists")
    _warn_filler(name, segment_lists)
    return [_segment_count(s) for s in segment_lists]


def _warn_filler(name: str, segment_lists: Sequence[Sequence[str]]) -> None:
    filler = sum(s.strip().lower() == FILLER_SEGMENT for segs in segment_lists for s in segs)
    if filler:
        logger.warning(
            "%d %s segments are the filler text %r: padding must be masked, not written as text",
            filler,
            name,
            FILLER_SEGMENT,
        )


def evaluate_predictions(
    predictions: Sequence[str],
    references: Sequence[M.Reference],
    sources: Sequence[str | None] | None = None,
    pred_segments: Sequence[Sequence[str]] | None = None,
    ref_segments: Sequence[Sequence[str]] | None = None,
    semantic_model: str | SentenceEmbedder | None = DEFAULT_MODEL,
    mauve: bool = True,
    seed: int = 25,
) -> dict[str, Any]:
    """All generation metrics of one system, as a flat JSON-ready dict.

    Args:
        predictions: one plain text per document (segments joined with spaces, no separator token).
        references: per document one reference string or a list of acceptable references.
        sources: input texts; adds ``novel_2grams`` (share of predicted bigrams not in the source)
            over the documents whose source is not ``None``.
        pred_segments / ref_segments: the segments of each prediction / reference; add the mean
            number of segments and, with both, segment-count accuracy and mean absolute error.
            Empty segments are not counted.
        semantic_model: ``"minilm"``, a model folder or hub name, a loaded ``SentenceEmbedder``, or
            ``None`` to skip ``semantic_similarity`` and MAUVE (which uses the same features).
        mauve: compute MAUVE against the first reference of each document (optional extra).
        seed: MAUVE's PCA / k-means seed.

    Keys: ``num_examples, num_empty, rouge1, rouge2, rougeL`` (F1 x 100, max over references),
    ``distinct_1, distinct_2, num_distinct_outputs, repetition_4, avg_words, ref_avg_words,
    semantic_similarity, mauve, mauve_status`` and, when available, ``novel_2grams, avg_segments,
    repeated_segments, ref_avg_segments, segment_count_accuracy, segment_count_mae``. Uncomputable values are ``None``.
    """
    n = len(predictions)
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    ref_lists = M.as_reference_lists(references)
    first_refs = [refs[0] for refs in ref_lists]
    empty = M.num_empty(predictions)
    if empty:
        logger.warning("%d of %d predictions are empty (scored as empty text)", empty, n)

    out: dict[str, Any] = {"num_examples": n, "num_empty": empty}
    out.update(M.rouge_scores(predictions, ref_lists))
    out["distinct_1"] = M.distinct_n(predictions, 1)
    out["distinct_2"] = M.distinct_n(predictions, 2)
    out["num_distinct_outputs"] = M.num_distinct_outputs(predictions)
    out["repetition_4"] = M.repetition_rate(predictions, 4)
    out["avg_words"] = M.average_length(predictions)
    out["ref_avg_words"] = M.average_length(first_refs)

    embedder: SentenceEmbedder | None
    if semantic_model is None:
        embedder = None
    elif isinstance(semantic_model, str):
        embedder = load_embedder(semantic_model)
    else:
        embedder = semantic_model
    if embedder is None:
        out["semantic_similarity"] = None
    elif n == 0:
        out["semantic_similarity"] = 0.0
    else:
        embeddings = embed_pairs(predictions, ref_lists, embedder)
        out["semantic_similarity"] = float(embeddings.best_cosines().mean())

    if not mauve:
        out["mauve"], out["mauve_status"] = None, STATUS_DISABLED
    elif embedder is None:
        logger.warning("MAUVE skipped: it needs sentence features and semantic_model is null")
        out["mauve"], out["mauve_status"] = None, f"{STATUS_DISABLED} (semantic_model=null)"
    elif n == 0:
        out["mauve"], out["mauve_status"] = mauve_from_features(np.zeros((0, 1)), np.zeros((0, 1)))
    else:
        # MAUVE against the first reference of each input, on the features computed above.
        out["mauve"], out["mauve_status"] = mauve_from_features(
            embeddings.predictions, embeddings.first_references, seed=seed
        )

    if sources is not None:
        if len(sources) != n:
            raise ValueError(f"{n} predictions but {len(sources)} sources")
        pairs = [(p, s) for p, s in zip(predictions, sources) if s is not None]
        out["novel_2grams"] = (
            M.novel_ngram_rate([p for p, _ in pairs], [s for _, s in pairs], 2) if pairs else None
        )

    if pred_segments is not None:
        pred_counts = _segment_counts("predicted", pred_segments, n)
        out["avg_segments"] = sum(pred_counts) / n if n else 0.0
        out["repeated_segments"] = M.repeated_segment_rate(pred_segments)
    if ref_segments is not None:
        ref_counts = _segment_counts("reference", ref_segments, n)
        out["ref_avg_segments"] = sum(ref_counts) / n if n else 0.0
        if pred_segments is not None:
            out["segment_count_accuracy"] = M.segment_count_accuracy(pred_counts, ref_counts)
            out["segment_count_mae"] = M.segment_count_error(pred_counts, ref_counts)
    return out


# (key, column title, format, optional) of the table; an optional column appears when any system has a value.
_COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("num_examples", "n", "d", False),
    ("rouge1", "ROUGE-1", ".2f", False),
    ("rouge2", "ROUGE-2", ".2f", False),
    ("rougeL", "ROUGE-L", ".2f", False),
    ("distinct_2", "distinct-2", ".3f", False),
    ("num_distinct_outputs", "distinct outputs", "d", False),
    ("semantic_similarity", "semantic sim", ".3f", False),
    ("mauve", "MAUVE", ".3f", False),
    ("repetition_4", "rep-4", ".3f", False),
    ("avg_words", "words", ".1f", False),
    ("novel_2grams", "novel-2", ".3f", True),
    ("avg_segments", "segments", ".2f", True),
    ("repeated_segments", "repeated seg", ".3f", True),
    ("segment_count_accuracy", "seg-count acc", ".3f", True),
    ("segment_count_mae", "seg-count MAE", ".2f", True),
    ("num_empty", "empty", "d", False),
)

_NOTES = (
    "ROUGE: F1 x 100 (rouge-score, Porter stemming) on the plain joined text, best reference per input.",
    "distinct-2: unique / total bigrams over all outputs; distinct outputs: different texts / all texts.",
    "semantic sim: mean cosine to the reference with sentence-transformers features.",
    "MAUVE: on sentence-transformers features, not GPT-2; comparable only at equal sample sizes.",
    "rep-4: mean share of repeated 4-grams within an output; words: mean whitespace words per output.",
    "repeated seg: share of output segments that repeat an earlier segment of the same output verbatim.",
)


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "num_distinct_outputs" and value is not None and row.get("num_examples") is not None:
        return f"{value}/{row['num_examples']}"
    if value is None:
        if key == "mauve":
            status = str(row.get("mauve_status", ""))
            if status == STATUS_NOT_INSTALLED:
                return "n/a (install sld[eval])"
            if status == STATUS_TOO_FEW:
                return f"n/a (n<{MIN_SAMPLES})"
        return "n/a"
    if isinstance(value, float) and fmt == "d":
        return f"{value:g}"
    return format(value, fmt)


def format_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of ``{system: metrics}``, one row per system (also readable in a terminal)."""
    columns = [
        (key, title, fmt)
        for key, title, fmt, optional in _COLUMNS
        if not optional or any(row.get(key) is not None for row in metrics.values())
    ]
    header = ["system", *(title for _, title, _ in columns)]
    rows = [[name, *(_cell(row, key, fmt) for key, _, fmt in columns)] for name, row in metrics.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def write_metrics(
    metrics: Mapping[str, Mapping[str, Any]], out_dir: str | Path, title: str = "Evaluation"
) -> tuple[Path, Path]:
    """Write ``metrics.json`` (``{system: metrics}``) and ``metrics.md`` (table + metric notes).

    Returns the two paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "metrics.json"
    json_path.write_text(
        json.dumps({k: dict(v) for k, v in metrics.items()}, indent=2, allow_nan=False) + "\n"
    )
    notes = list(_NOTES)
    if any(row.get("mauve_status") == STATUS_NOT_INSTALLED for row in metrics.values()):
        notes.append(f"MAUVE n/a: the optional extra is not installed ({INSTALL_HINT}).")
    md_path = out_dir / "metrics.md"
    md_path.write_text(
        f"# {title}\n\n{format_table(metrics)}\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    )
    return json_path, md_path


__all__ = ["FILLER_SEGMENT", "evaluate_predictions", "format_table", "write_metrics"]

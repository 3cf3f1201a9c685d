"""The segmented dataset written by stage 1 (``sld segment``) and read by stages 2 and 3.

This module owns :class:`SegmentedDocument` and the ``<split>.jsonl`` format of docs/design.md,
one document per line::

    {"id": str, "source": str | null, "segments": [str, ...], "num_segments": int}

``segments`` holds at most ``max_segments`` items; ``num_segments`` is the true count before
truncation (so ``num_segments >= len(segments)``). Reading checks every line and names the file and
line number of the first problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sld.data.records import NONE_TYPE, iter_jsonl_numbered, write_jsonl
from sld.errors import DataError

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "source": (str, NONE_TYPE),
    "segments": list,
    "num_segments": int,
}


@dataclass
class SegmentedDocument:
    """One document: its id, optional source text, its segments (at most S) and true segment count."""

    id: str
    source: str | None
    segments: list[str]
    num_segments: int

    @property
    def truncated(self) -> bool:
        """True when the document had more segments than were kept."""
        return self.num_segments > len(self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "segments": list(self.segments),
            "num_segments": self.num_segments,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "segmented document") -> SegmentedDocument:
        """Build from a stage-1 record; problems raise :class:`DataError` prefixed with ``where``."""
        for name, types in _FIELDS.items():
            types = types if isinstance(types, tuple) else (types,)
            if name not in data:
                raise DataError(f"{where}: missing field '{name}'")
            if not isinstance(data[name], types) or isinstance(data[name], bool):
                raise DataError(f"{where}: field '{name}' has the wrong type ({type(data[name]).__name__})")
        segments = data["segments"]
        if not all(isinstance(s, str) for s in segments):
            raise DataError(f"{where}: every item of 'segments' must be a string")
        if data["num_segments"] < len(segments):
            raise DataError(
                f"{where}: 'num_segments' ({data['num_segments']}) is smaller than the number of segments ({len(segments)})"
            )
        return cls(data["id"], data["source"], list(segments), data["num_segments"])


def iter_segmented(path: str | Path) -> Iterator[SegmentedDocument]:
    """Yield the documents of a stage-1 ``<split>.jsonl`` file (plain or ``.gz``)."""
    path = Path(path)
    for line_no, record in iter_jsonl_numbered(path):
        yield SegmentedDocument.from_dict(record, f"{path}, line {line_no}")


def read_segmented(path: str | Path) -> list[SegmentedDocument]:
    """All documents of a stage-1 ``<split>.jsonl`` file; a bad line or an empty file raises
    :class:`DataError` (stage 1 never writes a split without documents)."""
    docs = list(iter_segmented(path))
    if not docs:
        raise DataError(f"{path}: no documents (an empty file; run `sld segment` again?)")
    return docs


def read_split(folder: str | Path, split: str) -> list[SegmentedDocument]:
    """The documents of ``<folder>/<split>.jsonl`` of a stage-1 folder; a missing file is a
    :class:`DataError` that says to run ``sld segment`` (and names ``data.segmented_dir``)."""
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: run `sld segment` first (data.segmented_dir={str(folder)!r})")
    return read_segmented(path)


def write_segmented(path: str | Path, docs: Iterable[SegmentedDocument]) -> int:
    """Write documents in the stage-1 format; return how many were written."""
    return write_jsonl(path, (doc.to_dict() for doc in docs))


def percentiles(values: Sequence[float], points: Sequence[int] = (5, 25, 50, 75, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus min, max and mean of ``values`` (empty dict for no values)."""
    if not values:
        return {}
    ordered = sorted(values)
    out: dict[str, float] = {"min": ordered[0]}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * n), 1-based
        out[f"p{p}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    out["mean"] = round(sum(ordered) / len(ordered), 2)
    return out


def document_statistics(docs: Sequence[SegmentedDocument]) -> dict[str, Any]:
    """Segments-per-document histogram (true counts), its mode and share, and token percentiles.

    Tokens are whitespace-separated words: a tokenizer-free view of segment lengths.
    """
    counts = Counter(doc.num_segments for doc in docs)
    modal, modal_docs = max(counts.items(), key=lambda kv: (kv[1], kv[0])) if counts else (0, 0)
    segment_tokens = [len(seg.split()) for doc in docs for seg in doc.segments]
    source_tokens = [len(doc.source.split()) for doc in docs if doc.source is not None]
    return {
        "documents": len(docs),
        "segments_kept": len(segment_tokens),
        "truncated": sum(doc.truncated for doc in docs),
        "segments_per_document": {str(k): counts[k] for k in sorted(counts)},
        "modal_segments": modal,
        "modal_share": round(modal_docs / len(docs), 4) if docs else 0.0,
        "tokens_per_segment": percentiles(segment_tokens),
        "tokens_per_source": percentiles(source_tokens),
    }


__all__ = [
    "SegmentedDocument",
    "document_statistics",
    "iter_segmented",
    "percentiles",
    "read_segmented",
    "read_split",
    "write_segmented",
]

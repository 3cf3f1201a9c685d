"""Stage 1 as a library call: split raw JSONL records into segmented documents.

``segment_corpus(SegmentCorpusConfig(...))`` reads every split named under ``splits`` (split name ->
JSONL path), builds (source, target) examples for ``records.task`` (``sld.data.records``), splits
each target into at most ``segmenter.max_segments`` segments (``sld.data.segment``) and writes, into
``output_dir``: ``<split>.jsonl`` (``sld.data.segmented``, see docs/design.md), ``punkt_params.json``
(when Punkt was trained on the corpus or loaded from a file, so the segmentation can be reapplied),
``stats.json`` and ``config.yaml``. The first split (normally ``train``) is the corpus Punkt is
trained on. Documents whose target is empty are counted and not written. ``format_summary`` writes
the statistics as the lines ``sld segment`` prints.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sld.config import save_config
from sld.data.records import RecordsConfig, load_examples, read_texts
from sld.data.segment import (
    PUNKT_PARAMS_FILE,
    SegmentationStats,
    Segmenter,
    SegmenterConfig,
    SentenceSegmenter,
    build_segmenter,
)
from sld.data.segmented import SegmentedDocument, document_statistics, write_segmented
from sld.errors import DataError

STATS_FILE = "stats.json"

logger = logging.getLogger("sld.segment")

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class SegmentCorpusConfig:
    """Stage-1 settings (``sld segment``): raw JSONL splits -> segmented documents."""

    splits: dict[str, str]
    output_dir: str
    records: RecordsConfig = field(default_factory=RecordsConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("splits must name at least one input file, e.g. splits.train=data/train.jsonl")
        for name in self.splits:
            if not _SPLIT_NAME.match(name):
                raise ValueError(
                    f"split name {name!r} must be a plain file name (letters, digits, '_', '-', '.')"
                )


def _corpus(path: str, records: RecordsConfig) -> Iterator[str]:
    """The first split's raw texts, read only if Punkt actually has to be trained."""
    yield from read_texts(path, records)


def segment_split(
    name: str, path: str, cfg: SegmentCorpusConfig, segmenter: Segmenter, output_dir: Path
) -> tuple[list[SegmentedDocument], dict[str, Any]]:
    """Load, segment and write one split; return its documents and statistics."""
    examples, report = load_examples(path, cfg.records, segmenter)
    if report.num_skipped:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    stats = SegmentationStats()
    docs: list[SegmentedDocument] = []
    progress = tqdm(
        examples, desc=f"segment {name}", unit="doc", disable=True if len(examples) < 2000 else None
    )
    for example in progress:
        segments, count = segmenter.split(example.target, stats)
        if count == 0:
            continue
        docs.append(SegmentedDocument(example.id, example.source, segments, count))
    if stats.empty:
        logger.warning("%s: %d documents have an empty target and were not written", name, stats.empty)
    if not docs:
        raise DataError(
            f"{path}: no document to write for split '{name}' ({report.summary()}; "
            f"{stats.empty} with an empty target)"
        )
    limit = cfg.segmenter.long_segment_words
    long_docs = [doc.id for doc in docs if any(len(seg.split()) > limit for seg in doc.segments)]
    long_segments = sum(len(seg.split()) > limit for doc in docs for seg in doc.segments)
    if long_segments:
        logger.warning(
            "%s: %d segments of more than %d words (documents %s%s); training cuts every segment to the "
            "autoencoder's max_segment_tokens",
            name,
            long_segments,
            limit,
            ", ".join(long_docs[:5]),
            ", ..." if len(long_docs) > 5 else "",
        )
    write_segmented(output_dir / f"{name}.jsonl", docs)
    split_stats = {
        "input": path,
        "records": report.to_dict(),
        "empty": stats.empty,
        "long_segments": {"words": limit, "segments": long_segments, "documents": long_docs[:20]},
        **document_statistics(docs),
    }
    return docs, split_stats


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit if count != 1 else unit.removesuffix('s')}"


def _histogram_line(histogram: dict[str, int], total: int) -> str:
    parts = []
    for count, docs in histogram.items():
        share = f" ({100 * docs / total:.1f}%)" if total else ""
        parts.append(f"{count}: {docs}{share}")
    return " | ".join(parts)


def _percentile_line(values: dict[str, float]) -> str:
    keys = ("min", "p5", "p25", "p50", "p75", "p95", "max", "mean")
    return ", ".join(f"{k} {values[k]:g}" for k in keys if k in values)


def format_summary(stats: dict[str, Any]) -> str:
    """The human-readable statistics printed at the end of ``sld segment``."""
    unit = "turns" if stats["segmenter"]["kind"] == "turn" else "sentences"
    lines = [
        f"segmenter: {stats['segmenter']['description']}; at most {stats['segmenter']['max_segments']} {unit} kept"
    ]
    for name, split in stats["splits"].items():
        records = split["records"]
        docs = split["documents"]
        lines.append(f"\n[{name}] {split['input']}")
        lines.append(f"  records        {records['loaded']} loaded from {records['lines']} lines")
        for reason, count in records["skipped"].items():
            where = ", ".join(str(n) for n in records["skipped_lines"].get(reason, []))
            lines.append(f"  skipped        {count} ({reason}; e.g. lines {where})")
        lines.append(f"  documents      {docs} written; {split['empty']} empty (not written)")
        lines.append(
            f"  truncated      {split['truncated']} documents had more than {stats['segmenter']['max_segments']} {unit}"
        )
        long = split.get("long_segments", {})
        if long.get("segments"):
            lines.append(
                f"  long           {long['segments']} segments of more than {long['words']} words "
                f"(e.g. {', '.join(long['documents'][:3])})"
            )
        lines.append(f"  {unit}/doc".ljust(17) + _histogram_line(split["segments_per_document"], docs))
        if docs:
            lines.append(
                f"                 {100 * split['modal_share']:.1f}% of documents have exactly "
                f"{_plural(split['modal_segments'], unit)} (the most common count)"
            )
            if stats["task"] == "continuation":
                lines.append(
                    f"                 with the source sentence: {100 * split['modal_share']:.1f}% of the "
                    f"{docs} continued texts have exactly {split['modal_segments'] + 1} sentences"
                )
        lines.append(f"  tokens/segment {_percentile_line(split['tokens_per_segment'])} (whitespace tokens)")
        if split["tokens_per_source"]:
            lines.append(f"  tokens/source  {_percentile_line(split['tokens_per_source'])}")
    return "\n".join(lines)


@dataclass
class SegmentedCorpus:
    """What ``segment_corpus`` wrote: the folder, the statistics of ``stats.json`` and the names of
    the files besides ``stats.json`` and ``config.yaml`` (``<split>.jsonl``, ``punkt_params.json``)."""

    output_dir: Path
    stats: dict[str, Any]
    files: list[str]

    def summary_lines(self) -> list[str]:
        """What ``sld segment`` prints at the end: the statistics and the files written."""
        written = ", ".join(self.files)
        return [
            format_summary(self.stats),
            f"\nwrote {written}, {STATS_FILE} and config.yaml to {self.output_dir}",
        ]


def segment_corpus(cfg: SegmentCorpusConfig) -> SegmentedCorpus:
    """Segment every split of ``cfg`` into ``cfg.output_dir``; the statistics go to ``stats.json``."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    for name, path in cfg.splits.items():
        if not Path(path).is_file():
            raise DataError(f"input file for split '{name}' not found: {path}")

    first_split, first_path = next(iter(cfg.splits.items()))
    segmenter = build_segmenter(cfg.segmenter, _corpus(first_path, cfg.records))
    logger.info("segmenter: %s", segmenter.describe())
    files = [f"{n}.jsonl" for n in cfg.splits]
    if isinstance(segmenter, SentenceSegmenter) and segmenter.origin != "installed":
        files.append(PUNKT_PARAMS_FILE)
        segmenter.save(output_dir / PUNKT_PARAMS_FILE)
        if segmenter.origin == "trained":
            logger.info(
                "Punkt trained on split '%s'; parameters in %s", first_split, output_dir / PUNKT_PARAMS_FILE
            )

    stats: dict[str, Any] = {
        "task": cfg.records.task,
        "segmenter": {
            "kind": cfg.segmenter.kind,
            "description": segmenter.describe(),
            "max_segments": cfg.segmenter.max_segments,
            "punkt_trained_on": first_split if getattr(segmenter, "origin", None) == "trained" else None,
        },
        "splits": {},
    }
    for name, path in cfg.splits.items():
        _, stats["splits"][name] = segment_split(name, path, cfg, segmenter, output_dir)
    (output_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return SegmentedCorpus(output_dir, stats, files)


__all__ = [
    "STATS_FILE",
    "SegmentCorpusConfig",
    "SegmentedCorpus",
    "format_summary",
    "segment_corpus",
    "segment_split",
]

"""JSONL records in and out, and the mapping from a task to (source, target) examples.

This module owns reading raw input files (plain or gzip JSONL), checking every record, and turning
records into :class:`Example` objects for one of the supported tasks:

* ``title_to_story``: ROCStories ``title`` -> ``text``; records whose title is null are skipped and
  counted (most ROCStories training stories carry no title).
* ``continuation``: the first sentence of ``text`` is the source, the remaining text the target
  (needs a sentence segmenter, see :mod:`sld.data.segment`).
* ``dialogue_summary``: DialogSum ``dialogue`` -> ``summary``.
* ``unconditional``: no source; the target is ``text``.
* ``fields``: the user names ``source_field`` (optional) and ``target_field``.

A malformed line (bad JSON, not an object, a missing or wrongly typed field) raises
:class:`sld.errors.DataError` naming the file and line number. With ``skip_bad_records`` such lines
are instead counted in a :class:`LoadReport` (with the first few line numbers) and reported:
nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from sld.errors import DataError

logger = logging.getLogger(__name__)

Task = Literal["title_to_story", "continuation", "dialogue_summary", "unconditional", "fields"]

# task -> (default source field or None, default target field)
TASK_FIELDS: dict[str, tuple[str | None, str | None]] = {
    "title_to_story": ("title", "text"),
    "continuation": (None, "text"),
    "dialogue_summary": ("dialogue", "summary"),
    "unconditional": (None, "text"),
    "fields": (None, None),
}

# How many offending line numbers a report keeps per reason.
MAX_EXAMPLE_LINES = 5

NONE_TYPE = type(None)


class SentenceSplitter(Protocol):
    """Anything with ``segment(text) -> list[str]`` (a :class:`sld.data.segment.Segmenter`)."""

    def segment(self, text: str) -> list[str]: ...


@dataclass
class RecordsConfig:
    """Which task to build from the input records and which JSON fields hold what.

    ``source_field`` / ``target_field`` default to the task's fields (``title``/``text`` for
    ``title_to_story``, ``dialogue``/``summary`` for ``dialogue_summary``, ``text`` for
    ``continuation`` and ``unconditional``); set them to read other fields. Task ``fields`` needs
    ``target_field``; without ``source_field`` it is unconditional.
    """

    task: Task = "unconditional"
    source_field: str | None = None
    target_field: str | None = None
    id_field: str | None = "id"
    skip_bad_records: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_FIELDS:
            raise ValueError(f"task must be one of {', '.join(TASK_FIELDS)}; got {self.task!r}")
        if self.task == "fields" and not self.target_field:
            raise ValueError("task 'fields' needs records.target_field (and optionally records.source_field)")
        if self.task in ("continuation", "unconditional") and self.source_field:
            raise ValueError(f"task {self.task!r} takes no source_field (got {self.source_field!r})")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of records or null; got {self.limit}")

    @property
    def resolved_source_field(self) -> str | None:
        """The JSON field read as the source (None: no source field is read)."""
        return self.source_field or TASK_FIELDS[self.task][0]

    @property
    def resolved_target_field(self) -> str:
        """The JSON field read as the target (for ``continuation``: the whole text)."""
        target = self.target_field or TASK_FIELDS[self.task][1]
        assert target is not None  # guaranteed by __post_init__
        return target


@dataclass(frozen=True)
class Example:
    """One (source, target) pair; ``source`` is None for unconditional generation."""

    id: str
    source: str | None
    target: str


@dataclass
class LoadReport:
    """What happened while reading one file: records kept, and every record skipped, by reason."""

    path: str
    lines: int = 0
    blank_lines: int = 0
    loaded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)
    truncated_by_limit: bool = False

    def skip(self, reason: str, line: int) -> None:
        """Count one skipped record under ``reason`` (keeping the first few line numbers)."""
        self.skipped[reason] += 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES:
            lines.append(line)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """A one-paragraph, human-readable account of the file."""
        text = f"{self.path}: {self.loaded} records loaded from {self.lines} lines"
        if self.truncated_by_limit:
            text += " (stopped at the configured limit)"
        for reason, count in self.skipped.most_common():
            lines = ", ".join(str(n) for n in self.skipped_lines.get(reason, []))
            more = ", ..." if count > len(self.skipped_lines.get(reason, [])) else ""
            text += f"; skipped {count} ({reason}; lines {lines}{more})"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["skipped"] = dict(self.skipped)
        return data


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return " or ".join("null" if t is NONE_TYPE else names.get(t, t.__name__) for t in types)


def _check_fields(record: dict[str, Any], required: Mapping[str, type | tuple[type, ...]]) -> str | None:
    """Return a description of the first problem with ``record``'s required fields, or None."""
    for name, types in required.items():
        types = types if isinstance(types, tuple) else (types,)
        if name not in record:
            return f"missing field '{name}'"
        value = record[name]
        # bool is an int subclass in Python but never a valid int/float field here
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"field '{name}' should be {_type_names(types)}, got {type(value).__name__}"
    return None


def iter_jsonl_numbered(
    path: str | Path,
    skip_bad_records: bool = False,
    report: LoadReport | None = None,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every JSON object in a plain or ``.gz`` JSONL file.

    ``required`` maps field names to the accepted type(s) (``(str, type(None))`` for nullable).
    A malformed line raises :class:`DataError` naming the file and the 1-based line number, or,
    with ``skip_bad_records``, is counted in ``report``. Blank lines are counted, not errors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    report = report if report is not None else LoadReport(str(path))
    required = required or {}
    line_no = 0
    try:
        # Binary lines, decoded one by one, so a bad byte is reported on its own line.
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                report.lines += 1
                try:
                    line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    line, problem = None, f"not valid UTF-8 text ({err.reason})"
                if line is not None:
                    if not line.strip():
                        report.blank_lines += 1
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        problem = f"not valid JSON ({err.msg} at column {err.colno})"
                    else:
                        if not isinstance(record, dict):
                            problem = f"expected a JSON object, got {type(record).__name__}"
                        else:
                            problem = _check_fields(record, required)
                    if problem is None:
                        yield line_no, record
                        continue
                if not skip_bad_records:
                    raise DataError(
                        f"{path}, line {line_no}: {problem} (set records.skip_bad_records=true to skip and count such lines)"
                    )
                report.skip(f"bad record: {problem}", line_no)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise DataError(f"input file not found: {path}") from err
        where = f"after line {line_no}" if line_no else "at the start"
        hint = " (a truncated or corrupt .gz file?)" if path.suffix == ".gz" and line_no else ""
        raise DataError(f"{path}: cannot read {where}: {err}{hint}") from err


def iter_jsonl(
    path: str | Path,
    skip_bad_records: bool = False,
    report: LoadReport | None = None,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a plain or ``.gz`` JSONL file (see :func:`iter_jsonl_numbered`)."""
    for _, record in iter_jsonl_numbered(path, skip_bad_records, report, required):
        yield record


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSONL (gzip when the name ends in ``.gz``); return the number written.

    The file is written next to its destination and renamed into place, so a crash never leaves a
    half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        if path.suffix == ".gz":
            handle: IO[str] = gzip.open(tmp, "wt", encoding="utf-8")  # type: ignore[assignment]
        else:
            handle = open(tmp, "w", encoding="utf-8")
        with handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _record_id(record: dict[str, Any], id_field: str | None, path: Path, line_no: int) -> str:
    if id_field and id_field in record:
        value = record[id_field]
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise DataError(
            f"{path}, line {line_no}: field '{id_field}' should be a non-empty string or integer id"
        )
    return f"{path.name.split('.')[0]}-{line_no}"


def split_first_sentence(text: str, splitter: SentenceSplitter) -> tuple[str, str] | None:
    """``(first sentence, rest of the text)``, or None when the text has fewer than two sentences.

    The rest is cut from the original text (not re-joined), so its spacing is unchanged.
    """
    sentences = splitter.segment(text)
    if len(sentences) < 2:
        return None
    first = sentences[0]
    start = text.find(first)
    if start < 0:  # a segmenter that normalised the text; fall back to joining
        return first, " ".join(sentences[1:])
    return first, text[start + len(first) :].strip()


def load_examples(
    path: str | Path,
    cfg: RecordsConfig,
    segmenter: SentenceSplitter | None = None,
) -> tuple[list[Example], LoadReport]:
    """Read ``path`` and build the task's examples; return them with the :class:`LoadReport`.

    Skipped (and counted, never an error): records whose source field is null or blank (e.g.
    untitled ROCStories for ``title_to_story``) and, for ``continuation``, texts of fewer than two
    sentences. Malformed records raise :class:`DataError` unless ``cfg.skip_bad_records``; so does
    a file without any record.
    """
    path = Path(path)
    if cfg.task == "continuation" and segmenter is None:
        raise ValueError("task 'continuation' needs a sentence segmenter to split off the first sentence")
    source_field = cfg.resolved_source_field
    target_field = cfg.resolved_target_field
    required: dict[str, type | tuple[type, ...]] = {target_field: str}
    if source_field:
        required[source_field] = (str, NONE_TYPE)
    report = LoadReport(str(path))
    examples: list[Example] = []
    for line_no, record in iter_jsonl_numbered(path, cfg.skip_bad_records, report, required):
        if cfg.limit is not None and len(examples) >= cfg.limit:
            report.truncated_by_limit = True
            break
        try:
            example_id = _record_id(record, cfg.id_field, path, line_no)
        except DataError:
            if not cfg.skip_bad_records:
                raise
            report.skip(f"bad record: bad '{cfg.id_field}'", line_no)
            continue
        target: str = record[target_field]
        source: str | None = None
        if source_field:
            source = record[source_field]
            if source is None or not source.strip():
                report.skip(f"{'null' if source is None else 'empty'} '{source_field}'", line_no)
                continue
        elif cfg.task == "continuation":
            assert segmenter is not None
            split = split_first_sentence(target, segmenter)
            if split is None:
                report.skip("fewer than 2 sentences to continue", line_no)
                continue
            source, target = split
        examples.append(Example(example_id, source, target))
    report.loaded = len(examples)
    if report.lines == report.blank_lines:
        raise DataError(f"{path}: the file is empty (no JSON records)")
    return examples, report


def read_texts(path: str | Path, cfg: RecordsConfig) -> list[str]:
    """The raw texts that will be segmented (the target field; the whole ``text`` for continuation).

    Used to train the Punkt sentence model on the corpus before building the examples. Bad records
    follow ``cfg.skip_bad_records``; ``cfg.limit`` applies.
    """
    target_field = cfg.resolved_target_field
    texts: list[str] = []
    for record in iter_jsonl(path, cfg.skip_bad_records, LoadReport(str(path)), {target_field: str}):
        if cfg.limit is not None and len(texts) >= cfg.limit:
            break
        texts.append(record[target_field])
    return texts


__all__ = [
    "Example",
    "LoadReport",
    "RecordsConfig",
    "TASK_FIELDS",
    "Task",
    "iter_jsonl",
    "iter_jsonl_numbered",
    "load_examples",
    "read_texts",
    "split_first_sentence",
    "write_jsonl",
]

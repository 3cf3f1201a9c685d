"""Splitting a text into segments: sentences (nltk Punkt) or dialogue turns (stage 1 of SLD).

This module owns the :class:`Segmenter` interface and its two implementations:

* :class:`SentenceSegmenter` runs nltk's Punkt. If the pretrained ``punkt_tab`` resource is
  installed it can be used; otherwise (the offline default) a Punkt model is trained unsupervised
  on the corpus being segmented, with common abbreviations (Mr, Mrs, Dr, U.S, ...) seeded so that
  short corpora are still right, and learned "abbreviations" that the corpus shows to be ordinary
  sentence-final words pruned (templated corpora fool Punkt there). The parameters are saved as
  JSON (``punkt_params.json``) so the same segmentation can be reapplied. Repairs follow Punkt: a
  piece is joined to the one before it when that one ends in a title ("Mr.", "Dr."), when it holds
  no letter or digit, or when it starts in lower case after "?", "!" or an ellipsis (``"Where?"
  she asked.``); a piece is split before a speaker tag after a period ("etc. #Person1# thinks").
* :class:`TurnSegmenter` splits dialogues at speaker tags such as ``#Person1#:``.

Capping at ``max_segments`` (S) happens in :meth:`Segmenter.split`, which also records the true
segment count and counts empty texts and truncations in :class:`SegmentationStats`.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sld.config import ConfigError
from sld.errors import DataError

logger = logging.getLogger(__name__)

PUNKT_PARAMS_FILE = "punkt_params.json"
PUNKT_PARAMS_FORMAT = "sld.punkt_params"
PUNKT_PARAMS_VERSION = 1

DEFAULT_TURN_PATTERN = r"#Person\d+#:"

# Seeded into every Punkt model (lower case, without the final period, as Punkt stores them).
# Punkt learns abbreviations from evidence; a short corpus may not hold enough of it.
KNOWN_ABBREVIATIONS: tuple[str, ...] = (
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "ft", "ave", "blvd", "rd",
    "sgt", "capt", "lt", "col", "gen", "gov", "sen", "rep", "rev", "hon", "pres",
    "u.s", "u.s.a", "u.k", "u.n", "e.u", "d.c", "l.a", "n.y",
    "a.m", "p.m", "e.g", "i.e", "etc", "vs", "approx", "dept", "inc", "ltd", "co", "corp",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "ph.d", "m.d", "b.a", "m.a",
)  # fmt: skip

# Seeded into every Punkt model's frequent sentence starters: after an abbreviation ("Washington,
# D.C. A storm ...") Punkt breaks only before a word it knows to start sentences. The ones it
# learns are mostly first names; these function words are missed because they are also frequent
# mid-sentence.
KNOWN_SENTENCE_STARTERS: tuple[str, ...] = (
    "a", "an", "the", "he", "she", "it", "they", "we", "i", "you", "his", "her", "their", "my",
    "our", "its", "this", "that", "these", "those", "there", "then", "but", "so", "when", "after",
    "later", "finally", "however", "eventually", "suddenly", "unfortunately", "luckily", "soon",
    "now", "everyone", "nobody", "yesterday", "today", "tomorrow",
)  # fmt: skip

_HAS_WORD_CHAR = re.compile(r"\w")
# A piece that continues the previous sentence: opening quotes/brackets, then a lower-case letter...
_LOWERCASE_START = re.compile(r"^[\"'“‘(\[]*[a-z]")
# ... after a piece that ended in "?" or "!" (inside quotes: '"Where?" she asked.') or an ellipsis.
# After a plain period a lower-case start is a typo in the text, and the break is kept.
_SOFT_END = re.compile(r"(?:[?!]+|\.\.\.|…)[\"'”’)\]]*$")
# A sentence that starts with a DialogSum speaker tag after an abbreviation ("... etc. #Person1#
# thinks ..."): Punkt only breaks before capitalised words there.
_TAG_START = re.compile(r"(?<=[.!?])\s+(?=#\w+#)")
# Titles that never end a sentence: a break right after one is always wrong ("Mr. Smith").
_TITLE_END = re.compile(
    r"(?:^|[\s\"'(])(?:Mr|Mrs|Ms|Dr|Prof|Messrs|Mt|Sgt|Capt|Lt|Col|Gen|Gov|Sen|Rev|Hon|Pres)\.$"
)


@dataclass
class SegmenterConfig:
    """How targets are split into segments.

    ``kind``: ``sentence`` (Punkt) or ``turn`` (speaker tags matched by ``turn_pattern``).
    ``max_segments``: S, the most segments kept per document (the true count is recorded).
    ``punkt``: ``auto`` uses ``punkt_params`` if given, else the installed ``punkt_tab`` model if
    present, else trains on the corpus; ``installed`` requires ``punkt_tab``; ``train`` always
    trains. ``punkt_params``: a saved ``punkt_params.json`` to reuse (the same segmentation).
    ``extra_abbreviations``: more abbreviations to seed (e.g. ``["approx", "fig"]``).
    ``merge_lowercase``: join a piece that starts in lower case to the previous one when that one
    ended in "?", "!" or an ellipsis (quoted speech: ``"Where?" she asked.``).
    ``long_segment_words``: segments of more words than this are counted and reported by
    ``sld segment`` (training cuts every segment to the autoencoder's ``max_segment_tokens``).
    """

    kind: Literal["sentence", "turn"] = "sentence"
    max_segments: int = 5
    turn_pattern: str = DEFAULT_TURN_PATTERN
    punkt: Literal["auto", "installed", "train"] = "auto"
    punkt_params: str | None = None
    extra_abbreviations: list[str] = field(default_factory=list)
    merge_lowercase: bool = True
    long_segment_words: int = 100

    def __post_init__(self) -> None:
        if self.max_segments < 1:
            raise ValueError(f"max_segments must be at least 1; got {self.max_segments}")
        if self.long_segment_words < 1:
            raise ValueError(f"long_segment_words must be at least 1; got {self.long_segment_words}")
        if self.punkt == "installed" and self.punkt_params:
            raise ValueError("punkt='installed' and punkt_params both set; choose one")


@dataclass
class SegmentationStats:
    """Counts over the documents passed through :meth:`Segmenter.split`."""

    documents: int = 0
    empty: int = 0
    truncated: int = 0
    segment_counts: Counter[int] = field(default_factory=Counter)  # true count -> documents

    def add(self, num_segments: int, truncated: bool) -> None:
        self.documents += 1
        self.segment_counts[num_segments] += 1
        if num_segments == 0:
            self.empty += 1
        if truncated:
            self.truncated += 1


class Segmenter(ABC):
    """Splits a text into segments; :meth:`split` also caps them at ``max_segments``."""

    def __init__(self, max_segments: int | None = None) -> None:
        self.max_segments = max_segments

    @abstractmethod
    def segment(self, text: str) -> list[str]:
        """All segments of ``text`` in order, stripped, none empty (``[]`` for a blank text)."""

    def split(self, text: str, stats: SegmentationStats | None = None) -> tuple[list[str], int]:
        """``(first max_segments segments, true number of segments)``, counted in ``stats``."""
        segments = self.segment(text)
        count = len(segments)
        truncated = self.max_segments is not None and count > self.max_segments
        if truncated:
            segments = segments[: self.max_segments]
        if stats is not None:
            stats.add(count, truncated)
        return segments, count

    def describe(self) -> str:
        """One line saying what this segmenter is (for logs and stats)."""
        return type(self).__name__


def _repair(text: str, spans: Iterable[tuple[int, int]], merge_lowercase: bool) -> list[str]:
    """Segments of ``text`` from Punkt's sentence ``spans``: split before speaker tags, strip, drop
    empty pieces, and join a piece to the one before it when it continues it (see the module doc)
    or when no whitespace separates the two (Punkt broke inside a word, e.g. in ``end."Next``).
    Segments are cut from ``text`` as it stands: no character is lost, added or reordered, and the
    text's words stay whole and in order."""
    pieces: list[list[int]] = []  # [start, end) in text
    for span_start, span_end in spans:
        cuts = [span_start]
        for match in _TAG_START.finditer(text, span_start, span_end):
            cuts += [match.start(), match.end()]
        cuts.append(span_end)
        for start, end in zip(cuts[::2], cuts[1::2]):
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if start == end:
                continue
            piece = text[start:end]
            if pieces:
                previous = text[pieces[-1][0] : pieces[-1][1]]
                if (
                    pieces[-1][1] == start
                    or not _HAS_WORD_CHAR.search(piece)
                    or _TITLE_END.search(previous)
                    or (merge_lowercase and _LOWERCASE_START.match(piece) and _SOFT_END.search(previous))
                ):
                    pieces[-1][1] = end
                    continue
            pieces.append([start, end])
    return [text[start:end] for start, end in pieces]


# ---------------------------------------------------------------------------------------------
# Punkt parameters <-> JSON


def punkt_params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready dict of nltk ``PunktParameters`` (sorted, so files are reproducible)."""
    return {
        "format": PUNKT_PARAMS_FORMAT,
        "version": PUNKT_PARAMS_VERSION,
        "abbrev_types": sorted(params.abbrev_types),
        "collocations": sorted([list(pair) for pair in params.collocations]),
        "sent_starters": sorted(params.sent_starters),
        "ortho_context": {k: int(v) for k, v in sorted(params.ortho_context.items()) if v},
    }


def punkt_params_from_dict(data: Any, source: str = "punkt params") -> Any:
    """Build nltk ``PunktParameters`` from :func:`punkt_params_to_dict` output."""
    from nltk.tokenize.punkt import PunktParameters

    if not isinstance(data, dict) or data.get("format") != PUNKT_PARAMS_FORMAT:
        raise DataError(
            f"{source}: not a Punkt parameter file written by sld (missing format '{PUNKT_PARAMS_FORMAT}')"
        )
    if data.get("version") != PUNKT_PARAMS_VERSION:
        raise DataError(f"{source}: unsupported Punkt parameter version {data.get('version')!r}")
    try:
        params = PunktParameters()
        params.abbrev_types = {str(a) for a in data["abbrev_types"]}
        params.collocations = {(str(a), str(b)) for a, b in data["collocations"]}
        params.sent_starters = {str(s) for s in data["sent_starters"]}
        for typ, flags in data["ortho_context"].items():
            params.ortho_context[str(typ)] = int(flags)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{source}: malformed Punkt parameters ({type(err).__name__}: {err})") from err
    return params


def save_punkt_params(params: Any, path: str | Path) -> Path:
    """Write Punkt parameters as JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(punkt_params_to_dict(params), ensure_ascii=False, indent=0) + "\n", encoding="utf-8"
    )
    return path


def load_punkt_params(path: str | Path) -> Any:
    """Read Punkt parameters saved by :func:`save_punkt_params`; problems raise :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Punkt parameter file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    return punkt_params_from_dict(data, str(path))


def punkt_tab_installed() -> bool:
    """True when nltk's pretrained English ``punkt_tab`` model is installed."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


def _installed_punkt_params() -> Any:
    from nltk.tokenize.punkt import PunktTokenizer

    try:
        return PunktTokenizer("english")._params
    except LookupError as err:
        raise ConfigError(
            "segmenter.punkt='installed' but nltk's 'punkt_tab' resource is not installed; "
            "use segmenter.punkt=train (train Punkt on the corpus) or install it with "
            "python -m nltk.downloader punkt_tab"
        ) from err


def _abbreviation_types(abbreviations: Iterable[str]) -> set[str]:
    """Punkt's spelling of abbreviations: lower case, no final period ("U.S." -> "u.s")."""
    return {a.strip().lower().rstrip(".") for a in abbreviations if a.strip(" .")}


def seed_punkt_params(
    params: Any,
    abbreviations: Iterable[str] = KNOWN_ABBREVIATIONS,
    sentence_starters: Iterable[str] = KNOWN_SENTENCE_STARTERS,
) -> Any:
    """Add known abbreviations and frequent sentence starters to Punkt parameters (in place)."""
    params.abbrev_types.update(_abbreviation_types(abbreviations))
    params.sent_starters.update(s.lower() for s in sentence_starters)
    return params


# Punkt's orthographic-context flags for "seen in lower case" (beginning, middle, unknown position).
_ORTHO_LOWERCASE = (1 << 4) | (1 << 5) | (1 << 6)
_OPENING_QUOTES = "\"'“‘"


def _is_common_word(params: Any, typ: str) -> bool:
    """True when ``typ`` was seen in lower case in the corpus (a word, not a name)."""
    return bool(params.ortho_context.get(typ, 0) & _ORTHO_LOWERCASE)


def prune_punkt_params(params: Any, texts: Sequence[str], keep: Iterable[str] = ()) -> Any:
    """Drop learned abbreviations and sentence starters the corpus itself argues against (in place).

    Punkt scores a word as an abbreviation when it nearly always carries a period. In templated or
    small corpora ordinary sentence-final words ("task.", "house.") pass that test; after them the
    next sentence is then only split off when it starts with a known sentence starter. A learned
    abbreviation is kept only if its period-final occurrences are followed at least once, and at
    least as often as by sentence-end evidence, by a lower-case word, a digit or a comma-like mark
    (abbreviation evidence: "U.S. embassy"); sentence-end evidence is the end of the text, an
    opening quote, a ``#Person1#``-style tag or a capitalised common word ("task. He ...").
    Sentence starters that never occur in lower case (first names) are dropped: after "St." they
    would split "St. Paul".
    """
    from nltk.tokenize.punkt import PunktLanguageVars, PunktToken

    keep = set(keep)
    # Types with an inner period ("i.d", "c.v") are abbreviations whatever follows them.
    learned = {t for t in params.abbrev_types if "." not in t} - keep
    if learned:
        lang = PunktLanguageVars()
        evidence: dict[str, list[int]] = {t: [0, 0] for t in learned}  # type -> [abbreviation, sentence end]
        candidate = re.compile("|".join(re.escape(t + ".") for t in sorted(learned)), re.IGNORECASE)
        for text in texts:
            if not candidate.search(text):
                continue
            tokens = [PunktToken(t) for t in lang.word_tokenize(text)]
            for tok, nxt in zip(tokens, [*tokens[1:], None]):
                if not tok.period_final or tok.type_no_period not in evidence:
                    continue
                counts = evidence[tok.type_no_period]
                if nxt is None or nxt.tok[0] in _OPENING_QUOTES or nxt.tok[0] == "#":
                    counts[1] += 1
                elif nxt.first_lower or nxt.tok[0].isdigit() or nxt.tok[0] in ",;:)]-":
                    counts[0] += 1
                elif nxt.first_upper and _is_common_word(params, nxt.type_no_sentperiod):
                    counts[1] += 1
        dropped = sorted(t for t, (abbr, end) in evidence.items() if abbr < max(1, end))
        params.abbrev_types.difference_update(dropped)
        if dropped:
            logger.info(
                "dropped %d learned abbreviations that end sentences: %s",
                len(dropped),
                ", ".join(dropped[:20]),
            )
    names = {s for s in params.sent_starters if not _is_common_word(params, s)}
    params.sent_starters.difference_update(names)
    return params


def train_punkt_params(texts: Iterable[str], abbreviations: Iterable[str] = KNOWN_ABBREVIATIONS) -> Any:
    """Train Punkt parameters unsupervised on ``texts`` (abbreviation learning included).

    ``abbreviations`` are seeded before training, so that the first pass does not mistake "Mr."
    for a sentence end when it gathers orthographic statistics, and again afterwards, since
    training drops an abbreviation it also sees without a period (DialogSum writes both "Mrs" and
    "Mrs."). Learned abbreviations and starters are then checked by :func:`prune_punkt_params`,
    and :data:`KNOWN_SENTENCE_STARTERS` are added.
    """
    from nltk.tokenize.punkt import PunktTrainer

    texts = list(texts)
    seeds = _abbreviation_types(abbreviations)
    trainer = PunktTrainer()
    trainer._params.abbrev_types.update(seeds)  # no public way to seed a trainer
    for start in range(0, len(texts), 2000):  # train in chunks so memory stays flat on big corpora
        trainer.train("\n\n".join(texts[start : start + 2000]), finalize=False)
    trainer.finalize_training()
    params = prune_punkt_params(trainer.get_params(), texts, keep=seeds)
    return seed_punkt_params(params, seeds)


class SentenceSegmenter(Segmenter):
    """Sentences with nltk Punkt from the given parameters (see :func:`build_segmenter`).

    ``origin`` says where the parameters came from: ``installed``, ``trained`` or a file path.
    """

    def __init__(
        self,
        params: Any,
        max_segments: int | None = None,
        merge_lowercase: bool = True,
        origin: str = "trained",
    ) -> None:
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        super().__init__(max_segments)
        self.params = params
        self.origin = origin
        self.merge_lowercase = merge_lowercase
        self._tokenizer = PunktSentenceTokenizer(params)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        max_segments: int | None = None,
        abbreviations: Iterable[str] = KNOWN_ABBREVIATIONS,
        merge_lowercase: bool = True,
    ) -> SentenceSegmenter:
        """Train a Punkt model on ``texts`` (the corpus to be segmented)."""
        return cls(train_punkt_params(texts, abbreviations), max_segments, merge_lowercase, "trained")

    @classmethod
    def from_file(
        cls, path: str | Path, max_segments: int | None = None, merge_lowercase: bool = True
    ) -> SentenceSegmenter:
        """Reuse a saved ``punkt_params.json``."""
        return cls(load_punkt_params(path), max_segments, merge_lowercase, str(path))

    @classmethod
    def installed(
        cls,
        max_segments: int | None = None,
        abbreviations: Iterable[str] = KNOWN_ABBREVIATIONS,
        merge_lowercase: bool = True,
    ) -> SentenceSegmenter:
        """nltk's pretrained English model (``punkt_tab``); :class:`ConfigError` if missing."""
        params = seed_punkt_params(_installed_punkt_params(), abbreviations)
        return cls(params, max_segments, merge_lowercase, "installed")

    def save(self, path: str | Path) -> Path:
        """Write the Punkt parameters as JSON (reload with :meth:`from_file`)."""
        return save_punkt_params(self.params, path)

    def segment(self, text: str) -> list[str]:
        if not text or not text.strip():
            return []
        return _repair(text, self._tokenizer.span_tokenize(text), self.merge_lowercase)

    def describe(self) -> str:
        return f"Punkt sentences ({self.origin} parameters, {len(self.params.abbrev_types)} abbreviations)"


class TurnSegmenter(Segmenter):
    """Dialogue turns: a new segment starts at every match of ``pattern`` (e.g. ``#Person1#:``).

    Text before the first tag becomes its own segment. A text with no tag at all is split into its
    non-blank lines.
    """

    def __init__(self, pattern: str = DEFAULT_TURN_PATTERN, max_segments: int | None = None) -> None:
        super().__init__(max_segments)
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise ConfigError(
                f"segmenter.turn_pattern {pattern!r} is not a valid regular expression: {err}"
            ) from err
        if self.pattern.search(""):
            raise ConfigError(f"segmenter.turn_pattern {pattern!r} matches the empty string")

    def segment(self, text: str) -> list[str]:
        if not text or not text.strip():
            return []
        starts = [m.start() for m in self.pattern.finditer(text)]
        if not starts:
            return [line.strip() for line in text.splitlines() if line.strip()]
        bounds = ([0] if starts[0] > 0 else []) + starts + [len(text)]
        pieces = (text[a:b].strip() for a, b in zip(bounds[:-1], bounds[1:]))
        return [p for p in pieces if p]

    def describe(self) -> str:
        return f"dialogue turns at /{self.pattern.pattern}/"


def build_segmenter(cfg: SegmenterConfig, corpus_texts: Iterable[str] | None = None) -> Segmenter:
    """The segmenter ``cfg`` asks for; ``corpus_texts`` trains Punkt when it has to be trained."""
    if cfg.kind == "turn":
        return TurnSegmenter(cfg.turn_pattern, cfg.max_segments)
    abbreviations = (*KNOWN_ABBREVIATIONS, *cfg.extra_abbreviations)
    if cfg.punkt_params:
        segmenter = SentenceSegmenter.from_file(cfg.punkt_params, cfg.max_segments, cfg.merge_lowercase)
        segmenter.params.abbrev_types.update(_abbreviation_types(cfg.extra_abbreviations))
        return segmenter
    if cfg.punkt == "installed" or (cfg.punkt == "auto" and punkt_tab_installed()):
        return SentenceSegmenter.installed(cfg.max_segments, abbreviations, cfg.merge_lowercase)
    texts = list(corpus_texts or [])
    if not texts:
        logger.warning("training Punkt on an empty corpus: only the seeded abbreviations are known")
    logger.info("training a Punkt sentence model on %d texts", len(texts))
    return SentenceSegmenter.train(texts, cfg.max_segments, abbreviations, cfg.merge_lowercase)


__all__ = [
    "DEFAULT_TURN_PATTERN",
    "KNOWN_ABBREVIATIONS",
    "KNOWN_SENTENCE_STARTERS",
    "PUNKT_PARAMS_FILE",
    "SegmentationStats",
    "Segmenter",
    "SegmenterConfig",
    "SentenceSegmenter",
    "TurnSegmenter",
    "build_segmenter",
    "load_punkt_params",
    "punkt_tab_installed",
    "prune_punkt_params",
    "save_punkt_params",
    "seed_punkt_params",
    "train_punkt_params",
]

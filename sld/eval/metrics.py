"""Text-generation metrics as pure functions over lists of strings (method.md, "Metrics used here").

Every function here is deterministic, needs no model, and is small enough to check by hand:

* ``rouge_scores``: ROUGE-1/2/L F1 x 100 (the ``rouge-score`` package, Porter stemming). With several
  references per input each metric takes the best reference for that input (max F1 per input,
  per metric), then averages over inputs.
* ``bleu`` / ``exact_match_rate``: sacrebleu corpus BLEU and the share of verbatim matches, for
  autoencoder reconstruction.
* ``distinct_n``, ``num_distinct_outputs``, ``repetition_rate``, ``repeated_segment_rate``,
  ``average_length``: diversity and degeneration. ROUGE alone hides a collapsed model that writes the same sentence for every input
  (method.md, "Measured here"), so diversity is always reported beside it.
* ``novel_ngram_rate``: how much of a prediction is not copied from its source.
* ``segment_count_accuracy`` / ``segment_count_error``: how well the number of segments is learned.
* ``mbr_select``: minimum-Bayes-risk choice among sampled candidates (SLD paper: highest mean
  ROUGE-2 against the other candidates); it lives in ``sld.mbr`` (inference owns it) and is
  re-exported here.

Always score the plain joined text of a document, never segments joined with a separator token
(that inflates multi-segment ROUGE; see "Known defects" in method.md).

Tokenisation for the diversity metrics (``tokenize``): lower-cased, words are runs of letters and
digits, every other non-space character is its own token, so ``"Hi, Bob!"`` -> ``hi , bob !``.
Lengths (``average_length``) count whitespace-separated words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import sacrebleu

from sld.mbr import mbr_select

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# A reference for one input: one string, or several acceptable strings.
Reference = str | Sequence[str]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens used by the diversity metrics."""
    return _TOKEN_RE.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty when there are fewer than ``n`` tokens)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def as_reference_lists(references: Sequence[Reference]) -> list[list[str]]:
    """Each input's references as a non-empty list of strings."""
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"reference {i} must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


def _check_lengths(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


@lru_cache(maxsize=1)
def _scorer() -> RougeScorer:
    # imported at first use: rouge-score imports nltk (about 2 s on 2 cores, scipy.stats included),
    # which every training process would otherwise pay at start, before any ROUGE is computed
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_example(prediction: str, references: Reference) -> dict[str, float]:
    """ROUGE-1/2/L F1 x 100 of one prediction; with several references, the max per metric."""
    refs = as_reference_lists([references])[0]
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref in refs:
        scores = _scorer().score(ref, prediction)  # rouge-score takes (target, prediction)
        for key in ROUGE_TYPES:
            best[key] = max(best[key], 100.0 * scores[key].fmeasure)
    return best


def rouge_scores(predictions: Sequence[str], references: Sequence[Reference]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x 100 with stemming; keys ``rouge1``, ``rouge2``, ``rougeL``.

    ``references[i]`` is one string or a list of strings; with several, each metric takes the max
    over that input's references. An empty prediction scores 0. Empty input lists give zeros.
    """
    _check_lengths(predictions, references)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        for key, value in rouge_per_example(pred, ref).items():
            totals[key] += value
    n = max(len(predictions), 1)
    return {key: total / n for key, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """sacrebleu corpus BLEU (0-100, default 13a tokenisation); several references per input allowed."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    ref_lists = as_reference_lists(references)
    width = max(len(refs) for refs in ref_lists)
    # sacrebleu wants one stream per reference position; None marks "no more references here".
    streams = [[refs[k] if k < len(refs) else None for refs in ref_lists] for k in range(width)]
    preds = [normalize_whitespace(p) for p in predictions]
    return float(sacrebleu.corpus_bleu(preds, streams).score)


def exact_match_rate(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Share (0-1) of predictions equal to one of their references up to surrounding/repeated whitespace."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    hits = sum(
        normalize_whitespace(pred) in {normalize_whitespace(r) for r in refs}
        for pred, refs in zip(predictions, as_reference_lists(references))
    )
    return hits / len(predictions)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over the whole set of texts (a fraction in [0, 1]; 0 if none).

    A model that writes the same text for every input scores low however good each text is.
    """
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        counts.update(ngrams(tokenize(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def novel_ngram_rate(predictions: Sequence[str], sources: Sequence[str], n: int = 2) -> float:
    """Share (0-1) of the predictions' n-grams that do not occur in their own source, pooled over the set.

    A measure of copying: 0 means every n-gram was copied from the input. Predictions with no
    n-grams add nothing; 0 when there are none at all.
    """
    _check_lengths(predictions, sources)
    novel = total = 0
    for pred, source in zip(predictions, sources):
        seen = set(ngrams(tokenize(source), n))
        grams = ngrams(tokenize(pred), n)
        novel += sum(g not in seen for g in grams)
        total += len(grams)
    return novel / total if total else 0.0


def num_distinct_outputs(texts: Sequence[str]) -> int:
    """How many different texts there are, comparing whitespace-normalised strings (case-sensitive)."""
    return len({normalize_whitespace(t) for t in texts})


def num_empty(texts: Sequence[str]) -> int:
    """How many texts are empty or only whitespace."""
    return sum(not t.strip() for t in texts)


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Mean share of repeated n-grams within each text (0 = no repetition, -> 1 = a loop).

    For one text with n-gram occurrences ``total`` of which ``unique`` are different, the rate is
    ``1 - unique / total``: the share of occurrences that repeat an n-gram already seen in the same
    text. Texts with fewer than ``n`` tokens have no n-grams and are left out of the mean; if no
    text has any, the result is 0.
    """
    rates = []
    for text in texts:
        grams = ngrams(tokenize(text), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def repeated_segment_rate(segment_lists: Sequence[Sequence[str]]) -> float:
    """Share of segments that repeat an earlier segment of the same document verbatim.

    Segments are compared after lower-casing and collapsing whitespace; empty segments are not
    counted. SLD decodes every segment from its own latent, so two slots that receive near-equal
    latents come out as the same sentence twice: this is that failure, counted directly.
    """
    repeated = total = 0
    for segments in segment_lists:
        seen: set[str] = set()
        for segment in segments:
            key = " ".join(segment.lower().split())
            if not key:
                continue
            total += 1
            repeated += key in seen
            seen.add(key)
    return repeated / total if total else 0.0


def average_length(texts: Sequence[str]) -> float:
    """Mean number of whitespace-separated words per text (0 for an empty list)."""
    return sum(len(t.split()) for t in texts) / len(texts) if texts else 0.0


def segment_count_accuracy(pred_counts: Sequence[int], ref_counts: Sequence[int]) -> float:
    """Share (0-1) of documents whose predicted number of segments equals the reference number."""
    _check_lengths(pred_counts, ref_counts)
    if not pred_counts:
        return 0.0
    return sum(int(p) == int(r) for p, r in zip(pred_counts, ref_counts)) / len(pred_counts)


def segment_count_error(pred_counts: Sequence[int], ref_counts: Sequence[int]) -> float:
    """Mean absolute difference between predicted and reference numbers of segments."""
    _check_lengths(pred_counts, ref_counts)
    if not pred_counts:
        return 0.0
    return sum(abs(int(p) - int(r)) for p, r in zip(pred_counts, ref_counts)) / len(pred_counts)


__all__ = [
    "ROUGE_TYPES",
    "as_reference_lists",
    "average_length",
    "bleu",
    "distinct_n",
    "exact_match_rate",
    "mbr_select",
    "ngrams",
    "normalize_whitespace",
    "novel_ngram_rate",
    "num_distinct_outputs",
    "num_empty",
    "repetition_rate",
    "rouge_per_example",
    "rouge_scores",
    "segment_count_accuracy",
    "segment_count_error",
    "tokenize",
]

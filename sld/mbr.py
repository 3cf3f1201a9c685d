"""Minimum-Bayes-risk choice among sampled candidates (SLD paper, generation with several samples).

Inference owns this: ``SLDPipeline`` draws ``num_candidates`` texts per source and keeps the one
that agrees most with the others. Agreement is ROUGE-2 F1 (the ``rouge-score`` package, Porter
stemming), the paper's choice; ``sld.eval.metrics`` re-exports ``mbr_select`` for scoring code.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer


@lru_cache(maxsize=1)
def _rouge2() -> RougeScorer:
    from rouge_score.rouge_scorer import RougeScorer  # at first use: it imports nltk (about 2 s)

    return RougeScorer(["rouge2"], use_stemmer=True)


def rouge2_agreement(a: str, b: str) -> float:
    """ROUGE-2 F1 (0-1) between two texts; symmetric in its arguments."""
    return _rouge2().score(a, b)["rouge2"].fmeasure


def mbr_select(candidates: Sequence[str]) -> int:
    """Index of the minimum-Bayes-risk candidate: the highest mean ROUGE-2 F1 against the others.

    One candidate -> 0; ties go to the first. ROUGE-2 is symmetric in its arguments, so each pair is
    scored once.
    """
    k = len(candidates)
    if k == 0:
        raise ValueError("mbr_select needs at least one candidate")
    if k == 1:
        return 0
    totals = [0.0] * k
    for i in range(k):
        for j in range(i + 1, k):
            f1 = rouge2_agreement(candidates[j], candidates[i])
            totals[i] += f1
            totals[j] += f1
    best = 0
    for i in range(1, k):
        if totals[i] > totals[best]:
            best = i
    return best

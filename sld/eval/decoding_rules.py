"""The decoding rules both systems get in a benchmark: one repetition control, one token-budget principle.

A speed comparison is only fair when neither system is given needless work or a shortcut the other
does not get. ``resolve_decoding_rules`` fixes, once per benchmark run:

* **repetition control**: one ``no_repeat_ngram_size``, used by SLD's segment decoder and by every AR
  decoding alike (by default the SLD pipeline's saved setting). SLD applies it within a segment,
  AR within the whole document: each system's decoder sees its own output unit.
* **token budget** (the ``max_new_tokens`` cap; decoding still stops at the end token):

  - ``percentile`` (default): each system may write as many tokens as the ``percentile``-th
    percentile of the reference lengths of ITS output unit, counted with ITS decoder tokenizer, plus
    one for the end token: SLD per segment (the reference segments), AR per document (the reference
    documents, all segments joined). The same principle for both: cover that share of the real
    outputs, no more.
  - ``saved``: each model's own saved default (the autoencoder's segment budget; the baseline's
    ``max_target_tokens``).

  An explicit ``sld_max_new_tokens`` / ``ar_max_new_tokens`` overrides the rule for that system.

The percentile is taken on the benchmark's input documents (the validation split), so the budget
fits the task being measured; ``budget_source`` in the report says which file it came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from sld.data.segmented import SegmentedDocument
from sld.errors import UserError

__all__ = [
    "BudgetRule",
    "DecodingRules",
    "percentile_budget",
    "resolve_decoding_rules",
    "rules_for_models",
    "token_lengths",
]

BudgetRule = Literal["percentile", "saved"]


@dataclass(frozen=True)
class DecodingRules:
    """What both systems' decoders get; ``None`` budgets mean the model's saved default."""

    no_repeat_ngram_size: int
    sld_max_new_tokens: int | None  # per segment
    ar_max_new_tokens: int | None  # per document
    rule: str  # the budget rule in words, for the report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_lengths(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text, without special tokens."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def percentile_budget(lengths: Sequence[int], percentile: float) -> int:
    """The nearest-rank ``percentile`` of ``lengths``, plus one token for the end token."""
    if not lengths:
        raise UserError("token budget: no reference texts to take a percentile of")
    if not 0 < percentile <= 100:
        raise UserError(f"budget_percentile must be in (0, 100], got {percentile}")
    ordered = sorted(lengths)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1] + 1


def resolve_decoding_rules(
    docs: Sequence[SegmentedDocument],
    sld_tokenizer: PreTrainedTokenizerBase | None,
    ar_tokenizer: PreTrainedTokenizerBase | None,
    no_repeat_ngram_size: int,
    budget: BudgetRule = "percentile",
    percentile: float = 99.0,
    sld_max_new_tokens: int | None = None,
    ar_max_new_tokens: int | None = None,
) -> DecodingRules:
    """The rules of one run (see the module docstring); a system whose tokenizer is None is not run."""
    if no_repeat_ngram_size < 0:
        raise UserError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")
    for name, value in (("sld_max_new_tokens", sld_max_new_tokens), ("ar_max_new_tokens", ar_max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1 or null, got {value}")
    if budget not in ("percentile", "saved"):
        raise UserError(f"token_budget must be 'percentile' or 'saved', got {budget!r}")
    sld_budget, ar_budget = sld_max_new_tokens, ar_max_new_tokens
    if budget == "percentile":
        if sld_budget is None and sld_tokenizer is not None:
            segments = [s for doc in docs for s in doc.segments]
            sld_budget = percentile_budget(token_lengths(sld_tokenizer, segments), percentile)
        if ar_budget is None and ar_tokenizer is not None:
            documents = [" ".join(doc.segments) for doc in docs]
            ar_budget = percentile_budget(token_lengths(ar_tokenizer, documents), percentile)
        rule = (
            f"p{percentile:g} of the reference lengths + 1 (end token): SLD per segment, AR per document, "
            "each in its own decoder's tokens"
        )
    else:
        rule = "each model's saved default"
    overridden = [
        name for name, value in (("SLD", sld_max_new_tokens), ("AR", ar_max_new_tokens)) if value is not None
    ]
    if overridden:
        rule += f" (set explicitly for {', '.join(overridden)})"
    return DecodingRules(no_repeat_ngram_size, sld_budget, ar_budget, rule)


def rules_for_models(
    docs: Sequence[SegmentedDocument],
    pipe: Any,
    baseline: Any,
    no_repeat_ngram_size: int | None = None,
    budget: BudgetRule = "percentile",
    percentile: float = 99.0,
    sld_max_new_tokens: int | None = None,
    ar_max_new_tokens: int | None = None,
) -> DecodingRules:
    """``resolve_decoding_rules`` for an ``SLDPipeline`` and a ``BaselineModel`` (either may be None).

    ``no_repeat_ngram_size`` None takes the SLD pipeline's saved value (0 without a pipeline).
    """
    if no_repeat_ngram_size is None:
        no_repeat_ngram_size = int(pipe.config.no_repeat_ngram_size) if pipe is not None else 0
    return resolve_decoding_rules(
        docs,
        pipe.autoencoder.decoder_tokenizer if pipe is not None else None,
        baseline.decoder_tokenizer if baseline is not None else None,
        no_repeat_ngram_size,
        budget,
        percentile,
        sld_max_new_tokens,
        ar_max_new_tokens,
    )

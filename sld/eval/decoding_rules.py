"""The decoding rules both systems get in a benchmark: one repetition control, one token-budget principle.

A speed comparison is only fair when neither system is given needless work or a shortcut the other
does not get. ``resolve_decoding_rules`` fixes, once per benchmark run:

* **repetition control**: one ``no_repeat_ngram_size``, used by SLD's segment decoder and by every AR
  decoding alike (by default the SLD pipeline's saved setting). SLD applies it within a segment,
  AR within the whole document: each system's decoder sees its own output unit.
* **token budget** (the ``max_new_tokens`` cap; decoding still stops at the end token), by one
  principle for both: the length (end token included, in the system's own decoder tokens) that a
  percentile of real outputs of the system's output unit fits in, at most the model's truncation
  length. SLD's unit is a segment, AR's a whole document.

  - ``saved`` (default): each model's saved ``decode_max_tokens``, which ``sld train-autoencoder``
    and ``sld train-baseline`` measure on their TRAINING targets (``decode_budget_percentile``, 99
    by default). A folder saved without one falls back to its truncation length
    (``max_segment_tokens`` / ``max_target_tokens``); the report says which applied.
  - ``percentile``: the same measurement (``measure_decode_budget``) on the benchmark's input
    documents at ``percentile``: for folders without a saved budget. It reads the reference
    lengths of the very documents being scored; a cap, not a target, and the same for both.

  An explicit ``sld_max_new_tokens`` / ``ar_max_new_tokens`` overrides the rule for that system.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from sld.data.segmented import SegmentedDocument
from sld.errors import UserError

__all__ = [
    "BudgetRule",
    "DecodingRules",
    "resolve_decoding_rules",
    "saved_budget",
    "token_lengths",
]

BudgetRule = Literal["saved", "percentile"]


@dataclass(frozen=True)
class DecodingRules:
    """What both systems' decoders get (budgets None only for a system that is not run)."""

    no_repeat_ngram_size: int
    sld_max_new_tokens: int | None  # per segment
    ar_max_new_tokens: int | None  # per document
    rule: str  # how the budgets were set, in words, for the report
    static_cache: bool = False  # both decoders: static KV cache + CUDA-graph token step (causal LMs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_lengths(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text, without special tokens."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def saved_budget(model: Any, truncation_length: int) -> tuple[int, str]:
    """A model's saved ``decode_max_tokens`` (else its truncation length) and where it came from."""
    saved = getattr(model.config, "decode_max_tokens", None)
    if saved is not None:
        return int(saved), "saved decode_max_tokens"
    return int(truncation_length), "no saved budget: the truncation length"


def resolve_decoding_rules(
    docs: Sequence[SegmentedDocument],
    pipe: Any,
    baseline: Any,
    no_repeat_ngram_size: int | None = None,
    budget: BudgetRule = "saved",
    percentile: float = 99.0,
    sld_max_new_tokens: int | None = None,
    ar_max_new_tokens: int | None = None,
) -> DecodingRules:
    """The rules of one run for an ``SLDPipeline`` and a ``BaselineModel`` (either may be None).

    ``no_repeat_ngram_size`` None takes the SLD pipeline's saved value (0 without a pipeline);
    ``docs`` are read by the ``percentile`` rule only. See the module docstring.
    """
    if no_repeat_ngram_size is None:
        no_repeat_ngram_size = int(pipe.config.no_repeat_ngram_size) if pipe is not None else 0
    if no_repeat_ngram_size < 0:
        raise UserError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")
    for name, value in (("sld_max_new_tokens", sld_max_new_tokens), ("ar_max_new_tokens", ar_max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1 or null, got {value}")
    if budget not in ("saved", "percentile"):
        raise UserError(f"token_budget must be 'saved' or 'percentile', got {budget!r}")
    if budget == "percentile" and not 0 < percentile <= 100:
        raise UserError(f"budget_percentile must be in (0, 100], got {percentile}")

    notes = []
    sld_budget = ar_budget = None
    if pipe is not None:
        autoencoder = pipe.autoencoder
        if sld_max_new_tokens is not None:
            sld_budget, how = sld_max_new_tokens, "set explicitly"
        elif budget == "saved":
            sld_budget, how = saved_budget(autoencoder, autoencoder.max_segment_tokens)
        else:
            segments = [s for doc in docs for s in doc.segments]
            sld_budget, how = autoencoder.measure_decode_budget(segments, percentile), "input segments"
        notes.append(f"SLD {sld_budget} per segment ({how})")
    if baseline is not None:
        if ar_max_new_tokens is not None:
            ar_budget, how = ar_max_new_tokens, "set explicitly"
        elif budget == "saved":
            ar_budget, how = saved_budget(baseline, baseline.max_target_tokens)
        else:
            documents = [" ".join(doc.segments) for doc in docs]
            ar_budget, how = baseline.measure_decode_budget(documents, percentile), "input documents"
        notes.append(f"AR {ar_budget} per document ({how})")
    principle = (
        "each model's saved budget (a percentile of its training targets' lengths)"
        if budget == "saved"
        else f"the length p{percentile:g} of the input's references fit in"
    )
    rule = f"{principle}, end token included: " + ", ".join(notes)
    return DecodingRules(no_repeat_ngram_size, sld_budget, ar_budget, rule)

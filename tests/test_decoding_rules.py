"""Decoding rules shared by both systems: percentile token budgets per output unit, one repetition control."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sld.data.segmented import SegmentedDocument
from sld.errors import UserError
from sld.eval.decoding_rules import percentile_budget, resolve_decoding_rules, rules_for_models, token_lengths


class WordTokenizer:
    """One token per whitespace-separated word (enough to check the bookkeeping)."""

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [text.split() for text in texts]}


DOCS = [
    SegmentedDocument("a", "s", ["one two three", "four five"], 2),  # segments 3, 2; document 5
    SegmentedDocument("b", "s", ["one", "two three four five six seven"], 2),  # 1, 6; document 7
    SegmentedDocument("c", None, ["one two"], 1),  # 2; document 2
]


def test_percentile_budget_is_the_nearest_rank_plus_the_end_token():
    lengths = list(range(1, 101))
    assert percentile_budget(lengths, 99) == 100
    assert percentile_budget(lengths, 100) == 101
    assert percentile_budget(lengths, 50) == 51
    assert percentile_budget([3, 1, 2], 50) == 3  # rank ceil(1.5) = 2 -> 2, + 1
    assert percentile_budget([5], 1) == 6
    with pytest.raises(UserError, match="no reference"):
        percentile_budget([], 99)
    with pytest.raises(UserError, match="budget_percentile"):
        percentile_budget([1], 0)


def test_token_lengths():
    assert token_lengths(WordTokenizer(), ["a b", "c"]) == [2, 1]
    assert token_lengths(WordTokenizer(), []) == []


def test_percentile_rule_per_segment_for_sld_and_per_document_for_ar():
    rules = resolve_decoding_rules(DOCS, WordTokenizer(), WordTokenizer(), 3, "percentile", 100)
    assert rules.sld_max_new_tokens == 6 + 1  # the longest segment
    assert rules.ar_max_new_tokens == 7 + 1  # the longest document
    assert rules.no_repeat_ngram_size == 3 and "p100" in rules.rule
    rules = resolve_decoding_rules(DOCS, WordTokenizer(), WordTokenizer(), 0, "percentile", 50)
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (
        2 + 1,
        5 + 1,
    )  # segments 1,2,2,3,6; docs 2,5,7
    # a system that is not run gets no budget
    rules = resolve_decoding_rules(DOCS, None, WordTokenizer(), 0)
    assert rules.sld_max_new_tokens is None and rules.ar_max_new_tokens == 8


def test_saved_rule_and_overrides():
    rules = resolve_decoding_rules(DOCS, WordTokenizer(), WordTokenizer(), 2, "saved")
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (None, None) and "saved" in rules.rule
    rules = resolve_decoding_rules(
        DOCS, WordTokenizer(), WordTokenizer(), 2, "percentile", 100, ar_max_new_tokens=64
    )
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (7, 64)
    assert "set explicitly for AR" in rules.rule
    assert rules.to_dict()["ar_max_new_tokens"] == 64
    with pytest.raises(UserError, match="no_repeat_ngram_size"):
        resolve_decoding_rules(DOCS, None, None, -1)
    with pytest.raises(UserError, match="sld_max_new_tokens"):
        resolve_decoding_rules(DOCS, None, None, 0, sld_max_new_tokens=0)
    with pytest.raises(UserError, match="token_budget"):
        resolve_decoding_rules(DOCS, None, None, 0, "median")  # type: ignore[arg-type]


def test_repetition_control_defaults_to_the_pipelines_and_applies_to_both():
    pipe = SimpleNamespace(
        config=SimpleNamespace(no_repeat_ngram_size=3),
        autoencoder=SimpleNamespace(decoder_tokenizer=WordTokenizer()),
    )
    baseline = SimpleNamespace(decoder_tokenizer=WordTokenizer())
    assert rules_for_models(DOCS, pipe, baseline).no_repeat_ngram_size == 3
    assert rules_for_models(DOCS, pipe, baseline, no_repeat_ngram_size=0).no_repeat_ngram_size == 0
    assert rules_for_models(DOCS, None, baseline).no_repeat_ngram_size == 0
    rules = rules_for_models(DOCS, pipe, baseline, percentile=100)
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (7, 8)

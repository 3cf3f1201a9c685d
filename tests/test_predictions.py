"""sld.eval.predictions: predictions and references files read, checked and joined on their own."""

import json
import logging
from pathlib import Path

import pytest

from sld.errors import DataError
from sld.eval.predictions import (
    EvaluationConfig,
    join_references,
    read_predictions,
    read_references,
    system_paths,
)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_system_names_from_a_mapping_a_file_or_its_folder(tmp_path):
    assert system_paths({"sld": "a/p.jsonl"}) == {"sld": Path("a/p.jsonl")}
    assert list(system_paths(str(tmp_path / "ar.jsonl.gz"))) == ["ar"]
    (tmp_path / "my_run").mkdir()
    assert list(system_paths(str(tmp_path / "my_run" / "predictions.jsonl"))) == ["my_run"]


def test_columns_of_a_predictions_file(tmp_path):
    path = _write(
        tmp_path / "p.jsonl",
        [
            {"id": 7, "prediction": "a b", "reference": ["a b", "c"], "segments": ["a", "b"]},
            {"id": "x", "prediction": "c", "reference": "c", "segments": ["c"]},
        ],
    )
    records = read_predictions(path, EvaluationConfig(predictions=str(path)))
    assert records.ids == ["7", "x"] and records.lines == [1, 2]
    assert records.references == [["a b", "c"], "c"] and records.segments == [["a", "b"], ["c"]]
    assert records.sources is None and records.reference_segments is None
    with pytest.raises(DataError, match=r"p.jsonl, line 1: field 'reference' should be a string"):
        read_predictions(
            _write(path, [{"prediction": "a", "reference": 3}]), EvaluationConfig(predictions="p")
        )


def test_references_joined_by_id(tmp_path, caplog):
    cfg = EvaluationConfig(predictions="p", references="r")
    preds = _write(tmp_path / "p.jsonl", [{"id": "b", "prediction": "y"}, {"id": "a", "prediction": "x"}])
    refs_path = _write(
        tmp_path / "r.jsonl",
        [
            {"id": "a", "reference": "x", "reference_segments": ["x"]},
            {"id": "b", "reference": "y", "reference_segments": ["y", "z"]},
            {"id": "c", "reference": "w", "reference_segments": ["w"]},
        ],
    )
    refs = read_references(refs_path, cfg)
    records = read_predictions(preds, cfg)
    assert records.references == [None, None]
    with caplog.at_level(logging.WARNING):
        join_references(records, preds, refs, refs_path, "id")
    assert records.references == ["y", "x"] and records.reference_segments == [["y", "z"], ["x"]]
    assert "1 of 3 references have no prediction" in caplog.text
    with pytest.raises(DataError, match=r"r.jsonl, line 2: duplicate id 'a'"):
        read_references(_write(refs_path, [{"id": "a", "reference": "x"}] * 2), cfg)

"""`sld evaluate` end to end on tiny predictions files, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sld.cli import main as sld_main
from stages import evaluate


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prediction(
    i: int, text: str, reference: str | list[str] | None, segments: list[str] | None = None
) -> dict:
    source = None if i == 1 else f"source {i}"  # a null source on one line is allowed
    row = {"id": f"d{i}", "source": source, "prediction": text, "reference": reference}
    if segments is not None:
        row["segments"] = segments
        row["reference_segments"] = [reference] if isinstance(reference, str) else []
    return row


@pytest.fixture
def two_systems(tmp_path: Path) -> tuple[Path, Path]:
    refs = ["the cat sat on the mat.", "a dog ran in the park.", "two friends talk about the weather."]
    sld_rows = [_prediction(i, r, r, [r]) for i, r in enumerate(refs)]
    ar_rows = [
        _prediction(i, "they talk about the weather.", [r, "something else"]) for i, r in enumerate(refs)
    ]
    return _write_jsonl(tmp_path / "sld.jsonl", sld_rows), _write_jsonl(tmp_path / "ar.jsonl", ar_rows)


def test_two_systems_in_one_table(tmp_path, two_systems, capsys):
    sld_path, ar_path = two_systems
    out = tmp_path / "eval"
    code = evaluate.main(
        [f"predictions.sld={sld_path}", f"predictions.ar={ar_path}", f"output_dir={out}", "mauve=false"]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["sld", "ar"]
    assert metrics["sld"]["rouge1"] == pytest.approx(100.0)
    assert metrics["sld"]["segment_count_accuracy"] == pytest.approx(1.0)
    assert metrics["sld"]["semantic_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["ar"]["num_distinct_outputs"] == 1
    assert metrics["ar"]["rouge1"] < metrics["sld"]["rouge1"]
    assert "segment_count_accuracy" not in metrics["ar"]
    assert metrics["sld"]["novel_2grams"] == pytest.approx(1.0)
    assert metrics["sld"]["mauve"] is None and metrics["sld"]["mauve_status"] == "disabled"
    printed = capsys.readouterr().out
    assert "| sld" in printed and "| ar" in printed
    assert printed.strip() in (out / "metrics.md").read_text()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["predictions"] == {"sld": str(sld_path), "ar": str(ar_path)}


def test_single_path_with_separate_references_file(tmp_path, capsys):
    run_dir = tmp_path / "my_run"
    run_dir.mkdir()
    preds = _write_jsonl(
        run_dir / "predictions.jsonl",
        [{"id": "b", "prediction": "a dog ran"}, {"id": "a", "prediction": "the cat sat"}],
    )
    refs = _write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": "a", "reference": "the cat sat", "reference_segments": ["the cat sat"]},
            {"id": "b", "reference": "a dog ran", "reference_segments": ["a dog", "ran"]},
            {"id": "c", "reference": "unused", "reference_segments": ["unused"]},
        ],
    )
    out = tmp_path / "eval"
    code = sld_main(
        [
            "evaluate",
            f"predictions={preds}",
            f"references={refs}",
            f"output_dir={out}",
            "semantic_model=null",
            "mauve=false",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["my_run"]
    row = metrics["my_run"]
    assert row["rouge1"] == pytest.approx(100.0)
    assert row["semantic_similarity"] is None
    assert row["ref_avg_segments"] == pytest.approx(1.5)
    assert "n/a" in capsys.readouterr().out


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


def _run(tmp_path: Path, *overrides: str) -> int:
    return evaluate.main(
        [*overrides, f"output_dir={tmp_path / 'eval'}", "semantic_model=null", "mauve=false"]
    )


def test_missing_file(tmp_path, capsys):
    assert _run(tmp_path, f"predictions={tmp_path / 'nope.jsonl'}") == 2
    assert "nope.jsonl" in _error_line(capsys)


def test_bad_json_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prediction": "a", "reference": "a"}) + "\n{not json\n")
    assert _run(tmp_path, f"predictions={path}") == 2
    line = _error_line(capsys)
    assert "p.jsonl" in line and "line 2" in line


def test_missing_prediction_field(tmp_path, capsys):
    path = _write_jsonl(
        tmp_path / "p.jsonl", [{"prediction": "a", "reference": "a"}, {"text": "b", "reference": "b"}]
    )
    assert _run(tmp_path, f"predictions={path}") == 2
    line = _error_line(capsys)
    assert "line 2" in line and "'prediction'" in line


def test_missing_reference(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prediction": "a", "reference": None}])
    assert _run(tmp_path, f"predictions={path}") == 2
    assert "line 1" in _error_line(capsys)


def test_id_not_in_references(tmp_path, capsys):
    preds = _write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "prediction": "x"}, {"id": "zz", "prediction": "y"}]
    )
    refs = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "reference": "x"}])
    assert _run(tmp_path, f"predictions={preds}", f"references={refs}") == 2
    line = _error_line(capsys)
    assert "p.jsonl, line 2" in line and "'zz'" in line


def test_segments_on_some_lines_only(tmp_path, capsys):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"prediction": "a", "reference": "a", "segments": ["a"]}, {"prediction": "b", "reference": "b"}],
    )
    assert _run(tmp_path, f"predictions={path}") == 2
    assert "line 2" in _error_line(capsys)

"""sld.generation: inputs from JSONL / texts, one text per source with SLD or the AR baseline, the rows."""

import json

import pytest
from tiny_models import save_tiny_bert, tiny_autoencoder, tiny_baseline, tiny_pipeline

from sld.errors import UserError
from sld.generation import (
    GeneratedTexts,
    GenerationInput,
    generate_texts,
    prediction_rows,
    read_generation_inputs,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    bert = save_tiny_bert(tmp_path_factory.mktemp("generation") / "bert")
    return tiny_pipeline(bert, tiny_autoencoder(bert, seed=0)), tiny_baseline(bert)


def test_inputs_from_texts_then_file_with_references(tmp_path):
    path = tmp_path / "valid.jsonl"
    rows = [
        {"id": "a", "source": "The Dog", "segments": ["Rex ran.", "Tom ran too."]},
        {"source": None, "summary": "A talk."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = read_generation_inputs(path, ["Snow"], reference_field="summary")
    assert [i.id for i in inputs] == ["text-0", "a", "valid-2"]
    assert (
        inputs[1].reference == "Rex ran. Tom ran too." and inputs[1].reference_segments == rows[0]["segments"]
    )
    assert (
        inputs[2].source is None and inputs[2].reference == "A talk." and inputs[2].reference_segments is None
    )
    assert len(read_generation_inputs(path, ["Snow"], limit=2)) == 2


def test_input_errors_name_the_line_or_the_missing_input(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"title": "x"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl, line 1: no 'source' field"):
        read_generation_inputs(path)
    with pytest.raises(UserError, match="nothing to generate"):
        read_generation_inputs(None, [])


def test_sld_rows_carry_segments_and_references(models):
    pipe, _ = models
    inputs = [GenerationInput("a", "The Dog", "Rex ran.", ["Rex ran."]), GenerationInput("b", None)]
    settings = dict(seed=0, num_candidates=2, batch_size=3, num_inference_steps=2, max_new_tokens=6)
    out = generate_texts(pipe, [i.source for i in inputs], **settings)
    assert set(out.timings) == {"context", "denoise", "decode", "total"}
    rows = prediction_rows(inputs, out)
    assert [r["id"] for r in rows] == ["a", "b"]
    for row, segments in zip(rows, out.segments):
        assert row["segments"] == segments and row["num_segments"] == len(segments) >= 1
        assert row["prediction"] == " ".join(s for s in segments if s)
    assert rows[0]["reference"] == "Rex ran." and "reference" not in rows[1]
    again = generate_texts(pipe, [i.source for i in inputs], **settings)
    assert again.texts == out.texts  # seeded


def test_baseline_rows_have_no_segments(models):
    _, baseline = models
    out = generate_texts(baseline, ["The Dog", "Snow"], max_new_tokens=4)
    assert len(out.texts) == 2 and out.segments == [None, None] and set(out.timings) == {"total"}
    rows = prediction_rows([GenerationInput("a", "The Dog"), GenerationInput("b", "Snow")], out)
    assert all("segments" not in r and "num_segments" not in r for r in rows)
    with pytest.raises(ValueError, match="1 inputs but 2"):
        prediction_rows([GenerationInput("a", "x")], GeneratedTexts(["p", "q"], [None, None]))


def test_generate_stage_refuses_an_autoencoder_folder(models, tmp_path, capsys):
    from stages import generate

    pipe, _ = models
    pipe.autoencoder.save_pretrained(tmp_path / "ae")
    assert generate.main([f"model={tmp_path / 'ae'}", "texts=[x]"]) == 2
    assert "is a segment autoencoder folder" in capsys.readouterr().err

"""sld.baseline_trainer: the AR baseline from Python (train_baseline and its parts), on a tiny model."""

from __future__ import annotations

import json

import pytest
import tiny_models

from sld.baseline_trainer import (
    BaselineDataConfig,
    BaselineEvalConfig,
    BaselineTrainingConfig,
    SourceTargetDataset,
    TrainedBaseline,
    target_text,
    train_baseline,
    write_samples,
)
from sld.data.segmented import SegmentedDocument, write_segmented
from sld.errors import DataError
from sld.models.baseline import BaselineConfig, BaselineModel
from sld.training import LoopConfig, OptimConfig

TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=2, num_heads=4, dropout_rate=0.0
)
DOCS = [
    SegmentedDocument("a", "The Lost Dog", ["Rex ran away. ", "", "He came back."], 3),
    SegmentedDocument("b", None, ["It snowed."], 1),
]


def test_targets_are_the_segments_joined_with_spaces():
    assert target_text(DOCS[0]) == "Rex ran away. He came back."
    dataset = SourceTargetDataset(DOCS)
    assert len(dataset) == 2 and dataset[1] == (None, "It snowed.")


def test_samples_rows_name_document_source_prediction_and_reference(tmp_path):
    path = tmp_path / "samples" / "step_3.jsonl"
    write_samples(path, DOCS, ["one", "two"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {
        "id": "a",
        "source": "The Lost Dog",
        "prediction": "one",
        "reference": target_text(DOCS[0]),
    }
    assert rows[1]["source"] is None and len(rows) == 2


def test_summary_lines_show_every_validation_against_the_number_of_documents(tmp_path):
    row = {"step": 2, "eval/rougeL": 12.345, "eval/distinct2": 0.5, "eval/num_distinct": 3.0}
    trained = TrainedBaseline(tmp_path, {"steps": 2, "validation": [row]}, 4)
    assert trained.summary_lines() == [
        f"AR baseline saved to {tmp_path}",
        "  step 2: valid rougeL=12.35 distinct2=0.500 distinct outputs=3/4",
    ]
    assert TrainedBaseline(tmp_path, None, 4).summary_lines() == []


def test_a_missing_stage1_folder_is_a_data_error(tmp_path):
    cfg = BaselineTrainingConfig(output_dir=str(tmp_path / "out"), data=BaselineDataConfig(str(tmp_path)))
    with pytest.raises(DataError, match="train.jsonl not found: run `sld segment` first"):
        train_baseline(cfg)


@pytest.mark.slow
def test_train_baseline_returns_the_folder_and_summary(tmp_path):
    bert = tiny_models.save_tiny_bert(tmp_path / "bert", num_layers=1, max_positions=64)
    write_segmented(tmp_path / "seg" / "train.jsonl", DOCS * 4)
    write_segmented(tmp_path / "seg" / "valid.jsonl", DOCS)
    cfg = BaselineTrainingConfig(
        output_dir=str(tmp_path / "out"),
        data=BaselineDataConfig(segmented_dir=str(tmp_path / "seg")),
        model=BaselineConfig(
            encoder=bert,
            decoder_config=dict(TINY_T5),
            decoder_vocab_size=300,
            max_source_tokens=16,
            max_target_tokens=24,
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
        loop=LoopConfig(max_steps=2, batch_size=4, eval_every=2, save_every=2, progress=False),
        eval=BaselineEvalConfig(batch_size=2, max_new_tokens=4),
    )
    trained = train_baseline(cfg)
    assert trained.num_valid_documents == 2 and trained.output_dir == tmp_path / "out"
    summary = json.loads((trained.output_dir / "summary.json").read_text())
    assert summary == trained.summary and summary["steps"] == 2
    assert [row["step"] for row in summary["validation"]] == [2]
    assert (trained.output_dir / "samples" / "step_2.jsonl").is_file() and (
        trained.output_dir / "init"
    ).is_dir()
    assert trained.summary_lines()[1].endswith("/2")
    assert isinstance(BaselineModel.from_pretrained(trained.output_dir), BaselineModel)


def test_the_real_fraction_counts_the_positions_each_model_kind_computes_on(tmp_path):
    """The prefix LM's right-padded rows (source and target in one row); an encoder-decoder's sources
    and targets, each padded on its own."""
    from sld.baseline_trainer import baseline_real_fraction
    from sld.tokenization import IGNORE_INDEX

    pairs = [
        ("Anna walked her dog.", "Tom baked a cake."),
        (None, "Sam fixed the old bike today."),
        ("Lucy", "Hi."),
    ]
    prefix_lm = tiny_models.tiny_prefix_lm(tmp_path / "lm")
    batch = prefix_lm.collator()(pairs)
    mask = batch["attention_mask"]
    assert 0 < float(mask.float().mean()) < 1  # the shorter rows are padded
    assert baseline_real_fraction(prefix_lm, batch).item() == pytest.approx(float(mask.float().mean()))
    seq2seq = tiny_models.tiny_baseline(tiny_models.save_tiny_bert(tmp_path / "bert"))
    batch = seq2seq.collator()(pairs)
    real = batch["attention_mask"].sum() + (batch["labels"] != IGNORE_INDEX).sum()
    expected = float(real) / (batch["attention_mask"].numel() + batch["labels"].numel())
    assert baseline_real_fraction(seq2seq, batch).item() == pytest.approx(expected)

"""sld.data.segment_corpus: stage 1 from Python (segment_corpus, its result and its printed summary)."""

from __future__ import annotations

import json

import pytest

from sld.data.records import RecordsConfig
from sld.data.segment import SegmenterConfig
from sld.data.segment_corpus import SegmentCorpusConfig, SegmentedCorpus, format_summary, segment_corpus
from sld.data.segmented import read_segmented
from sld.errors import DataError


def test_segment_corpus_returns_the_stats_and_the_files_it_wrote(synthetic_dir, tmp_path, capsys):
    cfg = SegmentCorpusConfig(
        splits={
            "train": str(synthetic_dir / "stories_train.jsonl"),
            "valid": str(synthetic_dir / "stories_valid.jsonl"),
        },
        output_dir=str(tmp_path / "seg"),
        records=RecordsConfig(task="title_to_story", limit=30),
        segmenter=SegmenterConfig(kind="sentence", max_segments=3),
    )
    corpus = segment_corpus(cfg)
    assert isinstance(corpus, SegmentedCorpus) and capsys.readouterr().out == ""  # the stage prints
    assert corpus.files == ["train.jsonl", "valid.jsonl", "punkt_params.json"]
    assert corpus.stats == json.loads((tmp_path / "seg" / "stats.json").read_text())
    assert (
        corpus.stats["splits"]["train"]["documents"]
        == len(read_segmented(tmp_path / "seg" / "train.jsonl"))
        == 30
    )
    summary, wrote = corpus.summary_lines()
    assert summary == format_summary(corpus.stats) and summary.startswith("segmenter: ")
    assert "[train] " in summary and "sentences/doc" in summary
    assert (
        wrote
        == f"\nwrote train.jsonl, valid.jsonl, punkt_params.json, stats.json and config.yaml to {tmp_path / 'seg'}"
    )


def test_turn_segmentation_writes_no_punkt_file_and_counts_turns(synthetic_dir, tmp_path):
    cfg = SegmentCorpusConfig(
        splits={"train": str(synthetic_dir / "dialogues_train.jsonl")},
        output_dir=str(tmp_path / "turns"),
        records=RecordsConfig(task="fields", target_field="dialogue", limit=5),
        segmenter=SegmenterConfig(kind="turn", max_segments=8),
    )
    corpus = segment_corpus(cfg)
    assert corpus.files == ["train.jsonl"] and "turns/doc" in format_summary(corpus.stats)


def test_missing_inputs_and_bad_split_names(tmp_path):
    with pytest.raises(DataError, match="input file for split 'train' not found"):
        segment_corpus(
            SegmentCorpusConfig(splits={"train": str(tmp_path / "x.jsonl")}, output_dir=str(tmp_path))
        )
    with pytest.raises(ValueError, match="must be a plain file name"):
        SegmentCorpusConfig(splits={"../train": "x.jsonl"}, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="splits must name at least one input file"):
        SegmentCorpusConfig(splits={}, output_dir=str(tmp_path))

"""The stage-1 file format: round trip, validation with file and line, statistics."""

from __future__ import annotations

import pytest
from conftest import write_jsonl_lines

from sld.data.segmented import (
    SegmentedDocument,
    document_statistics,
    percentiles,
    read_segmented,
    read_split,
    write_segmented,
)
from sld.errors import DataError

DOCS = [
    SegmentedDocument("a", "A title", ["One two.", "Three."], 2),
    SegmentedDocument("b", None, ["S1.", "S2.", "S3."], 7),
]


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_round_trip(tmp_path, name):
    assert write_segmented(tmp_path / name, DOCS) == 2
    docs = read_segmented(tmp_path / name)
    assert docs == DOCS
    assert [d.truncated for d in docs] == [False, True]


@pytest.mark.parametrize(
    "record,message",
    [
        ({"id": "x", "source": None, "segments": ["a"]}, "missing field 'num_segments'"),
        ({"id": "x", "source": None, "segments": "a", "num_segments": 1}, "'segments' has the wrong type"),
        ({"id": "x", "source": None, "segments": ["a", 3], "num_segments": 2}, "every item of 'segments'"),
        (
            {"id": "x", "source": None, "segments": ["a", "b"], "num_segments": 1},
            "smaller than the number of segments",
        ),
        ({"id": 1, "source": None, "segments": ["a"], "num_segments": 1}, "'id' has the wrong type"),
    ],
)
def test_errors_name_file_and_line(tmp_path, record, message):
    good = DOCS[0].to_dict()
    path = write_jsonl_lines(tmp_path / "valid.jsonl", [good, record])
    with pytest.raises(DataError, match=rf"valid.jsonl, line 2: .*{message}"):
        read_segmented(path)


def test_statistics():
    stats = document_statistics(DOCS)
    assert stats["documents"] == 2 and stats["segments_kept"] == 5 and stats["truncated"] == 1
    assert stats["segments_per_document"] == {"2": 1, "7": 1}
    assert stats["tokens_per_segment"]["max"] == 2 and stats["tokens_per_source"]["p50"] == 2
    assert percentiles([]) == {}
    assert percentiles(list(range(1, 101)))["p95"] == 95


def test_empty_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"train.jsonl: no documents"):
        read_segmented(tmp_path / "train.jsonl")


def test_read_split_names_the_folder_and_says_to_segment_first(tmp_path):
    write_segmented(tmp_path / "train.jsonl", DOCS)
    assert read_split(tmp_path, "train") == DOCS
    with pytest.raises(
        DataError, match=r"valid.jsonl not found: run `sld segment` first \(data.segmented_dir="
    ):
        read_split(str(tmp_path), "valid")

"""JSONL reading/writing, bad-line errors with line numbers, skip-and-count, and the task -> example mapping."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import write_jsonl_lines

from sld.config import ConfigError, load_config
from sld.data.records import (
    Example,
    LoadReport,
    RecordsConfig,
    iter_jsonl,
    iter_jsonl_numbered,
    load_examples,
    read_texts,
    write_jsonl,
)
from sld.data.segment import SentenceSegmenter
from sld.errors import DataError

BAD_LINES = [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    ('{"title": "x"}', "line 2: missing field 'text'"),
    ('{"text": 3}', "line 2: field 'text' should be a string, got int"),
]


def _gzip(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(r + "\n" for r in rows))
    return path


def test_write_and_read_plain_and_gz(tmp_path):
    rows = [{"text": "a", "n": 1}, {"text": "é ü", "n": 2}]
    for name in ("x.jsonl", "x.jsonl.gz"):
        assert write_jsonl(tmp_path / name, rows) == 2
        assert list(iter_jsonl(tmp_path / name)) == rows
        assert [n for n, _ in iter_jsonl_numbered(tmp_path / name)] == [1, 2]
    assert gzip.open(tmp_path / "x.jsonl.gz").read().startswith(b'{"text"')
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("line,message", BAD_LINES)
@pytest.mark.parametrize("compressed", [False, True])
def test_bad_line_names_file_and_line(tmp_path, line, message, compressed):
    rows = ['{"text": "ok"}', line, '{"text": "ok"}']
    path = (
        _gzip(tmp_path / "in.jsonl.gz", rows)
        if compressed
        else write_jsonl_lines(tmp_path / "in.jsonl", rows)
    )
    with pytest.raises(DataError, match=rf"{path.name}, {message}"):
        list(iter_jsonl(path, required={"text": str}))


def test_skip_bad_records_counts_and_reports(tmp_path):
    rows = ['{"text": "a"}', "{oops", "", '{"text": null}', '{"text": "b"}', "[]"]
    path = write_jsonl_lines(tmp_path / "in.jsonl", rows)
    report = LoadReport(str(path))
    records = list(iter_jsonl(path, skip_bad_records=True, report=report, required={"text": str}))
    assert [r["text"] for r in records] == ["a", "b"]
    assert report.lines == 6 and report.blank_lines == 1 and report.num_skipped == 3
    assert sorted(n for lines in report.skipped_lines.values() for n in lines) == [2, 4, 6]
    summary = report.summary()
    assert "skipped 1 (bad record: not valid JSON" in summary and "lines 4" in summary


def test_missing_file_and_bad_gzip(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.jsonl"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))
    (tmp_path / "bad.jsonl.gz").write_text("not gzip")
    with pytest.raises(DataError, match="bad.jsonl.gz: cannot read"):
        list(iter_jsonl(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xe9"}\n')
    with pytest.raises(DataError, match="latin.jsonl, line 2: not valid UTF-8"):
        list(iter_jsonl(tmp_path / "latin.jsonl"))


def test_title_to_story_skips_and_counts_null_titles(stories_file):
    examples, report = load_examples(stories_file, RecordsConfig(task="title_to_story"))
    assert [e.source for e in examples] == ["The Lost Dog", "Snow"]
    assert examples[0].target.startswith("Mr. Smith lost his dog.")
    assert examples[0].id == "stories-1" and examples[1].id == "stories-3"  # file stem + line number
    assert report.skipped == {"null 'title'": 1} and report.skipped_lines == {"null 'title'": [2]}
    assert report.loaded == 2


def test_unconditional_fields_and_limit(stories_file):
    examples, _ = load_examples(stories_file, RecordsConfig(task="unconditional", limit=2))
    assert [e.source for e in examples] == [None, None] and len(examples) == 2
    cfg = RecordsConfig(task="fields", source_field="text", target_field="title", skip_bad_records=True)
    examples, report = load_examples(stories_file, cfg)
    assert [e.target for e in examples] == ["The Lost Dog", "Snow"]  # a null target is a bad record here
    assert report.num_skipped == 1


def test_dialogue_summary_uses_ids(tmp_path):
    path = write_jsonl_lines(
        tmp_path / "d.jsonl",
        [
            {
                "id": "train_0",
                "dialogue": "#Person1#: Hi.\n#Person2#: Hello.",
                "summary": "They greet.",
                "topic": "x",
            }
        ],
    )
    examples, _ = load_examples(path, RecordsConfig(task="dialogue_summary"))
    assert examples == [Example("train_0", "#Person1#: Hi.\n#Person2#: Hello.", "They greet.")]


def test_continuation_splits_off_the_first_sentence(stories_file, tmp_path):
    segmenter = SentenceSegmenter.train(read_texts(stories_file, RecordsConfig(task="continuation")))
    examples, report = load_examples(stories_file, RecordsConfig(task="continuation"), segmenter)
    assert examples[0].source == "Mr. Smith lost his dog."
    assert examples[0].target.startswith('He looked everywhere. "Rex!" he shouted.')
    assert (
        examples[1].target
        == "It burned. She tried again... and it worked. Her family loved it. She was proud."
    )
    one = write_jsonl_lines(tmp_path / "one.jsonl", [{"text": "Only one sentence here."}])
    examples, report = load_examples(one, RecordsConfig(task="continuation"), segmenter)
    assert examples == [] and report.skipped == {"fewer than 2 sentences to continue": 1}
    with pytest.raises(ValueError, match="segmenter"):
        load_examples(stories_file, RecordsConfig(task="continuation"))


def test_bad_record_in_loader_names_line(tmp_path):
    path = write_jsonl_lines(tmp_path / "in.jsonl", [{"title": "a", "text": "b"}, {"title": 5, "text": "c"}])
    with pytest.raises(
        DataError, match=r"in.jsonl, line 2: field 'title' should be a string or null, got int"
    ):
        load_examples(path, RecordsConfig(task="title_to_story"))


def test_records_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="target_field"):
        load_config(RecordsConfig, None, ["task=fields"])
    with pytest.raises(ConfigError, match="'task' must be one of"):
        load_config(RecordsConfig, None, ["task=poetry"])
    with pytest.raises(ConfigError, match="limit"):
        load_config(RecordsConfig, None, ["limit=0"])
    assert json.loads(json.dumps(load_config(RecordsConfig, None, ["task=unconditional"]).__dict__))


def test_truncated_gz_names_the_file_and_the_last_line_read(tmp_path):
    whole = tmp_path / "whole.jsonl.gz"
    write_jsonl(whole, [{"text": f"record {i} " + "x" * 50} for i in range(2000)])
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(
        DataError, match=r"cut.jsonl.gz: cannot read after line \d+: .*truncated or corrupt .gz"
    ):
        list(iter_jsonl(cut))


def test_empty_file_and_blank_lines_only_are_errors(tmp_path):
    for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=rf"{name}: the file is empty \(no JSON records\)"):
            load_examples(tmp_path / name, RecordsConfig(task="unconditional"))
    assert list(iter_jsonl(tmp_path / "empty.jsonl")) == []  # the plain reader itself has nothing to say


def test_blank_source_is_skipped_and_counted_like_a_null_one(tmp_path):
    path = write_jsonl_lines(
        tmp_path / "in.jsonl",
        [{"title": "A", "text": "One."}, {"title": "  ", "text": "Two."}, {"title": None, "text": "3."}],
    )
    examples, report = load_examples(path, RecordsConfig(task="title_to_story"))
    assert [e.source for e in examples] == ["A"]
    assert report.skipped == {"empty 'title'": 1, "null 'title'": 1}
    assert "skipped 1 (empty 'title'; lines 2)" in report.summary()

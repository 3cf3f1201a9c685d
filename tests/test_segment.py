"""Sentence (Punkt) and turn segmentation: abbreviations, quotes, ellipses, empty texts, truncation, saved models."""

from __future__ import annotations

import json

import pytest

from sld.config import ConfigError, load_config
from sld.data.segment import (
    SegmentationStats,
    SegmenterConfig,
    SentenceSegmenter,
    TurnSegmenter,
    build_segmenter,
    punkt_tab_installed,
)
from sld.data.synthetic import generate_stories
from sld.errors import DataError

CORPUS = [
    "Tom went to the store. He bought milk. Then he went home.",
    "Mrs. Garcia met Dr. Patel at the hospital. They talked for an hour. She felt better after that.",
    "The U.S. team won the game. Everyone cheered. It was a great day.",
    "She waited... and waited. Nobody came. The bus was late again.",
]


@pytest.fixture(scope="module")
def segmenter() -> SentenceSegmenter:
    stories = generate_stories(200, seed=1, split="test")
    return SentenceSegmenter.train(CORPUS + [s.text for s in stories], max_segments=5)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        (
            "Mrs. Brown moved to St. Louis last year. She likes it.",
            ["Mrs. Brown moved to St. Louis last year.", "She likes it."],
        ),
        ("He renewed his U.S. passport. Then he left.", ["He renewed his U.S. passport.", "Then he left."]),
        ("She moved to the U.S. She loved it there.", ["She moved to the U.S.", "She loved it there."]),
        (
            "Prof. Kim and Ms. Rossi arrived at 7 p.m. on Friday. The talk began.",
            ["Prof. Kim and Ms. Rossi arrived at 7 p.m. on Friday.", "The talk began."],
        ),
        ('"Hi," she said. "Bye."', ['"Hi," she said.', '"Bye."']),
        ('"Where are you?" she asked. Nobody answered!', ['"Where are you?" she asked.', "Nobody answered!"]),
        ('He shouted, "Come back!" The dog stopped.', ['He shouted, "Come back!"', "The dog stopped."]),
        (
            '"Come back, Rex!" shouted Tom. The dog ran on.',
            ['"Come back, Rex!" shouted Tom.', "The dog ran on."],
        ),
        ("I waited... and waited. Then he came.", ["I waited... and waited.", "Then he came."]),
        ("Wait…  what happened? I do not know.", ["Wait…  what happened?", "I do not know."]),
        ("  One sentence without a period  ", ["One sentence without a period"]),
        (
            "They pack food, water, etc. #Person1# thinks it is enough.",
            ["They pack food, water, etc.", "#Person1# thinks it is enough."],
        ),
    ],
)
def test_sentences(segmenter, text, expected):
    assert segmenter.segment(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_gives_no_segments_and_is_counted(segmenter, text):
    stats = SegmentationStats()
    assert segmenter.split(text, stats) == ([], 0)
    assert stats.empty == 1 and stats.documents == 1


def test_truncation_keeps_the_first_segments_and_the_true_count(segmenter):
    text = " ".join(f"Sentence number {i} is here." for i in range(1, 8))
    stats = SegmentationStats()
    segments, count = segmenter.split(text, stats)
    assert count == 7 and segments == [f"Sentence number {i} is here." for i in range(1, 6)]
    assert stats.truncated == 1 and stats.segment_counts == {7: 1}
    segments, count = segmenter.split("One. Two.", stats)
    assert (len(segments), count, stats.truncated) == (2, 2, 1)


def test_short_corpus_still_knows_abbreviations():
    tiny = SentenceSegmenter.train(["A cat sat. A dog ran."])
    assert tiny.segment("Mr. Lee met Dr. Cho in the U.S. capital. They ate.") == [
        "Mr. Lee met Dr. Cho in the U.S. capital.",
        "They ate.",
    ]


def test_synthetic_stories_are_recovered_exactly(segmenter):
    for story in generate_stories(150, seed=2, split="check"):
        assert segmenter.segment(story.text) == list(story.sentences)


def test_saved_params_reproduce_segmentation(segmenter, tmp_path):
    path = segmenter.save(tmp_path / "punkt_params.json")
    reloaded = SentenceSegmenter.from_file(path)
    texts = CORPUS + ["Mr. A. B. Smith went to Washington, D.C. He liked it.", '"Stop!" she said. "Now."']
    assert [reloaded.segment(t) for t in texts] == [segmenter.segment(t) for t in texts]
    assert reloaded.origin == str(path)
    cfg = SegmenterConfig(punkt_params=str(path), max_segments=2)
    built = build_segmenter(cfg, corpus_texts=None)
    assert built.split(CORPUS[0]) == (["Tom went to the store.", "He bought milk."], 3)


def test_bad_params_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        SentenceSegmenter.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        SentenceSegmenter.from_file(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"abbrev_types": []}))
    with pytest.raises(DataError, match="not a Punkt parameter file"):
        SentenceSegmenter.from_file(tmp_path / "other.json")


@pytest.mark.skipif(punkt_tab_installed(), reason="punkt_tab is installed here")
def test_missing_punkt_tab_is_a_config_error_not_a_lookup_error():
    with pytest.raises(ConfigError, match="punkt_tab.*segmenter.punkt=train"):
        build_segmenter(SegmenterConfig(punkt="installed"), CORPUS)
    auto = build_segmenter(SegmenterConfig(punkt="auto"), CORPUS)
    assert isinstance(auto, SentenceSegmenter) and auto.origin == "trained"


def test_turns():
    dialogue = "#Person1#: Hi, Mr. Smith. How are you?\n#Person2#: Fine.\n#Person1#: Good.\n#Person3#: Bye."
    turns = TurnSegmenter(max_segments=2)
    assert turns.segment(dialogue) == [
        "#Person1#: Hi, Mr. Smith. How are you?",
        "#Person2#: Fine.",
        "#Person1#: Good.",
        "#Person3#: Bye.",
    ]
    assert turns.split(dialogue) == (["#Person1#: Hi, Mr. Smith. How are you?", "#Person2#: Fine."], 4)
    assert turns.segment("Narrator intro.\n#Person1#: Hi.") == ["Narrator intro.", "#Person1#: Hi."]
    assert turns.segment("A: hello\n\nB: hi") == ["A: hello", "B: hi"]  # no tags: one turn per line
    assert turns.segment("") == []
    custom = TurnSegmenter(r"(?m)^[A-Z][a-z]+:")
    assert custom.segment("Anna: Hi there.\nBen: Hello.") == ["Anna: Hi there.", "Ben: Hello."]


def test_turn_pattern_errors():
    with pytest.raises(ConfigError, match="turn_pattern.*not a valid regular expression"):
        build_segmenter(SegmenterConfig(kind="turn", turn_pattern="(unclosed"))
    with pytest.raises(ConfigError, match="matches the empty string"):
        TurnSegmenter("x*")


def test_segmenter_config_validation():
    with pytest.raises(ConfigError, match="max_segments"):
        load_config(SegmenterConfig, None, ["max_segments=0"])
    with pytest.raises(ConfigError, match="'kind' must be one of"):
        load_config(SegmenterConfig, None, ["kind=paragraph"])
    with pytest.raises(ConfigError, match="choose one"):
        load_config(SegmenterConfig, None, ["punkt=installed", "punkt_params=x.json"])


def test_pruning_learned_abbreviations():
    # In a templated corpus "task." only ever ends a sentence: Punkt alone learns it as an abbreviation.
    texts = [
        f"{n} finished the task. {n} went home. He showed his I.D. card at the door."
        for n in ("Tom", "Ann", "Bo")
    ] * 30
    segmenter = SentenceSegmenter.train(texts)
    assert "task" not in segmenter.params.abbrev_types and "i.d" in segmenter.params.abbrev_types
    assert segmenter.segment("Mr. Bo finished the task. Mr. Bo went home.") == [
        "Mr. Bo finished the task.",
        "Mr. Bo went home.",
    ]
    assert segmenter.segment("She showed her I.D. card. Then she left.") == [
        "She showed her I.D. card.",
        "Then she left.",
    ]


def test_a_document_with_hundreds_of_sentences(segmenter):
    text = " ".join(f"Sentence number {i} is here." for i in range(600))
    stats = SegmentationStats()
    segments, count = segmenter.split(text, stats)
    assert count == 600 and segments == [f"Sentence number {i} is here." for i in range(5)]
    assert stats.truncated == 1 and stats.segment_counts == {600: 1}
    turns = "\n".join(f"#Person{1 + i % 2}#: line {i}." for i in range(400))
    segments, count = TurnSegmenter(max_segments=3).split(turns)
    assert count == 400 and segments[2] == "#Person1#: line 2."

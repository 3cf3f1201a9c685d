"""The synthetic corpus: deterministic per seed, different across seeds, right fields, sizes and shapes."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

from sld.config import load_config
from sld.data.records import iter_jsonl
from sld.data.segment import SentenceSegmenter, TurnSegmenter
from sld.data.synthetic import (
    STORY_TOPICS,
    SyntheticCorpusConfig,
    corpus_lines,
    generate_stories,
    write_corpus,
    write_synthetic_corpus,
)

SMALL = dict(
    stories_train=60, stories_valid=20, dialogues_train=40, dialogues_valid=10, pairs_train=30, pairs_valid=10
)
FIELDS = {
    "stories": {"id", "title", "text", "topic"},
    "pairs": {"sentence", "paraphrase", "negative"},
    "dialogues": {"id", "dialogue", "summary", "topic"},
}


def _read(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))}


def test_deterministic_per_seed_and_different_across_seeds(tmp_path):
    a = _read(_write(tmp_path / "a", 0))
    b = _read(_write(tmp_path / "b", 0))
    c = _read(_write(tmp_path / "c", 1))
    assert a == b
    assert len(a) == 6 and all(a[name] != c[name] for name in a)


def _write(folder, seed):
    write_synthetic_corpus(folder, seed=seed, **SMALL)
    return folder


def test_files_fields_and_sizes(synthetic_dir):
    for kind, fields in FIELDS.items():
        for split in ("train", "valid"):
            rows = list(iter_jsonl(synthetic_dir / f"{kind}_{split}.jsonl"))
            assert rows and all(set(r) == fields for r in rows), (kind, split)
    assert sum(1 for _ in iter_jsonl(synthetic_dir / "stories_train.jsonl")) == 300
    assert sum(1 for _ in iter_jsonl(synthetic_dir / "pairs_valid.jsonl")) == 30


def test_valid_never_repeats_train(synthetic_dir):
    for kind, key in (("stories", "text"), ("dialogues", "dialogue")):
        train = {r[key] for r in iter_jsonl(synthetic_dir / f"{kind}_train.jsonl")}
        valid = [r[key] for r in iter_jsonl(synthetic_dir / f"{kind}_valid.jsonl")]
        assert not train.intersection(valid)
        assert len(train) == sum(1 for _ in iter_jsonl(synthetic_dir / f"{kind}_train.jsonl"))


def test_stories_shape_and_titles_determine_topics():
    stories = generate_stories(400, seed=3, split="t")
    assert {len(s.sentences) for s in stories} == {4, 5}
    assert all(len(s.sentences) == len(s.paraphrases) for s in stories)
    assert all(p != s for story in stories for s, p in zip(story.sentences, story.paraphrases))
    topics_of_title = defaultdict(set)
    for s in stories:
        topics_of_title[s.title].add(s.topic)
    assert all(len(t) == 1 for t in topics_of_title.values())
    assert {s.topic for s in stories} == {t.name for t in STORY_TOPICS}
    text = " ".join(s.text for s in stories)
    for needle in ("Mr. ", "Mrs. ", "Dr. ", "U.S. ", '"', "..."):
        assert needle in text
    # varied enough not to be memorised: far more distinct stories than templates
    assert len({s.text for s in stories}) == 400


def test_dialogues_and_summaries(synthetic_dir):
    rows = list(iter_jsonl(synthetic_dir / "dialogues_train.jsonl"))
    turns = TurnSegmenter()
    sentences = SentenceSegmenter.train([r["summary"] for r in rows])
    for r in rows:
        assert 3 <= len(turns.segment(r["dialogue"])) <= 8
        assert r["dialogue"].startswith("#Person1#: ")
        assert 1 <= len(sentences.segment(r["summary"])) <= 3
    assert len({r["topic"] for r in rows}) >= 8


def test_pairs_come_from_stories(synthetic_dir):
    sentences = {s for r in iter_jsonl(synthetic_dir / "stories_train.jsonl") for s in [r["text"]]}
    for pair in iter_jsonl(synthetic_dir / "pairs_train.jsonl"):
        assert any(pair["sentence"] in text for text in sentences)
        assert pair["paraphrase"] != pair["sentence"] and pair["negative"] not in sentences


def test_default_size_is_fast(tmp_path):
    started = time.perf_counter()
    paths = write_synthetic_corpus(tmp_path)
    assert time.perf_counter() - started < 5
    assert sum(1 for _ in open(paths["stories_train"])) == 4000
    assert sum(1 for _ in open(paths["dialogues_valid"])) == 300
    assert json.loads(open(paths["pairs_train"]).readline()).keys() == FIELDS["pairs"]


def test_write_corpus_from_a_config_saves_it_and_lists_the_files(tmp_path):
    cfg = SyntheticCorpusConfig(output_dir=str(tmp_path / "c"), seed=1, **SMALL)
    paths = write_corpus(cfg)
    assert load_config(SyntheticCorpusConfig, tmp_path / "c" / "config.yaml") == cfg
    assert _read(tmp_path / "c") == _read(
        write_synthetic_corpus(tmp_path / "d", seed=1, **SMALL)["pairs_train"].parent
    )
    lines = corpus_lines(cfg, paths)
    assert lines[0] == f"stories_train         60 records  {paths['stories_train']}" and len(lines) == 6
    with pytest.raises(ValueError, match="sizes must not be negative: pairs_valid"):
        SyntheticCorpusConfig(pairs_valid=-1)

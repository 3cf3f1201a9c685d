"""Topic agreement by nearest training segment (word-set Jaccard), and its scoring of files on disk."""

import json

import pytest

from sld.data.segmented import SegmentedDocument, write_segmented
from sld.eval.topic_agreement import format_topic_scores, nearest_labels, score_topics, topic_agreement

TRAIN = [
    "The dog ran away from home.",
    "They found the dog at the park.",
    "She baked a chocolate cake.",
    "The cake came out burnt.",
    "He studied for the exam.",
    "The exam was very hard.",
]
TOPICS = ["dog", "dog", "cake", "cake", "exam", "exam"]


def test_nearest_labels_by_shared_words():
    queries = ["A dog ran to the park!", "Burnt chocolate cake.", "Words never seen before."]
    assert nearest_labels(queries, TRAIN, TOPICS, chunk=2) == ["dog", "cake", "dog"]  # no overlap: first


def test_agreement_chance_and_positions():
    generated = [
        ["The dog ran away.", "The cake came out burnt."],  # on topic, then off topic
        ["She baked a cake.", "The cake was burnt.", "He studied for the exam."],
    ]
    scores = topic_agreement(generated, ["dog", "cake"], TRAIN, TOPICS)
    assert scores["agreement"] == pytest.approx(3 / 5)
    assert scores["by_position"] == pytest.approx([1.0, 0.5, 0.0])
    assert scores["chance"] == pytest.approx(1 / 3)  # every topic holds 2 of the 6 training segments
    assert scores["num_segments"] == 5


def test_the_training_text_itself_agrees_fully():
    docs = [TRAIN[0:2], TRAIN[2:4], TRAIN[4:6]]
    assert topic_agreement(docs, ["dog", "cake", "exam"], TRAIN, TOPICS)["agreement"] == 1.0


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="2 generated documents but 1 labels"):
        topic_agreement([["a"], ["b"]], ["dog"], TRAIN, TOPICS)
    with pytest.raises(ValueError, match="one label per text"):
        nearest_labels(["a"], TRAIN, TOPICS[:2])
    with pytest.raises(ValueError, match="no generated segments"):
        topic_agreement([[]], ["dog"], TRAIN, TOPICS)


def test_score_topics_reads_labels_and_references_from_disk(tmp_path):
    train = [SegmentedDocument(f"t{i}", "x", [TRAIN[2 * i], TRAIN[2 * i + 1]], 2) for i in range(3)]
    valid = [SegmentedDocument("v0", "dog", ["The dog ran to the park."], 1)]
    valid.append(SegmentedDocument("v1", "cake", ["A burnt cake.", "She baked it."], 2))
    write_segmented(tmp_path / "seg" / "train.jsonl", train)
    write_segmented(tmp_path / "seg" / "valid.jsonl", valid)
    topics = [{"id": f"t{i}", "topic": t} for i, t in enumerate(["dog", "cake", "exam"])]
    topics += [{"id": "v0", "topic": "dog"}, {"id": "v1", "topic": "cake"}]
    files = [tmp_path / "train.jsonl", tmp_path / "valid.jsonl"]
    files[0].write_text("".join(json.dumps(t) + "\n" for t in topics[:3]))
    files[1].write_text("".join(json.dumps(t) + "\n" for t in topics[3:]))
    rows = [
        {"id": "v0", "segments": ["The exam was hard.", "The exam was hard."]},  # off topic, repeated
        {"id": "v1", "segments": ["The chocolate cake burnt."]},
    ]
    scores = score_topics(rows, files, tmp_path / "seg")
    assert scores["num_documents"] == 2 and scores["repeated_segments"] == pytest.approx(1 / 3)
    assert scores["generated"]["agreement"] == pytest.approx(1 / 3)
    assert scores["references"]["agreement"] == pytest.approx(1.0)
    line = format_topic_scores(scores)
    assert line.startswith("generated 0.33   references 1.00") and "33% of generated sentences" in line

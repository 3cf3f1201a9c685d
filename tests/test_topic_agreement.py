"""Topic agreement by nearest training segment (word-set Jaccard)."""

import pytest

from sld.eval.topic_agreement import nearest_labels, topic_agreement

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

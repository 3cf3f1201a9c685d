"""Property tests (hypothesis) for the segmenters, the collate function and the length-grouped sampler:
any unicode text is segmented without a crash and without losing, adding or reordering a word; masks
and labels agree with the padding of every batch."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_collate import CORPUS as COLLATE_CORPUS
from test_collate import _bert_tokenizer

from sld.data.collate import SegmentCollator
from sld.data.length_grouping import LengthGroupedSampler
from sld.data.segment import SentenceSegmenter, TurnSegmenter
from sld.tokenization import IGNORE_INDEX, train_decoder_tokenizer

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text mixing sentence punctuation, quotes, speaker tags, abbreviations and arbitrary unicode.
PIECES = st.sampled_from(
    [
        ". ",
        "? ",
        "! ",
        "... ",
        "…",
        '"',
        "“",
        "”",
        "'",
        "Mr. ",
        "U.S. ",
        "#Person1#: ",
        "#Person2#:",
        "\n",
        "\t",
    ]
)
TEXT = st.lists(st.one_of(st.text(max_size=12), PIECES), max_size=25).map("".join)


@pytest.fixture(scope="module")
def sentences() -> SentenceSegmenter:
    corpus = [
        "Tom went to the store. He bought milk. Then he went home.",
        "Mrs. Garcia met Dr. Patel. They talked. She felt better.",
        '"Where are you?" she asked. Nobody answered!',
    ] * 5
    return SentenceSegmenter.train(corpus, max_segments=3)


def characters(text: str) -> str:
    return "".join(text.split())


@SETTINGS
@given(text=TEXT)
def test_sentences_keep_every_word_in_order(sentences, text):
    segments = sentences.segment(text)
    assert " ".join(segments).split() == text.split()
    assert all(s and s == s.strip() for s in segments)
    kept, count = sentences.split(text)
    assert count == len(segments) and kept == segments[:3]


@SETTINGS
@given(text=TEXT)
def test_turns_keep_every_character_in_order(text):
    segments = TurnSegmenter().segment(text)
    # a tag may start inside a word ("ok#Person1#:"): characters, not words, are what is kept
    assert "".join(characters(s) for s in segments) == characters(text)
    assert all(s and s == s.strip() for s in segments)
    if "#Person" not in text:
        assert segments == [line.strip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def collator() -> SegmentCollator:
    return SegmentCollator(
        _bert_tokenizer(), train_decoder_tokenizer(COLLATE_CORPUS, vocab_size=300), max_segment_tokens=12
    )


ROW = st.one_of(
    st.text(max_size=60),
    st.fixed_dictionaries(
        {"sentence": st.text(max_size=40), "paraphrase": st.text(min_size=1, max_size=40)},
        optional={"negative": st.text(min_size=1, max_size=40)},
    ),
)


def assert_padding_agrees(ids, mask, pad_id):
    lengths = mask.sum(1)
    for row_ids, row_mask, length in zip(ids, mask, lengths):
        assert row_mask[:length].all() and not row_mask[length:].any()  # a prefix of ones
        assert (row_ids[length:] == pad_id).all()
    assert lengths.max() == ids.shape[1]  # padded to the longest row, no further


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=6))
def test_collated_masks_and_labels_agree_with_padding(collator, rows):
    batch = collator(rows)
    pad = collator.encoder_tokenizer.pad_token_id
    assert batch["input_ids"].shape[0] == batch["labels"].shape[0] == len(rows)
    assert batch["input_ids"].shape[1] <= 12 and batch["labels"].shape[1] <= 12
    assert_padding_agrees(batch["input_ids"], batch["attention_mask"], pad)
    eos = collator.decoder_tokenizer.eos_token_id
    for labels in batch["labels"]:
        real = labels != IGNORE_INDEX
        length = int(real.sum())
        assert real[:length].all() and labels[length - 1] == eos  # eos ends every target, then padding
    pairs = [r for r in rows if isinstance(r, dict)]
    positives = [i for i, r in enumerate(rows) if isinstance(r, dict) and r["paraphrase"]]
    negatives = [r for r in pairs if r.get("negative")]
    if positives:
        assert batch["positive_index"].tolist() == positives
        assert_padding_agrees(batch["positive_input_ids"], batch["positive_attention_mask"], pad)
    else:
        assert "positive_index" not in batch
    assert ("negative_input_ids" in batch) == bool(negatives)


@settings(max_examples=100, deadline=None, database=None)
@given(
    lengths=st.lists(st.integers(0, 500), min_size=1, max_size=80),
    batch_size=st.integers(1, 9),
    epoch=st.integers(0, 3),
)
def test_length_grouped_sampler_yields_each_item_once(lengths, batch_size, epoch):
    sampler = LengthGroupedSampler(lengths, batch_size, seed=1, megabatch_batches=2)
    sampler.set_epoch(epoch)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    batches = sampler.batches()
    assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size

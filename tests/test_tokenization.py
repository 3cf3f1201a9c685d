"""The decoder tokenizer is cased and lossless, reloads through AutoTokenizer, and labels mask padding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from sld.errors import UserError
from sld.tokenization import IGNORE_INDEX, decoder_labels, encoder_inputs, train_decoder_tokenizer

CORPUS = [
    "The cat sat on the mat.",
    "A dog ran to the park, didn't it?",
    "Mary bought 3 apples and 2 pears for $5.",
    "#Person1# asks #Person2# about the weather in New York.",
    '"Hello," she said; then she left -- quietly.',
    "It's raining: take an umbrella!",
] * 5

SENTENCES = [
    "The cat sat on the mat.",
    "Mary bought 3 apples and 2 pears for $5.",
    "#Person1# and #Person2# talk about NEW things, don't they?",
    "Unseen words: Zebra élan naïve café 😀 (ok).",
    "  two  spaces   inside",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_decoder_tokenizer(CORPUS, vocab_size=320)


def test_special_tokens_and_eos(tokenizer):
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (
        0,
        1,
        2,
        3,
    )
    ids = tokenizer("The cat sat.")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.bos_token_id not in ids
    assert len(tokenizer) <= 320


@pytest.mark.parametrize("text", SENTENCES)
def test_decode_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_save_and_autotokenizer_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in SENTENCES:
        ids = tokenizer(text)["input_ids"]
        assert reloaded(text)["input_ids"] == ids
        assert reloaded.decode(ids, skip_special_tokens=True) == text
    assert reloaded.pad_token_id == tokenizer.pad_token_id
    assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_out_dir_saves(tmp_path):
    train_decoder_tokenizer(CORPUS, vocab_size=300, out_dir=tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok"))("cat")["input_ids"][-1] == 2


def test_decoder_labels_mask_padding_not_pad_id(tokenizer):
    labels = decoder_labels(tokenizer, ["The cat sat on the mat.", "Hi"], max_length=64)
    assert labels.dtype == torch.long and labels.shape[0] == 2
    n_short = len(tokenizer("Hi")["input_ids"])
    assert (labels[1, n_short:] == IGNORE_INDEX).all()
    assert (labels[1, :n_short] != IGNORE_INDEX).all()
    assert (labels[0] != IGNORE_INDEX).all()


def test_labels_of_a_fixed_width_pad_every_batch_alike(tokenizer):
    """``width``: the labels are that wide whatever the rows' lengths (``data.fixed_decoder_length``);
    a row longer than it is an error, not a silent cut."""
    longest = decoder_labels(tokenizer, ["The cat sat on the mat.", "Hi"], max_length=64)
    wide = decoder_labels(tokenizer, ["The cat sat on the mat.", "Hi"], max_length=64, width=20)
    assert longest.shape[1] < 20 and wide.shape == (2, 20)
    assert (
        torch.equal(wide[:, : longest.shape[1]], longest)
        and (wide[:, longest.shape[1] :] == IGNORE_INDEX).all()
    )
    assert decoder_labels(tokenizer, ["The cat sat on the mat."], 64, keep=3, width=3).shape == (1, 3)
    with pytest.raises(ValueError, match="does not fit width 2"):
        decoder_labels(tokenizer, ["The cat sat on the mat."], max_length=64, width=2)


def test_truncation_keeps_eos(tokenizer):
    labels = decoder_labels(tokenizer, [" ".join(["word"] * 100)], max_length=8)
    assert labels.shape == (1, 8)
    assert labels[0, -1].item() == tokenizer.eos_token_id
    inputs = encoder_inputs(tokenizer, ["a b", "a b c d e f g h i j"], max_length=5)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (2, 5)
    assert set(inputs) == {"input_ids", "attention_mask"}


def test_bad_arguments():
    with pytest.raises(UserError, match="vocab_size"):
        train_decoder_tokenizer(CORPUS, vocab_size=10)
    with pytest.raises(UserError, match="no non-empty"):
        train_decoder_tokenizer(["", ""], vocab_size=300)


def test_decoder_labels_cut_at_keep_without_an_eos():
    tok = train_decoder_tokenizer(["The cat sat on the mat.", "Hi."] * 5, vocab_size=300)
    whole = decoder_labels(tok, ["The cat sat on the mat.", "Hi."], 24)
    cut = decoder_labels(tok, ["The cat sat on the mat.", "Hi."], 24, keep=3)
    assert cut.shape == (2, 3)
    assert cut[0].tolist() == whole[0, :3].tolist()  # the long row: its first 3 targets, no eos
    assert cut[0, -1] != tok.eos_token_id
    short = whole[1][whole[1] != IGNORE_INDEX]
    assert len(short) <= 3 and cut[1, : len(short)].tolist() == short.tolist()
    with pytest.raises(ValueError, match="keep"):
        decoder_labels(tok, ["Hi."], 24, keep=0)

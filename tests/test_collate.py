"""Batches for the autoencoder objective: keys, shapes, padding, pairs, datasets, pickling."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader
from transformers import BertTokenizer

from sld.data.collate import (
    PairDataset,
    PairMixDataset,
    SegmentCollator,
    SegmentDataset,
    load_text_lines,
    row_length,
)
from sld.errors import DataError
from sld.tokenization import IGNORE_INDEX, train_decoder_tokenizer

CORPUS = ["The cat sat on the mat.", "A dog ran to the park!", "It's raining, isn't it?", "Hello World."] * 5


def _bert_tokenizer() -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,!?'"]
    words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


@pytest.fixture(scope="module")
def collator() -> SegmentCollator:
    return SegmentCollator(
        _bert_tokenizer(), train_decoder_tokenizer(CORPUS, vocab_size=300), max_segment_tokens=16
    )


def test_segment_rows(collator):
    batch = collator(["The cat sat on the mat.", "Hi", ""])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "target_index"}
    # the loss's target positions, found on the host: flat indices of every label but -100
    flat = batch["labels"].flatten()
    assert torch.equal(batch["target_index"], torch.arange(flat.numel())[flat != IGNORE_INDEX])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == batch["labels"].shape[0] == 3
    assert batch["input_ids"].shape[1] <= 16 and batch["labels"].shape[1] <= 16
    # padding: encoder mask 0 and decoder label -100; the empty segment is just </s>
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    eos = collator.decoder_tokenizer.eos_token_id
    assert batch["labels"][2, 0].item() == eos and (batch["labels"][2, 1:] == IGNORE_INDEX).all()
    assert all(t.dtype == torch.long for t in batch.values())


def test_pair_rows_and_mixed_batch(collator):
    rows = [
        "A plain segment.",
        {"sentence": "The cat sat.", "paraphrase": "A cat was sitting.", "negative": "Stocks fell."},
        {"sentence": "Dogs run.", "paraphrase": "The dogs are running."},
    ]
    batch = collator(rows)
    assert batch["input_ids"].shape[0] == batch["labels"].shape[0] == 3
    assert batch["positive_index"].tolist() == [1, 2]
    assert batch["positive_input_ids"].shape[0] == batch["positive_attention_mask"].shape[0] == 2
    assert batch["negative_input_ids"].shape[0] == 1
    # the sentence of a pair row is reconstructed like a segment
    expected = collator(["The cat sat."])["labels"][0]
    assert batch["labels"][1, : expected.shape[0]].tolist() == expected.tolist()


def test_repeated_pairs_are_encoded_once_and_no_copy_is_a_negative(collator):
    """A pair repeated in a batch (a small pair file, length-grouped batches) gives one positive and
    one negative per distinct text; every copy's anchor points at the one positive."""
    pair = {"sentence": "The cat sat.", "paraphrase": "A cat was sitting.", "negative": "Stocks fell."}
    other = {"sentence": "Dogs run.", "paraphrase": "The dogs are running.", "negative": "Stocks fell."}
    batch = collator([pair, "A plain segment.", other, dict(pair)])
    assert batch["positive_index"].tolist() == [0, 2, 3]
    assert batch["positive_target"].tolist() == [0, 1, 0]
    assert batch["positive_input_ids"].shape[0] == 2 and batch["negative_input_ids"].shape[0] == 1
    alone = collator([{"sentence": "Dogs run.", "paraphrase": "The dogs are running."}])
    width = alone["positive_input_ids"].shape[1]
    assert batch["positive_input_ids"][1, :width].tolist() == alone["positive_input_ids"][0].tolist()


def test_collator_is_picklable(collator):
    clone = pickle.loads(pickle.dumps(collator))
    a, b = collator(["The cat sat."]), clone(["The cat sat."])
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError):
        collator([])


def test_segment_dataset_flattens_and_skips_empty():
    docs = [["One.", "Two.", ""], {"segments": ["Three.", "  "]}, type("Doc", (), {"segments": ["Four."]})()]
    ds = SegmentDataset(docs)
    assert len(ds) == 4 and [ds[i] for i in range(4)] == ["One.", "Two.", "Three.", "Four."]


def test_segment_dataset_negative_pool_is_deterministic():
    pool = ["Out of domain one.", "Out of domain two.", "Out three."]
    a, b = (
        SegmentDataset([["One.", "Two.", "Three."]], pool, seed=1),
        SegmentDataset([["One.", "Two.", "Three."]], pool, seed=1),
    )
    assert [a[i] for i in range(3)] == [b[i] for i in range(3)]
    assert all(a[i]["negative"] in pool and a[i]["sentence"] for i in range(3))
    with pytest.raises(DataError):
        SegmentDataset([["x"]], negative_pool=[])


def test_dataloader_over_mixed_datasets(collator):
    pairs = PairDataset([{"sentence": "A cat.", "paraphrase": "One cat.", "negative": "Taxes."}])
    loader = DataLoader(
        ConcatDataset([SegmentDataset([["One.", "Two."]]), pairs]), batch_size=3, collate_fn=collator
    )
    (batch,) = list(loader)
    assert batch["input_ids"].shape[0] == 3 and batch["positive_index"].tolist() == [2]


def test_pair_validation(tmp_path):
    with pytest.raises(DataError, match="row 2.*paraphrase"):
        PairDataset([{"sentence": "a", "paraphrase": "b"}, {"sentence": "a"}])
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"sentence": "a", "paraphrase": "b", "negative": "c"}) + "\n\n{oops\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 3"):
        PairDataset.from_jsonl(path)
    path.write_text(json.dumps({"sentence": "a", "paraphrase": "b", "extra": 1}) + "\n")
    ds = PairDataset.from_jsonl(path)
    assert ds[0] == {"sentence": "a", "paraphrase": "b"}
    with pytest.raises(DataError, match="not found"):
        PairDataset.from_jsonl(tmp_path / "missing.jsonl")


def test_load_text_lines(tmp_path):
    path = tmp_path / "neg.txt"
    path.write_text("first line\n\n  second  \n")
    assert load_text_lines(path) == ["first line", "second"]
    path.write_text("\n")
    with pytest.raises(DataError):
        load_text_lines(path)


def test_segment_far_over_the_token_limit_is_cut_to_it(collator):
    huge = " ".join(["word"] * 5000)
    batch = collator([huge, "Hi"])
    assert batch["input_ids"].shape[1] == 16 and batch["labels"].shape[1] == 16
    assert batch["labels"][0, -1].item() == collator.decoder_tokenizer.eos_token_id  # eos kept at the cut


def test_pair_mix_puts_a_pair_row_every_k_items_and_keeps_every_segment():
    segments = SegmentDataset([["s0", "s1", "s2", "s3", "s4", "s5"]])
    pairs = PairDataset([{"sentence": f"p{i}", "paraphrase": f"q{i}"} for i in range(2)])
    mixed = PairMixDataset(segments, pairs, pair_fraction=1 / 3)
    rows = [mixed[i] for i in range(len(mixed))]
    assert mixed.every == 3 and len(mixed) == 6 + 3
    assert [i for i, r in enumerate(rows) if isinstance(r, dict)] == [0, 3, 6]
    assert sorted(r for r in rows if isinstance(r, str)) == [f"s{i}" for i in range(6)]
    assert [row_length(r) for r in rows[:2]] == [2, 2]  # a pair row counts its sentence
    assert len(PairMixDataset(segments, pairs, pair_fraction=0.0)) == 6

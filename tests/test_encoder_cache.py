"""The frozen encoder's states computed once (sld.models.encoder_cache) give the same latents and losses."""

from __future__ import annotations

import json

import pytest
import tiny_models
import torch
from test_autoencoder_trainer import CONFIGS, STORIES, write_stage1

from sld.autoencoder_objective import AutoencoderLossConfig, autoencoder_losses
from sld.autoencoder_trainer import AutoencoderTrainingConfig, train_autoencoder
from sld.config import ConfigError, load_config
from sld.data.collate import SegmentCollator
from sld.errors import DataError
from sld.models.encoder_cache import EncoderStateCache, training_texts

ROWS = [  # short texts (the tiny tokenizer splits words finely): every batch is shorter than the cache
    "Amy sang.",
    {"sentence": "Tom ran.", "paraphrase": "Tom jogged.", "negative": "Oil rose."},
    {"sentence": "Sam ate.", "paraphrase": "Sam dined.", "negative": "Rain fell."},
    "Lucy slept.",
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_models.save_tiny_bert(tmp_path_factory.mktemp("cache") / "bert")


def test_training_texts_cover_segments_paraphrases_and_negatives():
    texts = training_texts(ROWS)
    assert texts == [
        "Amy sang.",
        "Tom ran.",
        "Tom jogged.",
        "Oil rose.",
        "Sam ate.",
        "Sam dined.",
        "Rain fell.",
        "Lucy slept.",
    ]


def test_cached_states_give_the_same_latents_and_every_loss_term(bert):
    model = tiny_models.tiny_autoencoder(bert, seed=0).train()
    cache = EncoderStateCache.build(
        model, training_texts(ROWS + ["A much longer sentence than all the others here."])
    )
    plain = SegmentCollator.from_autoencoder(model)(ROWS)
    model.encoder_cache = cache
    cached = SegmentCollator.from_autoencoder(model)(ROWS)
    sentences = [ROWS[0], "Tom ran.", "Sam ate.", ROWS[3]]
    assert cached["encoder_index"].tolist() == [cache.index[t] for t in sentences]
    assert {"positive_encoder_index", "negative_encoder_index"} <= set(cached)
    # the cache is padded to its longest text; this batch is shorter: padding positions must not matter
    assert cache.states.shape[1] > plain["input_ids"].shape[1]
    z_plain = model.encode(plain["input_ids"], plain["attention_mask"])
    z_cached = model.encode(cached["input_ids"], cached["attention_mask"], cached["encoder_index"])
    torch.testing.assert_close(z_cached, z_plain, rtol=1e-5, atol=1e-5)
    cfg = AutoencoderLossConfig(noise_std=0.0)
    torch.manual_seed(0)
    expected = autoencoder_losses(model, plain, cfg)
    torch.manual_seed(0)
    got = autoencoder_losses(model, cached, cfg)
    for term in ("conversion", "contrastive", "adversarial", "loss"):
        assert expected[term] > 0
        torch.testing.assert_close(got[term], expected[term], rtol=1e-5, atol=1e-5)


def test_states_are_built_in_batches_of_like_lengths_and_kept_in_each_texts_row(bert, monkeypatch):
    """The encoder runs over texts sorted by length (little padding); each text's states still sit in
    its first-seen row and equal the encoder's states of that text alone."""
    model = tiny_models.tiny_autoencoder(bert, seed=0).eval()
    texts = [
        "A much longer sentence than all the others here.",
        "Amy sang.",
        "Tom ran far away.",
        "Oil rose.",
    ]
    batches = []
    tokenize = model.tokenize_for_encoder
    monkeypatch.setattr(
        model, "tokenize_for_encoder", lambda part: batches.append(list(part)) or tokenize(part)
    )
    cache = EncoderStateCache.build(model, texts + ["Amy sang."], batch_size=2)
    assert batches == [["Amy sang.", "Oil rose."], ["Tom ran far away.", texts[0]]]
    assert cache.index == {text: row for row, text in enumerate(texts)}
    for text in texts:
        alone = tokenize([text])
        with torch.no_grad():
            states = model.encoder(**alone).last_hidden_state[0]
        real = int(alone["attention_mask"].sum())
        torch.testing.assert_close(
            cache.states[cache.index[text], :real], states[:real], rtol=1e-5, atol=1e-5
        )


def test_a_trainable_encoder_or_an_unknown_text_is_refused(bert):
    model = tiny_models.tiny_autoencoder(bert, seed=0)
    model.encoder_cache = EncoderStateCache.build(model, ["Tom baked a cake."])
    with pytest.raises(DataError, match="missing from the encoder-state cache"):
        SegmentCollator.from_autoencoder(model)(["Not in the cache."])
    model.config.freeze_encoder = False
    assert not model.encoder_frozen
    with pytest.raises(ConfigError, match="frozen encoder"):
        EncoderStateCache.build(model, ["Tom baked a cake."])


def test_training_with_the_cache_logs_the_same_losses(bert, tmp_path):
    segmented = write_stage1(tmp_path / "seg", STORIES * 4)
    losses = {}
    for cache in (False, True):
        cfg = load_config(
            AutoencoderTrainingConfig,
            CONFIGS / "autoencoder_tiny.yaml",
            [
                f"output_dir={tmp_path / f'ae_{cache}'}",
                f"data.segmented_dir={segmented}",
                f"model.encoder={bert}",
                f"data.cache_encoder_states={str(cache).lower()}",
                "model.freeze_encoder=true",
                "loop.max_steps=3",
                "loop.log_every=1",
                "loop.eval_every=100",
            ],
        )
        train_autoencoder(cfg)
        rows = [
            json.loads(line) for line in (tmp_path / f"ae_{cache}" / "metrics.jsonl").read_text().splitlines()
        ]
        losses[cache] = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_encode_texts_reads_the_cached_states_of_a_batch_whose_texts_are_all_cached(bert, monkeypatch):
    model = tiny_models.tiny_autoencoder(bert, seed=0).eval()
    cached_texts = ["Amy sang.", "Tom ran far away.", "Oil rose."]
    with torch.no_grad():
        expected = model.encode_texts(cached_texts + ["Not cached."], batch_size=3)
    model.encoder_cache = EncoderStateCache.build(model, cached_texts)
    encoded_rows = []
    run_encoder = model.encoder_hidden_states
    monkeypatch.setattr(
        model,
        "encoder_hidden_states",
        lambda ids, mask: encoded_rows.append(ids.shape[0]) or run_encoder(ids, mask),
    )
    with torch.no_grad():
        got = model.encode_texts(cached_texts + ["Not cached."], batch_size=3)
    # the first batch (all three cached) read the cache; the second holds an unknown text: encoded
    assert encoded_rows == [1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_cache_is_checked_against_the_encoder_it_is_handed_to(bert):
    model = tiny_models.tiny_autoencoder(bert, seed=0).eval()
    cache = EncoderStateCache.build(model, ["Amy sang.", "Tom ran far away."])
    cache.check_against(model)  # its own encoder: no error
    bfloat = EncoderStateCache(cache.states.to(torch.bfloat16), cache.index)
    bfloat.check_against(model)  # a GPU run's bfloat16 states are within the tolerance
    other = EncoderStateCache(cache.states + 0.5, cache.index)
    with pytest.raises(ValueError, match="not this model's encoder's"):
        other.check_against(model)
    assert cache.rows_of(["Tom ran far away.", "Amy sang."]) == [1, 0]
    assert cache.rows_of(["Amy sang.", "Unknown."]) is None

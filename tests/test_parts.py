"""Shared encoder/decoder parts: the from-scratch LM config, tokenizer checks, teacher forcing."""

from __future__ import annotations

import pytest
import torch

from sld.config import ConfigError
from sld.errors import UserError
from sld.models.baseline import BaselineConfig
from sld.models.parts import (
    build_model_parts,
    check_decoder_tokenizer,
    config_from_dict,
    decoder_lm_config,
    hidden_size,
    read_config_json,
    shift_labels_right,
)
from sld.tokenization import train_decoder_tokenizer

CORPUS = ["The cat sat on the mat.", "A dog ran home.", "They ate cake and danced."] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_decoder_tokenizer(CORPUS, 300)


def test_lm_config_takes_ids_from_the_tokenizer_and_skips_the_unused_encoder(tokenizer):
    t5 = decoder_lm_config({"d_model": 32, "num_decoder_layers": 2}, tokenizer, uses_own_encoder=False)
    assert t5.model_type == "t5" and t5.num_layers == 0 and t5.num_decoder_layers == 2
    assert t5.vocab_size == len(tokenizer) and t5.pad_token_id == tokenizer.pad_token_id
    assert t5.decoder_start_token_id == tokenizer.bos_token_id and hidden_size(t5) == 32
    own = decoder_lm_config({"d_model": 32, "num_decoder_layers": 2}, tokenizer, uses_own_encoder=True)
    assert own.num_layers == 2
    bart = decoder_lm_config({"model_type": "bart", "d_model": 32}, tokenizer, uses_own_encoder=False)
    assert bart.encoder_layers == 0 and hidden_size(bart) == 32
    with pytest.raises(ConfigError, match="decoder_config.no_such_key"):
        decoder_lm_config({"no_such_key": 1}, tokenizer, uses_own_encoder=False)
    with pytest.raises(ConfigError, match="unknown model type 'nope'"):
        decoder_lm_config({"model_type": "nope"}, tokenizer, uses_own_encoder=False)


def test_tokenizer_without_pad_is_refused(tokenizer):
    check_decoder_tokenizer(tokenizer, "here")
    broken = train_decoder_tokenizer(CORPUS, 300)
    broken.pad_token = None
    with pytest.raises(ConfigError, match="here: the decoder tokenizer needs a pad"):
        check_decoder_tokenizer(broken, "here")


def test_build_needs_a_tokenizer_source_and_names_its_owner():
    with pytest.raises(ConfigError, match="pass corpus_texts .* to MyModel"):
        build_model_parts("decoder", None, {"d_model": 32}, 300, owner="MyModel")
    lm, tokenizer, encoder, encoder_tokenizer = build_model_parts(
        "decoder",
        None,
        {"d_model": 32, "num_decoder_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 64},
        300,
        CORPUS,
    )
    assert encoder is None and encoder_tokenizer is None
    assert lm.generation_config.pad_token_id == tokenizer.pad_token_id


def test_shift_labels_right_hand_case():
    labels = torch.tensor([[5, 6, 7, -100], [8, -100, -100, -100]])
    expected = torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    assert torch.equal(shift_labels_right(labels, decoder_start_token_id=1, pad_token_id=0), expected)


def test_saved_model_configs_are_read_strictly(tmp_path):
    cfg = config_from_dict(BaselineConfig, {"max_source_tokens": 8}, "x")
    assert cfg == BaselineConfig(max_source_tokens=8)
    with pytest.raises(ConfigError, match=r"here: unknown key\(s\) colour \(known: "):
        config_from_dict(BaselineConfig, {"colour": "red"}, "here")
    with pytest.raises(ConfigError, match="here: "):
        config_from_dict(BaselineConfig, {"max_source_tokens": 0}, "here")
    with pytest.raises(UserError, match=r"missing.json: not found \(not an AR baseline folder\?\)"):
        read_config_json(tmp_path / "missing.json", "an AR baseline")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        read_config_json(tmp_path / "bad.json", "an AR baseline")
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_config_json(tmp_path / "ok.json", "an AR baseline") == {"a": 1}

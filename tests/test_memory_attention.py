"""Teacher forcing with "kv" latent memory in the attention layers (no KV cache): the same loss,
logits and gradients as the prefilled cache, and one compiled graph for all of the LM's layers."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from transformers import AutoModelForCausalLM

import sld.models.causal_lm as causal_lm
from sld.compilation import compile_model
from sld.models.memory_attention import MEMORY_ATTRIBUTE, attention_layers
from sld.tokenization import decoder_labels

TEXTS = ["Tom baked a cake.", "Lucy lost her keys at the mall today.", "Oil rose."]


def autoencoder(tmp_path, num_layers: int = 2):
    bert = tiny_models.save_tiny_bert(tmp_path / "bert")
    lm = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    if num_layers != 2:
        AutoModelForCausalLM.from_pretrained(lm, num_hidden_layers=num_layers).save_pretrained(lm)
    model = tiny_models.tiny_causal_autoencoder(bert, lm, seed=0).train()
    with torch.no_grad():  # the memory's values start at zero; make them matter
        model.latent_conditioning.to_kv.weight.normal_(0.0, 0.5)
    return model


def loss_and_grads(model, z, labels):
    z.grad = None
    model.zero_grad()
    loss = model.reconstruction_loss(z, labels)
    loss.backward()
    return loss.detach(), z.grad.clone(), model.latent_conditioning.to_kv.weight.grad.clone()


def test_the_memory_attention_computes_what_the_prefilled_cache_does(tmp_path, monkeypatch):
    model = autoencoder(tmp_path)
    z = model.encode_texts(TEXTS).detach().requires_grad_(True)
    labels = decoder_labels(model.decoder_tokenizer, TEXTS, 16)
    calls = []
    original = causal_lm.memory_attention

    def counted(layers, keys_values):
        calls.append(len(layers))
        return original(layers, keys_values)

    monkeypatch.setattr(causal_lm, "memory_attention", counted)
    memory = loss_and_grads(model, z, labels)
    memory_logits = model.reconstruction_logits(z, labels)
    assert calls == [2, 2]  # both teacher-forced paths went through it, with both layers
    monkeypatch.setattr(causal_lm, "attention_layers", lambda lm, n: None)  # the prefilled cache
    cache = loss_and_grads(model, z, labels)
    for got, expected in zip(memory, cache):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(memory_logits, model.reconstruction_logits(z, labels), rtol=1e-5, atol=1e-6)
    assert memory[1].abs().sum() > 0  # the gradient reaches the latents through the memory


def test_the_attention_implementation_and_memory_are_restored(tmp_path):
    model = autoencoder(tmp_path)
    layers = attention_layers(model.lm, 2)
    assert layers is not None and [layer.layer_idx for layer in layers] == [0, 1]
    memory = model.memory(model.encode_texts(TEXTS[:1]))
    before = model.lm.config._attn_implementation
    with pytest.raises(RuntimeError, match="inside"):
        with model.latent_conditioning.teacher_forcing(model.lm, memory) as (cache, offset):
            assert cache is None and offset == 0
            assert model.lm.config._attn_implementation != before
            raise RuntimeError("inside")
    assert model.lm.config._attn_implementation == before
    assert all(getattr(layer, MEMORY_ATTRIBUTE) is None for layer in layers)
    # decoding still runs on the (prefilled) cache with the LM's own attention
    assert len(model.decode_latents(model.encode_texts(TEXTS[:2]), max_new_tokens=4)) == 2


def compiled_graphs(tmp_path, num_layers: int) -> int:
    """Graphs dynamo makes for two training steps of a compiled autoencoder (eager backend)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = autoencoder(tmp_path / str(num_layers), num_layers)
    compile_model(model, backend="eager")
    labels = decoder_labels(model.decoder_tokenizer, TEXTS, 16)
    counters.clear()
    for _ in range(2):
        model.reconstruction_loss(model.encode_texts(TEXTS), labels).backward()
    return counters["stats"]["unique_graphs"]


def test_every_layer_shares_one_compiled_graph(tmp_path, monkeypatch):
    """With the prefilled cache each layer compiled a graph of its own (the cache's per-layer state
    differs as the layers run): 4 layers made more graphs than 2. With the memory attention, not."""
    assert compiled_graphs(tmp_path, 4) == compiled_graphs(tmp_path, 2)
    monkeypatch.setattr(causal_lm, "attention_layers", lambda lm, n: None)
    assert compiled_graphs(tmp_path / "cache", 4) > compiled_graphs(tmp_path / "cache", 2)


def test_only_plain_attention_models_use_it(tmp_path):
    """An LM whose attention has extras (sliding windows, soft-capping, sinks) keeps the cache path,
    and a keyword the function does not implement is an error, not a silent difference."""
    from sld.models.memory_attention import memory_attention_forward

    model = autoencoder(tmp_path)
    assert attention_layers(model.lm, 2) is not None
    model.lm.config.model_type = "gemma2"
    assert attention_layers(model.lm, 2) is None
    layer = torch.nn.Module()
    setattr(layer, MEMORY_ATTRIBUTE, (torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4)))
    q, k = torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4)
    out, _ = memory_attention_forward(layer, q, k, k, None)
    assert out.shape == (1, 3, 2, 4)
    with pytest.raises(NotImplementedError, match="softcap"):
        memory_attention_forward(layer, q, k, k, None, softcap=30.0)

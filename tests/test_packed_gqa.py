"""``sld.models.packed_gqa``: one-token grouped-head attention without repeating the cache."""

import pytest
import tiny_models
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sld.models import packed_gqa, static_decoding


class Attention(torch.nn.Module):
    num_key_value_groups = 3  # what transformers' attention modules carry (repeat_kv reads it)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_one_query_token_packed_equals_the_repeated_heads(mask_kind):
    torch.manual_seed(0)
    query = torch.randn(5, 9, 1, 16)  # (B, H, 1, E)
    key, value = torch.randn(5, 3, 11, 16), torch.randn(5, 3, 11, 16)  # (B, K, L, E)
    mask = None
    if mask_kind != "none":
        visible = torch.rand(5, 1, 1, 11) > 0.3
        visible[..., 0] = True  # every row sees something
        mask = visible if mask_kind == "bool" else torch.zeros(5, 1, 1, 11).masked_fill(~visible, -1e9)
    # each key/value head serves 3 consecutive query heads (transformers' repeat_kv)
    repeated_key, repeated_value = key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1)
    expected = F.scaled_dot_product_attention(query, repeated_key, repeated_value, attn_mask=mask, scale=0.25)
    expected = expected.transpose(1, 2)  # (B, 1, H, E)
    got, weights = packed_gqa.packed_gqa_forward(Attention(), query, key, value, mask, scaling=0.25)
    assert weights is None and got.shape == expected.shape == (5, 1, 9, 16)
    torch.testing.assert_close(got, expected)


def test_several_query_tokens_go_to_transformers_sdpa_unchanged():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 9, 4, 8), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, None, is_causal=True)
    got, _ = packed_gqa.packed_gqa_forward(Attention(), query, key, value, None, is_causal=True)
    assert torch.equal(got, expected)


def tiny_llama(kv_heads: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=8,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def test_the_switch_is_on_unless_turned_off_and_sets_every_config_back(monkeypatch):
    lm = tiny_llama(kv_heads=2)
    monkeypatch.setenv(packed_gqa.PACKED_GQA_ENV, "0")
    with packed_gqa.packed_gqa(lm) as on:
        assert not on and lm.config._attn_implementation == "sdpa"
    monkeypatch.delenv(packed_gqa.PACKED_GQA_ENV)
    with packed_gqa.packed_gqa(lm) as on:
        assert on and lm.config._attn_implementation == packed_gqa.PACKED_GQA
        assert lm.model.layers[1].self_attn.config._attn_implementation == packed_gqa.PACKED_GQA
    assert lm.config._attn_implementation == "sdpa"
    with packed_gqa.packed_gqa(tiny_llama(kv_heads=4)) as on:  # no grouped heads: nothing to pack
        assert not on


@pytest.mark.parametrize("static_cache", [False, True])
def test_decoding_with_packed_attention_writes_the_same_texts(tmp_path, monkeypatch, static_cache):
    model = tiny_models.tiny_prefix_lm(tmp_path / "lm")
    sources = ["Anna walked her dog.", "Lucy", "Sam fixed the old bike today and then he rode it home."]
    monkeypatch.setenv(packed_gqa.PACKED_GQA_ENV, "0")
    expected = model.generate_texts(sources, batch_size=3, max_new_tokens=12)  # dynamic, not packed
    packed_lengths = set()  # a set, not a list: dynamo guards on what the step mutates, and a list
    # growing at every step would retrace the step at every token (a set stops changing after one)

    def spy(module, query, *args, **kwargs):
        packed_lengths.add(query.shape[2])
        return packed_gqa.packed_gqa_forward(module, query, *args, **kwargs)

    monkeypatch.delenv(packed_gqa.PACKED_GQA_ENV)  # the default: packed
    AttentionInterface.register(packed_gqa.PACKED_GQA, spy)
    try:
        original = static_decoding.stepper_for  # the step traced by dynamo (eager backend on a CPU)
        monkeypatch.setattr(static_decoding, "stepper_for", lambda lm, compile_step: original(lm, True))
        monkeypatch.setattr(static_decoding, "_STEPPERS", type(static_decoding._STEPPERS)())
        got = model.generate_texts(sources, batch_size=3, max_new_tokens=12, static_cache=static_cache)
    finally:
        AttentionInterface.register(packed_gqa.PACKED_GQA, packed_gqa.packed_gqa_forward)
    assert packed_lengths == {1}  # only the one-token steps ran through it
    assert got == expected and len(set(expected)) > 1

"""ContextEncoder: packaged MiniLM default, None sources, save/load, seq2seq encoders, frozen, dtype."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from sld.errors import UserError
from sld.models.context_encoder import ContextCache, ContextEncoder, default_context_encoder_path, pad_context
from sld.models.denoiser import SegmentDiT


@pytest.fixture(scope="module")
def minilm() -> ContextEncoder:
    return ContextEncoder.from_pretrained(max_length=12)


def test_default_encoder_shapes_masks_and_none_sources(minilm):
    assert minilm.context_dim == 384
    texts = ["A short source.", None, "a much longer source text that will certainly be cut at twelve tokens"]
    states, mask = minilm.encode(texts)
    assert states.shape == (3, 12, 384) and mask.shape == (3, 12) and mask.dtype == torch.bool
    assert mask[0].sum() < 12 and mask[2].all()  # padding, truncation at max_length
    assert not mask[1].any() and torch.count_nonzero(states[1]) == 0  # no source: all masked
    assert torch.count_nonzero(states[0][~mask[0]]) == 0
    # Rows do not depend on the other rows of the batch.
    alone, alone_mask = minilm.encode(["A short source."])
    k = int(alone_mask.sum())
    torch.testing.assert_close(states[0, :k], alone[0, :k], rtol=1e-4, atol=1e-5)
    # Every source missing: a zero-length context.
    empty, empty_mask = minilm.encode([None, None])
    assert empty.shape == (2, 0, 384) and empty_mask.shape == (2, 0)


def test_a_graph_bucket_pads_to_its_multiple_and_keeps_the_states_of_real_tokens(minilm, monkeypatch):
    from sld.models import context_encoder

    graphed = context_encoder.graphed_encoder
    traced = []

    def traced_on_cpu(encoder):  # dynamo's eager backend on the CPU: a graph break would fail here
        traced.append(encoder)
        return graphed(encoder, trace_on_cpu=True)

    monkeypatch.setattr(context_encoder, "graphed_encoder", traced_on_cpu)
    texts = ["A short source.", None, "Another source, a little longer than the first."]
    eager, eager_mask = minilm.encode(texts)
    bucketed, mask = minilm.encode(texts, graph_bucket=8)
    assert traced == [minilm.encoder]
    assert (
        bucketed.shape[1] % 8 == 0
        and bucketed.shape[1] >= eager.shape[1]
        and mask.shape == bucketed.shape[:2]
    )
    t = eager.shape[1]
    assert torch.equal(mask[:, :t], eager_mask) and not mask[:, t:].any()
    torch.testing.assert_close(bucketed[:, :t], eager, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(bucketed[:, t:]) == 0 and torch.count_nonzero(bucketed[1]) == 0
    assert (
        context_encoder.graphed_encoder is traced_on_cpu
        and graphed(minilm.encoder) is context_encoder._encoder_states
    )


def test_frozen_and_feeds_the_denoiser(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.model.training
    states, mask = minilm.encode(["one", None])
    dit = SegmentDiT(
        latent_dim=4,
        num_latents=2,
        max_segments=2,
        context_dim=minilm.context_dim,
        width=16,
        depth=1,
        heads=2,
    )
    assert dit(torch.randn(2, 2, 2, 4), torch.rand(2), states, mask).shape == (2, 2, 2, 4)


def test_save_load_round_trip(minilm, tmp_path):
    minilm.save_pretrained(tmp_path / "ctx")
    loaded = ContextEncoder.from_pretrained(tmp_path / "ctx")
    assert loaded.max_length == 12
    texts = ["Two people talk about the weather.", None]
    a, am = minilm.encode(texts)
    b, bm = loaded.encode(texts)
    assert torch.equal(am, bm) and torch.equal(a, b)


def test_dtype(tmp_path):
    encoder = ContextEncoder.from_pretrained(dtype=torch.bfloat16, max_length=8)
    states, _ = encoder.encode(["hello world"])
    assert states.dtype == torch.bfloat16 and encoder.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_seq2seq_encoders(kind, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(default_context_encoder_path())
    torch.manual_seed(0)
    if kind == "t5":
        config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
        model = T5ForConditionalGeneration(config)
    else:
        config = BartConfig(
            vocab_size=len(tokenizer),
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=64,
        )
        model = BartForConditionalGeneration(config)
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    encoder = ContextEncoder.from_pretrained(tmp_path / "src", max_length=16)
    assert encoder.context_dim == 16
    states, mask = encoder.encode(["hello there", "a longer source text"])
    assert states.shape[0] == 2 and states.shape[2] == 16 and mask.shape == states.shape[:2]
    batch = tokenizer(["hello there", "a longer source text"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval().get_encoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
    torch.testing.assert_close(states[mask], expected.last_hidden_state[mask], rtol=1e-4, atol=1e-5)
    # The encoder-only form round-trips too.
    encoder.save_pretrained(tmp_path / "saved")
    again, _ = ContextEncoder.from_pretrained(tmp_path / "saved").encode(
        ["hello there", "a longer source text"]
    )
    torch.testing.assert_close(again, states)


def test_cache_matches_the_encoder_and_encodes_unknown_texts(minilm):
    known = [
        "A short source.",
        "a much longer source text that will certainly be cut at twelve tokens",
        "mid length one",
    ]
    cache = ContextCache(
        minilm, [*known, known[0], None], batch_size=2, storage_dtype=torch.float32, progress=False
    )
    assert len(cache) == 3 and known[1] in cache and cache.num_bytes > 0
    texts = [known[2], None, "never seen before", known[1]]
    states, mask = cache.encode(texts)
    expected, expected_mask = minilm.encode(texts)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(states, expected, rtol=1e-4, atol=1e-5)
    assert "never seen before" not in cache  # encoded on the fly, not kept
    # a batch of kept texts only (the training case) is gathered from the flat store, None rows and
    # repeats included, and matches the encoder as well
    kept_only = [known[1], None, known[0], known[1]]
    states, mask = cache.encode(kept_only)
    expected, expected_mask = minilm.encode(kept_only)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(states, expected, rtol=1e-4, atol=1e-5)
    assert not states[1].any() and not states[2][~mask[2]].any()  # zeros where masked
    # float16 storage: the same up to half precision, returned in the encoder's dtype
    half, half_mask = ContextCache(minilm, known, progress=False).encode(known)
    assert half.dtype == minilm.dtype and torch.equal(half_mask, minilm.encode(known)[1])
    torch.testing.assert_close(half, minilm.encode(known)[0], rtol=1e-2, atol=1e-2)
    empty, empty_mask = cache.encode([None])
    assert empty.shape == (1, 0, 384) and empty_mask.shape == (1, 0)


def test_a_fixed_length_cache_pads_every_batch_to_the_longest_kept_text(minilm):
    """``fixed_length`` (compiled training): one shape for every batch, the same states and mask up to
    the padding, and the same denoiser output (padded keys are masked)."""
    known = ["A short source.", "a much longer source text that will certainly be cut", "mid one"]
    plain = ContextCache(minilm, known, storage_dtype=torch.float32, progress=False)
    fixed = ContextCache(minilm, known, storage_dtype=torch.float32, progress=False, fixed_length=True)
    assert fixed.longest == max(plain.lengths) == 12
    batch = [known[0], None, known[2]]
    states, mask = plain.encode(batch)
    padded, padded_mask = fixed.encode(batch)
    assert states.shape[1] < 12 and padded.shape == (3, 12, 384) and padded_mask.shape == (3, 12)
    width = states.shape[1]
    assert torch.equal(padded_mask[:, :width], mask) and not padded_mask[:, width:].any()
    assert torch.equal(padded[:, :width], states) and not padded[:, width:].any()
    torch.manual_seed(0)
    dit = SegmentDiT(latent_dim=8, num_latents=2, max_segments=2, context_dim=384, width=32, depth=2, heads=4)
    torch.nn.init.normal_(dit.final_layer.proj.weight, std=0.1)  # zero-initialised: make the output vary
    for block in dit.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    x, t = torch.randn(3, 2, 2, 8), torch.rand(3)
    with torch.no_grad():
        torch.testing.assert_close(
            dit(x, t, padded, padded_mask), dit(x, t, states, mask), rtol=1e-5, atol=1e-6
        )


def test_pad_context_rounds_the_length_up_with_masked_zeros():
    states, mask = torch.randn(2, 5, 4), torch.tensor([[True] * 5, [True, True, False, False, False]])
    padded, padded_mask = pad_context(states, mask, 8)
    assert padded.shape == (2, 8, 4) and padded_mask.shape == (2, 8)
    assert torch.equal(padded[:, :5], states) and not padded[:, 5:].any()
    assert torch.equal(padded_mask[:, :5], mask) and not padded_mask[:, 5:].any()
    assert pad_context(padded, padded_mask, 8)[0] is padded  # already a multiple: unchanged
    empty = pad_context(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 8)
    assert empty[0].shape == (2, 0, 4)  # no source at all stays empty (the null context)
    with pytest.raises(ValueError, match="multiple"):
        pad_context(states, mask, 0)


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="context encoder"):
        ContextEncoder.from_pretrained(tmp_path / "nope")

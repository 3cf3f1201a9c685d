"""PerceiverCompressor: shapes, sphere normalisation, padding mask, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sld.models.perceiver import Attention, PerceiverCompressor, normalize_to_sphere


def _compressor(**kw) -> PerceiverCompressor:
    torch.manual_seed(0)
    args = dict(input_dim=24, num_latents=5, latent_dim=16, depth=2, num_heads=4)
    args.update(kw)
    return PerceiverCompressor(**args).eval()


def test_output_shape_and_norm():
    model = _compressor()
    z = model(torch.randn(3, 7, 24), torch.ones(3, 7, dtype=torch.long))
    assert z.shape == (3, 5, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((3, 5), math.sqrt(16)))


def test_without_normalisation_norms_vary():
    z = _compressor(normalize_latents=False)(torch.randn(3, 7, 24))
    assert not torch.allclose(z.norm(dim=-1), torch.full((3, 5), 4.0))


def test_padding_is_ignored():
    model = _compressor()
    h = torch.randn(2, 6, 24)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    h_changed = h.clone()
    h_changed[0, 4:] = 100.0  # garbage under the padding
    z, z_changed = model(h, mask), model(h_changed, mask)
    torch.testing.assert_close(z, z_changed)
    # the same segment without the padding columns gives the same latents
    torch.testing.assert_close(model(h[:1, :4], mask[:1, :4]), z[:1], atol=1e-5, rtol=1e-5)


def test_every_parameter_gets_a_gradient():
    model = _compressor().train()
    model(torch.randn(2, 6, 24), torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_attention_shapes_and_head_check():
    attn = Attention(16, num_heads=4, context_dim=8)
    out = attn(torch.randn(2, 3, 16), torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1] * 5]))
    assert out.shape == (2, 3, 16)
    assert Attention(16, num_heads=4)(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, num_heads=4)


def test_normalize_to_sphere():
    z = normalize_to_sphere(torch.randn(4, 3, 9))
    torch.testing.assert_close(z.norm(dim=-1), torch.full((4, 3), 3.0))


def test_compiled_layers_share_one_graph():
    """Every layer receives latents of one layout (the first one's are a contiguous copy of the
    expanded queries): compiled block-wise (``loop.compile``), the layers trace one graph, not one for
    the first layer's stride-0 input and another for the rest (seen in the autoencoder's recompile log)."""
    from torch._dynamo.utils import counters

    from sld.compilation import compile_model, uncompile

    model = compile_model(_compressor(depth=3), backend="eager")
    counters.clear()
    model(torch.randn(3, 7, 24), torch.ones(3, 7, dtype=torch.long))
    assert counters["stats"]["unique_graphs"] == 1
    uncompile(model)


def test_a_wider_resampler_emits_latents_of_the_latent_width():
    model = _compressor(width=32, num_heads=2)
    assert model.layers[0].attn.head_dim == 16 and model.latents.shape == (5, 32)
    z = model(torch.randn(3, 7, 24), torch.ones(3, 7, dtype=torch.long))
    assert z.shape == (3, 5, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((3, 5), math.sqrt(16)))


def test_token_positions_make_the_latents_depend_on_word_order():
    h = torch.randn(1, 6, 24)
    swapped = h[:, [1, 0, 2, 3, 4, 5]]
    # without positions, attention over the tokens is blind to their order
    plain = _compressor()
    torch.testing.assert_close(plain(h), plain(swapped), atol=1e-5, rtol=1e-5)
    positioned = _compressor(max_tokens=8)
    assert not torch.allclose(positioned(h), positioned(swapped), atol=1e-4)
    with pytest.raises(ValueError, match="positions for 8"):
        positioned(torch.randn(1, 9, 24))

"""PerceiverCompressor: shapes, sphere normalisation, padding mask, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sld.errors import UserError
from sld.models.perceiver import Attention, PerceiverCompressor, QKLayerNorm, normalize_to_sphere


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


def test_qk_layer_norm_is_a_layer_norm_that_keeps_bf16_under_autocast():
    torch.manual_seed(0)
    plain = torch.nn.LayerNorm(16)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    norm = QKLayerNorm(16)
    norm.load_state_dict(plain.state_dict())  # the same parameters and names: old checkpoints load
    x = torch.randn(4, 3, 16)
    torch.testing.assert_close(norm(x), plain(x), atol=0, rtol=0)  # float32: nn.LayerNorm exactly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())  # (CUDA's autocast would run nn.LayerNorm in float32 here)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), plain(x), atol=0.05, rtol=0.02)  # to bf16 rounding
    out.float().pow(2).sum().backward()
    assert norm.weight.grad.dtype == torch.float32 and norm.weight.grad.abs().sum() > 0
    assert norm.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["math", "efficient", "flash"])
def test_short_attention_backends_give_the_same_attention(monkeypatch, backend):
    """SLD_SHORT_ATTENTION restricts the kernels of the compressor's attention, not its result
    (on the CPU every choice falls back to the math kernel, or runs the CPU flash kernel)."""
    torch.manual_seed(0)
    attention = Attention(16, 4).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    monkeypatch.delenv("SLD_SHORT_ATTENTION", raising=False)
    expected = attention(x, context, mask)
    monkeypatch.setenv("SLD_SHORT_ATTENTION", backend)
    torch.testing.assert_close(attention(x, context, mask), expected, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("SLD_SHORT_ATTENTION", "fastest")
    with pytest.raises(
        UserError, match="SLD_SHORT_ATTENTION='fastest': expected default, flash, efficient or math"
    ):
        attention(x, context, mask)

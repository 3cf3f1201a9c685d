"""key_masked_attention: the bias column gives the masked call's outputs and gradients; the switch."""

from __future__ import annotations

import pytest
import torch
from tiny_models import randomize_zero_init, tiny_dit

from sld.errors import UserError
from sld.models.key_mask_attention import KEY_MASK_ATTENTION_ENV, key_mask_mode, key_masked_attention


def qkv_and_mask(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, h, l_q, l_k, d = 3, 2, 5, 7, 16
    q, k, v = (torch.randn(b, h, n, d, generator=gen).to(dtype).requires_grad_() for n in (l_q, l_k, l_k))
    key_mask = torch.ones(b, l_k, dtype=torch.bool)
    key_mask[1, 4:] = False
    key_mask[2, 1:] = False  # one key left
    return q, k, v, key_mask


@pytest.mark.parametrize("mode", ["column", "math"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_each_mode_matches_the_masked_call_with_gradients(dtype, tol, mode):
    q, k, v, key_mask = qkv_and_mask(dtype)
    results = []
    for each in ("mask", mode):
        out = key_masked_attention(q, k, v, key_mask, mode=each)
        grads = torch.autograd.grad((out.float() ** 2).sum(), (q, k, v))
        results.append((out, grads))
    (out_mask, grads_mask), (out_mode, grads_mode) = results
    assert out_mode.shape == out_mask.shape == q.shape
    torch.testing.assert_close(out_mode, out_mask, atol=tol, rtol=tol)
    for got, want in zip(grads_mode, grads_mask):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    # the masked keys take no part: changing them changes nothing
    k2 = torch.where(key_mask[:, None, :, None], k, torch.randn_like(k) * 100)
    torch.testing.assert_close(key_masked_attention(q, k2, v, key_mask, mode=mode), out_mode)


def test_no_key_mask_attends_every_key():
    q, k, v, _ = qkv_and_mask(torch.float32)
    everything = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool)
    for mode in ("mask", "column", "math"):
        torch.testing.assert_close(
            key_masked_attention(q, k, v, None, mode=mode),
            key_masked_attention(q, k, v, everything, mode="mask"),
        )


def denoisers_and_inputs(monkeypatch, depth: int = 1) -> tuple[dict, tuple]:
    """The same tiny denoiser built under each mode, and inputs with padded context and segments."""
    gen = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(2, 3, 4, 8, generator=gen),  # x (B, S, N, D)
        torch.rand(2, generator=gen),  # t (B,)
        torch.randn(2, 5, 16, generator=gen),  # context (B, T, C)
        torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]).bool(),  # context mask (B, T)
        torch.tensor([[1, 0, 0], [1, 1, 1]]).bool(),  # segment mask (B, S)
    )
    models = {}
    for mode in ("mask", "column", "math"):
        monkeypatch.setenv(KEY_MASK_ATTENTION_ENV, mode)
        torch.manual_seed(0)
        models[mode] = tiny_dit(depth=depth)
        randomize_zero_init(models[mode])
        assert {m.key_mask_mode for m in models[mode].modules() if hasattr(m, "key_mask_mode")} == {mode}
    return models, inputs


def test_the_switch_reaches_the_denoiser(monkeypatch):
    models, inputs = denoisers_and_inputs(monkeypatch)
    expected = models["mask"](*inputs)
    assert torch.count_nonzero(expected) > 0
    torch.testing.assert_close(models["column"](*inputs), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(models["math"](*inputs), expected, atol=1e-5, rtol=1e-5)


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.delenv(KEY_MASK_ATTENTION_ENV, raising=False)
    assert key_mask_mode() == "mask"
    monkeypatch.setenv(KEY_MASK_ATTENTION_ENV, "Column")
    assert key_mask_mode() == "column"
    monkeypatch.setenv(KEY_MASK_ATTENTION_ENV, "math")
    assert key_mask_mode() == "math"
    monkeypatch.setenv(KEY_MASK_ATTENTION_ENV, "flash")
    with pytest.raises(UserError, match=KEY_MASK_ATTENTION_ENV):
        key_mask_mode()
    with pytest.raises(ValueError, match="unknown key-mask mode"):
        key_masked_attention(
            *qkv_and_mask(torch.float32)[:3], torch.ones(3, 7, dtype=torch.bool), mode="flash"
        )


def test_column_mode_compiles_to_the_masked_results(monkeypatch):
    """The denoiser's blocks compiled (inductor on the CPU) with the bias column: the eager masked outputs."""
    from sld.compilation import compile_model

    models, inputs = denoisers_and_inputs(monkeypatch, depth=2)
    expected = models["mask"](*inputs)
    compiled = compile_model(models["column"])
    torch.testing.assert_close(compiled(*inputs), expected, atol=1e-5, rtol=1e-4)


def test_math_mode_traces_into_the_compiled_blocks_without_attention_kernels(monkeypatch):
    """Under ``math`` the compiled blocks' graphs hold the products and the softmax, no
    ``scaled_dot_product_attention`` call (what Inductor would fuse), and give the masked outputs."""
    from torch._dynamo.backends.common import aot_autograd

    from sld.compilation import compile_model

    models, inputs = denoisers_and_inputs(monkeypatch, depth=2)
    expected = models["mask"](*inputs)
    targets = []

    def record(graph_module, example_inputs):
        targets.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module.forward

    compiled = compile_model(models["math"], backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    torch.testing.assert_close(compiled(*inputs), expected, atol=1e-5, rtol=1e-4)
    assert any("_softmax" in target for target in targets)
    assert not any("scaled_dot_product" in target or "attention" in target for target in targets)

"""SegmentDiT: shapes, zero-init, save/load, segment masking, null context, count head."""

from __future__ import annotations

import pytest
import torch
from tiny_models import randomize_zero_init, tiny_dit
from torch import nn

from sld.errors import UserError
from sld.models.denoiser import QKNorm, SegmentDiT

B, S, N, D, T, C = 3, 3, 4, 8, 5, 16


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, N, D, generator=gen)
    t = torch.rand(B, generator=gen)
    context = torch.randn(B, T, C, generator=gen)
    context_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    segment_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    return x, t, context, context_mask, segment_mask


def test_output_shapes_and_count_head():
    model = tiny_dit()
    x, t, c, cm, sm = inputs()
    out, logits = model(x, t, c, cm, sm, return_count_logits=True)
    assert out.shape == (B, S, N, D)
    assert logits.shape == (B, S)
    assert model.predict_num_segments(c, cm).shape == (B, S)
    assert model.predict_num_segments(None, batch_size=2).shape == (2, S)
    assert tiny_dit(num_count_classes=7).predict_num_segments(c, cm).shape == (B, 7)
    # Fewer segments than max_segments, no masks, no context.
    assert model(x[:, :2], t).shape == (B, 2, N, D)


def test_zero_init_gives_zero_prediction():
    model = tiny_dit()
    x, t, c, cm, sm = inputs()
    out = model(x, t, c, cm, sm, self_cond=torch.randn_like(x))
    assert torch.count_nonzero(out) == 0


def test_save_load_round_trip(tmp_path):
    model = tiny_dit(dropout=0.1)
    randomize_zero_init(model)
    model.eval()
    x, t, c, cm, sm = inputs()
    before, logits_before = model(x, t, c, cm, sm, self_cond=x.flip(0), return_count_logits=True)
    model.save_pretrained(tmp_path)
    loaded = SegmentDiT.from_pretrained(tmp_path).eval()
    assert loaded.config.width == 32 and loaded.config.dropout == 0.1
    after, logits_after = loaded(x, t, c, cm, sm, self_cond=x.flip(0), return_count_logits=True)
    assert torch.count_nonzero(before) > 0
    assert torch.equal(before, after)
    assert torch.equal(logits_before, logits_after)


def test_padded_segments_do_not_influence_real_ones():
    model = tiny_dit()
    randomize_zero_init(model)
    x, t, c, cm, sm = inputs()
    out = model(x, t, c, cm, sm, self_cond=x * 0.5)
    # Change only what sits on padded segments (noisy input and self-conditioning).
    pad = ~sm[:, :, None, None]
    x2 = torch.where(pad, torch.randn_like(x) * 10, x)
    sc2 = torch.where(pad, torch.randn_like(x), x * 0.5)
    out2 = model(x2, t, c, cm, sm, self_cond=sc2)
    real = sm[:, :, None, None].expand_as(out)
    assert torch.count_nonzero(out[real]) > 0
    torch.testing.assert_close(out[real], out2[real], rtol=0, atol=1e-6)
    # Padded segments never reach the output.
    assert torch.count_nonzero(out[~real]) == 0 and torch.count_nonzero(out2[~real]) == 0


def test_no_segment_mask_runs_unmasked_and_equals_an_all_real_mask(monkeypatch):
    """segment_mask=None: every segment real, the self-attention called without a mask (the flash
    kernels' condition); the outputs and gradients equal those of an all-True mask."""
    import torch.nn.functional as F

    model = tiny_dit()
    randomize_zero_init(model)
    x, t, c, cm, _ = inputs()
    full = torch.ones(B, S, dtype=torch.bool)
    masks_seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks_seen.append(attn_mask is None)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    results = []
    for mask in (full, None):
        model.zero_grad()
        out = model(x, t, c, cm, mask, self_cond=x * 0.5)
        (out**2).sum().backward()
        results.append((out, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (out_masked, grads_masked), (out_none, grads_none) = results
    torch.testing.assert_close(out_none, out_masked, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_none, grads_masked, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # per block a self- and a cross-attention: masked both with the mask; without it the self-attention
    # is unmasked, the cross-attention (padded context) still masked
    depth = len(model.blocks)
    assert masks_seen == [False] * 2 * depth + [True, False] * depth


def test_null_context_replaces_dropped_or_missing_source():
    model = tiny_dit()
    randomize_zero_init(model)
    x, t, c, cm, sm = inputs()
    dropped = model(x, t, c, cm, sm, drop_context=torch.ones(B, dtype=torch.bool))
    none = model(x, t, None, None, sm)
    all_masked = model(x, t, c, torch.zeros(B, T, dtype=torch.bool), sm)
    torch.testing.assert_close(dropped, none, rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped, all_masked, rtol=0, atol=1e-6)
    # Dropping is per example: the others keep their source.
    cond = model(x, t, c, cm, sm)
    mixed = model(x, t, c, cm, sm, drop_context=torch.tensor([True, False, False]))
    torch.testing.assert_close(mixed[0], dropped[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1:], cond[1:], rtol=0, atol=1e-6)
    assert not torch.allclose(cond, dropped)
    # Padded source tokens are ignored.
    c2 = torch.where(cm[..., None], c, torch.randn_like(c))
    torch.testing.assert_close(model(x, t, c2, cm, sm), cond, rtol=0, atol=1e-6)
    # A fixed (not learned) null context also works.
    fixed = tiny_dit(learned_null_context=False)
    assert "null_context" not in dict(fixed.named_parameters())
    assert fixed(x, t, None, None, sm).isfinite().all()


def test_integer_timesteps_match_fractional_time():
    model = tiny_dit()
    randomize_zero_init(model)
    x, _, c, cm, sm = inputs()
    steps = torch.tensor([0, 250, 999])
    torch.testing.assert_close(model(x, steps, c, cm, sm), model(x, steps / 1000.0, c, cm, sm))
    torch.testing.assert_close(model(x, 500, c, cm, sm), model(x, torch.full((B,), 0.5), c, cm, sm))


def test_gradient_checkpointing_matches():
    model = tiny_dit()
    randomize_zero_init(model)
    x, t, c, cm, sm = inputs()
    ref = model(x, t, c, cm, sm)
    ref.square().sum().backward()
    ref_grad = model.proj_in.weight.grad.clone()
    model.zero_grad()
    model.enable_gradient_checkpointing()
    out = model(x, t, c, cm, sm)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(model.proj_in.weight.grad, ref_grad)


def test_diffusers_ema_fits(tmp_path):
    from diffusers.training_utils import EMAModel

    model = tiny_dit()
    ema = EMAModel(model.parameters(), decay=0.5, model_cls=SegmentDiT, model_config=model.config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model.parameters())
    ema.save_pretrained(tmp_path / "ema")
    loaded = EMAModel.from_pretrained(tmp_path / "ema", model_cls=SegmentDiT)
    assert len(loaded.shadow_params) == len(list(model.parameters()))


def test_user_errors_name_the_key():
    model = tiny_dit()
    x, t, c, cm, sm = inputs()
    with pytest.raises(UserError, match="context_dim"):
        model(x, t, torch.randn(B, T, C + 1), cm, sm)
    with pytest.raises(UserError, match="latent_dim"):
        model(torch.randn(B, S, N, D + 1), t, c, cm, sm)
    with pytest.raises(UserError, match="max_segments"):
        model(torch.randn(B, S + 1, N, D), t, c, cm)
    with pytest.raises(UserError, match="heads"):
        tiny_dit(width=30, heads=4)
    with pytest.raises(UserError, match="depth"):
        tiny_dit(depth=0)


def test_qk_norm_keeps_the_fused_kernel_in_bf16_and_trains_its_weight(monkeypatch):
    # bf16 queries with a float32 weight: nn.RMSNorm would hand F.rms_norm mismatched dtypes, which
    # falls back to its composite form (and warns once per process, so the warning is no test).
    # QKNorm hands it the weight in the input's dtype and gives nn.RMSNorm's values.
    import sld.models.denoiser as denoiser_module

    seen = []
    real_rms_norm = torch.nn.functional.rms_norm

    def recording_rms_norm(x, shape, weight=None, eps=None):
        seen.append((x.dtype, None if weight is None else weight.dtype))
        return real_rms_norm(x, shape, weight, eps)

    monkeypatch.setattr(denoiser_module.F, "rms_norm", recording_rms_norm)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 16, dtype=torch.bfloat16)
    reference, norm = nn.RMSNorm(16, eps=1e-6), QKNorm(16, eps=1e-6)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        norm.weight.copy_(reference.weight)
    got = norm(x)
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference(x).float(), atol=1e-2, rtol=1e-2)
    got.float().pow(2).sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.dtype == torch.float32
    assert norm.weight.grad.abs().sum() > 0


def test_long_skip_joined_in_the_block_equals_the_linear_of_the_concatenation():
    """``join_skip``'s two products over the weight's halves are U-ViT's Linear(concat(x, skip)), with
    the same gradients for x, skip and the weight; a block refuses a missing or a surplus skip."""
    torch.manual_seed(0)
    model = tiny_dit(depth=4)
    randomize_zero_init(model)
    receiving = model.blocks[3]
    assert receiving.skip_linear is not None and model.blocks[0].skip_linear is None
    x = torch.randn(2, 6, model.config.width, requires_grad=True)
    skip = torch.randn(2, 6, model.config.width, requires_grad=True)
    joined = receiving.join_skip(x, skip)
    reference = receiving.skip_linear(torch.cat([x, skip], dim=-1))
    torch.testing.assert_close(joined, reference)
    grads = torch.autograd.grad(joined.square().sum(), (x, skip, receiving.skip_linear.weight))
    reference_grads = torch.autograd.grad(reference.square().sum(), (x, skip, receiving.skip_linear.weight))
    for got, want in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want)
    cond = torch.randn(2, model.config.width)
    context = torch.randn(2, 3, model.config.width)
    context_mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs its 'skip'"):
        receiving(x, cond, None, context, context_mask)
    with pytest.raises(ValueError, match="takes none"):
        model.blocks[0](x, cond, None, context, context_mask, skip)


def test_low_precision_residual_carries_the_stream_in_the_autocast_dtype():
    """With ``low_precision_residual`` every block reads and returns bfloat16 under autocast (without
    it the blocks before the first U-ViT skip carry float32: the skip's Linear hands autocast's
    bfloat16 to the rest), and the prediction stays close to the float32 stream's; without autocast
    the switch changes nothing; the switch is saved with the model."""
    torch.manual_seed(0)
    plain, low = tiny_dit(depth=4), tiny_dit(depth=4, low_precision_residual=True)
    randomize_zero_init(plain)
    low.load_state_dict(plain.state_dict())
    x, t, c, cm, sm = inputs()

    def block_dtypes(model):
        seen = []
        hooks = [
            block.register_forward_hook(lambda _m, args, out: seen.append((args[0].dtype, out.dtype)))
            for block in model.blocks
        ]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, c, cm, sm)
        for hook in hooks:
            hook.remove()
        return out, seen

    plain_out, plain_seen = block_dtypes(plain)
    low_out, low_seen = block_dtypes(low)
    first_skip = next(i for i, block in enumerate(plain.blocks) if block.skip_linear is not None)
    assert plain_seen[:first_skip] == [(torch.float32, torch.float32)] * first_skip
    assert plain_seen[first_skip] == (torch.float32, torch.bfloat16)
    assert low_seen == [(torch.bfloat16, torch.bfloat16)] * len(low.blocks)
    assert not torch.equal(plain_out, low_out)
    torch.testing.assert_close(low_out.float(), plain_out.float(), atol=0.1, rtol=0.1)
    torch.testing.assert_close(low(x, t, c, cm, sm), plain(x, t, c, cm, sm), atol=0, rtol=0)
    assert low.config.low_precision_residual and not plain.config.low_precision_residual

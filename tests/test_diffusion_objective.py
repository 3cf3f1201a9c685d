"""LatentDiffusion: schedule consistency with diffusers, v-target identity, masking, gradients, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tiny_models import randomize_zero_init, tiny_dit

from sld.diffusion.objective import (
    DiffusionConfig,
    LatentDiffusion,
    epsilon_from_prediction,
    segment_mask_from_counts,
    v_target,
    vp_cosine_alphas_cumprod,
    x0_from_prediction,
)
from sld.errors import UserError
from sld.models.denoiser import SegmentDiT

B, S, N, D, T, C = 4, 3, 4, 8, 5, 16


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, S, N, D, generator=gen)
    num_segments = torch.tensor([3, 2, 1, 7])  # 7 > S: truncated document, count class clamps to S
    segment_mask = segment_mask_from_counts(num_segments, S)
    context = torch.randn(B, T, C, generator=gen)
    context_mask = torch.ones(B, T, dtype=torch.bool)
    context_mask[2, 3:] = False
    return x0, segment_mask, context, context_mask, num_segments


def test_schedule_is_diffusers_cosine():
    alphas = vp_cosine_alphas_cumprod(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert torch.equal(alphas, ref)
    assert alphas[0] > 0.999 and alphas[-1] < 1e-4 and bool((alphas[1:] < alphas[:-1]).all())


def test_the_schedule_is_copied_to_a_device_once():
    """A copy of the host table at every step was a host sync per call on a GPU: after the first
    use on a device the losses never read the host table again."""
    model = tiny_dit()
    diffusion = LatentDiffusion(DiffusionConfig(self_conditioning_prob=1.0))
    x0, sm, c, cm, k = batch()
    t = torch.tensor([10, 400, 800, 999])
    first = diffusion.training_losses(
        model, x0, sm, c, cm, k, t=t, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(diffusion.alpha_bar(t), vp_cosine_alphas_cumprod(1000)[t])
    diffusion.alphas_cumprod = None  # any further read of the host table would fail
    again = diffusion.training_losses(
        model, x0, sm, c, cm, k, t=t, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(again["loss"], first["loss"])
    assert diffusion.alphas_cumprod_on("cpu") is diffusion.alphas_cumprod_on(torch.device("cpu"))


def test_v_target_identity_and_diffusers_consistency():
    diffusion = LatentDiffusion()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, S, N, D, generator=gen), torch.randn(6, S, N, D, generator=gen)
    t = torch.tensor([0, 1, 200, 500, 900, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    a = diffusion.alpha_bar(t)
    v = v_target(x0, noise, a)
    ab = a[:, None, None, None]
    torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(epsilon_from_prediction(v, x_t, a, "v_prediction"), noise, rtol=0, atol=1e-5)
    # Same forward process and velocity as diffusers.
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(x_t, ref.add_noise(x0, noise, t))
    torch.testing.assert_close(v, ref.get_velocity(x0, noise, t))
    # Every prediction type's target maps back to x0 (epsilon only away from t = T-1, where sqrt(a) ~ 0).
    for prediction_type in ("v_prediction", "epsilon", "sample"):
        d = LatentDiffusion(DiffusionConfig(prediction_type=prediction_type))
        keep = slice(0, 5) if prediction_type == "epsilon" else slice(None)
        target = d.target(x0, noise, t)
        x0_hat = x0_from_prediction(target, x_t, a, prediction_type)
        torch.testing.assert_close(x0_hat[keep], x0[keep], rtol=0, atol=1e-4)


def test_padded_segments_do_not_contribute_to_loss():
    model = tiny_dit()
    randomize_zero_init(model)
    diffusion = LatentDiffusion(DiffusionConfig(self_conditioning_prob=0.5, condition_drop_prob=0.5))
    x0, sm, c, cm, k = batch()
    t = torch.tensor([10, 400, 800, 999])
    noise = torch.randn_like(x0)
    pad = ~sm[:, :, None, None]
    x0_b = torch.where(pad, torch.randn_like(x0) * 5, x0)
    noise_b = torch.where(pad, torch.randn_like(noise), noise)
    a = diffusion.training_losses(
        model, x0, sm, c, cm, k, t=t, noise=noise, generator=torch.Generator().manual_seed(3)
    )
    b = diffusion.training_losses(
        model, x0_b, sm, c, cm, k, t=t, noise=noise_b, generator=torch.Generator().manual_seed(3)
    )
    for key in ("loss", "diffusion_mse", "count_ce"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # And real segments do count.
    x0_c = torch.where(pad, x0, x0 + 1.0)
    c_ = diffusion.training_losses(
        model, x0_c, sm, c, cm, k, t=t, noise=noise, generator=torch.Generator().manual_seed(3)
    )
    assert not torch.allclose(a["diffusion_mse"], c_["diffusion_mse"])


def test_all_segments_real_calls_the_denoiser_without_a_mask_for_the_same_losses():
    model = tiny_dit()
    randomize_zero_init(model)
    diffusion = LatentDiffusion(DiffusionConfig(self_conditioning_prob=1.0, condition_drop_prob=0.5))
    x0, _, c, cm, _ = batch()
    full = torch.ones(B, S, dtype=torch.bool)
    counts = torch.full((B,), S)
    t = torch.tensor([10, 400, 800, 999])
    noise = torch.randn_like(x0)
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append(args[4])  # segment_mask
        return forward(*args, **kwargs)

    model.forward = spy
    losses = [
        diffusion.training_losses(
            model,
            x0,
            full,
            c,
            cm,
            counts,
            t=t,
            noise=noise,
            generator=torch.Generator().manual_seed(3),
            all_segments_real=real,
        )
        for real in (False, True)
    ]
    for key in ("loss", "diffusion_mse", "count_ce"):
        torch.testing.assert_close(losses[1][key], losses[0][key], rtol=1e-5, atol=1e-6)
    # both passes (self-conditioning and the main one) of each call
    assert [m is None for m in seen] == [False, False, True, True]


class DummyDecoder(torch.nn.Module):
    """A small differentiable stand-in for reconstructor + decoder: linear map to memory and to token logits."""

    def __init__(self, vocab: int = 11, length: int = 3) -> None:
        super().__init__()
        self.reconstruct = torch.nn.Linear(D, 8)
        self.lm_head = torch.nn.Linear(8 * N, vocab * length)
        self.vocab, self.length = vocab, length
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x0_pred, x0_target, segment_tokens):
        self.calls.append((x0_pred.shape[0], segment_tokens["input_ids"].shape[0]))
        memory = self.reconstruct(x0_pred)
        mse = F.mse_loss(memory, self.reconstruct(x0_target).detach())
        logits = self.lm_head(memory.flatten(1)).view(-1, self.length, self.vocab)
        ce = F.cross_entropy(logits.flatten(0, 1), segment_tokens["input_ids"].flatten())
        return mse, ce


def test_every_parameter_gets_gradient_from_full_loss():
    model = tiny_dit()
    randomize_zero_init(model)
    decoder = DummyDecoder()
    cfg = DiffusionConfig(
        self_conditioning_prob=1.0,
        condition_drop_prob=0.5,
        post_diffusion_weight_mse=0.5,
        post_diffusion_weight_ce=0.5,
    )
    diffusion = LatentDiffusion(cfg)
    x0, sm, c, cm, k = batch()
    tokens = {"input_ids": torch.randint(0, 11, (B, S, 3), generator=torch.Generator().manual_seed(0))}
    losses = diffusion.training_losses(
        model,
        x0,
        sm,
        c,
        cm,
        k,
        decode_fn=decoder,
        segment_tokens=tokens,
        generator=torch.Generator().manual_seed(5),
    )
    assert {"loss", "diffusion_mse", "count_ce", "post_mse", "post_ce", "count_accuracy"} <= set(losses)
    for key in ("loss", "diffusion_mse", "count_ce", "post_mse", "post_ce"):
        assert isinstance(losses[key], torch.Tensor) and losses[key].requires_grad, key
    assert decoder.calls == [(int(sm.sum()), int(sm.sum()))]  # only the real segments are decoded
    losses["loss"].backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, f"no gradient for: {missing}"
    assert all(p.grad is not None and p.grad.any() for p in decoder.parameters())


def test_post_diffusion_losses_train_the_denoiser():
    model = tiny_dit()
    randomize_zero_init(model)
    diffusion = LatentDiffusion(DiffusionConfig(post_diffusion_weight_mse=0.5, post_diffusion_weight_ce=0.5))
    x0, sm, c, cm, k = batch()
    tokens = {"input_ids": torch.randint(0, 11, (B, S, 3))}
    losses = diffusion.training_losses(
        model, x0, sm, c, cm, k, decode_fn=DummyDecoder(), segment_tokens=tokens
    )
    for key in ("post_mse", "post_ce"):
        grads = torch.autograd.grad(
            losses[key], list(model.blocks.parameters()), allow_unused=True, retain_graph=True
        )
        assert any(g is not None and g.any() for g in grads), key
    with pytest.raises(UserError, match="post_diffusion_weight"):
        diffusion.training_losses(model, x0, sm, c, cm, k)


def test_count_head_targets_clamp_to_classes():
    model = tiny_dit()
    diffusion = LatentDiffusion(DiffusionConfig(condition_drop_prob=0.0))
    x0, sm, c, cm, k = batch()
    losses = diffusion.training_losses(model, x0, sm, c, cm, k)
    logits = model.predict_num_segments(c, cm)
    torch.testing.assert_close(losses["count_ce"], F.cross_entropy(logits, torch.tensor([2, 1, 0, 2])))


def test_config_validation_names_the_key():
    with pytest.raises(UserError, match="diffusion.condition_drop_prob"):
        DiffusionConfig(condition_drop_prob=1.5)
    with pytest.raises(UserError, match="diffusion.prediction_type"):
        DiffusionConfig(prediction_type="score")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="diffusion.count_loss_weight"):
        DiffusionConfig(count_loss_weight=-1.0)


def test_tiny_denoiser_overfits_fixed_latents():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread
    try:
        torch.manual_seed(0)
        model = SegmentDiT(
            latent_dim=4, num_latents=2, max_segments=2, context_dim=8, width=32, depth=2, heads=4
        )
        diffusion = LatentDiffusion(DiffusionConfig(condition_drop_prob=0.0))
        gen = torch.Generator().manual_seed(0)
        x0 = F.normalize(torch.randn(4, 2, 2, 4, generator=gen), dim=-1) * 2.0
        sm = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.bool)
        k = sm.sum(1)
        c, cm = torch.randn(4, 3, 8, generator=gen), torch.ones(4, 3, dtype=torch.bool)
        # Fixed evaluation: every document at 8 timesteps spread over the schedule, fixed noise.
        r = 8
        eval_batch = (x0.repeat(r, 1, 1, 1), sm.repeat(r, 1), c.repeat(r, 1, 1), cm.repeat(r, 1), k.repeat(r))
        eval_t = torch.linspace(0, 999, 4 * r).long()
        eval_noise = torch.randn(eval_batch[0].shape, generator=gen)

        def eval_losses() -> tuple[float, float]:
            with torch.no_grad():
                out = diffusion.training_losses(
                    model, *eval_batch, t=eval_t, noise=eval_noise, generator=torch.Generator().manual_seed(1)
                )
            return float(out["diffusion_mse"]), float(out["count_ce"])

        mse0, ce0 = eval_losses()
        optim = torch.optim.AdamW(model.parameters(), lr=5e-3)
        for _ in range(200):
            loss = diffusion.training_losses(model, x0, sm, c, cm, k, generator=gen)["loss"]
            optim.zero_grad()
            loss.backward()
            optim.step()
        mse1, ce1 = eval_losses()
    finally:
        torch.set_num_threads(threads)
    assert mse1 < 0.6 * mse0, (mse0, mse1)
    assert ce1 < 0.1 * ce0, (ce0, ce1)


def test_autoencoder_decoder_trains_the_prediction_not_the_autoencoder(tmp_path):
    from tiny_models import LATENTS, WIDTH, save_tiny_bert, tiny_autoencoder

    from sld.diffusion.objective import autoencoder_decoder
    from sld.tokenization import decoder_labels

    autoencoder = tiny_autoencoder(save_tiny_bert(tmp_path / "bert"), seed=0).requires_grad_(False)
    decode = autoencoder_decoder(autoencoder)
    texts = ["Anna walked her dog in the park.", "Tom baked a cake for his mother."]
    target = autoencoder.encode_texts(texts).float()  # (2, N, D)
    labels = decoder_labels(autoencoder.decoder_tokenizer, texts, autoencoder.max_segment_tokens)
    pred = (
        target + 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    ).requires_grad_()
    mse, ce = decode(pred, target, labels)
    assert target.shape == (2, LATENTS, WIDTH) and mse.dim() == ce.dim() == 0 and mse > 0 and ce > 0
    (mse + ce).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in autoencoder.parameters())
    exact_mse, exact_ce = decode(target, target, labels)
    assert exact_mse.item() == 0.0 and exact_ce < ce


def test_a_counted_step_holds_the_self_conditioning_pass_at_its_expected_share():
    """fit counts the FLOPs of one micro-batch; whether that micro-batch ran the self-conditioning
    pass is a coin flip, so the objective replaces the coin's outcome by its expectation: the count
    is then the same whichever way the coin fell, halfway between never and always."""
    from sld.throughput import FlopCount

    model = tiny_dit()
    x0, sm, c, cm, k = batch()

    def counted(prob: float, seed: int) -> tuple[int, bool]:
        diffusion = LatentDiffusion(DiffusionConfig(self_conditioning_prob=prob))
        with FlopCount() as counter:
            losses = diffusion.training_losses(
                model, x0, sm, c, cm, k, generator=torch.Generator().manual_seed(seed)
            )
            losses["loss"].backward()
        return counter.total, bool(losses["self_conditioned"])

    never, _ = counted(0.0, 0)
    always, ran = counted(1.0, 0)
    assert ran and always > never
    outcomes = {}
    for seed in range(40):
        total, ran = counted(0.5, seed)
        outcomes.setdefault(ran, total)
        if len(outcomes) == 2:
            break
    assert set(outcomes) == {True, False}  # both sides of the coin were counted
    halfway = (never + always) / 2
    for total in outcomes.values():
        assert total == pytest.approx(halfway, rel=0.01)  # the count head (not in the first pass) aside


def test_the_passes_run_in_named_profiler_ranges():
    """profile.txt's digest lists these ranges: the self-conditioning pass against the trained one."""
    model = tiny_dit()
    diffusion = LatentDiffusion(DiffusionConfig(self_conditioning_prob=1.0))
    x0, sm, c, cm, k = batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        diffusion.training_losses(model, x0, sm, c, cm, k, generator=torch.Generator().manual_seed(5))
    names = {event.key for event in prof.key_averages()}
    assert {"sld.dm.self_conditioning", "sld.dm.denoiser"} <= names

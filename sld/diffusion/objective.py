"""The diffusion objective of stage 3: VP cosine schedule, v-prediction, self-conditioning, CFG dropout.

Follows the SLD paper (section 3.3) and LD4LG: a variance-preserving process

    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,        a_t = alphas_cumprod[t],  t in {0, ..., T-1}

with the cosine schedule of Nichol & Dhariwal. ``alphas_cumprod`` is taken from diffusers'
``DDPMScheduler(beta_schedule="squaredcos_cap_v2")`` itself, so training and sampling with any
diffusers scheduler built by ``sld.diffusion.sampling.make_scheduler`` share one schedule exactly.

``LatentDiffusion.training_losses`` returns every term as a tensor (never a Python float, the
reference code's defect), so each term really trains what it should:

* ``diffusion_mse``: L2 between the model output and the target, over real segments only;
* ``count_ce``: cross-entropy of the segment-count head;
* ``post_mse`` / ``post_ce`` (optional): the caller decodes the predicted x0 through the
  autoencoder's reconstructor and decoder; gradients flow back into the denoiser.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from sld.distributed import global_mean, micro_batch
from sld.errors import UserError
from sld.shapes import fold_segments
from sld.throughput import active_flop_count

__all__ = [
    "DiffusionConfig",
    "LatentDiffusion",
    "PostDiffusionDecode",
    "PredictionType",
    "autoencoder_decoder",
    "epsilon_from_prediction",
    "segment_mask_from_counts",
    "v_target",
    "vp_cosine_alphas_cumprod",
    "x0_from_prediction",
]

PredictionType = Literal["v_prediction", "epsilon", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("v_prediction", "epsilon", "sample")


@dataclass
class DiffusionConfig:
    """Diffusion hyper-parameters of stage 3 (run config section ``diffusion``).

    prediction_type: what the denoiser predicts: v (paper), epsilon, or the clean sample x0.
    num_train_timesteps: T, discrete steps of the cosine schedule.
    self_conditioning_prob: probability that a training batch gets the model's own x0 estimate as input;
        0 trains a denoiser without that input (``train_diffusion``), so its sampler feeds none.
    condition_drop_prob: per-example probability of replacing the source by the null context (CFG).
    count_loss_weight: weight of the segment-count cross-entropy.
    post_diffusion_weight_mse / post_diffusion_weight_ce: weights of the post-diffusion losses
        (paper 0.5 / 0.5; off by default because they decode every segment at every step).
    """

    prediction_type: PredictionType = "v_prediction"
    num_train_timesteps: int = 1000
    self_conditioning_prob: float = 0.5
    condition_drop_prob: float = 0.1
    count_loss_weight: float = 0.1
    post_diffusion_weight_mse: float = 0.0
    post_diffusion_weight_ce: float = 0.0

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"diffusion.prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {self.prediction_type!r}"
            )
        if self.num_train_timesteps < 2:
            raise UserError(f"diffusion.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        for key in ("self_conditioning_prob", "condition_drop_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"diffusion.{key} must be in [0, 1], got {value}")
        for key in ("count_loss_weight", "post_diffusion_weight_mse", "post_diffusion_weight_ce"):
            if getattr(self, key) < 0:
                raise UserError(f"diffusion.{key} must be >= 0, got {getattr(self, key)}")

    @property
    def uses_post_diffusion(self) -> bool:
        return self.post_diffusion_weight_mse > 0 or self.post_diffusion_weight_ce > 0


@lru_cache(maxsize=8)
def _alphas_cumprod(num_train_timesteps: int) -> torch.Tensor:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2")
    return scheduler.alphas_cumprod.clone()


def vp_cosine_alphas_cumprod(num_train_timesteps: int = 1000) -> torch.Tensor:
    """(T,) float32 cumulative alphas of the cosine VP schedule, identical to diffusers' ``squaredcos_cap_v2``."""
    return _alphas_cumprod(num_train_timesteps).clone()


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) matching ``like``'s rank, on its device and dtype."""
    a = a.to(device=like.device, dtype=like.dtype)
    return a.reshape(a.shape + (1,) * (like.dim() - a.dim()))


def v_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The velocity v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022). ``alpha_bar`` is (B,)."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def x0_from_prediction(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """The clean-sample estimate implied by a model output.

    v:       x0 = sqrt(a) x_t - sqrt(1 - a) v
    epsilon: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    sample:  x0 = prediction
    """
    a = _bcast(alpha_bar, x_t)
    if prediction_type == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * prediction
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * prediction) / a.sqrt()
    if prediction_type == "sample":
        return prediction
    raise UserError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}")


def epsilon_from_prediction(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """The noise estimate implied by a model output (v: eps = sqrt(1 - a) x_t + sqrt(a) v)."""
    a = _bcast(alpha_bar, x_t)
    if prediction_type == "v_prediction":
        return (1 - a).sqrt() * x_t + a.sqrt() * prediction
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "sample":
        return (x_t - a.sqrt() * prediction) / (1 - a).sqrt()
    raise UserError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}")


def segment_mask_from_counts(num_segments: torch.Tensor, max_segments: int) -> torch.Tensor:
    """(B,) segment counts -> (B, S) bool mask, True on the first ``min(count, S)`` segments."""
    positions = torch.arange(max_segments, device=num_segments.device)
    return positions[None] < num_segments[:, None].clamp(max=max_segments)


class PostDiffusionDecode(Protocol):
    """Callable the caller supplies for the post-diffusion losses (usually autoencoder reconstructor + decoder).

    Args:
        x0_pred: (B', N, D) predicted clean latents of the B' real segments of the batch, with
            gradient back into the denoiser. Re-normalise them here if the autoencoder expects
            latents of norm sqrt(D).
        x0_target: (B', N, D) the true latents of the same segments.
        segment_tokens: ``segment_tokens`` given to ``training_losses``, folded to (B*S, ...) and
            restricted to the same B' real segments (a tensor, a mapping of tensors, or None).

    Returns:
        (mse_term, ce_term): scalar tensors, e.g. MSE between the reconstructor's outputs on
        ``x0_pred`` and ``x0_target``, and the decoder's cross-entropy on the segment tokens.
    """

    def __call__(
        self,
        x0_pred: torch.Tensor,
        x0_target: torch.Tensor,
        segment_tokens: torch.Tensor | Mapping[str, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def autoencoder_decoder(autoencoder: nn.Module) -> PostDiffusionDecode:
    """The paper's post-diffusion decode through a frozen ``SegmentAutoencoder``.

    ``post_mse``: MSE between the reconstructor's memory of the predicted and of the true latents;
    ``post_ce``: the decoder's cross-entropy on the segment tokens given the predicted latents
    (``segment_tokens`` are (B', L) decoder labels, -100 on padding). Gradients flow through the
    frozen autoencoder into the denoiser's prediction, never into the autoencoder.
    """

    def decode(
        x0_pred: torch.Tensor,
        x0_target: torch.Tensor,
        segment_tokens: torch.Tensor | Mapping[str, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x0_pred, x0_target (B', N, D); segment_tokens (B', L) decoder targets of the same segments
        memory_pred = autoencoder.memory(x0_pred)
        with torch.no_grad():
            memory_true = autoencoder.memory(x0_target)
        mse = (memory_pred.float() - memory_true.float()).pow(2).mean()
        ce = autoencoder.reconstruction_loss(x0_pred, segment_tokens)
        return mse, ce

    return decode


def _select_segments(
    tokens: torch.Tensor | Mapping[str, torch.Tensor] | None, keep: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor] | None:
    if tokens is None:
        return None
    if isinstance(tokens, Mapping):
        return {k: fold_segments(v)[keep] for k, v in tokens.items()}
    return fold_segments(tokens)[keep]


class LatentDiffusion:
    """Owns the VP cosine schedule and the training losses of the segment-latent denoiser."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        self.num_train_timesteps = self.config.num_train_timesteps
        self.prediction_type: PredictionType = self.config.prediction_type
        # Same name and values as the diffusers schedulers', so helpers accept either.
        self.alphas_cumprod = vp_cosine_alphas_cumprod(self.num_train_timesteps)
        self._alphas_by_device: dict[torch.device, torch.Tensor] = {}

    # ----------------------------------------------------------------- schedule

    def alphas_cumprod_on(self, device: torch.device | str) -> torch.Tensor:
        """(T,) float32 ``alphas_cumprod`` on ``device``, copied there once.

        Copying the table at every call cost a host sync per call on a GPU (a copy from pageable
        memory waits for the device's queue to drain): two or three a denoiser training step.
        """
        device = torch.device(device)
        table = self._alphas_by_device.get(device)
        if table is None:
            table = self._alphas_by_device[device] = self.alphas_cumprod.to(device)
        return table

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) integer timesteps -> (B,) float32 a_t on t's device."""
        return self.alphas_cumprod_on(t.device)[t.long()]

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) integer timesteps -> (B,) float time t / T in [0, 1), what the denoiser is given."""
        return t.float() / self.num_train_timesteps

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B,) uniform integer timesteps in [0, T)."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise. x0, noise (B, ...); t (B,) integer."""
        a = _bcast(self.alpha_bar(t), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target for ``prediction_type``: v, eps or x0."""
        if self.prediction_type == "v_prediction":
            return v_target(x0, noise, self.alpha_bar(t))
        if self.prediction_type == "epsilon":
            return noise
        return x0

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 estimate implied by a model output at integer timesteps t (B,)."""
        return x0_from_prediction(model_output, x_t, self.alpha_bar(t), self.prediction_type)

    # ----------------------------------------------------------------- losses

    def training_losses(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        segment_mask: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        num_segments: torch.Tensor,
        decode_fn: PostDiffusionDecode | None = None,
        segment_tokens: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        post_diffusion: bool | None = None,
        all_segments_real: bool = False,
    ) -> dict[str, torch.Tensor]:
        """All stage-3 losses for one batch.

        Args:
            model: a ``SegmentDiT`` (or a data-parallel wrapper of one).
            x0: (B, S, N, D) clean segment latents (anything on padded segments).
            segment_mask: (B, S) bool, True on real segments.
            context: (B, T, C) source-encoder states, or None (unconditional).
            context_mask: (B, T) bool.
            num_segments: (B,) true segment counts (may exceed S; clamped to the count head's classes).
            decode_fn: post-diffusion decoder, required when a post-diffusion weight is > 0.
            segment_tokens: (B, S, ...) tensor or mapping of such, handed to ``decode_fn`` for the real segments.
            t, noise: (B,) integer timesteps and (B, S, N, D) noise; drawn here when None (tests fix them).
            generator: optional RNG for timesteps, noise and the random dropout/self-conditioning choices
                (None: the micro-batch's ``sld.distributed.micro_batch()`` inside ``fit``, else torch's).
            post_diffusion: compute the post-diffusion terms; None = when a post-diffusion weight is > 0
                (validation sets False: it scores the diffusion MSE alone).
            all_segments_real: the caller knows (on the host, from its collator) that ``segment_mask``
                is True everywhere: the denoiser is then called without it, so its self-attention runs
                unmasked (flash kernels); the same losses.

        Returns:
            dict of tensors: ``loss`` (the weighted total, differentiable), ``diffusion_mse``,
            ``count_ce`` and, when enabled, ``post_mse`` / ``post_ce`` (differentiable terms), plus
            ``count_accuracy`` and ``self_conditioned`` (detached, for logging).
        """
        cfg = self.config
        b, s = x0.shape[:2]
        device = x0.device
        segment_mask = segment_mask.to(device=device, dtype=torch.bool)
        if segment_mask.shape != (b, s):
            raise UserError(f"segment_mask must be (B={b}, S={s}), got shape {tuple(segment_mask.shape)}")
        model_mask = None if all_segments_real else segment_mask  # what the denoiser sees
        post_diffusion = cfg.uses_post_diffusion if post_diffusion is None else post_diffusion
        if post_diffusion and decode_fn is None:
            raise UserError(
                "diffusion.post_diffusion_weight_mse/_ce > 0 needs a decode_fn (the autoencoder's reconstructor + decoder)"
            )

        if t is None:
            t = _draw(torch.randint, generator, device, 0, self.num_train_timesteps, (b,))
        if noise is None:
            noise = _draw(torch.randn, generator, device, x0.shape).to(x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        time = self.model_time(t)
        drop_context = _draw(torch.rand, generator, device, (b,)) < cfg.condition_drop_prob

        # Self-conditioning (Chen et al. 2022): on a fraction of batches, first predict x0 without
        # self-conditioning (no gradient), then feed that estimate back as an input.
        self_cond = None
        # Drawn on the CPU (when no generator fixes the device) so the decision costs no device sync.
        coin = _draw(torch.rand, generator, torch.device("cpu"), ()).item()
        use_self_cond = coin < cfg.self_conditioning_prob and _self_conditioning(model)
        # While fit counts this micro-batch's FLOPs, both forward passes are counted on their own too,
        # so that the count holds the self-conditioning pass's expected share, not this coin's outcome.
        counter = active_flop_count()
        region = counter.region if counter else nullcontext
        self_cond_flops = 0
        if use_self_cond:
            # named ranges in torch.profiler summaries (profile.txt lists their device time)
            with torch.no_grad(), region() as part, record_function("sld.dm.self_conditioning"):
                first = model(x_t, time, context, context_mask, model_mask, None, drop_context)
                self_cond = self.predict_x0(first, x_t, t).detach()
            self_cond_flops = part.get_total_flops() if counter else 0

        with region() as part, record_function("sld.dm.denoiser"):
            output, count_logits = model(
                x_t,
                time,
                context,
                context_mask,
                model_mask,
                self_cond,
                drop_context,
                return_count_logits=True,
            )
        if counter:
            # one pass of the same shapes (its count head aside, a few FLOPs) on a share p of the steps
            share = cfg.self_conditioning_prob if _self_conditioning(model) else 0.0
            counter.adjust(share * part.get_total_flops() - self_cond_flops)

        # L2 per segment over (N, D), averaged over real segments only.
        target = self.target(x0, noise, t)
        per_segment = (output.float() - target.float()).pow(2).mean(dim=(2, 3))  # (B, S)
        weights = segment_mask.float()
        # over the real segments of the global batch when several processes train (sld.distributed)
        diffusion_mse = global_mean((per_segment * weights).sum(), weights.sum())

        labels = num_segments.to(device).long().clamp(1, count_logits.shape[-1]) - 1
        count_ce = F.cross_entropy(count_logits.float(), labels)
        losses: dict[str, torch.Tensor] = {
            "diffusion_mse": diffusion_mse,
            "count_ce": count_ce,
        }
        loss = diffusion_mse + cfg.count_loss_weight * count_ce

        if post_diffusion:
            keep = fold_segments(segment_mask)  # (B*S,)
            x0_pred = fold_segments(self.predict_x0(output, x_t, t))[keep]  # (B', N, D), differentiable
            post_mse, post_ce = decode_fn(
                x0_pred, fold_segments(x0)[keep], _select_segments(segment_tokens, keep)
            )
            losses["post_mse"] = post_mse
            losses["post_ce"] = post_ce
            loss = loss + cfg.post_diffusion_weight_mse * post_mse + cfg.post_diffusion_weight_ce * post_ce

        losses["loss"] = loss
        losses["count_accuracy"] = (count_logits.argmax(-1) == labels).float().mean().detach()
        # a fill on the device: torch.tensor(value, device=...) copies from the host and waits for it
        losses["self_conditioned"] = torch.full((), float(use_self_cond), device=device)
        return losses


def _draw(fn, generator: torch.Generator | None, device: torch.device, *args) -> torch.Tensor:
    """Call a torch random function on the generator's device (if any) and move the result to ``device``.

    Without a generator, inside ``fit`` the micro-batch's :class:`~sld.distributed.MicroBatch`
    draws (the same numbers for each row of the global batch on any number of processes);
    elsewhere the global torch RNG.
    """
    if generator is None and (random := micro_batch()) is not None:
        return random.draw(fn, device, *args)
    where = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=where).to(device)


def _self_conditioning(model: nn.Module) -> bool:
    """Whether the (possibly wrapped) denoiser takes a self-conditioning input."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    config = getattr(inner, "config", None)
    return bool(getattr(config, "self_conditioning", True))

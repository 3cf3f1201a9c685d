"""Sampling segment latents with diffusers schedulers (SLD paper section 3.3, "generation").

``make_scheduler`` builds DDPM, DDIM or DPM-Solver++ on the same VP cosine schedule the objective
trains with (``squaredcos_cap_v2``), so any of them can sample a trained ``SegmentDiT``.
``sample_latents`` runs the reverse process over (B, S, N, D) latents with classifier-free guidance,
self-conditioning and per-latent re-projection to norm sqrt(D), and can report every step to a
callback (``TrajectoryRecorder`` keeps them for denoising-trajectory plots).

The step loop never reads a device tensor on the host (no ``.item()``, ``.tolist()``, ``bool(t)``,
``int(t)``): the timesteps are Python ints taken from the scheduler once before the loop, the
schedulers keep their coefficients on the CPU, and DPM-Solver++ starts from ``set_begin_index(0)``
instead of searching its timesteps on the device. So a GPU runs the whole loop without waiting
for the host, and every step has the same shapes (friendly to ``torch.compile`` of the denoiser).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from sld.diffusion.linear_steps import LinearStep, coefficient_table, linear_steps
from sld.diffusion.objective import (
    PREDICTION_TYPES,
    PredictionType,
    segment_mask_from_counts,
    vp_cosine_alphas_cumprod,
    x0_from_prediction,
)
from sld.errors import UserError
from sld.models.cuda_graphs import denoiser_replay_backend, replayed
from sld.models.denoiser import SegmentDiT

__all__ = [
    "SCHEDULER_NAMES",
    "SamplingStep",
    "SchedulerName",
    "TrajectoryRecorder",
    "choose_num_segments",
    "forward_noise",
    "graphed_denoiser",
    "host_timesteps",
    "make_scheduler",
    "sample_latents",
    "segment_mask_from_counts",
]

SchedulerName = Literal["ddpm", "ddim", "dpm++"]
SCHEDULER_NAMES: tuple[str, ...] = ("ddpm", "ddim", "dpm++")


def make_scheduler(
    name: SchedulerName = "ddpm",
    num_train_timesteps: int = 1000,
    prediction_type: PredictionType = "v_prediction",
) -> SchedulerMixin:
    """A diffusers scheduler on the VP cosine schedule used in training.

    * ``ddpm``: ancestral sampling (paper: 250 steps);
    * ``ddim``: deterministic (eta 0);
    * ``dpm++``: DPM-Solver++ second-order multistep, good at 10-50 steps.

    Clipping and thresholding are off (latents are not in [-1, 1]); timesteps are "trailing" so the
    first step starts from t = T - 1, where the input really is pure noise.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}"
        )
    common = dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        timestep_spacing="trailing",
    )
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=False,
            lower_order_final=True,
        )
    raise UserError(f"scheduler must be one of {', '.join(SCHEDULER_NAMES)}; got {name!r}")


def forward_noise(
    x0: torch.Tensor,
    t: torch.Tensor | int,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise clean latents to integer timestep t: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise.

    Args:
        x0: (B, ...) clean latents, e.g. (B, S, N, D).
        t: (B,) or scalar integer timesteps.
        noise: like x0.
        alphas_cumprod: (T,) schedule; default the 1000-step cosine schedule (``scheduler.alphas_cumprod``
            or ``LatentDiffusion.alphas_cumprod`` fit here).
    """
    if alphas_cumprod is None:
        alphas_cumprod = vp_cosine_alphas_cumprod(1000)
    t = torch.as_tensor(t, device=x0.device).long()
    if t.dim() == 0:
        t = t.expand(x0.shape[0])
    a = alphas_cumprod.to(x0.device, torch.float32)[t].to(x0.dtype)
    a = a.reshape(a.shape + (1,) * (x0.dim() - 1))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def choose_num_segments(
    logits: torch.Tensor,
    mode: Literal["argmax", "sample"] = "argmax",
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Segment counts from count-head logits (B, K): class k means k + 1 segments.

    ``argmax`` takes the most likely count; ``sample`` draws from softmax(logits / temperature).
    Returns (B,) long counts in [1, K].
    """
    if mode == "argmax":
        return logits.argmax(dim=-1) + 1
    if mode == "sample":
        if temperature <= 0:
            raise UserError(f"count 'temperature' must be > 0, got {temperature}")
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        where = generator.device if generator is not None else probs.device
        draws = torch.multinomial(probs.to(where), 1, generator=generator).squeeze(-1)
        return draws.to(logits.device) + 1
    raise UserError(f"count mode must be 'argmax' or 'sample'; got {mode!r}")


@dataclass
class SamplingStep:
    """What one reverse step reports to a callback.

    index: step number, 0 .. num_inference_steps - 1.
    timestep: the integer timestep t the model saw.
    sample: (B, S, N, D) x_t, the input of this step.
    x0_pred: (B, S, N, D) the (guided) clean-latent estimate at this step.
    prev_sample: (B, S, N, D) the output of the step (after re-projection), the next x_t.
    """

    index: int
    timestep: int
    sample: torch.Tensor
    x0_pred: torch.Tensor
    prev_sample: torch.Tensor


@dataclass
class TrajectoryRecorder:
    """A ``sample_latents`` callback that keeps CPU copies of every (or every ``every``-th) step."""

    every: int = 1
    steps: list[SamplingStep] = field(default_factory=list)

    def __call__(self, step: SamplingStep) -> None:
        if step.index % self.every == 0:
            self.steps.append(
                SamplingStep(
                    step.index,
                    step.timestep,
                    step.sample.detach().float().cpu(),
                    step.x0_pred.detach().float().cpu(),
                    step.prev_sample.detach().float().cpu(),
                )
            )

    @property
    def timesteps(self) -> list[int]:
        return [s.timestep for s in self.steps]

    def stack(self, what: Literal["sample", "x0_pred", "prev_sample"] = "x0_pred") -> torch.Tensor:
        """(steps, B, S, N, D) tensor of one recorded quantity."""
        return torch.stack([getattr(s, what) for s in self.steps])


def host_timesteps(scheduler: SchedulerMixin, num_inference_steps: int) -> list[int]:
    """Set the scheduler to ``num_inference_steps`` and return its timesteps as Python ints.

    The scheduler's timesteps stay on the CPU and are read once here, so the sampling loop indexes
    schedules with ints and never synchronises with the device. Schedulers that track a step index
    (DPM-Solver++) start at index 0 without searching for the first timestep.
    """
    if num_inference_steps < 1:
        raise UserError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    return [int(t) for t in scheduler.timesteps.tolist()]


# Compiled graphs kept: one per (denoiser, batch, segments, context length, self-conditioning) met
GRAPHED_RECOMPILE_LIMIT = 64


def _denoiser_forward(model: SegmentDiT, *args: torch.Tensor | None) -> torch.Tensor:
    return model(*args)


def graphed_denoiser(model: SegmentDiT, trace_on_cpu: bool = False) -> Callable[..., torch.Tensor]:
    """``model``'s forward for sampling with ``graphed=True``: on CUDA replayed as a CUDA graph.

    ``sld.models.cuda_graphs.replayed`` with the backend of the static decoder's token step, or
    ``$SLD_DENOISER_GRAPH_BACKEND``'s (``denoiser_replay_backend``): dynamo traces the forward once
    per input shape, then every sampling step is one replay of the recorded kernels instead of a few
    hundred launches from Python (the step of a small denoiser at a small batch is launch-bound). A
    graph's output buffer is reused by its next replay: callers copy what they keep. On a CPU there
    is nothing to replay and ``model`` itself is returned; ``trace_on_cpu`` traces it with the
    ``eager`` backend instead (tests: a graph break then fails). One compiled function per device
    type and backend serves every denoiser (the model is its argument), so none is kept alive by it.
    """
    if model.device.type != "cuda" and not trace_on_cpu:
        return model
    backend = denoiser_replay_backend(model.device)
    step = replayed(_denoiser_forward, model.device, backend, GRAPHED_RECOMPILE_LIMIT)
    return functools.partial(step, model)


# SLD_FUSED_SAMPLER=1 runs each DDIM / DPM-Solver++ step of a graphed sampling loop as one graph
# (``fused_sampling_step``); opt-in: on an H200 ten guided steps at batch 64 took 1.02x the time of the
# scheduler's own step (docs/results.md, thirteenth session); tested against the eager loop on the CPU
FUSED_SAMPLER_ENV = "SLD_FUSED_SAMPLER"


def _guided_output(
    forward: Callable[..., torch.Tensor],
    x_in: torch.Tensor,
    time: torch.Tensor,
    self_cond: torch.Tensor | None,
    model_inputs: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None],
    guidance_scale: float,
    dtype: torch.dtype,
    copy_output: bool = False,
) -> torch.Tensor:
    """The denoiser's float32 (B, S, N, D) output for (B, ...) inputs, with classifier-free guidance:
    at ``guidance_scale != 1`` the inputs are doubled, as ``model_inputs`` (context, context_mask,
    segment_mask, drop) already are, and uncond + w (cond - uncond) is returned. ``copy_output``: a
    float32 output is copied (a graph replay overwrites its output buffer)."""
    guided = guidance_scale != 1.0
    if guided:
        x_in, time = torch.cat([x_in, x_in]), torch.cat([time, time])
        self_cond = None if self_cond is None else torch.cat([self_cond, self_cond])
    context, context_mask, segment_mask, drop = model_inputs
    raw = forward(
        x_in.to(dtype),
        time,
        context,
        context_mask,
        segment_mask,
        None if self_cond is None else self_cond.to(dtype),
        drop,
    )
    out = raw.float()
    if copy_output and out is raw:
        out = raw.clone()
    if guided:
        cond, uncond = out.chunk(2)
        out = uncond + guidance_scale * (cond - uncond)
    return out


def _fused_step(
    model: SegmentDiT,
    x: torch.Tensor,
    history: tuple[torch.Tensor, ...],
    self_cond: torch.Tensor | None,
    row: torch.Tensor,
    context: torch.Tensor | None,
    context_mask: torch.Tensor | None,
    segment_mask: torch.Tensor,
    drop: torch.Tensor | None,
    real: torch.Tensor,
    *,
    guidance_scale: float,
    prediction_type: PredictionType,
    renormalize: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One whole sampling step of a linear scheduler (``sld.diffusion.linear_steps``).

    Args:
        x: (B, S, N, D) float32 current sample; history: the scheduler's H earlier kept outputs,
            each like x, oldest first; self_cond: (B, S, N, D) the previous x0 estimate or None.
        row: (7 + H,) this step's row of ``coefficient_table``.
        context, context_mask, segment_mask, drop: the denoiser's inputs, already doubled for
            guidance (2B rows) when ``guidance_scale != 1``; real: (B, S, 1, 1) float segment mask.

    Returns:
        prev: (B, S, N, D) the next sample; kept: the output the scheduler keeps for later steps;
        x0_pred: the clean-latent estimate (zero on padded segments).
    """
    b = x.shape[0]
    model_inputs = (context, context_mask, segment_mask, drop)
    out = _guided_output(model, row[0] * x, row[1].expand(b), self_cond, model_inputs, guidance_scale, dtype)
    x0_pred = x0_from_prediction(out, x, row[2].expand(b), prediction_type) * real
    prev = row[3] * x + row[4] * out
    for j, earlier in enumerate(history):
        prev = prev + row[7 + j] * earlier
    kept = row[5] * x + row[6] * out
    if renormalize:
        prev = _renormalize(prev)
    return prev * real, kept, x0_pred


def fused_sampling_step(
    model: SegmentDiT, trace_on_cpu: bool = False
) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``_fused_step`` for ``model``, compiled like ``graphed_denoiser`` (a CUDA graph per input shape
    on a GPU, replayed once a step; its outputs are overwritten by the next replay). On a CPU the
    plain function, unless ``trace_on_cpu`` (dynamo's eager backend, tests)."""
    if model.device.type != "cuda" and not trace_on_cpu:
        return functools.partial(_fused_step, model)
    backend = denoiser_replay_backend(model.device)
    step = replayed(_fused_step, model.device, backend, GRAPHED_RECOMPILE_LIMIT)
    return functools.partial(step, model)


def fused_sampler_enabled() -> bool:
    """True when ``$SLD_FUSED_SAMPLER`` is "1" (default "0": off)."""
    value = os.environ.get(FUSED_SAMPLER_ENV, "0").strip()
    if value not in ("0", "1"):
        raise UserError(f"{FUSED_SAMPLER_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def _renormalize(latents: torch.Tensor) -> torch.Tensor:
    """Re-project every latent vector (last dim D) to norm sqrt(D), as the autoencoder emits them."""
    return F.normalize(latents, dim=-1) * math.sqrt(latents.shape[-1])


@torch.no_grad()
def sample_latents(
    model: SegmentDiT,
    scheduler: SchedulerMixin,
    context: torch.Tensor | None,
    context_mask: torch.Tensor | None = None,
    num_segments: torch.Tensor | None = None,
    segment_mask: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    renormalize: bool = True,
    self_conditioning: bool | None = None,
    latents: torch.Tensor | None = None,
    callback: Callable[[SamplingStep], None] | None = None,
    progress: bool = False,
    graphed: bool = False,
) -> torch.Tensor:
    """Generate (B, S, N, D) segment latents by running the reverse diffusion process.

    Args:
        model: the denoiser (unwrapped); it is put in eval mode for the call and restored after.
        scheduler: from ``make_scheduler``, with the prediction type the model was trained on.
        context: (B, T, C) source-encoder states, or None (unconditional).
        context_mask: (B, T) bool.
        num_segments: (B,) segment counts in [1, S] (e.g. from ``choose_num_segments``); or give
        segment_mask: (B, S') bool directly, S' <= ``model.config.max_segments``.
        num_inference_steps: reverse steps.
        guidance_scale: classifier-free guidance weight w: uncond + w (cond - uncond). At w = 1 the
            unconditional pass is skipped and the output is exactly the conditional prediction.
        generator: RNG for the initial noise and the DDPM noise.
        renormalize: re-project each latent to norm sqrt(D) after every step (for autoencoders whose
            latents are l2-normalised and scaled to sqrt(D)).
        self_conditioning: feed the previous x0 estimate back; default the model's config.
        latents: (B, S, N, D) initial noise x_T; drawn from ``generator`` when None.
        callback: called with a ``SamplingStep`` after every step (see ``TrajectoryRecorder``).
        progress: show a tqdm progress bar.
        graphed: run the denoiser through ``graphed_denoiser`` (a CUDA graph per input shape on a
            GPU, the plain model on a CPU; pays for many batches of one shape, so pad the context to
            a few lengths). With a linear scheduler (DDIM, DPM-Solver++; ``linear_steps``) the whole
            step, update included, is one graph with ``SLD_FUSED_SAMPLER=1`` (``fused_sampling_step``).

    Returns:
        (B, S, N, D) latents, zero on padded segments.
    """
    cfg = model.config
    if segment_mask is None:
        if num_segments is None:
            raise UserError("sample_latents needs 'num_segments' or 'segment_mask'")
        segment_mask = segment_mask_from_counts(torch.as_tensor(num_segments), cfg.max_segments)
    device = model.device
    dtype = model.dtype
    segment_mask = segment_mask.to(device=device, dtype=torch.bool)
    b, s = segment_mask.shape
    if s > cfg.max_segments:
        raise UserError(
            f"segment_mask has {s} segments, more than the denoiser's max_segments={cfg.max_segments}"
        )
    if not bool(segment_mask.any(dim=1).all()):
        raise UserError("every document needs at least one segment (num_segments >= 1)")
    if guidance_scale < 0:
        raise UserError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if context is not None:
        context = context.to(device)
    if context_mask is not None:
        context_mask = context_mask.to(device)
    if self_conditioning is None:
        self_conditioning = bool(cfg.self_conditioning)
    self_conditioning = self_conditioning and bool(cfg.self_conditioning)
    prediction_type = scheduler.config.prediction_type
    num_train_timesteps = scheduler.config.num_train_timesteps
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    shape = (b, s, cfg.num_latents, cfg.latent_dim)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    elif tuple(latents.shape) != shape:
        raise UserError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    latents = latents.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    real = segment_mask[:, :, None, None].to(latents.dtype)
    latents = latents * real

    # CFG runs the conditional and the unconditional (null-context) passes as one batch.
    guided = guidance_scale != 1.0
    if guided:
        model_context = None if context is None else torch.cat([context, context])
        model_context_mask = None if context_mask is None else torch.cat([context_mask, context_mask])
        model_segment_mask = torch.cat([segment_mask, segment_mask])
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)
    else:
        model_context, model_context_mask, model_segment_mask, drop = (
            context,
            context_mask,
            segment_mask,
            None,
        )

    timesteps = host_timesteps(scheduler, num_inference_steps)
    linear = linear_steps(scheduler, timesteps) if graphed and fused_sampler_enabled() else None
    was_training = model.training
    model.eval()
    if linear is not None:
        try:
            return _sample_fused(
                model,
                latents,
                linear,
                coefficient_table(linear, num_train_timesteps, scheduler.alphas_cumprod, device),
                (model_context, model_context_mask, model_segment_mask, drop, real),
                guidance_scale=guidance_scale,
                prediction_type=prediction_type,
                renormalize=renormalize,
                self_conditioning=self_conditioning,
                callback=callback,
                progress=progress,
            )
        finally:
            model.train(was_training)
    forward = graphed_denoiser(model) if graphed else model
    replayed = forward is not model  # its outputs are overwritten by its next replay
    x0_pred = None
    try:
        # No host reads of device tensors in here: t is a Python int (see the module docstring).
        for index, t in enumerate(tqdm(timesteps, disable=not progress, desc="sampling", leave=False)):
            out = _guided_output(
                forward,
                scheduler.scale_model_input(latents, t),
                torch.full((b,), t / num_train_timesteps, device=device),
                x0_pred if self_conditioning else None,
                (model_context, model_context_mask, model_segment_mask, drop),
                guidance_scale,
                dtype,
                copy_output=replayed,
            )

            alpha_bar = alphas_cumprod[t].expand(b)
            x0_pred = x0_from_prediction(out, latents, alpha_bar, prediction_type) * real
            step = scheduler.step(out, t, latents, generator=generator, return_dict=True)
            prev = step.prev_sample
            if renormalize:
                prev = _renormalize(prev)
            prev = prev * real
            if callback is not None:
                callback(SamplingStep(index, t, latents, x0_pred, prev))
            latents = prev
    finally:
        model.train(was_training)
    return latents


def _sample_fused(
    model: SegmentDiT,
    latents: torch.Tensor,
    steps: list[LinearStep],
    table: torch.Tensor,
    model_inputs: tuple[torch.Tensor | None, ...],
    *,
    guidance_scale: float,
    prediction_type: PredictionType,
    renormalize: bool,
    self_conditioning: bool,
    callback: Callable[[SamplingStep], None] | None,
    progress: bool,
) -> torch.Tensor:
    """``sample_latents``' loop with ``fused_sampling_step``: (B, S, N, D) latents x_T -> x_0.

    ``table`` is ``coefficient_table(steps, ...)`` (K, 7 + H); ``model_inputs`` the denoiser's
    (context, context_mask, segment_mask, drop, real) as ``sample_latents`` prepared them.
    """
    context, context_mask, segment_mask, drop, real = model_inputs
    step_fn = fused_sampling_step(model)
    replayed = model.device.type == "cuda"  # graph outputs are overwritten by the next replay
    slots = table.shape[1] - 7
    history = tuple(torch.zeros_like(latents) for _ in range(slots))
    x0_pred = None
    for index, step in enumerate(tqdm(steps, disable=not progress, desc="sampling", leave=False)):
        prev, kept, estimate = step_fn(
            latents,
            history,
            x0_pred if self_conditioning else None,
            table[index],
            context,
            context_mask,
            segment_mask,
            drop,
            real,
            guidance_scale=float(guidance_scale),
            prediction_type=prediction_type,
            renormalize=renormalize,
            dtype=model.dtype,
        )
        if replayed:
            prev, kept, estimate = prev.clone(), kept.clone(), estimate.clone()
        history = (*history[1:], kept) if slots else ()
        x0_pred = estimate
        if callback is not None:
            callback(SamplingStep(index, step.timestep, latents, x0_pred, prev))
        latents = prev
    return latents

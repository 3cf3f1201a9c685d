"""A deterministic scheduler's reverse steps as linear maps, found by probing the scheduler itself.

DDIM (eta 0) and DPM-Solver++ (multistep, ODE, no thresholding) update each latent coordinate
linearly: with x the current sample, m the model output and h_j the scheduler's own earlier
(converted) outputs,

    model input   = scale * x
    prev sample   = a * x + b * m + sum_j c_j * h_j
    kept output   = d * x + e * m          (DPM-Solver++'s converted output, the next step's h)

with coefficients that depend only on the step. ``linear_steps`` reads them from the diffusers
scheduler instead of re-deriving its formulas: it runs each step of a copy of the scheduler once on
basis vectors (coordinate 0 carries x, 1 carries m, 2 + j carries h_j, so one call returns every
coefficient) and checks the map on random inputs. A scheduler whose step is not such a map (DDPM's
added noise, clipping, thresholding) fails the check and ``linear_steps`` returns None.

With ``graphed=True`` and ``SLD_FUSED_SAMPLER=1`` (opt-in: no faster on an H200 at batch 64),
``sample_latents`` uses the coefficients to run a whole sampling step (denoiser, guidance, update,
re-projection) as one compiled function: one CUDA-graph replay a step instead of the graph of the
denoiser followed by the scheduler's few dozen eager launches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["LinearStep", "coefficient_table", "linear_steps"]

# the random check: relative error allowed between the scheduler's step and the linear map (float32)
CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LinearStep:
    """One reverse step as a linear map (see the module docstring).

    ``history`` holds c_j for the scheduler's earlier outputs, oldest first (empty for DDIM).
    """

    timestep: int
    scale: float
    a: float
    b: float
    history: tuple[float, ...]
    d: float
    e: float


def _history_slots(scheduler: SchedulerMixin) -> int:
    """How many earlier converted outputs a step reads (solver order - 1; 0 without a history)."""
    outputs = getattr(scheduler, "model_outputs", None)
    return max(len(outputs) - 1, 0) if outputs is not None else 0


def _set_history(scheduler: SchedulerMixin, values: list[torch.Tensor]) -> None:
    """Put ``values`` into the history slots the next step reads (model_outputs[1:]); slots still
    empty (None: the first steps) stay empty, as the step does not read them."""
    for j, value in enumerate(values):
        if scheduler.model_outputs[j + 1] is not None:
            scheduler.model_outputs[j + 1] = value


def _step(scheduler: SchedulerMixin, out: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    return scheduler.step(out, t, x, return_dict=True).prev_sample


def _probe(scheduler: SchedulerMixin, t: int, slots: int) -> LinearStep:
    """The coefficients of the step at ``t`` of (a copy of) ``scheduler`` in its current state."""
    probe = copy.deepcopy(scheduler)
    basis = torch.eye(2 + slots, dtype=torch.float32)[:, None, :]  # (P, 1, P): 2-D inputs, as a batch of 1
    scale = float(probe.scale_model_input(basis[0], t)[0, 0])
    _set_history(probe, [basis[2 + j] for j in range(slots)])
    prev = _step(probe, basis[1], t, basis[0])[0]
    d = e = 0.0
    if slots:
        kept = probe.model_outputs[-1][0]
        d, e = float(kept[0]), float(kept[1])
    return LinearStep(
        timestep=t,
        scale=scale,
        a=float(prev[0]),
        b=float(prev[1]),
        history=tuple(float(prev[2 + j]) for j in range(slots)),
        d=d,
        e=e,
    )


def _is_linear(scheduler: SchedulerMixin, step: LinearStep, slots: int) -> bool:
    """Does the scheduler's step at ``step.timestep`` equal the linear map on random inputs?"""
    probe = copy.deepcopy(scheduler)
    generator = torch.Generator().manual_seed(step.timestep)
    x, out, *history = (10 * torch.randn(1, 64, generator=generator) for _ in range(2 + slots))
    had_history = [probe.model_outputs[j + 1] is not None for j in range(slots)]
    _set_history(probe, history)
    got = _step(probe, out, step.timestep, x)
    expected = step.a * x + step.b * out
    for c, h, present in zip(step.history, history, had_history, strict=True):
        if present:
            expected = expected + c * h
    scale = float(expected.abs().max().clamp_min(1.0))
    return bool((got - expected).abs().max() <= CHECK_TOLERANCE * scale)


# probing deep-copies the scheduler and runs its step three times a step: the answers are kept per
# (scheduler class, config, timesteps), so a generation run probes once, not once a batch
_CACHE: dict[tuple[str, str, tuple[int, ...]], list[LinearStep] | None] = {}
CACHE_SIZE = 64


def linear_steps(scheduler: SchedulerMixin, timesteps: list[int]) -> list[LinearStep] | None:
    """Every step of ``timesteps`` as a ``LinearStep``, or None if one of them is not linear.

    ``scheduler`` must be set up for sampling (``sampling.host_timesteps``); it is not changed (the
    probes run on copies) and neither is torch's global random state. Answers are cached by the
    scheduler's class, config and ``timesteps``.
    """
    key = (type(scheduler).__qualname__, scheduler.to_json_string(), tuple(timesteps))
    if key not in _CACHE:
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = _probe_all(scheduler, timesteps)
    return _CACHE[key]


def _probe_all(scheduler: SchedulerMixin, timesteps: list[int]) -> list[LinearStep] | None:
    slots = _history_slots(scheduler)
    state = copy.deepcopy(scheduler)
    steps = []
    with torch.random.fork_rng(devices=[]):
        for t in timesteps:
            step = _probe(state, t, slots)
            if not _is_linear(state, step, slots):
                return None
            steps.append(step)
            zero = torch.zeros(1, 1)
            _step(state, zero, t, zero)  # advance the copy (step index, solver order) to the next step
    return steps


def coefficient_table(
    steps: list[LinearStep], num_train_timesteps: int, alphas_cumprod: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """(K, 7 + H) float32 rows on ``device``, one per step: scale, the denoiser's time input
    (t / num_train_timesteps), alpha_bar_t, a, b, d, e, then c_1..c_H."""
    rows = [
        [
            s.scale,
            s.timestep / num_train_timesteps,
            float(alphas_cumprod[s.timestep]),
            s.a,
            s.b,
            s.d,
            s.e,
            *s.history,
        ]
        for s in steps
    ]
    return torch.tensor(rows, dtype=torch.float32, device=device)

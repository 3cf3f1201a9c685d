"""Sampling: diffusers schedulers on the training schedule, CFG, masking, re-projection, trajectories."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tiny_models import randomize_zero_init
from tiny_models import tiny_dit as make_tiny_dit

from sld.diffusion.objective import LatentDiffusion, segment_mask_from_counts
from sld.diffusion.sampling import (
    TrajectoryRecorder,
    choose_num_segments,
    forward_noise,
    graphed_denoiser,
    host_timesteps,
    make_scheduler,
    sample_latents,
)
from sld.errors import UserError
from sld.models.denoiser import SegmentDiT

B, S, N, D, T, C = 3, 3, 4, 8, 5, 16


def tiny_dit(**overrides):
    model = make_tiny_dit(depth=2, **overrides)
    randomize_zero_init(model)  # so that predictions are not trivially zero
    return model.eval()


def context():
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(B, T, C, generator=gen)
    cm = torch.ones(B, T, dtype=torch.bool)
    cm[1, 2:] = False
    return c, cm


class CallCounter:
    """Wraps a model's forward to record the batch size of every call."""

    def __init__(self, model: SegmentDiT) -> None:
        self.sizes: list[int] = []
        self.handle = model.register_forward_pre_hook(lambda _m, args: self.sizes.append(args[0].shape[0]))


@pytest.mark.parametrize(
    "name, cls",
    [("ddpm", DDPMScheduler), ("ddim", DDIMScheduler), ("dpm++", DPMSolverMultistepScheduler)],
)
def test_schedulers_share_the_training_schedule_and_sample(name, cls):
    scheduler = make_scheduler(name, 1000, "v_prediction")
    assert isinstance(scheduler, cls)
    assert scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(scheduler.alphas_cumprod, LatentDiffusion().alphas_cumprod)

    model = tiny_dit()
    c, cm = context()
    num_segments = torch.tensor([3, 2, 1])
    recorder = TrajectoryRecorder()
    out = sample_latents(
        model,
        scheduler,
        c,
        cm,
        num_segments=num_segments,
        num_inference_steps=5,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        callback=recorder,
    )
    assert out.shape == (B, S, N, D)
    assert out.isfinite().all()
    real = segment_mask_from_counts(num_segments, S)
    torch.testing.assert_close(out.norm(dim=-1)[real], torch.full((int(real.sum()), N), math.sqrt(D)))
    assert torch.count_nonzero(out[~real]) == 0
    # The recorder saw every step, from pure noise at t = T-1, and its last step is the output.
    assert len(recorder.steps) == 5 and recorder.timesteps[0] == 999
    assert recorder.stack("x0_pred").shape == (5, B, S, N, D)
    torch.testing.assert_close(recorder.steps[-1].prev_sample, out)
    # Same generator, same samples.
    again = sample_latents(
        model,
        scheduler,
        c,
        cm,
        num_segments=num_segments,
        num_inference_steps=5,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(again, out)


def test_guidance_scale_one_is_the_conditional_prediction_in_one_pass():
    model = tiny_dit()
    c, cm = context()
    scheduler = make_scheduler("ddim")
    counter = CallCounter(model)
    out = sample_latents(model, scheduler, c, cm, num_segments=torch.tensor([3, 2, 1]), num_inference_steps=4)
    assert counter.sizes == [B] * 4  # no unconditional pass

    # Reference: the plain DDIM loop on the conditional prediction alone.
    latents = torch.randn(B, S, N, D, generator=torch.Generator().manual_seed(7))
    mask = segment_mask_from_counts(torch.tensor([3, 2, 1]), S)
    got = sample_latents(
        model,
        scheduler,
        c,
        cm,
        segment_mask=mask,
        num_inference_steps=4,
        latents=latents.clone(),
        self_conditioning=False,
        renormalize=False,
    )
    scheduler.set_timesteps(4)
    x = latents * mask[:, :, None, None]
    with torch.no_grad():
        for t in scheduler.timesteps:
            pred = model(x, torch.full((B,), float(t) / 1000), c, cm, mask)
            x = scheduler.step(pred, t, x).prev_sample * mask[:, :, None, None]
    torch.testing.assert_close(got, x, rtol=0, atol=0)

    counter.sizes.clear()
    sample_latents(
        model,
        scheduler,
        c,
        cm,
        num_segments=torch.tensor([3, 2, 1]),
        num_inference_steps=2,
        guidance_scale=3.0,
    )
    assert counter.sizes == [2 * B] * 2  # conditional + unconditional in one batch
    counter.handle.remove()
    assert out.isfinite().all()


def test_guidance_scale_zero_is_unconditional():
    model = tiny_dit()
    c, cm = context()
    scheduler = make_scheduler("ddim")
    kwargs = dict(num_segments=torch.tensor([3, 2, 1]), num_inference_steps=3)
    uncond = sample_latents(
        model, scheduler, None, None, generator=torch.Generator().manual_seed(0), **kwargs
    )
    w0 = sample_latents(
        model, scheduler, c, cm, guidance_scale=0.0, generator=torch.Generator().manual_seed(0), **kwargs
    )
    torch.testing.assert_close(w0, uncond, rtol=1e-4, atol=1e-5)


def test_padded_segments_do_not_change_real_samples():
    model = tiny_dit()
    c, cm = context()
    scheduler = make_scheduler("dpm++")
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    latents = torch.randn(B, S, N, D, generator=torch.Generator().manual_seed(0))
    other = torch.where(mask[:, :, None, None], latents, torch.randn_like(latents) * 3)
    a = sample_latents(model, scheduler, c, cm, segment_mask=mask, num_inference_steps=3, latents=latents)
    b = sample_latents(model, scheduler, c, cm, segment_mask=mask, num_inference_steps=3, latents=other)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_forward_noise_matches_diffusers():
    scheduler = make_scheduler("ddpm")
    x0, noise = torch.randn(4, S, N, D), torch.randn(4, S, N, D)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(forward_noise(x0, t, noise), scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(
        forward_noise(x0, 500, noise, scheduler.alphas_cumprod),
        scheduler.add_noise(x0, noise, torch.full((4,), 500)),
    )


def test_choose_num_segments():
    logits = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert choose_num_segments(logits).tolist() == [2, 1, 3]
    draws = choose_num_segments(logits.repeat(50, 1), "sample", torch.Generator().manual_seed(0))
    assert draws.min() >= 1 and draws.max() <= 3
    again = choose_num_segments(logits.repeat(50, 1), "sample", torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    with pytest.raises(UserError, match="count mode"):
        choose_num_segments(logits, "beam")  # type: ignore[arg-type]


def test_sampling_user_errors():
    model = tiny_dit()
    scheduler = make_scheduler("ddim")
    with pytest.raises(UserError, match="num_segments"):
        sample_latents(model, scheduler, None, None, num_inference_steps=2)
    with pytest.raises(UserError, match="scheduler"):
        make_scheduler("euler")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="prediction_type"):
        make_scheduler("ddim", prediction_type="score")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ no host syncs per step

HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"}


class DeviceOnly(torch.Tensor):
    """A CPU tensor that stands for a GPU tensor: every host read of its values (``.item()``,
    ``bool(t)``, ``.tolist()``, ``nonzero``, ...) is recorded, as a GPU would have to synchronise
    for it. Tensors computed from it are ``DeviceOnly`` too; the schedulers' CPU tables are not."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            cls.reads.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def host_reads_while_sampling(
    name: str, steps: int, guidance_scale: float, self_conditioning: bool
) -> list[str]:
    model = tiny_dit(self_conditioning=self_conditioning)
    c, cm = context()
    DeviceOnly.reads = []
    out = sample_latents(
        model,
        make_scheduler(name),
        c.as_subclass(DeviceOnly),
        cm.as_subclass(DeviceOnly),
        num_segments=torch.tensor([3, 2, 1]).as_subclass(DeviceOnly),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(0),
        latents=torch.randn(B, S, N, D, generator=torch.Generator().manual_seed(1)).as_subclass(DeviceOnly),
    )
    assert isinstance(out, DeviceOnly)  # the whole computation ran on the "device" tensors
    return list(DeviceOnly.reads)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("guidance_scale, self_conditioning", [(2.0, True), (1.0, False)])
def test_the_step_loop_never_reads_device_tensors_on_the_host(name, guidance_scale, self_conditioning):
    few = host_reads_while_sampling(name, 2, guidance_scale, self_conditioning)
    many = host_reads_while_sampling(name, 7, guidance_scale, self_conditioning)
    # No read per step; at most the argument check before the loop (every document has a segment).
    assert few == many and set(few) <= {"__bool__"}


def test_host_reads_are_detected():
    """The detector itself: a host read inside a computation on DeviceOnly tensors is recorded."""
    DeviceOnly.reads = []
    x = torch.ones(3).as_subclass(DeviceOnly)
    y = (x * 2).sum()
    if y > 0:  # bool(tensor): a sync on a GPU
        y.item()
    assert DeviceOnly.reads == ["__bool__", "item"]


def test_timesteps_are_python_ints_from_a_cpu_schedule():
    for name in ("ddpm", "ddim", "dpm++"):
        scheduler = make_scheduler(name)
        timesteps = host_timesteps(scheduler, 5)
        assert all(type(t) is int for t in timesteps) and len(timesteps) == 5 and timesteps[0] == 999
        assert scheduler.timesteps.device.type == "cpu"
        recorder = TrajectoryRecorder()
        c, cm = context()
        sample_latents(
            tiny_dit(),
            scheduler,
            c,
            cm,
            num_segments=torch.tensor([1, 1, 1]),
            num_inference_steps=5,
            callback=recorder,
        )
        assert recorder.timesteps == timesteps and all(type(t) is int for t in recorder.timesteps)
    with pytest.raises(UserError, match="num_inference_steps"):
        host_timesteps(make_scheduler("ddim"), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_no_cuda_synchronisation_in_the_step_loop(name):
    """On a GPU: torch's sync debug mode turns any synchronising call of steps 2.. into an error.

    The first step's callback switches the mode on, so the setup before the loop (argument checks,
    copies of small tensors to the device) is not checked, and every later step is.
    """
    device = torch.device("cuda")
    model = tiny_dit().to(device)
    c, cm = (t.to(device) for t in context())
    kwargs = dict(
        num_segments=torch.tensor([3, 2, 1], device=device),
        guidance_scale=2.0,
        generator=torch.Generator(device=device).manual_seed(0),
        latents=torch.randn(B, S, N, D, device=device),
    )
    sample_latents(model, make_scheduler(name), c, cm, num_inference_steps=2, **kwargs)  # warm-up
    seen = []

    def from_now_on_no_syncs(step):
        seen.append(step.index)
        torch.cuda.set_sync_debug_mode("error")

    try:
        sample_latents(
            model, make_scheduler(name), c, cm, num_inference_steps=5, callback=from_now_on_no_syncs, **kwargs
        )
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert seen == [0, 1, 2, 3, 4]


@pytest.fixture
def traced_on_cpu(monkeypatch):
    """``graphed=True`` traced on the CPU too (dynamo's eager backend, ``fullgraph=True``: a graph
    break fails), as it is replayed on a GPU."""
    import sld.diffusion.sampling as sampling

    original = sampling.graphed_denoiser
    monkeypatch.setattr(sampling, "graphed_denoiser", lambda model: original(model, trace_on_cpu=True))
    fused = sampling.fused_sampling_step
    monkeypatch.setattr(sampling, "fused_sampling_step", lambda model: fused(model, trace_on_cpu=True))


@pytest.fixture
def unfused(monkeypatch):
    """The scheduler's own step after the graphed forward (``SLD_FUSED_SAMPLER=0``, the default)."""
    monkeypatch.setenv("SLD_FUSED_SAMPLER", "0")


@pytest.fixture
def fused(monkeypatch):
    """Each linear scheduler step as one graph (``SLD_FUSED_SAMPLER=1``)."""
    monkeypatch.setenv("SLD_FUSED_SAMPLER", "1")


def test_on_a_cpu_the_graphed_denoiser_is_the_model_itself():
    model = tiny_dit()
    assert graphed_denoiser(model) is model
    assert graphed_denoiser(model, trace_on_cpu=True) is not model


@pytest.mark.parametrize("guidance_scale", [2.0, 1.0])
def test_a_graphed_denoiser_samples_what_the_eager_one_does_from_one_graph_per_shape(
    guidance_scale, traced_on_cpu, unfused
):
    """``graphed=True``, fused step off: the same latents, and graphs only for new shapes."""
    from torch._dynamo.utils import counters

    model = tiny_dit()
    c, cm = context()
    kwargs = dict(num_segments=torch.tensor([3, 2, 1]), num_inference_steps=4, guidance_scale=guidance_scale)
    eager = sample_latents(
        model, make_scheduler("dpm++"), c, cm, generator=torch.Generator().manual_seed(0), **kwargs
    )
    counters.clear()
    graphed = sample_latents(
        model,
        make_scheduler("dpm++"),
        c,
        cm,
        generator=torch.Generator().manual_seed(0),
        graphed=True,
        **kwargs,
    )
    torch.testing.assert_close(graphed, eager)
    assert (
        counters["stats"]["unique_graphs"] == 2
    )  # the first step without self-conditioning input, the others
    sample_latents(model, make_scheduler("ddim"), c, cm, graphed=True, **kwargs)  # same shapes, new noise
    assert counters["stats"]["unique_graphs"] == 2


def test_the_graphed_denoiser_does_not_keep_its_model_alive(traced_on_cpu):
    import gc
    import weakref

    model = tiny_dit()
    c, cm = context()
    sample_latents(
        model, make_scheduler("ddim"), c, cm, num_segments=torch.tensor([1, 2, 3]), num_inference_steps=2,
        graphed=True,
    )  # fmt: skip
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("scheduler_name", ["dpm++", "ddim"])
@pytest.mark.parametrize("guidance_scale", [2.0, 1.0])
def test_the_fused_step_samples_what_the_eager_loop_does_from_one_graph_per_shape(
    scheduler_name, guidance_scale, traced_on_cpu, fused
):
    """``graphed=True`` with a linear scheduler: the whole step (denoiser, guidance, the scheduler's
    update as its linear map, re-projection) traced as one graph, the same latents and trajectory as
    the scheduler's own eager loop; two graphs (first step without self-conditioning, the others)."""
    from torch._dynamo.utils import counters

    model = tiny_dit()
    c, cm = context()
    kwargs = dict(num_segments=torch.tensor([3, 2, 1]), num_inference_steps=5, guidance_scale=guidance_scale)
    eager_steps, fused_steps = TrajectoryRecorder(), TrajectoryRecorder()
    eager = sample_latents(
        model, make_scheduler(scheduler_name), c, cm, generator=torch.Generator().manual_seed(0),
        callback=eager_steps, **kwargs,
    )  # fmt: skip
    torch._dynamo.reset()  # graphs of earlier tests with these shapes would be reused
    counters.clear()
    result = sample_latents(
        model, make_scheduler(scheduler_name), c, cm, generator=torch.Generator().manual_seed(0),
        graphed=True, callback=fused_steps, **kwargs,
    )  # fmt: skip
    torch.testing.assert_close(result, eager, rtol=1e-4, atol=1e-4)
    for what in ("sample", "x0_pred", "prev_sample"):
        torch.testing.assert_close(fused_steps.stack(what), eager_steps.stack(what), rtol=1e-4, atol=1e-4)
    assert fused_steps.timesteps == eager_steps.timesteps
    assert counters["stats"]["unique_graphs"] == 2
    sample_latents(model, make_scheduler(scheduler_name), c, cm, graphed=True, **kwargs)  # new noise
    assert counters["stats"]["unique_graphs"] == 2


def test_ddpm_keeps_the_scheduler_step_when_graphed(traced_on_cpu, fused):
    """DDPM adds noise: not a linear map, so ``graphed=True`` keeps its own step (same latents)."""
    model = tiny_dit()
    c, cm = context()
    kwargs = dict(num_segments=torch.tensor([3, 2, 1]), num_inference_steps=3, guidance_scale=2.0)
    eager = sample_latents(
        model, make_scheduler("ddpm"), c, cm, generator=torch.Generator().manual_seed(0), **kwargs
    )
    graphed = sample_latents(
        model,
        make_scheduler("ddpm"),
        c,
        cm,
        generator=torch.Generator().manual_seed(0),
        graphed=True,
        **kwargs,
    )
    torch.testing.assert_close(graphed, eager)


def test_a_bad_fused_sampler_switch_is_named(monkeypatch):
    model = tiny_dit()
    c, cm = context()
    monkeypatch.setenv("SLD_FUSED_SAMPLER", "yes")
    with pytest.raises(UserError, match="SLD_FUSED_SAMPLER"):
        sample_latents(
            model, make_scheduler("ddim"), c, cm, num_segments=torch.tensor([1, 1, 1]), graphed=True
        )

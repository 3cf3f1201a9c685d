"""A deterministic scheduler's steps read as linear maps (sld.diffusion.linear_steps)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from sld.diffusion.linear_steps import coefficient_table, linear_steps
from sld.diffusion.sampling import host_timesteps, make_scheduler


@pytest.mark.parametrize("name", ["dpm++", "ddim"])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
@pytest.mark.parametrize("num_steps", [1, 5, 20])
def test_the_linear_maps_replay_the_schedulers_own_loop(name, prediction_type, num_steps):
    """Random model outputs through the scheduler's step and through the maps (with the kept
    history): the same samples at every step."""
    scheduler = make_scheduler(name, prediction_type=prediction_type)
    timesteps = host_timesteps(scheduler, num_steps)
    steps = linear_steps(scheduler, timesteps)
    assert steps is not None and [s.timestep for s in steps] == timesteps
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 8, generator=gen)
    ours = x.clone()
    history = [torch.zeros_like(x) for _ in steps[0].history]
    for step, t in zip(steps, timesteps, strict=True):
        out = torch.randn(x.shape, generator=gen)
        x = scheduler.step(out, t, scheduler.scale_model_input(x, t)).prev_sample
        prev = step.a * ours + step.b * out
        for c, earlier in zip(step.history, history, strict=True):
            prev = prev + c * earlier
        history = [*history[1:], step.d * ours + step.e * out] if history else []
        ours = prev
        torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_dpm_solver_reads_one_earlier_output_and_ddim_none():
    dpm = make_scheduler("dpm++")
    steps = linear_steps(dpm, host_timesteps(dpm, 4))
    assert [len(s.history) for s in steps] == [1, 1, 1, 1]
    assert steps[0].history == (0.0,)  # nothing earlier at the first step
    assert steps[1].history[0] != 0.0  # second order from the second step
    ddim = make_scheduler("ddim")
    assert all(s.history == () for s in linear_steps(ddim, host_timesteps(ddim, 4)))


def test_a_step_that_is_not_linear_gives_none_and_leaves_every_state_alone():
    """DDPM adds noise, clipping is not linear: None. The scheduler given is not advanced, and
    torch's global random state is untouched by the probes."""
    ddpm = make_scheduler("ddpm")
    timesteps = host_timesteps(ddpm, 4)
    before = torch.get_rng_state()
    assert linear_steps(ddpm, timesteps) is None
    assert torch.equal(torch.get_rng_state(), before)
    clipped = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, clip_sample_range=1.0)
    assert linear_steps(clipped, host_timesteps(clipped, 4)) is None

    dpm = make_scheduler("dpm++")
    timesteps = host_timesteps(dpm, 4)
    linear_steps(dpm, timesteps)
    assert dpm.step_index is None and dpm.lower_order_nums == 0 and all(o is None for o in dpm.model_outputs)


def test_the_coefficient_table_holds_one_row_per_step():
    scheduler = make_scheduler("dpm++")
    timesteps = host_timesteps(scheduler, 3)
    steps = linear_steps(scheduler, timesteps)
    table = coefficient_table(steps, 1000, scheduler.alphas_cumprod, torch.device("cpu"))
    assert table.shape == (3, 8) and table.dtype == torch.float32
    first = steps[0]
    expected = [
        first.scale,
        timesteps[0] / 1000,
        float(scheduler.alphas_cumprod[timesteps[0]]),
        first.a,
        first.b,
    ]
    torch.testing.assert_close(table[0, :5], torch.tensor(expected))
    torch.testing.assert_close(table[:, 7], torch.tensor([s.history[0] for s in steps]))


def test_answers_are_kept_per_scheduler_config_and_timesteps():
    v = make_scheduler("dpm++", prediction_type="v_prediction")
    first = linear_steps(v, host_timesteps(v, 4))
    assert linear_steps(make_scheduler("dpm++"), host_timesteps(make_scheduler("dpm++"), 4)) is first
    eps = make_scheduler("dpm++", prediction_type="epsilon")
    assert linear_steps(eps, host_timesteps(eps, 4)) != first  # another config: probed anew
    assert len(linear_steps(v, host_timesteps(v, 6))) == 6  # other timesteps too

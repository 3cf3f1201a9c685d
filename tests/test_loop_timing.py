"""The time budget (few agreed clock checks, stops on time, a progress bar in seconds) and the profiler."""

import pytest
import torch
from test_training import IndexDataset, Tiny, collate, loop_config, make_loss

import sld.training as training
from sld.loop_timing import TimeBudget
from sld.training import OptimConfig, fit


def fit_on_a_fake_clock(tmp_path, monkeypatch, step_seconds, optim, loop, items=12):
    """``fit`` with ``time.perf_counter`` a fake clock that each loss call moves on by
    ``step_seconds(clock)`` seconds (clock: the seconds so far)."""
    import time as time_module

    clock = [0.0]

    def ticking_loss(model, batch):
        clock[0] += step_seconds(clock[0])
        return make_loss([])(model, batch)

    monkeypatch.setattr(time_module, "perf_counter", lambda: clock[0])
    return fit(Tiny(), IndexDataset(items), collate, ticking_loss, tmp_path, optim, loop)


def test_time_budget_is_checked_at_few_agreed_steps_and_stops_on_time():
    from types import SimpleNamespace

    clock = [0.0]
    reduced = []

    def reduce(tensor, reduction):
        reduced.append(reduction)
        return tensor

    accelerator = SimpleNamespace(device=torch.device("cpu"), reduce=reduce)
    budget = TimeBudget(1.0, accelerator, lambda: clock[0], step=0)
    step = 0
    while True:
        step += 1
        clock[0] += 0.5  # half a second per step: 120 steps in the minute
        if budget.exhausted(step):
            break
    assert step == 120
    assert budget.checks == len(reduced) < 25 and set(reduced) == {"max"}  # not once per step
    assert not TimeBudget(None, accelerator, lambda: 1e9, 0).exhausted(5)


def test_time_budget_stops_fit_and_the_progress_bar_counts_seconds(tmp_path, monkeypatch):
    bars = []

    class RecordingBar(training.tqdm):
        def __init__(self, *args, **kwargs):
            bars.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(training, "tqdm", RecordingBar)
    result = fit_on_a_fake_clock(  # every step takes one (fake) second
        tmp_path,
        monkeypatch,
        lambda now: 1.0,
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=1000, max_minutes=0.5),
    )
    assert result.stopped_by == "max_minutes" and result.state.step == 30
    assert bars[0]["total"] == 30 and bars[0]["unit"] == "s"  # the budget, not 1000 steps


def test_profile_steps_write_a_summary_table(tmp_path, caplog):
    fit(
        Tiny(),
        IndexDataset(24),
        collate,
        make_loss([]),
        tmp_path / "a",
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=8, profile_steps=2),
    )
    table = (tmp_path / "a" / "profile.txt").read_text()
    assert "summary of 2 optimizer steps after 3 warm-up steps" in table
    assert "sld.loss_fn" in table and "sld.backward" in table and "sld.optimizer" in table
    assert "Self CPU" in table
    assert "Per step: " in table and "host syncs: 0.0 a step" in table  # a CPU run: no device rows
    fit(
        Tiny(),
        IndexDataset(24),
        collate,
        make_loss([]),
        tmp_path / "b",
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=2, profile_steps=2),
    )
    assert not (tmp_path / "b" / "profile.txt").exists() and "nothing profiled" in caplog.text


def test_profile_after_sets_the_warm_up_before_the_profiled_steps(tmp_path):
    """``loop.profile_after``: the profiled steps start later (compiled runs whose first steps stay slow)."""
    from sld.loop_timing import StepProfiler

    profiler = StepProfiler(2, tmp_path, True, torch.device("cpu"), warmup=5)
    pending = []
    for _ in range(8):
        pending.append(profiler.pending)
        started = profiler.profiler is not None
        profiler.after_step()
        if not started and profiler.profiler is not None:
            pending.append(f"started after step {profiler.steps_taken}")
    assert pending == [True] * 5 + ["started after step 5", True, True, False]
    assert "summary of 2 optimizer steps after 5 warm-up steps" in (tmp_path / "profile.txt").read_text()
    with pytest.raises(ValueError, match="profile_after must be >= 1"):
        loop_config(profile_after=0)


def test_a_time_budget_spent_before_the_profile_waits_for_its_steps(tmp_path, monkeypatch):
    result = fit_on_a_fake_clock(  # every step (compilation, say) takes a whole minute: the budget's 0.5
        tmp_path,
        monkeypatch,
        lambda now: 60.0,
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=1000, max_minutes=0.5, profile_steps=2),
        items=24,
    )
    assert result.stopped_by == "max_minutes" and result.state.step == 5  # 3 warm-up + 2 profiled
    assert "summary of 2 optimizer steps" in (tmp_path / "profile.txt").read_text()


def test_every_process_agrees_on_a_pending_profile(tmp_path):
    """A process that does not profile still waits the same steps: the budget's check is a collective."""
    from sld.loop_timing import StepProfiler

    main, other = (StepProfiler(2, tmp_path, enabled, torch.device("cpu")) for enabled in (True, False))
    pending = []
    for _ in range(6):
        pending.append((main.pending, other.pending))
        main.after_step()
        other.after_step()
    assert pending == [(True, True)] * 5 + [(False, False)]
    assert not StepProfiler(0, tmp_path, True, torch.device("cpu")).pending


def test_the_profiled_steps_wall_time_leaves_out_the_profilers_own_stop(tmp_path, monkeypatch):
    from sld import loop_timing
    from sld.loop_timing import PROFILE_WARMUP_STEPS, StepProfiler

    clock = [0.0]
    monkeypatch.setattr(loop_timing.time, "perf_counter", lambda: clock[0])

    class Averages(list):
        def table(self, **kwargs):
            return "(table)"

    class SlowToStop:  # processing the trace at stop takes 100 s of host time
        def stop(self):
            clock[0] += 100.0

        def key_averages(self):
            return Averages()

    profiler = StepProfiler(2, tmp_path, True, torch.device("cpu"))
    profiler.profiler, profiler.started = SlowToStop(), 0.0
    profiler.seen = PROFILE_WARMUP_STEPS + 2
    clock[0] = 1.0  # the two steps took one second
    profiler.finish()
    text = (tmp_path / "profile.txt").read_text()
    assert "(500.0 ms per step with the profiler on)" in text
    assert "Per step: 500.0 ms of wall time" in text


def test_time_budget_projects_the_step_it_ends_at_from_the_rate_after_its_first_check():
    from types import SimpleNamespace

    clock = [0.0]
    accelerator = SimpleNamespace(device=torch.device("cpu"), reduce=lambda tensor, reduction: tensor)
    budget = TimeBudget(1.0, accelerator, lambda: clock[0], step=0)
    projections = []
    for step in range(1, 200):
        clock[0] += 20.0 if step == 1 else 0.25  # a first step that compiles, then 4 steps a second
        if budget.exhausted(step):
            break
        projections.append(budget.projected_steps)
    assert step == 1 + 160  # 20 s, then 40 s at 4 a second
    assert projections[0] is None  # the first check (step 1) only sets where the rate is measured from
    assert set(projections[1:]) == {161}


@pytest.mark.parametrize("decay_over", ["max_steps", "budget"])
def test_decay_over_the_budget_ends_a_time_budgeted_run_at_the_bottom_of_its_schedule(
    tmp_path, monkeypatch, caplog, decay_over
):
    result = fit_on_a_fake_clock(  # a slow first step, then one (fake) second each
        tmp_path,
        monkeypatch,
        lambda now: 10.0 if now == 0.0 else 1.0,
        OptimConfig(lr=1e-3, warmup_steps=2, decay_over=decay_over),
        loop_config(max_steps=1000, max_minutes=0.5, log_every=1),
    )
    assert result.stopped_by == "max_minutes" and result.state.step == 21
    last_lr = result.history[-1]["lr"]
    if decay_over == "budget":
        assert last_lr < 0.02 * 1e-3  # the cosine ran out with the budget
        assert result.history[-1]["lr_span_steps"] == result.state.schedule_span_steps == 21
        assert "the time budget ended" not in caplog.text
    else:
        assert last_lr > 0.99 * 1e-3 and "lr_span_steps" not in result.history[-1]
        assert "optim.decay_over=budget spans the budget itself" in caplog.text


def test_decay_over_the_budget_needs_a_budget(tmp_path):
    from sld.config import ConfigError

    with pytest.raises(ConfigError, match="optim.decay_over=budget spans the time budget"):
        fit(
            Tiny(),
            IndexDataset(12),
            collate,
            make_loss([]),
            tmp_path,
            OptimConfig(decay_over="budget"),
            loop_config(max_steps=3),
        )
    with pytest.raises(ValueError, match="decay_over must be"):
        OptimConfig(decay_over="minutes")

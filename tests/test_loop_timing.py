"""The time budget (few agreed clock checks, stops on time, a progress bar in seconds) and the profiler."""

import torch
from test_training import IndexDataset, Tiny, collate, loop_config, make_loss

import sld.training as training
from sld.loop_timing import TimeBudget
from sld.training import OptimConfig, fit


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
    import time as time_module

    clock = [0.0]
    bars = []

    class RecordingBar(training.tqdm):
        def __init__(self, *args, **kwargs):
            bars.append(kwargs)
            super().__init__(*args, **kwargs)

    def ticking_loss(model, batch):
        clock[0] += 1.0  # every step takes one (fake) second
        return make_loss([])(model, batch)

    monkeypatch.setattr(time_module, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(training, "tqdm", RecordingBar)
    result = fit(
        Tiny(),
        IndexDataset(12),
        collate,
        ticking_loss,
        tmp_path,
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


def test_a_time_budget_spent_before_the_profile_waits_for_its_steps(tmp_path, monkeypatch):
    import time as time_module

    clock = [0.0]

    def slow_loss(model, batch):
        clock[0] += 60.0  # every step (compilation, say) takes a whole minute: the budget's 0.5
        return make_loss([])(model, batch)

    monkeypatch.setattr(time_module, "perf_counter", lambda: clock[0])
    result = fit(
        Tiny(),
        IndexDataset(24),
        collate,
        slow_loss,
        tmp_path,
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=1000, max_minutes=0.5, profile_steps=2),
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


def test_step_digest_sums_device_time_launches_syncs_and_loading_per_step():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from sld.loop_timing import step_digest

    def event(key, count, device=DeviceType.CPU, device_us=0.0, cpu_us=0.0, annotation=False):
        return SimpleNamespace(
            key=key,
            count=count,
            device_type=device,
            self_device_time_total=device_us,
            cpu_time_total=cpu_us,
            is_user_annotation=annotation,
        )

    events = [
        event("aten::mm", 40, device_us=0.0, cpu_us=900.0),  # a CPU op: its kernels are the CUDA rows
        event("ampere_sgemm", 40, DeviceType.CUDA, device_us=30_000.0),
        event("void elementwise_kernel", 60, DeviceType.CUDA, device_us=10_000.0),
        # CUPTI's record of the host blocked on a full launch queue: a host event whose CUDA column is
        # the time of the kernels launched meanwhile, already counted in their own rows
        event("Command Buffer Full", 10, DeviceType.CPU, device_us=8_000.0, cpu_us=20_000.0),
        # a record_function range on the device's timeline spans kernels already counted
        event("sld.loss_fn", 2, DeviceType.CUDA, device_us=35_000.0, annotation=True),
        event("cudaLaunchKernel", 80, cpu_us=400.0),
        event("cuLaunchKernelEx", 20, cpu_us=100.0),
        event("cudaStreamSynchronize", 6, cpu_us=12_000.0),
        event("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 2, cpu_us=4_000.0),
    ]
    lines = step_digest(events, steps=2, wall_ms_per_step=40.0)
    assert lines[0] == "Per step: 40.0 ms of wall time with the profiler on"
    assert lines[1].startswith("  device busy 20.0 ms (50% of the wall time") and lines[1].endswith(
        ", 50 kernel launches"
    )
    assert lines[2] == "  host syncs: 3.0 a step, 6.0 ms waiting (cudaStreamSynchronize x6)"
    assert lines[3] == "  data loading (next batch): 2.0 ms"
    assert lines[4] == "  named ranges on the device, ms a step: sld.loss_fn 17.5"


def test_device_idle_charges_each_gap_to_the_host_phase_it_falls_in():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from sld.loop_timing import device_idle

    def event(name, start_ms, end_ms, device=DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(start=1000.0 * start_ms, end=1000.0 * end_ms)
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation, time_range=span)

    cpu = DeviceType.CPU
    events = [
        # the device: busy 0-10, 12-20 (two overlapping kernels), 30-40 ms
        event("gemm", 0, 10),
        event("gemm", 12, 18),
        event("elementwise", 16, 20),
        event("gemm", 30, 40),
        # a named range drawn on the device spans kernels, it is none; nor is the host's wait on a full queue
        event("sld.loss_fn", 0, 40, annotation=True),
        event("Command Buffer Full", 20, 30, cpu),
        # the host: the forward until 15 ms, the backward 15-25, the next batch 26-28
        event("sld.loss_fn", 0, 15, cpu, annotation=True),
        event("aten::mm", 1, 2, cpu),
        event("sld.backward", 15, 25, cpu, annotation=True),
        event("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", 26, 28, cpu),
    ]
    line = device_idle(events, steps=2)
    # gaps 10-12 (forward) and 20-30 (backward 20-25, data 26-28, between 25-26 and 28-30), halved a step
    assert line == (
        "  device idle between kernels: 6.0 ms a step, while the host was in sld.loss_fn 1.0, sld.backward 2.5, "
        "sld.optimizer 0.0, data loading 1.0, between phases 1.5"
    )
    assert device_idle([event("aten::mm", 0, 1, cpu)], steps=1) is None  # no device work: nothing to say


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

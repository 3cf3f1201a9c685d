"""Time in the training loop: the time budget every process agrees on, and the step profiler.

:class:`TimeBudget` stops a run at ``loop.max_minutes`` without reading the clock through the
device every step. :class:`StepProfiler` runs ``loop.profile_steps`` steps under torch.profiler
after :data:`PROFILE_WARMUP_STEPS` warm-up steps and writes the summary table (top operators by self
CUDA and CPU time, and the ``sld.loss_fn`` / ``sld.backward`` / ``sld.optimizer`` phases of a step) to
``<output_dir>/profile.txt``; what the summary says is ``sld.profile_digest``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sld.profile_digest import profile_tables

logger = logging.getLogger(__name__)

PROFILE_FILE = "profile.txt"
# Steps run before profiling starts by default (compilation, allocator warm-up, the FLOP-counting
# step); ``loop.profile_after`` sets it per run.
PROFILE_WARMUP_STEPS = 3


class TimeBudget:
    """``loop.max_minutes`` without a host sync per step, agreed by every process.

    The clock is read (and max-reduced across processes) only at check steps. The next check is
    planned from the reduced numbers alone, so every process plans the same step: about every
    ``MAX_CHECK_SECONDS``, and ever more often as the budget runs out (half the remaining time
    ahead), so a run overshoots its budget by at most about one step.

    ``projected_steps``: after the second check, the step the budget is projected to end at: the
    step rate measured from the first check (past a run's first step, which counts FLOPs and may
    compile) to the latest, over the budget's remaining seconds; the same on every process. It spans
    the learning-rate decay of ``optim.decay_over=budget`` (``sld.training``).
    """

    MAX_CHECK_SECONDS = 5.0

    def __init__(
        self, minutes: float | None, accelerator: Accelerator, elapsed: Callable[[], float], step: int
    ) -> None:
        self.seconds = None if minutes is None else 60.0 * minutes
        self.accelerator = accelerator
        self.elapsed = elapsed
        self.next_check = step + 1
        self.last: tuple[float, int] | None = None
        self.first: tuple[float, int] | None = None  # (seconds spent, step) at the first check
        self.projected_steps: int | None = None
        self.checks = 0

    def exhausted(self, step: int) -> bool:
        if self.seconds is None or step < self.next_check:
            return False
        self.checks += 1
        now = torch.tensor([self.elapsed()], dtype=torch.float64, device=self.accelerator.device)
        spent = float(self.accelerator.reduce(now, reduction="max").item())
        if spent >= self.seconds:
            return True
        if self.first is None:
            self.first = (spent, step)
        elif step > self.first[1] and spent > self.first[0]:
            steps_per_second = (step - self.first[1]) / (spent - self.first[0])
            self.projected_steps = step + int((self.seconds - spent) * steps_per_second)
        interval = 1
        if self.last is not None and step > self.last[1] and spent > self.last[0]:
            seconds_per_step = (spent - self.last[0]) / (step - self.last[1])
            ahead = min(self.MAX_CHECK_SECONDS, (self.seconds - spent) / 2)
            interval = max(1, int(ahead / seconds_per_step))
        self.last = (spent, step)
        self.next_check = step + interval
        return False


class StepProfiler:
    """Runs ``steps`` optimizer steps under torch.profiler after ``warmup`` steps; writes the summary table."""

    def __init__(
        self,
        steps: int,
        output_dir: Path,
        enabled: bool,
        device: torch.device,
        warmup: int = PROFILE_WARMUP_STEPS,
    ) -> None:
        if warmup < 1:
            raise ValueError(
                f"the profile's warm-up must be >= 1 step (the first counts FLOPs), got {warmup}"
            )
        self.steps = steps
        self.warmup = warmup
        self.path = output_dir / PROFILE_FILE
        self.device = device
        self.done = steps == 0 or not enabled
        self.seen = 0
        self.steps_taken = 0  # counted on every process, profiling or not (``pending``)
        self.profiler: Any = None
        self.started = 0.0

    @property
    def pending(self) -> bool:
        """True while steps the user asked to profile are still to run (the time budget waits for them:
        a compiled run can spend its whole budget compiling, and a profile of no step is no answer).
        Counted from the steps taken, so every process agrees, the ones that do not profile too (the
        budget's check is a collective)."""
        return self.steps > 0 and self.steps_taken < self.warmup + self.steps

    def phase(self, name: str) -> AbstractContextManager[Any]:
        """A named range in the profile (loss_fn, backward, optimizer) while profiling."""
        return torch.profiler.record_function(name) if self.profiler is not None else nullcontext()

    def after_step(self) -> None:
        self.steps_taken += 1
        if self.done:
            return
        self.seen += 1
        if self.profiler is None and self.seen == self.warmup:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self.started = time.perf_counter()
        elif self.profiler is not None and self.seen == self.warmup + self.steps:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.profiler is None:
            logger.warning("the run ended within the %d warm-up steps: nothing profiled", self.warmup)
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        # the steps' wall time ends here: stopping the profiler processes its trace (seconds of host
        # work on a GPU run, which counted into "ms per step" and the busy share until 2026-12-05)
        seconds = time.perf_counter() - self.started
        self.profiler.stop()
        profiled = self.seen - self.warmup
        if profiled == 0:
            self.profiler = None
            logger.warning("the run ended right after the %d warm-up steps: nothing profiled", self.warmup)
            return
        header = (
            f"torch.profiler summary of {profiled} optimizer steps after {self.warmup} warm-up steps "
            f"on {self.device} ({seconds / max(1, profiled) * 1000:.1f} ms per step with the profiler on).\n"
            "sld.loss_fn / sld.backward / sld.optimizer are the phases of a step; "
            "'enumerate(DataLoader)' rows are data loading.\n"
        )
        per_step = seconds / max(1, profiled) * 1000
        self.path.write_text(
            profile_tables(self.profiler, self.device, header, steps=profiled, wall_ms_per_step=per_step)
        )
        self.profiler = None
        logger.info("profile of %d steps written to %s", profiled, self.path)


__all__ = [
    "PROFILE_FILE",
    "PROFILE_WARMUP_STEPS",
    "StepProfiler",
    "TimeBudget",
]

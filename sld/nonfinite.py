"""Keeping NaN and inf out of the weights: detect non-finite loss terms and gradients, skip the step.

Every micro-batch's loss terms (the dict ``loss_fn`` returns) and, at each optimizer step, the
gradient norm are checked with ``torch.isfinite`` on the device. A step is *bad* when any term of
any of its micro-batches, or the gradient norm, is NaN or inf on any process (the flag is
all-reduced, so every process skips the same steps). A bad step never updates the weights:

* with a fused optimizer (``fused=True``, the default on CUDA) the flag is handed to the fused
  AdamW kernel as ``found_inf`` (the mechanism ``GradScaler`` uses): the kernel leaves weights,
  moments and the step count untouched, and the host never waits for the device;
* otherwise the flag is read on the host before ``optimizer.step()`` (one sync per step; on a CPU,
  where there is nothing to wait for, it costs the check itself).

By default (``loop.skip_nonfinite_steps=false``) the run then stops with
:class:`NonFiniteLossError` naming the first bad step and the non-finite terms, at once (host
check) or at the next logging, evaluation or checkpoint step (fused path; the steps in between
skip bad updates the same way). No checkpoint is written after a bad step, so the newest one on
disk is the last good state. With ``skip_nonfinite_steps=true`` bad steps are skipped and counted
(``train/skipped_steps`` in the metrics, a warning per log interval). A skipped step still
advances the LR schedule, the EMA and the step count, as with ``GradScaler``.

With fp16 mixed precision inf gradients are expected (``GradScaler`` lowers its scale and skips
them itself), so only the loss terms are checked there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator

from sld.errors import UserError

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training hit a NaN or inf loss term or gradient; the message names the step and the terms."""


def _scalar(value: torch.Tensor) -> torch.Tensor:
    return value.detach().float().sum()


def stack_terms(terms: Mapping[str, Any]) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """Names of the tensor terms and their values as one float vector (T,) (one stack, not T kernels).

    A term with more than one element is summed: the sum is non-finite when any element is.
    """
    names = tuple(k for k, v in terms.items() if torch.is_tensor(v))
    if not names:
        return names, None
    return names, torch.stack([_scalar(terms[k]) for k in names])


class NonFiniteGuard:
    """Per-step finiteness bookkeeping kept on the device; read on the host only in :meth:`check`.

    Args:
        accelerator: all-reduces the per-step flag across processes.
        skip: count and skip bad steps instead of stopping.
        on_device: skip through the fused optimizer's ``found_inf`` (no host sync per step).
        check_gradients: also treat a non-finite gradient norm as bad (off under fp16 loss scaling).
        start_step: optimizer steps already taken (the step number of the next step minus one).
        skipped: steps skipped before (a resumed run's count); :attr:`total_skipped` goes on from it.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        skip: bool,
        on_device: bool,
        check_gradients: bool = True,
        start_step: int = 0,
        skipped: int = 0,
    ) -> None:
        self.accelerator = accelerator
        self.skip = skip
        self.on_device = on_device
        self.check_gradients = check_gradients
        self.device = accelerator.device
        self.total_skipped = skipped
        self._reset(start_step)

    def _reset(self, start_step: int) -> None:
        self.window_start = start_step
        self.window_steps = 0
        self.pending = torch.zeros((), dtype=torch.bool, device=self.device)
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        # term names of a micro-batch -> how many micro-batches had each term non-finite
        self.term_counts: dict[tuple[str, ...], torch.Tensor] = {}

    def observe(self, names: tuple[str, ...], values: torch.Tensor | None) -> torch.Tensor:
        """Record one micro-batch's terms (``values`` (T,) for ``names``, one scalar each; see
        :func:`stack_terms`); return a device bool: all of them finite."""
        if values is None:
            return torch.ones((), dtype=torch.bool, device=self.device)
        finite = torch.isfinite(values)
        bad = (~finite).long()
        counts = self.term_counts.get(names)
        self.term_counts[names] = bad if counts is None else counts + bad
        all_finite = finite.all()
        self.pending = self.pending | ~all_finite
        return all_finite

    def before_step(self, grad_norm: torch.Tensor | None, optimizer: torch.optim.Optimizer) -> bool:
        """Decide the step being taken; return whether to call ``optimizer.step()``.

        On the device path the decision is handed to the fused ``optimizer`` (always True here);
        on the host path a bad step returns False, or raises at once unless skipping.
        """
        bad = self.pending
        if grad_norm is not None and self.check_gradients:
            grad_bad = ~torch.isfinite(_scalar(grad_norm))
            key = ("grad_norm",)
            self.term_counts[key] = self.term_counts.get(key, 0) + grad_bad.long()
            bad = bad | grad_bad
        # every process must skip the same steps
        bad = self.accelerator.reduce(bad.float(), reduction="max") > 0
        self.pending = torch.zeros((), dtype=torch.bool, device=self.device)
        # torch.full launches a fill kernel: no host-to-device copy, which would wait for the device
        offset = torch.full((), self.window_steps, dtype=torch.int64, device=self.device)
        self.first_bad = torch.where((self.first_bad < 0) & bad, offset, self.first_bad)
        self.bad_steps = self.bad_steps + bad.long()
        self.window_steps += 1
        if self.on_device:
            optimizer.found_inf = bad.float()
            return True
        if bool(bad):
            if not self.skip:
                self.check()  # raises
            return False
        return True

    def _nonfinite_terms(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if not self.term_counts:
            return found
        keys = list(self.term_counts)
        values = torch.cat([self.term_counts[k].reshape(-1) for k in keys]).tolist()
        position = 0
        for names in keys:
            for name in names:
                if values[position]:
                    found[name] = found.get(name, 0) + int(values[position])
                position += 1
        return found

    def check(self) -> int:
        """Read the window's flags on the host (one sync): raise if a step was bad and not skipping,
        else log, add to :attr:`total_skipped` and return how many steps were skipped in the window."""
        if self.window_steps == 0:
            return 0
        bad_steps, first_bad = (int(v) for v in torch.stack([self.bad_steps, self.first_bad]).tolist())
        window_end = self.window_start + self.window_steps
        if bad_steps:
            first = self.window_start + first_bad + 1
            terms = self._nonfinite_terms()
            named = ", ".join(
                f"'{name}' ({count} micro-batch{'es' if count != 1 else ''})" for name, count in terms.items()
            )
            named = named or "another process's terms"
            if not self.skip:
                raise NonFiniteLossError(
                    f"non-finite loss at step {first}: NaN or inf in {named}; training stopped before the "
                    "update reached the weights, and no checkpoint was written after it (the newest one "
                    "in checkpoints/ is the last good state). Lower optim.lr, check the data, or set "
                    "loop.skip_nonfinite_steps=true to skip and count such steps"
                )
            self.total_skipped += bad_steps
            logger.warning(
                "skipped %d of steps %d-%d (first: step %d): NaN or inf in %s; %d skipped in total",
                bad_steps,
                self.window_start + 1,
                window_end,
                first,
                named,
                self.total_skipped,
            )
        self._reset(window_end)
        return bad_steps


__all__ = ["NonFiniteGuard", "NonFiniteLossError", "stack_terms"]

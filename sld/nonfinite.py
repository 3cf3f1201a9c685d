"""Keeping NaN and inf out of the weights: detect non-finite loss terms and gradients, skip the step.

Every micro-batch's loss terms (the dict ``loss_fn`` returns) and, at each optimizer step, the
gradient norm are checked with ``torch.isfinite`` on the device. A step is *bad* when any term of
any of its micro-batches, or the gradient norm, is NaN or inf on any process (the flag is
all-reduced, so every process skips the same steps). A bad step never updates the weights:

* with a fused optimizer (``fused=True``, the default on CUDA and CPU) the flag is handed to the fused
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
    """A 0-dim float view of a one-element term (no kernel for a float32 scalar), else its sum."""
    value = value.detach().float()
    return value.reshape(()) if value.numel() == 1 else value.sum()


def stack_terms(terms: Mapping[str, Any]) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """Names of the tensor terms and their values as one float vector (T,) (one stack, not T kernels).

    A term with more than one element is summed: the sum is non-finite when any element is.
    """
    names = tuple(k for k, v in terms.items() if torch.is_tensor(v))
    if not names:
        return names, None
    return names, torch.stack([_scalar(terms[k]) for k in names])


class NonFiniteGuard:
    """Per-step finiteness check on the device; its record is read on the host only in :meth:`check`.

    A step costs six small device ops (concatenate the step's terms, ``isfinite``, not, any, to float,
    the cross-process max) whatever the number of terms; the per-term record is kept as the step's
    flag vectors and summed on the host at the next check.

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
        self.pending: list[tuple[tuple[str, ...], torch.Tensor]] = []
        self._reset(start_step)

    def _reset(self, start_step: int) -> None:
        self.window_start = start_step
        # per step of the window: (term names, finite flags (T,) on the device, step flag (max over processes))
        self.window: list[tuple[tuple[str, ...], torch.Tensor, torch.Tensor]] = []

    def observe(self, names: tuple[str, ...], values: torch.Tensor | None) -> None:
        """Record one micro-batch's terms: ``values`` (T,) for ``names``, see :func:`stack_terms`."""
        if values is not None:
            self.pending.append((names, values))

    def before_step(self, grad_norm: torch.Tensor | None, optimizer: torch.optim.Optimizer) -> bool:
        """Decide the step being taken; return whether to call ``optimizer.step()``.

        On the device path the decision is handed to the fused ``optimizer`` (always True here);
        on the host path a bad step returns False, or raises at once unless skipping.
        """
        groups = self.pending
        self.pending = []
        if grad_norm is not None and self.check_gradients:
            groups.append((("grad_norm",), _scalar(grad_norm).reshape(1)))
        names = tuple(name for group, _ in groups for name in group)
        if groups:
            finite = torch.isfinite(torch.cat([values for _, values in groups]))
            bad = (~finite).any().float()
        else:
            finite = torch.ones(0, dtype=torch.bool, device=self.device)
            bad = torch.zeros((), device=self.device)
        # every process must skip the same steps (a term can be non-finite on one process only)
        bad = self.accelerator.reduce(bad, reduction="max")
        self.window.append((names, finite, bad))
        if self.on_device:
            optimizer.found_inf = bad
            return True
        if bool(bad):
            if not self.skip:
                self.check()  # raises
            return False
        return True

    def check(self) -> int:
        """Read the window's flags on the host (one sync): raise if a step was bad and not skipping,
        else log, add to :attr:`total_skipped` and return how many steps were skipped in the window."""
        if not self.window:
            return 0
        flags = torch.cat(
            [torch.cat([finite.float(), bad.reshape(1)]) for _, finite, bad in self.window]
        ).tolist()
        window_end = self.window_start + len(self.window)
        bad_steps, first, position = 0, 0, 0
        terms: dict[str, int] = {}
        for offset, (names, _, _) in enumerate(self.window):
            for name, finite in zip(names, flags[position : position + len(names)]):
                if not finite:
                    terms[name] = terms.get(name, 0) + 1
            position += len(names)
            if flags[position]:
                bad_steps += 1
                first = first or self.window_start + offset + 1
            position += 1
        if bad_steps:
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

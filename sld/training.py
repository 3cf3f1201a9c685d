"""The training loop shared by every training stage (autoencoder, diffusion, AR baseline).

One template, following accelerate's ``examples/by_feature``: ``accelerator.accumulate`` around
each micro-batch, the loss a weighted sum of tensors built by the caller's ``loss_fn``, clipping when
gradients are synchronised, and exactly one optimizer step and one LR-schedule step per accumulated
batch (the reference code stepped on every micro-batch, running its schedule k times too fast).

Nothing is lost on a crash: ``save_state`` checkpoints hold model, optimizer, LR schedule, EMA,
RNG states and the loop position (step, epoch, micro-batches consumed in the epoch); a re-run with
the same output folder resumes from the newest checkpoint and skips the batches already seen, so the
data order is the same as in an uninterrupted run. The same code runs on a CPU, one GPU, or several
GPUs under ``accelerate launch``: it never branches on the device count.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sld.data.length_grouping import LengthGroupedSampler

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (warmup, then cosine/linear decay or constant).

    ``pretrained_lr_scale`` multiplies the learning rate of the parameters a model reports as pretrained
    (``model.pretrained_parameters()``, e.g. a loaded decoder LM) against the new parts it is trained
    with; 0 freezes them.
    """

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    pretrained_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.pretrained_lr_scale < 0:
            raise ValueError(f"pretrained_lr_scale must be >= 0, got {self.pretrained_lr_scale}")


@dataclass
class LoopConfig:
    """How long and how the loop runs. ``batch_size`` is per device and per micro-batch."""

    max_steps: int = 10000
    max_minutes: float | None = None
    batch_size: int = 64
    grad_accum_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 1000
    keep_checkpoints: int = 2
    resume: bool = True
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoopState:
    """The loop position saved in every checkpoint (registered with accelerate)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    elapsed_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass
class FitResult:
    """What ``fit`` hands back: the unwrapped model (raw weights), the EMA (if any) and the history."""

    model: torch.nn.Module
    ema: Any
    state: LoopState
    accelerator: Accelerator
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str = "max_steps"


def lr_lambda(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``optim.lr`` after ``step`` optimizer steps: linear warmup, then the decay."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, max(0.0, (step - optim.warmup_steps) / span))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1.0 - progress
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * decay


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    optim: OptimConfig,
    pretrained: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (biases, norms and embeddings-as-vectors excluded).

    Parameters in ``pretrained`` train at ``optim.pretrained_lr_scale`` x ``optim.lr`` (frozen at 0).
    """
    params = list(params)
    pretrained_ids = {id(p) for p in pretrained}
    if optim.pretrained_lr_scale == 0:
        for p in params:
            if id(p) in pretrained_ids:
                p.requires_grad_(False)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = []
    for scale, members in (
        (1.0, [p for p in params if id(p) not in pretrained_ids]),
        (optim.pretrained_lr_scale, [p for p in params if id(p) in pretrained_ids]),
    ):
        decay = [p for p in members if p.dim() >= 2]
        no_decay = [p for p in members if p.dim() < 2]
        groups += [
            {"params": decay, "weight_decay": optim.weight_decay, "lr": optim.lr * scale},
            {"params": no_decay, "weight_decay": 0.0, "lr": optim.lr * scale},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas))


def make_accelerator(output_dir: str | Path, loop: LoopConfig) -> Accelerator:
    """One Accelerator per run; seedable sampler so that resumed runs see the same data order."""
    return Accelerator(
        mixed_precision=loop.mixed_precision,
        gradient_accumulation_steps=loop.grad_accum_steps,
        project_config=ProjectConfiguration(project_dir=str(output_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders ``output_dir/checkpoints/step_<n>``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


class _MetricLogger:
    """Averages every logged term over the log interval and appends rows to ``metrics.jsonl``."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.sums: dict[str, Any] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.items = 0
        self.started = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], items: int) -> None:
        # Sums stay on the device until the flush: no host sync per micro-batch.
        for name, value in terms.items():
            self.sums[name] += value.detach().float() if torch.is_tensor(value) else float(value)
            self.counts[name] += 1
        self.items += items

    def flush(self, step: int, extra: dict[str, float]) -> dict[str, float]:
        seconds = max(1e-9, time.perf_counter() - self.started)
        row: dict[str, float] = {"step": step}
        row.update({f"train/{k}": float(self.sums[k]) / self.counts[k] for k in self.sums})
        row["train/items_per_second"] = self.items / seconds
        row.update(extra)
        self.write(row)
        self.sums.clear()
        self.counts.clear()
        self.items = 0
        self.started = time.perf_counter()
        return row

    def write(self, row: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def fit(
    model: torch.nn.Module,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Any],
    loss_fn: Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]],
    output_dir: str | Path,
    optim: OptimConfig,
    loop: LoopConfig,
    evaluate_fn: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    items_in_batch: Callable[[Any], int] | None = None,
    ema_decay: float | None = None,
    accelerator: Accelerator | None = None,
    lengths: Sequence[int] | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset`` until ``loop.max_steps`` optimizer steps or ``loop.max_minutes``.

    ``loss_fn(model, batch)`` returns a dict of tensors; its ``"loss"`` entry is back-propagated and
    every entry is logged (averaged over ``loop.log_every`` steps) to ``output_dir/metrics.jsonl``.
    ``evaluate_fn(model, step)`` runs on the main process every ``loop.eval_every`` steps and at the
    end (with EMA weights swapped in when ``ema_decay`` is set); its numbers are logged too.
    ``items_in_batch(batch)`` counts what throughput is measured in (segments, documents).
    ``lengths`` (one per dataset item) makes every batch hold items of similar length
    (:class:`~sld.data.length_grouping.LengthGroupedSampler`): less padding, faster steps.
    """
    output_dir = Path(output_dir)
    accelerator = accelerator or make_accelerator(output_dir, loop)
    set_seed(loop.seed)
    output_dir.mkdir(parents=True, exist_ok=True)

    sampler = None
    if lengths is not None:
        if len(lengths) != len(dataset):
            raise ValueError(f"got {len(lengths)} lengths for a dataset of {len(dataset)} items")
        sampler = LengthGroupedSampler(lengths, loop.batch_size, seed=loop.seed)
    loader = DataLoader(
        dataset,
        batch_size=loop.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) >= loop.batch_size,
        collate_fn=collate_fn,
        num_workers=loop.num_workers,
        generator=torch.Generator().manual_seed(loop.seed) if sampler is None else None,
    )
    if len(loader) == 0:
        raise ValueError(f"the training set is empty ({len(dataset)} items)")
    pretrained = model.pretrained_parameters() if hasattr(model, "pretrained_parameters") else ()
    optimizer = build_optimizer(list(model.parameters()), optim, pretrained)
    # The schedule is stepped by hand once per optimizer step (not prepared): accelerate's wrapper
    # would step it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, optim, loop.max_steps))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    trainable = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]

    ema = None
    if ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trainable, decay=ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    state = LoopState()
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(state)

    checkpoints = list_checkpoints(output_dir)
    if loop.resume and checkpoints:
        accelerator.load_state(str(checkpoints[-1]))
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoints[-1],
            state.step,
            state.epoch,
            state.batches_in_epoch,
        )

    metrics = _MetricLogger(output_dir / "metrics.jsonl", accelerator.is_main_process)
    history: list[dict[str, float]] = []
    progress = tqdm(
        total=loop.max_steps,
        initial=state.step,
        desc="train",
        disable=not (loop.progress and accelerator.is_local_main_process),
        dynamic_ncols=True,
        # redraw rarely when writing to a log file rather than a terminal
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    run_started = time.perf_counter() - state.elapsed_seconds
    stopped_by = "max_steps"

    def elapsed() -> float:
        return time.perf_counter() - run_started

    def checkpoint() -> None:
        state.elapsed_seconds = elapsed()
        path = output_dir / "checkpoints" / f"step_{state.step}"
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            for old in list_checkpoints(output_dir)[: -loop.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    def run_evaluation() -> None:
        if evaluate_fn is None:
            return
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            if ema is not None:
                ema.store(trainable)
                ema.copy_to(trainable)
            was_training = unwrapped.training
            unwrapped.eval()
            with torch.no_grad():
                scores = evaluate_fn(unwrapped, state.step)
            unwrapped.train(was_training)
            if ema is not None:
                ema.restore(trainable)
            row = {"step": state.step, **{f"eval/{k}": float(v) for k, v in scores.items()}}
            metrics.write(row)
            history.append(row)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in scores.items())
            progress.write(f"step {state.step} eval: {shown}")
        accelerator.wait_for_everyone()

    def out_of_time() -> bool:
        if loop.max_minutes is None:
            return False
        flag = torch.tensor(float(elapsed() > 60 * loop.max_minutes), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    model.train()
    done = state.step >= loop.max_steps
    while not done:
        loader.set_epoch(state.epoch)
        batches = (
            accelerator.skip_first_batches(loader, state.batches_in_epoch)
            if state.batches_in_epoch
            else loader
        )
        for batch in batches:
            with accelerator.accumulate(model):
                terms = loss_fn(model, batch)
                accelerator.backward(terms["loss"])
                if accelerator.sync_gradients and optim.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                    terms = {**terms, "grad_norm": grad_norm}
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            metrics.add(terms, items_in_batch(batch) if items_in_batch else 0)
            if not accelerator.sync_gradients:
                continue
            # one real optimizer step has been taken
            scheduler.step()
            if ema is not None:
                ema.step(trainable)
            state.step += 1
            progress.update(1)
            if state.step % loop.log_every == 0:
                row = metrics.flush(state.step, {"lr": scheduler.get_last_lr()[0]})
                history.append(row)
                progress.set_postfix(loss=f"{row.get('train/loss', float('nan')):.4f}")
            if state.step % loop.eval_every == 0:
                run_evaluation()
            if state.step % loop.save_every == 0:
                checkpoint()
            if state.step >= loop.max_steps:
                done = True
            elif out_of_time():
                done, stopped_by = True, "max_minutes"
            if done:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    if state.step % loop.eval_every != 0:
        run_evaluation()
    if not list_checkpoints(output_dir) or list_checkpoints(output_dir)[-1].name != f"step_{state.step}":
        checkpoint()
    accelerator.wait_for_everyone()
    logger.info("stopped at step %d (%s) after %.1f s", state.step, stopped_by, elapsed())
    return FitResult(
        model=accelerator.unwrap_model(model),
        ema=ema,
        state=state,
        accelerator=accelerator,
        history=history,
        stopped_by=stopped_by,
    )

"""The training loop shared by every training stage (autoencoder, diffusion, AR baseline).

One template, following accelerate's ``examples/by_feature``: ``accelerator.accumulate`` around
each micro-batch, the loss a weighted sum of tensors built by the caller's ``loss_fn``, clipping when
gradients are synchronised, and exactly one optimizer step and one LR-schedule step per accumulated
batch (the reference code stepped on every micro-batch, running its schedule k times too fast).

Nothing is lost on a crash (:mod:`sld.checkpointing`): checkpoints hold model, optimizer, LR
schedule, EMA, RNG states and the loop position (step, epoch, micro-batches consumed in the epoch),
are written atomically (a temporary folder renamed into place), and a re-run with the same output
folder resumes from the newest complete one, skips the batches already seen and drops the metrics
rows logged after it, so it ends in the same state as an uninterrupted run. NaN and inf never reach
the weights (:mod:`sld.nonfinite`): the run stops naming the step and the loss term, or skips and
counts such steps (``loop.skip_nonfinite_steps``).

The host never waits for the device in an ordinary step: loss terms are summed on the device and
read at logging steps only, the time budget is checked on the host clock at a few agreed steps, and
with a fused optimizer (CUDA) the NaN guard skips bad steps on the device. Every log row reports
items/s, tokens/s (with ``tokens_in_batch``), the achieved model TFLOP/s and the MFU
(:mod:`sld.throughput`: FLOPs counted on the first micro-batch, divided by the device's peak);
rows go to ``metrics.jsonl`` and to an Accelerate tracker (TensorBoard when installed).
``loop.profile_steps`` writes a torch.profiler summary of a few steps to ``profile.txt``;
``loop.compile`` compiles the model's repeated blocks (:mod:`sld.compilation`). The same code runs
on a CPU, one GPU, or several GPUs under ``accelerate launch``: it never branches on the device
count.

Several processes: ``loop.batch_size`` is per process, so the global batch is
``batch_size x grad_accum_steps x num_processes`` items; each process reads its own share of the
one shuffled order (accelerate shards the batches). Logged rows are global: loss terms averaged
over every process's micro-batches, items/s and tokens/s summed over the processes, MFU against
the peak of all the devices. The randomness of each micro-batch (diffusion noise and timesteps,
CFG drop, latent noise) comes from :class:`sld.distributed.MicroBatch`, the same for each row
of the global batch on any process count. Evaluation runs on every process (the evaluators split
their work with :func:`sld.distributed.map_shards`); EMA, checkpoints and metrics are written
once. Checkpoints store the data position as global samples seen in the epoch, so a run resumed
on a different number of processes continues where the data stopped (rounded down to a whole
global batch of the new run).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sld.allocator_stats import AllocatorCounters, cuda_memory_row
from sld.backends import SYNC_DEBUG_ENV, configure_attention, guarded_step, sync_debug_mode
from sld.checkpointing import (
    CHECKPOINT_PATTERN,
    CheckpointError,
    check_writable,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from sld.compilation import (
    compile_model,
    compiled_graphs,
    compiled_losses,
    cuda_graph_step,
    eager,
    uncompile,
)
from sld.config import ConfigError
from sld.data.length_grouping import LengthGroupedSampler
from sld.distributed import MicroBatch, in_micro_batch
from sld.loop_timing import PROFILE_WARMUP_STEPS, StepProfiler, TimeBudget
from sld.nonfinite import NonFiniteGuard, NonFiniteLossError, stack_terms
from sld.run_log import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricLogger,
    read_metrics,
    tracker_config,
    tracker_names,
    truncate_metrics,
)
from sld.throughput import FlopCount, device_peak_tflops, mfu, raised_by_flop_counter

logger = logging.getLogger(__name__)

# The crash tests' hook: "step:<n>" pauses inside optimizer step n (after backward, before the
# update), "checkpoint:<n>" inside the write of checkpoint n; the marker file is written on arrival.
PAUSE_ENV = "SLD_PAUSE_AT"
PAUSE_MARKER_ENV = "SLD_PAUSE_MARKER"


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (warmup, then cosine/linear decay or constant).

    ``pretrained_lr_scale`` multiplies the learning rate of the parameters a model reports as pretrained
    (``model.pretrained_parameters()``, e.g. a loaded decoder LM) against the new parts it is trained
    with; 0 freezes them. ``freeze_pretrained_steps``: they stay fixed for that many optimizer steps
    first (a new bridge into a pretrained decoder learns to be read before the decoder can learn to
    ignore it). ``fused``: the fused AdamW kernel (one launch for all parameters; lets the
    NaN guard skip steps without a host sync). None = on when training on CUDA or a CPU.
    ``decay_over``: what the decay spans after the warmup: ``max_steps`` (``loop.max_steps``), or
    ``budget``: the steps that ``loop.max_minutes`` is projected to allow at the run's measured step
    rate (re-estimated every few seconds, ``sld.loop_timing.TimeBudget``; at most ``loop.max_steps``),
    so a time-budgeted run ends at the bottom of its schedule on a fast machine and a slow one alike.
    """

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    pretrained_lr_scale: float = 1.0
    freeze_pretrained_steps: int = 0
    fused: bool | None = None
    decay_over: Literal["max_steps", "budget"] = "max_steps"

    def __post_init__(self) -> None:
        if self.decay_over not in ("max_steps", "budget"):
            raise ValueError(f"decay_over must be max_steps or budget, got {self.decay_over!r}")
        if self.pretrained_lr_scale < 0:
            raise ValueError(f"pretrained_lr_scale must be >= 0, got {self.pretrained_lr_scale}")
        if self.freeze_pretrained_steps < 0:
            raise ValueError(f"freeze_pretrained_steps must be >= 0, got {self.freeze_pretrained_steps}")


@dataclass
class LoopConfig:
    """How long and how the loop runs. ``batch_size`` is per device and per micro-batch.

    ``skip_nonfinite_steps``: skip (and count) steps with a NaN/inf loss term or gradient instead
    of stopping the run. ``compile``: ``torch.compile`` the model's repeated blocks in place (the
    whole model when it has none; :mod:`sld.compilation`); the first steps then include the
    compilation, and a time budget counts it; resume a compiled run with ``compile`` on.
    ``compile_blocks``: with ``compile``, only the repeated blocks of these classes (e.g.
    ``[TransformerBlock, PerceiverLayer]``); None: all of them. ``compile_max_autotune``: with
    ``compile``, Inductor autotunes the blocks' matrix products (``sld.compilation.compile_model``).
    ``compile_dynamic``: ``torch.compile``'s ``dynamic`` for the blocks (True: shape-generic graphs from
    the first step, for batches whose shapes change at every step; None: torch's default).
    ``compile_cuda_graphs``: with ``compile``, the blocks' fixed-shape graphs replay as CUDA graphs
    (a GPU; shortens the host's time per block call: ``sld.compilation.compile_model``); without
    ``compile`` it does nothing, which ``fit`` logs (a config that turns both on, as the SmolLM2
    autoencoder's, then trains eagerly with ``loop.compile=false`` alone). ``compile_options``: more
    Inductor options for the compiled blocks, by their names in ``torch._inductor.config`` (e.g.
    ``{coordinate_descent_tuning: true}``; ``sld.compilation.inductor_options``), over sld's own.
    ``tracker``: where metrics go besides ``metrics.jsonl`` (``auto``: TensorBoard in
    ``<output_dir>/tensorboard`` when installed). ``profile_steps``: profile that many steps after
    ``profile_after`` warm-up steps (default 3: the FLOP count, compilation; a run whose first steps
    are slow for longer, e.g. while CUDA graphs are recorded, wants more) and write the summary to
    ``<output_dir>/profile.txt`` (a time budget spent before then, e.g. by compilation, stops the run
    only once they have run). ``peak_tflops``: the
    device's peak for the MFU (None: the datasheet bf16 figure of known GPUs, see
    :mod:`sld.throughput`).
    """

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
    skip_nonfinite_steps: bool = False
    compile: bool = False
    compile_blocks: list[str] | None = None
    compile_max_autotune: bool = False
    compile_dynamic: bool | None = None
    compile_cuda_graphs: bool = False
    compile_options: dict[str, Any] | None = None
    tracker: Literal["none", "tensorboard", "auto"] = "auto"
    profile_steps: int = 0
    profile_after: int = PROFILE_WARMUP_STEPS
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.profile_steps < 0:
            raise ValueError(f"profile_steps must be >= 0, got {self.profile_steps}")
        if self.profile_after < 1:
            raise ValueError(f"profile_after must be >= 1 (step 1 counts FLOPs), got {self.profile_after}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be > 0 or null, got {self.peak_tflops}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0 or null, got {self.max_minutes}")
        if self.compile_cuda_graphs and self.compile_dynamic:
            raise ValueError(
                "compile_cuda_graphs replays graphs of fixed shapes, and compile_dynamic: true makes "
                "every block shape-generic: leave compile_dynamic unset (or false)"
            )

    @property
    def replays_cuda_graphs(self) -> bool:
        """Whether compiled blocks replay as CUDA graphs: ``compile_cuda_graphs`` with ``compile``."""
        return self.compile and self.compile_cuda_graphs


@dataclass
class LoopState:
    """The loop position saved in every checkpoint (``loop_state.json``)."""

    step: int = 0
    epoch: int = 0
    # micro-batches this process has read in the epoch; the checkpoint also holds the global count
    # of items (samples_in_epoch), from which a run on another process count re-derives it
    batches_in_epoch: int = 0
    samples_in_epoch: int = 0
    elapsed_seconds: float = 0.0
    skipped_steps: int = 0
    # FLOPs of one micro-batch per unit (token, item or micro-batch), counted at step 1 of the run
    flops_per_unit: float = 0.0
    flops_unit: str = ""
    # the steps the learning-rate decay spans (optim.decay_over=budget: the projection; 0: max_steps)
    schedule_span_steps: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = set(self.__dict__)
        self.__dict__.update({k: v for k, v in state.items() if k in known})


@dataclass
class FitResult:
    """What ``fit`` hands back: the unwrapped model (raw weights), the EMA (if any) and the history."""

    model: torch.nn.Module
    ema: Any
    state: LoopState
    accelerator: Accelerator
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str = "max_steps"


@dataclass
class ScheduleSpan:
    """The optimizer steps the learning-rate decay spans (``OptimConfig.decay_over``): read by the
    schedule at every step, so ``fit`` can move it while the run goes on."""

    steps: int


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


# A time-budgeted run that stops with its learning rate above this share of the peak never decayed.
UNDECAYED_LR_SHARE = 0.5


def warn_if_schedule_undecayed(step: int, optim: OptimConfig, max_steps: int) -> bool:
    """Warn (and return True) when a run stopped by its time budget at ``step`` with the schedule's
    learning rate still above ``UNDECAYED_LR_SHARE`` of its peak.

    The decay spans ``loop.max_steps``; a time budget that ends long before it leaves the whole run
    near the peak rate. On the H200 (2026-12-04) the ROC autoencoder at 1e-3, cosine over 20,000 steps,
    diverged at step ~1,300 of a 3-minute run (gradient norm 0.85 -> 130, loss 0.76 -> 7.5).
    """
    if optim.schedule == "constant" or step >= max_steps:
        return False
    share = lr_lambda(step, optim, max_steps)
    if share <= UNDECAYED_LR_SHARE:
        return False
    logger.warning(
        "the time budget ended at step %d with the learning rate at %.0f%% of its peak: the %s decay "
        "spans loop.max_steps=%d; a loop.max_steps of about %d would end it within the budget (or "
        "optim.decay_over=budget spans the budget itself)",
        step,
        100 * share,
        optim.schedule,
        max_steps,
        step,
    )
    return True


def group_lr_lambdas(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int | ScheduleSpan
) -> list[Callable[[int], float]]:
    """One LR multiplier per parameter group: ``lr_lambda``, and 0 for the pretrained groups during
    their first ``optim.freeze_pretrained_steps`` steps (the new parts learn to feed them first).
    ``total_steps``: the steps the decay spans, or a ``ScheduleSpan`` read at every call."""
    span = total_steps if isinstance(total_steps, ScheduleSpan) else ScheduleSpan(total_steps)

    def schedule(step: int) -> float:
        return lr_lambda(step, optim, span.steps)

    def frozen_first(step: int) -> float:
        return 0.0 if step < optim.freeze_pretrained_steps else lr_lambda(step, optim, span.steps)

    return [frozen_first if group.get("pretrained") else schedule for group in optimizer.param_groups]


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    optim: OptimConfig,
    pretrained: Iterable[torch.nn.Parameter] = (),
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (biases, norms and embeddings-as-vectors excluded).

    Parameters in ``pretrained`` train at ``optim.pretrained_lr_scale`` x ``optim.lr`` (frozen at 0).
    ``fused`` selects the fused kernel (all parameters on one CUDA/CPU device).
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
    for is_pretrained, scale in ((False, 1.0), (True, optim.pretrained_lr_scale)):
        members = [p for p in params if (id(p) in pretrained_ids) == is_pretrained]
        decay = [p for p in members if p.dim() >= 2]
        no_decay = [p for p in members if p.dim() < 2]
        groups += [
            {
                "params": decay,
                "weight_decay": optim.weight_decay,
                "lr": optim.lr * scale,
                "pretrained": is_pretrained,
            },
            {"params": no_decay, "weight_decay": 0.0, "lr": optim.lr * scale, "pretrained": is_pretrained},
        ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas), fused=fused or None
    )


def make_accelerator(output_dir: str | Path, loop: LoopConfig) -> Accelerator:
    """One Accelerator per run; seedable sampler so that resumed runs see the same data order."""
    return Accelerator(
        mixed_precision=loop.mixed_precision,
        gradient_accumulation_steps=loop.grad_accum_steps,
        log_with=tracker_names(loop.tracker),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(Path(output_dir) / TENSORBOARD_DIR)
        ),
        # data_seed: the shuffled order is the same on every process (each reads its own share)
        # non_blocking: batches (pinned by the DataLoader on a GPU) go to the device without the
        # host waiting. A copy from pageable memory waits for the stream to drain first: every step
        # then began with the GPU idle while the host queued the step's first kernels.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=loop.seed, non_blocking=True
        ),
    )


def _pause_hook() -> Callable[[str, int], None] | None:
    """The crash tests' pause point from ``SLD_PAUSE_AT`` (None when unset)."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return None
    where, _, number = spec.partition(":")
    if where not in ("step", "checkpoint") or not number.isdigit():
        raise ConfigError(f"{PAUSE_ENV}={spec!r}: expected step:<n> or checkpoint:<n>")
    target = int(number)
    marker = os.environ.get(PAUSE_MARKER_ENV)

    def pause(at: str, step: int) -> None:
        if at == where and step == target:
            if marker:
                Path(marker).write_text(f"{at}:{step}\n")
            logger.warning("%s=%s: pausing (waiting to be killed)", PAUSE_ENV, spec)
            time.sleep(3600)

    return pause


def _rederive_data_position(state: LoopState, saved: dict[str, Any], global_batch: int) -> None:
    """This process's micro-batches into the epoch, from the global items seen when the checkpoint
    was written: on another process count (or batch size) the run goes on from the same place in
    the epoch's order, rounded down to a whole global batch (those few items are read again)."""
    samples = saved["loop"].get("samples_in_epoch")
    if samples is None:  # written before the global count was kept: per-process batches as saved
        return
    batches = samples // global_batch
    if batches != state.batches_in_epoch:
        logger.warning(
            "the checkpoint was written by %s processes, this run has a global batch of %d items: "
            "%d items into epoch %d = %d micro-batches per process (was %d)%s",
            saved.get("num_processes", "?"),
            global_batch,
            samples,
            state.epoch,
            batches,
            state.batches_in_epoch,
            f"; {samples - batches * global_batch} items are read again" if samples % global_batch else "",
        )
    state.batches_in_epoch = batches


def _grad_norm(parameters: Sequence[torch.nn.Parameter]) -> torch.Tensor | None:
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def _unwrap(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    module = accelerator.unwrap_model(model)
    return getattr(module, "_orig_mod", module)


def training_loader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Any],
    loop: LoopConfig,
    device: torch.device,
    lengths: Sequence[int] | None = None,
) -> DataLoader:
    """The loader of ``fit``: shuffled batches of ``loop.batch_size`` (length-grouped when ``lengths``
    gives one length per item), page-locked on CUDA, a generator of its own.

    With ``loop.num_workers`` > 0 the workers persist across epochs. Started afresh at every epoch
    they cost the first batch of each epoch a fork of the training process and a batch built while the
    device waits: on an H200 the denoiser and the AR baseline at batch 1,024 (5 steps an epoch on ROC)
    waited 22 and 28 ms a step for data (their profiles, docs/results.md, eighteenth session). The
    collators' randomness is seeded by item (``sld.data.collate``), so persistent workers draw the
    same batches as fresh ones.
    """
    sampler = None
    if lengths is not None:
        if len(lengths) != len(dataset):
            raise ValueError(f"got {len(lengths)} lengths for a dataset of {len(dataset)} items")
        sampler = LengthGroupedSampler(lengths, loop.batch_size, seed=loop.seed)
    return DataLoader(
        dataset,
        batch_size=loop.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) >= loop.batch_size,
        collate_fn=collate_fn,
        num_workers=loop.num_workers,
        persistent_workers=loop.num_workers > 0,
        pin_memory=device.type == "cuda",  # page-locked: the copy to the GPU is asynchronous
        # always a generator of its own: a new iterator then never draws from the global RNG, so a
        # resumed run (which starts a new iterator mid-epoch) keeps the RNG stream of the original
        generator=torch.Generator().manual_seed(loop.seed),
    )


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
    tokens_in_batch: Callable[[Any], int | torch.Tensor] | None = None,
    real_fraction_in_batch: Callable[[Any], float | torch.Tensor] | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset`` until ``loop.max_steps`` optimizer steps or ``loop.max_minutes``.

    ``loss_fn(model, batch)`` returns a dict of tensors; its ``"loss"`` entry is back-propagated and
    every entry is logged (averaged over ``loop.log_every`` steps and over the processes) to
    ``output_dir/metrics.jsonl``. ``evaluate_fn(model, step)`` runs on every process every
    ``loop.eval_every`` steps and at the end (with EMA weights swapped in when ``ema_decay`` is
    set); it may split its work with :func:`sld.distributed.map_shards`, and should write files on
    the main process only; the main process's numbers are logged.
    ``items_in_batch(batch)`` counts what throughput is measured in (segments, documents);
    ``tokens_in_batch(batch)`` (an int, or a tensor summed on the device) adds tokens/s and makes
    the MFU per token. ``lengths`` (one per dataset item) makes every batch hold items of similar
    length (:class:`~sld.data.length_grouping.LengthGroupedSampler`): less padding, faster steps.
    ``real_fraction_in_batch(batch)``: the share of the positions the step computes on that are real
    tokens, not padding (:func:`sld.throughput.real_position_fraction`); the counted FLOPs are scaled
    by it, so that the MFU counts the work on real tokens only (padding is wasted work, not model FLOPs).

    Raises :class:`~sld.nonfinite.NonFiniteLossError` on a NaN/inf loss (unless
    ``loop.skip_nonfinite_steps``) and :class:`~sld.checkpointing.CheckpointError` when the
    output folder cannot be written; the newest checkpoint on disk is then left as it was.
    """
    if optim.decay_over == "budget" and loop.max_minutes is None:
        raise ConfigError("optim.decay_over=budget spans the time budget: set loop.max_minutes too")
    output_dir = Path(output_dir)
    accelerator = accelerator or make_accelerator(output_dir, loop)
    # seed + process index: dropout differs between processes (the first process's RNG is the
    # one of a single-process run); the data order has its own seed (make_accelerator)
    set_seed(loop.seed, device_specific=True)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create the output folder {output_dir}: {err.strerror or err}") from err
    check_writable(output_dir)  # on every process: all of them fail at once, none waits for another
    if accelerator.is_main_process:
        remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()
    pause = _pause_hook()

    loader = training_loader(dataset, collate_fn, loop, accelerator.device, lengths)
    if len(loader) == 0:
        raise ValueError(f"the training set is empty ({len(dataset)} items)")
    pretrained = model.pretrained_parameters() if hasattr(model, "pretrained_parameters") else ()
    if loop.compile:
        model = compile_model(
            model,
            only=loop.compile_blocks,
            max_autotune=loop.compile_max_autotune,
            dynamic=loop.compile_dynamic,
            cuda_graphs=loop.compile_cuda_graphs,
            extra_options=loop.compile_options,
        )
    elif loop.compile_cuda_graphs:
        logger.info(
            "loop.compile_cuda_graphs=true does nothing with loop.compile=false: the blocks run eagerly"
        )
    # torch's fused AdamW exists for CUDA and CPU: on 2 CPU cores it took 0.40x the time of the
    # per-parameter loop on the ROC autoencoder's 45M trainable parameters (docs/results.md)
    fused = optim.fused if optim.fused is not None else accelerator.device.type in ("cuda", "cpu")
    if fused:
        model.to(accelerator.device)  # the fused kernel's device check sees the parameters where they train
    optimizer = build_optimizer(list(model.parameters()), optim, pretrained, fused=fused)
    # The schedule is stepped by hand once per optimizer step (not prepared): accelerate's wrapper
    # would step it once per process.
    span = ScheduleSpan(loop.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_lr_lambdas(optimizer, optim, span))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    trainable = [p for p in _unwrap(accelerator, model).parameters() if p.requires_grad]

    ema = None
    if ema_decay is not None:
        from diffusers.training_utils import EMAModel

        # foreach: one fused update over all parameters (three kernels) instead of three per parameter
        ema = EMAModel(trainable, decay=ema_decay, foreach=True)
        ema.to(accelerator.device)
    state = LoopState()

    metrics_path = output_dir / METRICS_FILE
    checkpoints = list_checkpoints(output_dir)
    if loop.resume and checkpoints:
        saved = load_checkpoint(accelerator, checkpoints[-1], ema)
        state.load_state_dict(saved["loop"])
        _rederive_data_position(state, saved, loop.batch_size * accelerator.num_processes)
        scheduler.load_state_dict(saved["scheduler"])
        if optim.decay_over == "budget" and state.schedule_span_steps:
            span.steps = state.schedule_span_steps  # until this run's rate is measured again
        if accelerator.is_main_process:
            dropped = truncate_metrics(metrics_path, state.step)
            if dropped:
                logger.info(
                    "dropped %d metrics rows logged after step %d by the interrupted run", dropped, state.step
                )
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoints[-1],
            state.step,
            state.epoch,
            state.batches_in_epoch,
        )
    accelerator.wait_for_everyone()

    if accelerator.log_with and not accelerator.trackers:
        accelerator.init_trackers("train", config=tracker_config(("optim", optim), ("loop", loop)))
    metrics = MetricLogger(metrics_path, accelerator.is_main_process, gather=gather_object)
    # a resumed run's history starts with the rows the run logged before (read after the main
    # process truncated them to the checkpoint), so its summary holds its whole run, not this part
    history: list[dict[str, Any]] = (
        read_metrics(metrics_path) if state.step and metrics_path.is_file() else []
    )
    budget_seconds = None if loop.max_minutes is None else round(60 * loop.max_minutes)
    progress = tqdm(
        total=budget_seconds if budget_seconds is not None else loop.max_steps,
        initial=min(budget_seconds, int(state.elapsed_seconds)) if budget_seconds is not None else state.step,
        unit="s" if budget_seconds is not None else "step",
        # a time budget: seconds spent of the budget (a rate in s/s would mean nothing)
        bar_format=(
            "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s of the time budget [{elapsed}<{remaining}{postfix}]"
            if budget_seconds is not None
            else None
        ),
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

    budget = TimeBudget(loop.max_minutes, accelerator, elapsed, state.step)
    guard = NonFiniteGuard(
        accelerator,
        skip=loop.skip_nonfinite_steps,
        on_device=fused and accelerator.scaler is None,
        check_gradients=accelerator.scaler is None,
        start_step=state.step,
        skipped=state.skipped_steps,
    )
    logged_skips = state.skipped_steps
    profiler = StepProfiler(
        loop.profile_steps, output_dir, accelerator.is_main_process, accelerator.device, loop.profile_after
    )
    peak = loop.peak_tflops or device_peak_tflops(accelerator.device)
    if peak:
        peak *= accelerator.num_processes  # the rates are global: against the peak of all devices
    # FLOPs are counted on the first micro-batch of a run from scratch only: FlopCounterMode changes
    # the rounding of the step it watches (by ~1e-7, measured), and a resumed run must repeat the
    # uninterrupted run's arithmetic exactly; resumed runs take the count from the checkpoint. A
    # compiled model's counted micro-batch runs eagerly (FlopCount says why).
    fresh_run = state.step == 0 and state.batches_in_epoch == 0 and state.epoch == 0
    count_flops_at = 0 if fresh_run else -1
    micro_batches_seen = 0
    last_loss: float | None = None

    def checkpoint() -> None:
        guard.check()
        state.skipped_steps = guard.total_skipped
        state.elapsed_seconds = elapsed()
        state.samples_in_epoch = state.batches_in_epoch * loop.batch_size * accelerator.num_processes
        save_checkpoint(
            accelerator,
            output_dir,
            state.step,
            {"loop": state.state_dict(), "scheduler": scheduler.state_dict()},
            ema,
            keep=loop.keep_checkpoints,
            pause=pause,
        )

    def log_row(row: dict[str, Any]) -> None:
        # wall seconds since the run began (resumed runs continue the count; evaluations included)
        row.setdefault("time/seconds", round(elapsed(), 2))
        metrics.write(row)
        history.append(row)
        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def run_evaluation() -> None:
        # on every process (the EMA is identical on each): evaluators split their work between
        # the processes (sld.distributed.map_shards); the main process's scores are logged
        if evaluate_fn is None:
            return
        guard.check()
        unwrapped = _unwrap(accelerator, model)
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
        was_training = unwrapped.training
        unwrapped.eval()
        evaluated_at = round(elapsed(), 2)  # the model's age, not counting this evaluation
        with torch.no_grad(), eager():  # compiled blocks run eagerly: no graphs for generation's shapes
            scores = evaluate_fn(unwrapped, state.step)
        unwrapped.train(was_training)
        if ema is not None:
            ema.restore(trainable)
        log_row(
            {
                "step": state.step,
                "time/seconds": evaluated_at,
                **{f"eval/{k}": float(v) for k, v in scores.items()},
            }
        )
        if accelerator.is_main_process:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in scores.items())
            progress.write(f"step {state.step} eval: {shown}")
        accelerator.wait_for_everyone()

    allocator = AllocatorCounters()  # the caching allocator's cudaMalloc calls and retries per row

    def flush_metrics() -> None:
        nonlocal last_loss, logged_skips
        guard.check()
        row, rates = metrics.flush(state.step)
        if loop.skip_nonfinite_steps:
            row["train/skipped_steps"] = guard.total_skipped - logged_skips
            logged_skips = guard.total_skipped
        if state.flops_per_unit and state.flops_unit in rates:
            achieved = state.flops_per_unit * rates[state.flops_unit]
            row["train/tflops_per_second"] = achieved / 1e12
            if peak:
                row["train/mfu"] = mfu(state.flops_per_unit, rates[state.flops_unit], peak)
        row["lr"] = scheduler.get_last_lr()[0]
        if optim.decay_over == "budget":
            row["lr_span_steps"] = span.steps
        if loop.compile:  # still rising after the first steps: the blocks are being compiled again
            row["compile/graphs"] = compiled_graphs()
        if accelerator.device.type == "cuda":  # host-side counters: no device sync
            row.update(cuda_memory_row(accelerator.device, allocator))
        log_row(row)
        last_loss = row.get("train/loss")

    def show_progress() -> None:
        if budget_seconds is not None:
            progress.update(max(0, min(budget_seconds, int(elapsed())) - progress.n))
        else:
            progress.update(1)
        shown = "-" if last_loss is None else f"{last_loss:.4f}"  # no loss logged yet
        progress.set_postfix_str(f"step {state.step}/{loop.max_steps}, loss {shown}", refresh=False)

    model.train()
    configure_attention()  # cuDNN attention off unless SLD_CUDNN_ATTENTION=1 (sld.backends says why)

    micro_in_step = 0  # micro-batches of the optimizer step being accumulated
    sync_debug = sync_debug_mode()  # SLD_SYNC_DEBUG: host syncs inside a step warn or raise
    if sync_debug is not None:
        logger.info("%s=%s: host syncs inside training steps %s", SYNC_DEBUG_ENV, sync_debug, sync_debug)

    def forward_backward(batch: Any, counter: Any) -> tuple[dict[str, Any], list[str], torch.Tensor]:
        """One micro-batch's loss terms and backward pass (inside ``counter`` when FLOPs are counted)."""
        random = MicroBatch.for_micro_batch(loop.seed, state.step, micro_in_step)
        # a step of the CUDA-graph trees per optimizer step: the gradients accumulated over its
        # micro-batches may live in the graphs' memory until the optimizer has read them
        cuda_graph_step(loop.replays_cuda_graphs and micro_in_step == 0)
        with counter:
            with profiler.phase("sld.loss_fn"), in_micro_batch(random), compiled_losses(loop.compile):
                terms = loss_fn(model, batch)
            names, values = stack_terms(terms)
            guard.observe(names, values)
            with profiler.phase("sld.backward"):
                accelerator.backward(terms["loss"])
        return terms, names, values

    done = state.step >= loop.max_steps
    if not done and loop.max_minutes is not None and state.elapsed_seconds >= 60 * loop.max_minutes:
        # resumed with its time budget already spent (the budget counts the whole run, across
        # resumes): not one more step. Every process loaded the same elapsed_seconds, so all agree.
        done, stopped_by = True, "max_minutes"
        logger.warning(
            "the time budget (loop.max_minutes=%s) was spent before this resume (%.1f s): no step taken; "
            "raise loop.max_minutes to train on",
            loop.max_minutes,
            state.elapsed_seconds,
        )
    while not done:
        loader.set_epoch(state.epoch)
        batches = (
            accelerator.skip_first_batches(loader, state.batches_in_epoch)
            if state.batches_in_epoch
            else loader
        )
        for batch in batches:
            counter = FlopCount(loop.compile) if micro_batches_seen == count_flops_at else nullcontext()
            micro_batches_seen += 1
            with guarded_step(sync_debug, accelerator.device.type), accelerator.accumulate(model):
                try:
                    terms, names, values = forward_backward(batch, counter)
                except Exception as err:
                    if not (isinstance(counter, FlopCount) and raised_by_flop_counter(err)):
                        raise
                    # The counter cannot follow some kernels (torch 2.11: grouped-query SDPA in the
                    # prefix forward of a causal LM); the step itself is fine: run it again, uncounted.
                    logger.warning("FLOP counting failed (%s): this run reports no MFU", err)
                    optimizer.zero_grad(set_to_none=True)
                    counter = nullcontext()
                    terms, names, values = forward_backward(batch, counter)
                grad_norm = None
                if accelerator.sync_gradients:
                    if optim.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                    elif guard.check_gradients:
                        grad_norm = _grad_norm(trainable)
                    take_step = guard.before_step(grad_norm, getattr(optimizer, "optimizer", optimizer))
                    if pause is not None:
                        pause("step", state.step + 1)
                    if take_step:
                        with profiler.phase("sld.optimizer"):
                            optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if isinstance(counter, FlopCount):
                units = tokens_in_batch(batch) if tokens_in_batch else None
                unit = "tokens" if units is not None else "items" if items_in_batch else "micro_batches"
                if units is None:
                    units = items_in_batch(batch) if items_in_batch else 1
                real = float(real_fraction_in_batch(batch)) if real_fraction_in_batch else 1.0
                useful = counter.total * real  # the FLOPs on real tokens (the padding's are not model FLOPs)
                state.flops_per_unit, state.flops_unit = useful / max(1.0, float(units)), unit
                logger.info(
                    "FLOPs of one micro-batch (forward + backward): %.4g, %.4g of them on real tokens "
                    "(%.1f%% of the positions; the MFU counts those) (%.4g per %s)",
                    counter.total,
                    useful,
                    100 * real,
                    state.flops_per_unit,
                    unit.removesuffix("s").replace("_", "-"),
                )
            state.batches_in_epoch += 1
            micro_in_step += 1
            metrics.add(names, values, {k: v for k, v in terms.items() if not torch.is_tensor(v)})
            if grad_norm is not None and optim.max_grad_norm > 0:
                metrics.add(("grad_norm",), grad_norm.detach().float().reshape(1))
            metrics.add_batch(
                items_in_batch(batch) if items_in_batch else 0,
                tokens_in_batch(batch) if tokens_in_batch else None,
            )
            if not accelerator.sync_gradients:
                continue
            # one real optimizer step has been taken (or skipped by the NaN guard)
            micro_in_step = 0
            scheduler.step()
            if ema is not None:
                ema.step(trainable)
            state.step += 1
            profiler.after_step()
            if state.step % loop.log_every == 0:
                flush_metrics()
            show_progress()
            if state.step % loop.eval_every == 0:
                run_evaluation()
            if state.step % loop.save_every == 0:
                checkpoint()
            if state.step >= loop.max_steps:
                done = True
            elif not profiler.pending and budget.exhausted(state.step):
                done, stopped_by = True, "max_minutes"
            if optim.decay_over == "budget" and budget.projected_steps is not None:
                span.steps = state.schedule_span_steps = min(loop.max_steps, budget.projected_steps)
            if done:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    profiler.finish()
    progress.close()
    guard.check()
    state.skipped_steps = guard.total_skipped
    evaluated_now = any(
        row["step"] == state.step and any(k.startswith("eval/") for k in row) for row in history
    )
    if not evaluated_now:  # the last step's evaluation (a resumed run may have logged it already)
        run_evaluation()
    if not list_checkpoints(output_dir) or list_checkpoints(output_dir)[-1].name != f"step_{state.step}":
        checkpoint()
    accelerator.wait_for_everyone()
    state.elapsed_seconds = elapsed()  # the run's seconds so far, across resumes (summary.json)
    for tracker in accelerator.trackers:
        tracker.finish()
    logger.info(
        "stopped at step %d (%s) after %.1f s%s",
        state.step,
        stopped_by,
        elapsed(),
        f"; {state.skipped_steps} steps skipped (non-finite)" if state.skipped_steps else "",
    )
    if stopped_by == "max_minutes" and optim.decay_over == "max_steps":  # a budget's span ends with it
        warn_if_schedule_undecayed(state.step, optim, loop.max_steps)
    return FitResult(
        model=uncompile(_unwrap(accelerator, model)),  # plain modules for what follows (generation)
        ema=ema,
        state=state,
        accelerator=accelerator,
        history=history,
        stopped_by=stopped_by,
    )


__all__ = [
    "CHECKPOINT_PATTERN",
    "FitResult",
    "LoopConfig",
    "LoopState",
    "NonFiniteLossError",
    "OptimConfig",
    "build_optimizer",
    "fit",
    "list_checkpoints",
    "lr_lambda",
    "ScheduleSpan",
    "make_accelerator",
    "training_loader",
    "truncate_metrics",
    "warn_if_schedule_undecayed",
]

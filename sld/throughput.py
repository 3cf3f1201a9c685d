"""Throughput and model FLOPs utilisation (MFU) of a training run.

FLOPs are counted, not estimated from a formula per architecture: ``fit`` runs the first
micro-batch of every run (``loss_fn`` + backward, the real training step, not an extra one) under
:class:`torch.utils.flop_counter.FlopCounterMode`, which adds up the FLOPs of every matrix multiply,
convolution and attention kernel from the actual tensor shapes (2 FLOPs per multiply-add; the
forward, the backward and any frozen encoder the step runs are all included; element-wise ops,
norms, softmax and the optimizer update are not, as usual for MFU). Work that runs on a random
share of the steps is counted at that share, whether the counted micro-batch ran it or not (the
denoiser's self-conditioning pass: ``FlopCount.region`` and ``FlopCount.adjust``). Then::

    flops_per_unit = counted FLOPs / units in that micro-batch      (unit: token, item or micro-batch)
    achieved FLOP/s = flops_per_unit x units per second             (per process, over a log interval)
    MFU             = achieved FLOP/s / peak FLOP/s of one device

The unit is a token when ``fit`` is given a token counter, else an item (segment, document), else
a micro-batch. FLOPs spent on padding are not model FLOPs: a trainer whose batches are padded gives
``fit`` the share of real positions in a batch (``real_position_fraction``), and the counted FLOPs are
scaled by it before the division, so padding lowers the MFU, as it should. Without that scaling the
padded positions' FLOPs counted as useful work: the AR baseline's random ROC batches of 1,024 are
about 60% real tokens (right-padded to their longest row; ``examples/padding_share.py``), so its MFU
figures before 2026-12-04 (eighteenth session) were about 1.7x too high, and a length-grouped run (less
padding, more documents/s) showed a lower MFU than an ungrouped one. The scaling is linear in
positions: attention, quadratic in them, is slightly overcounted, and heads that run on target
positions only (the baselines' token cross-entropy, unpadded already) slightly undercounted.
The denoiser's trainer gives the share of its segment slots that hold a segment
(``sld.diffusion.data.segment_slot_fraction``); the context tokens past a source's length, which only
the context's key/value projection and the masked cross-attention see, are not discounted.

The peak is ``loop.peak_tflops`` when set, else the dense (no sparsity) bf16 tensor-core figure of
the device's datasheet looked up by ``torch.cuda.get_device_name()`` in :data:`PEAK_BF16_TFLOPS`
(e.g. H100 / H200 SXM: 989 TFLOP/s). It is the bf16 peak whatever ``loop.mixed_precision`` is, so an
fp32 run shows how far it is from what the card could do. On a CPU or an unknown device MFU is not
reported unless ``loop.peak_tflops`` is given; the achieved TFLOP/s always is.

Attention with grouped key/value heads (GQA: SmolLM2's 9 query heads share 3 key/value heads) is
counted as the kernels run it, every query head against its shared key/value head
(:data:`GQA_ATTENTION_FORMULAS`): torch 2.11's formulas rejected such shapes, and the AR baseline's
first step on an H200 (right-padded rows, SDPA's flash kernel with ``enable_gqa``) then reported no
MFU at all (2026-12-04). Attention is counted whole even when causal, as torch does.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# Datasheet dense bf16 tensor-core peaks (TFLOP/s, without sparsity), matched in this order as
# substrings of torch.cuda.get_device_name(): more specific names first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def device_peak_tflops(device: torch.device | str) -> float | None:
    """The datasheet dense bf16 peak of ``device`` in TFLOP/s, or None (CPU, unknown GPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def _kv_heads_matched(query_shape, *kv_shapes) -> list[tuple[int, ...]]:
    """Key/value shapes (B, H_kv, S, D) with H_kv raised to the query's H (B, H, S_q, D) when it
    divides it (grouped-query attention: each key/value head serves H / H_kv query heads); other
    shapes unchanged, for torch's own checks to reject."""
    heads = query_shape[1]
    return [
        (s[0], heads, s[2], s[3]) if len(s) == 4 and s[1] and heads % s[1] == 0 else tuple(s)
        for s in kv_shapes
    ]


def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one SDPA forward: query (B, H, S_q, D), key/value (B, H_kv, S_k, D), H_kv dividing H."""
    key_shape, value_shape = _kv_heads_matched(query_shape, key_shape, value_shape)
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """FLOPs of one SDPA backward (grad_out like the query), key/value heads as in the forward."""
    key_shape, value_shape = _kv_heads_matched(query_shape, key_shape, value_shape)
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_aten = torch.ops.aten
# FlopCounterMode(custom_mapping=...) entries that replace torch's SDPA formulas (shape-level ops)
GQA_ATTENTION_FORMULAS: dict[object, Callable[..., int]] = {
    **dict.fromkeys(
        (
            _aten._scaled_dot_product_efficient_attention,
            _aten._scaled_dot_product_flash_attention,
            _aten._scaled_dot_product_cudnn_attention,
        ),
        _sdpa_forward_flops,
    ),
    **dict.fromkeys(
        (
            _aten._scaled_dot_product_efficient_attention_backward,
            _aten._scaled_dot_product_flash_attention_backward,
            _aten._scaled_dot_product_cudnn_attention_backward,
        ),
        _sdpa_backward_flops,
    ),
}


def flop_counter_mode() -> FlopCounterMode:
    """torch's ``FlopCounterMode`` (no display) with sld's attention formulas (grouped key/value heads)."""
    return FlopCounterMode(display=False, custom_mapping=GQA_ATTENTION_FORMULAS)


class FlopCount:
    """Counts the FLOPs of what runs inside ``with FlopCount() as counter:``; ``counter.total`` afterwards.

    ``run_eagerly``: compiled code inside runs eagerly (``torch.compiler.set_stance("force_eager")``).
    A compiled module called under the counter's dispatch mode is compiled under it, and dynamo then
    ran it eagerly for the rest of the process (torch 2.13, measured: every "compiled" training run
    before 2026-12-03 was eager after its counted micro-batch); forced eager, dynamo never sees the
    counted call, and compiles the next one as usual.
    """

    def __init__(self, run_eagerly: bool = False) -> None:
        self.total: int | None = None
        self.run_eagerly = run_eagerly
        self.adjustment = 0.0
        self._contexts: ExitStack | None = None
        self._mode: FlopCounterMode | None = None

    def __enter__(self) -> FlopCount:
        self._contexts = ExitStack()
        if self.run_eagerly:
            self._contexts.enter_context(torch.compiler.set_stance("force_eager"))
        self._mode = self._contexts.enter_context(flop_counter_mode())
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        assert self._contexts is not None
        _active.remove(self)
        self._contexts.__exit__(*exc)
        assert self._mode is not None
        self.total = int(self._mode.get_total_flops() + self.adjustment)
        self._contexts = None

    def region(self) -> FlopCounterMode:
        """A nested counter: ``with counter.region() as part: ...``, then ``part.get_total_flops()``
        is what ran inside it (the enclosing count includes it too)."""
        return flop_counter_mode()

    def adjust(self, flops: float) -> None:
        """Add ``flops`` (may be negative) to the total: code whose work differs from step to step
        replaces what the counted micro-batch ran by its expectation (the denoiser's
        self-conditioning pass, run on a random share of the steps)."""
        self.adjustment += flops


_active: list[FlopCount] = []


def active_flop_count() -> FlopCount | None:
    """The ``FlopCount`` counting right now (innermost), or None: code that runs a random share of
    the steps can then correct the count (``FlopCount.adjust``) at no cost when nothing counts."""
    return _active[-1] if _active else None


def any_flop_counter_active() -> bool:
    """Whether a FLOP counter counts right now: sld's ``FlopCount``, or torch's ``FlopCounterMode``
    entered by other code (found on torch's dispatch mode stack; its module hooks refuse some backwards)."""
    if _active:
        return True
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    except ImportError:  # a torch without it: only sld's own counter is known
        return False
    return any(type(mode).__name__ == "_FlopCounterMode" for mode in _get_current_dispatch_mode_stack())


def raised_by_flop_counter(err: BaseException) -> bool:
    """Whether ``err`` came from inside ``torch.utils.flop_counter`` (not from the model itself)."""
    frames = traceback.extract_tb(err.__traceback__)
    return any(frame.filename.replace("\\", "/").endswith("torch/utils/flop_counter.py") for frame in frames)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix multiplies, convolutions and attention kernels that ``fn()`` runs."""
    with FlopCount() as counter:
        fn()
    assert counter.total is not None
    return counter.total


def real_position_fraction(*masks: torch.Tensor) -> torch.Tensor:
    """The share of real positions over the sequences a step computes on: masks (any shape, True or
    nonzero on real tokens, e.g. an attention mask (B, T) or ``labels != -100``), their real positions
    summed over their sizes summed. A 0-d tensor on the masks' device (read once, at the counted batch)."""
    if not masks:
        raise ValueError("real_position_fraction needs at least one mask")
    real = sum((mask != 0).sum() for mask in masks)
    return real / sum(mask.numel() for mask in masks)


def mfu(flops_per_unit: float, units_per_second: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak FLOP/s (a fraction, not a percentage)."""
    return flops_per_unit * units_per_second / (peak_tflops * 1e12)


__all__ = [
    "PEAK_BF16_TFLOPS",
    "FlopCount",
    "active_flop_count",
    "count_flops",
    "device_peak_tflops",
    "mfu",
    "real_position_fraction",
]

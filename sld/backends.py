"""Process-wide PyTorch settings that sld chooses for speed, with the measurement behind each.

* cuDNN scaled-dot-product attention is turned off (``SLD_CUDNN_ATTENTION=1`` keeps it on). In a
  profile of ``sld train-autoencoder`` on one H200 (torch 2.11, today's ROC profile: MiniLM, Perceiver,
  reconstructor, T5 decoder; 20 steps of 1,024 segments; ``loop.profile_steps=20``), PyTorch chose the
  cuDNN attention kernels, and ``aten::_cudnn_attention_forward`` / ``_backward`` spent 9.4 ms / 7.4 ms
  of CPU per call (their GPU time: 0.24 / 0.28 ms), about 0.7 s of a 1.5 s step. sld's shapes change
  from batch to batch (length-grouped batches) and from step to step of a decode (a growing KV cache);
  the most likely cause is a cuDNN execution plan built for every new shape. The flash and
  memory-efficient kernels take any shape without planning. The speed-up this gives has not been
  measured yet (recorded in docs/results.md once it is). ``SLD_CUDNN_ATTENTION=first`` turns it on
  and puts it first in torch's order of kernels, which otherwise takes flash attention where no mask
  is given and the memory-efficient kernels where one is (its default order: flash, memory-efficient,
  math, cuDNN). It is meant for models of fixed shapes whose attention calls pass masks: the compiled
  paper-size denoiser, whose memory-efficient kernels were 11% of its device time on an H100
  (thirtieth session). Measured there (thirty-third session): 1.00x its documents/s, as cuDNN's
  kernels were faster at 68 keys and slower at 64 and 24 (``examples/masked_attention_kernels.py``
  times each kernel at such shapes); so not a default.
* ``SLD_CUDA_MEMORY_FRACTION`` (e.g. ``0.24``) caps this process's share of its GPU's memory. Several
  runs on one card (the recipes train SLD and the AR baseline side by side) otherwise each keep the
  memory of their own peak cached, and the sum of the peaks ran the card out of memory (the first H200
  session of ``recipes/smollm2.sh``). Under a cap the caching allocator frees cached blocks and retries
  before it fails.
* ``SLD_SHORT_ATTENTION=efficient`` (or ``math``, ``flash``) picks the attention kernels of the compressor's and
  the reconstructor's attention (``sld.models.perceiver.Attention``: 16 latents attending to a
  segment's few dozen tokens, or to each other) and of a seq2seq decoder's teacher-forced passes
  (T5's self-attention hands ``scaled_dot_product_attention`` its learned position bias as a float
  mask and its cross-attention an all-zero one, so torch runs the memory-efficient kernels there:
  16.7 ms of a CUDA-graph ROC autoencoder step's 77.6 ms of device time were attention on an H100,
  2026-12-06; ``math`` under ``loop.compile`` hands the products and the softmax to Inductor: 1.06x
  the segments/s of that CUDA-graph step on an H100, docs/results.md, thirty-first session). Unset,
  torch picks: flash attention where no mask is given, whose backward took 0.77 ms per call on
  1,024 x 8 heads of 16 latents in the H200 profile of 2026-12-04 (9 calls a step, 7% of the GPU's
  time), against 0.21 ms for the memory-efficient
  kernel's backward at the decoder's similar shapes. Over whole steps torch's choice won all the
  same (H200, fifteenth session, ROC autoencoder, steps 100-250: 6,401 segments/s unset against 5,163
  ``efficient`` and 5,028 ``math``), so it stays unset by default.
* ``SLD_SYNC_DEBUG=warn`` (or ``error``) makes every host sync inside a training step a warning (an
  error) with its source line, through ``torch.cuda.set_sync_debug_mode``: a step that makes the host
  wait for the GPU stops the host from queueing the next kernels while the GPU works, which on the
  H200 left a launch-bound step's GPU idle part of the time (docs/results.md, 2026-12-04). Evaluation,
  logging steps and checkpoints are outside the guarded region.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

logger = logging.getLogger(__name__)

CUDNN_ATTENTION_ENV = "SLD_CUDNN_ATTENTION"
MEMORY_FRACTION_ENV = "SLD_CUDA_MEMORY_FRACTION"
SYNC_DEBUG_ENV = "SLD_SYNC_DEBUG"
SYNC_DEBUG_MODES = ("warn", "error")
SHORT_ATTENTION_ENV = "SLD_SHORT_ATTENTION"


def cudnn_attention_mode() -> bool | str:
    """``SLD_CUDNN_ATTENTION``: False (unset or ``0``), True (``1``) or ``"first"``."""
    from sld.errors import UserError

    raw = os.environ.get(CUDNN_ATTENTION_ENV, "").strip().lower()
    modes = {"": False, "0": False, "1": True, "first": "first"}
    if raw not in modes:
        raise UserError(f"{CUDNN_ATTENTION_ENV}={raw!r}: expected 0, 1 or first")
    return modes[raw]


def configure_attention(cudnn: bool | str | None = None) -> bool:
    """Enable or disable the cuDNN attention backend of ``scaled_dot_product_attention``.

    ``cudnn``: True/False, ``"first"`` (on, and first in torch's priority order of the kernels), or
    None: what ``SLD_CUDNN_ATTENTION`` says (off when unset). Returns whether the backend is on. Takes
    effect on CUDA only (the backend is CUDA-only); the priority order is process-wide.
    """
    import torch

    if cudnn is None:
        cudnn = cudnn_attention_mode()
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(bool(cudnn))
    if cudnn == "first":
        from torch.nn.attention import SDPBackend

        order = list(torch._C._get_sdp_priority_order())
        cudnn_id = int(SDPBackend.CUDNN_ATTENTION)
        torch._C._set_sdp_priority_order([cudnn_id] + [b for b in order if b != cudnn_id])
        logger.info("cuDNN attention first in the order of attention kernels (%s=first)", CUDNN_ATTENTION_ENV)
    return bool(cudnn)


def memory_fraction_from_env() -> float | None:
    """The share of GPU memory named by ``SLD_CUDA_MEMORY_FRACTION`` (0 < share <= 1), or None if unset."""
    from sld.errors import UserError

    raw = os.environ.get(MEMORY_FRACTION_ENV, "").strip()
    if not raw:
        return None
    try:
        share = float(raw)
    except ValueError:
        share = float("nan")
    if not 0.0 < share <= 1.0:
        raise UserError(f"{MEMORY_FRACTION_ENV}={raw!r}: expected a number in (0, 1], e.g. 0.25")
    return share


def configure_memory_share() -> float | None:
    """Apply ``SLD_CUDA_MEMORY_FRACTION`` to this process's GPU (``LOCAL_RANK``, else 0).

    Returns the share applied, or None (unset, or no CUDA).
    """
    import torch

    share = memory_fraction_from_env()
    if share is None or not torch.cuda.is_available():
        return None
    device = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_per_process_memory_fraction(share, device)
    logger.info(
        "GPU %d: this process may use %.0f%% of its memory (%s)", device, 100 * share, MEMORY_FRACTION_ENV
    )
    return share


def sync_debug_mode() -> str | None:
    """``SLD_SYNC_DEBUG``'s mode (``"warn"`` or ``"error"``), or None when unset or ``0``."""
    from sld.errors import UserError

    raw = os.environ.get(SYNC_DEBUG_ENV, "").strip().lower()
    if raw in ("", "0"):
        return None
    if raw not in SYNC_DEBUG_MODES:
        raise UserError(f"{SYNC_DEBUG_ENV}={raw!r}: expected warn, error or 0")
    return raw


@contextlib.contextmanager
def guarded_step(mode: str | None, device_type: str) -> Iterator[None]:
    """Inside: host syncs on ``device_type`` "cuda" warn or raise (``torch.cuda.set_sync_debug_mode``)
    when ``mode`` is set; otherwise (or on another device) nothing changes."""
    import torch

    if mode is None or device_type != "cuda":
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def short_attention_backends() -> contextlib.AbstractContextManager[None]:
    """The context for the compressor's and reconstructor's attention calls and a seq2seq decoder's
    teacher-forced passes: unchanged when ``SLD_SHORT_ATTENTION`` is unset, else only the named
    kernels (math as the fallback)."""
    from sld.errors import UserError

    raw = os.environ.get(SHORT_ATTENTION_ENV, "").strip().lower()
    if raw in ("", "default"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
    }
    if raw not in chosen:
        raise UserError(f"{SHORT_ATTENTION_ENV}={raw!r}: expected default, flash, efficient or math")
    return sdpa_kernel([chosen[raw], SDPBackend.MATH] if raw != "math" else [SDPBackend.MATH])


__all__ = [
    "CUDNN_ATTENTION_ENV",
    "MEMORY_FRACTION_ENV",
    "SHORT_ATTENTION_ENV",
    "SYNC_DEBUG_ENV",
    "configure_attention",
    "configure_memory_share",
    "cudnn_attention_mode",
    "guarded_step",
    "memory_fraction_from_env",
    "short_attention_backends",
    "sync_debug_mode",
]

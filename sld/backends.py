"""Process-wide PyTorch settings that sld chooses for speed, with the measurement behind each.

* cuDNN scaled-dot-product attention is turned off (``SLD_CUDNN_ATTENTION=1`` keeps it on). In a
  profile of ``sld train-autoencoder`` on one H200 (torch 2.11, today's ROC profile: MiniLM, Perceiver,
  reconstructor, T5 decoder; 20 steps of 1,024 segments; ``loop.profile_steps=20``), PyTorch chose the
  cuDNN attention kernels, and ``aten::_cudnn_attention_forward`` / ``_backward`` spent 9.4 ms / 7.4 ms
  of CPU per call (their GPU time: 0.24 / 0.28 ms), about 0.7 s of a 1.5 s step. sld's shapes change
  from batch to batch (length-grouped batches) and from step to step of a decode (a growing KV cache);
  the most likely cause is a cuDNN execution plan built for every new shape. The flash and
  memory-efficient kernels take any shape without planning. The speed-up this gives has not been
  measured yet (recorded in docs/results.md once it is).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

CUDNN_ATTENTION_ENV = "SLD_CUDNN_ATTENTION"


def configure_attention(cudnn: bool | None = None) -> bool:
    """Enable or disable the cuDNN attention backend of ``scaled_dot_product_attention``.

    ``cudnn`` None: on only when ``SLD_CUDNN_ATTENTION=1``. Returns the setting applied. No effect
    without CUDA (the backend is CUDA-only).
    """
    import torch

    if cudnn is None:
        cudnn = os.environ.get(CUDNN_ATTENTION_ENV, "0") == "1"
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
    return cudnn


__all__ = ["CUDNN_ATTENTION_ENV", "configure_attention"]

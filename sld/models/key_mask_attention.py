"""Attention with a key-padding mask that the flash kernels can run: the mask as one more head dimension.

``scaled_dot_product_attention`` runs flash attention only without ``attn_mask``; with one it falls back
to the memory-efficient kernels. On an H200 the paper-size denoiser's masked attention (self-attention
over its segment slots, cross-attention over the padded context) ran PyTorch's memory-efficient
kernels, 17.5 ms of a 160-ms step at batch 1,024 (docs/results.md, eighteenth session).

A key-padding mask is an additive bias that depends on the key alone, so it fits in the dot product:
every query gets one more coordinate equal to 1 and every key one more equal to 0 (attended) or
``-MASK_BIAS`` (masked), so ``q . k`` gains exactly the bias. Seven zero coordinates more keep the head
dimension a multiple of 8 (the flash kernels' requirement), values get eight zeros that are dropped
from the output, and the softmax scale stays ``1/sqrt(D)`` of the real head dimension. A masked key's
score is then ``-MASK_BIAS / sqrt(D)`` below the others: ``exp`` of it is 0 in float32, so the result
equals the masked call's to rounding, with gradients, for 12.5% more attention FLOPs at D = 64.

``SLD_KEY_MASK_ATTENTION=column`` selects it (``key_mask_mode``); unset or ``mask`` keeps the masked call.
Measured once, it lost: the compiled 768 x 12 denoiser at batch 1,024 on an H200 made 5,071 documents/s
with it against 6,019 masked (0.84x; docs/results.md, twenty-first session), so it is off by default.

``SLD_KEY_MASK_ATTENTION=math`` writes the attention out as two products and a softmax
(``math_attention``) for compiled blocks, so that Inductor can fuse the mask, the softmax and the
dropout and hand the products to cuBLAS. The denoiser's sequences are short (64 latent slots, a few
dozen context tokens), and its memory-efficient kernels took 0.25 ms a forward and 0.45 ms a backward
call on an H100 (2026-12-06, docs/results.md) for products of about 13 GFLOP a self-attention call.
Measured once, it lost too: the compiled 768 x 12 denoiser at batch 1,024 on an H100 made 0.91x the
documents/s of the masked call, with 1.18x its peak memory (docs/results.md, thirty-first session).

A row whose keys are all masked differs: the masked call returns zeros there (torch 2.13 on the CPU),
``column`` and ``math`` the mean of the values (sld's denoiser never builds such a row: a document
keeps at least one key, and the context its null vectors).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from sld.errors import UserError

KEY_MASK_ATTENTION_ENV = "SLD_KEY_MASK_ATTENTION"
KEY_MASK_MODES = ("mask", "column", "math")
MASK_BIAS = 32768.0  # exact in bfloat16 and float16; at D = 64 a masked score drops by 4,096
_EXTRA = 8  # coordinates added to every head: the bias column and seven zeros


def key_mask_mode() -> str:
    """``SLD_KEY_MASK_ATTENTION``: ``mask`` (unset), ``column`` or ``math``."""
    raw = os.environ.get(KEY_MASK_ATTENTION_ENV, "").strip().lower() or "mask"
    if raw not in KEY_MASK_MODES:
        raise UserError(f"{KEY_MASK_ATTENTION_ENV}={raw!r}: expected one of {', '.join(KEY_MASK_MODES)}")
    return raw


def key_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
    mode: str = "mask",
) -> torch.Tensor:
    """Attention of q (B, H, L_q, D) over k, v (B, H, L_k, D) where ``key_mask`` (B, L_k) is True.

    ``mode`` "mask" passes the mask to ``scaled_dot_product_attention``; "column" folds it into the
    dot product (module docstring) so that no ``attn_mask`` is passed; "math" is ``math_attention``.
    ``key_mask`` None: every key is attended, with no mask at all (the flash kernels may run).
    Returns (B, H, L_q, D).
    """
    if mode == "math":
        return math_attention(q, k, v, key_mask, dropout_p)
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if mode == "mask":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p
        )
    if mode != "column":
        raise ValueError(f"unknown key-mask mode {mode!r}; expected one of {KEY_MASK_MODES}")
    b, h, l_q, d = q.shape
    l_k = k.shape[2]
    ones = q.new_ones(()).expand(b, h, l_q, 1)
    zeros_q = q.new_zeros(()).expand(b, h, l_q, _EXTRA - 1)
    bias = torch.where(key_mask, 0.0, -MASK_BIAS).to(k.dtype)  # (B, L_k)
    bias = bias[:, None, :, None].expand(b, h, l_k, 1)
    zeros_k = k.new_zeros(()).expand(b, h, l_k, _EXTRA - 1)
    q_ext = torch.cat([q, ones, zeros_q], dim=-1)
    k_ext = torch.cat([k, bias, zeros_k], dim=-1)
    v_ext = F.pad(v, (0, _EXTRA))
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, dropout_p=dropout_p, scale=d**-0.5)
    return out[..., :d]


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of q (B, H, L_q, D) over k, v (B, H, L_k, D) written out: the scores (B, H, L_q, L_k)
    scaled by ``1/sqrt(D)``, masked keys (``key_mask`` (B, L_k) False) at the scores' lowest finite
    value, a float32 softmax, dropout, and the weighted values. Returns (B, H, L_q, D)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    weights = scores.float().softmax(dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


__all__ = [
    "KEY_MASK_ATTENTION_ENV",
    "KEY_MASK_MODES",
    "MASK_BIAS",
    "key_mask_mode",
    "key_masked_attention",
    "math_attention",
]

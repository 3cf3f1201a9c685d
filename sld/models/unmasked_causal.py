"""Causal self-attention with no mask built at all, for right-padded teacher-forced rows.

A causal LM reading right-padded rows needs no padding mask: every pad sits after the real tokens of
its row, so causal attention alone keeps pads out of every real position (their own outputs are
ignored by the -100 labels). Called with ``attention_mask=None``, transformers still runs its mask
code, and with no mask and no cache it looks for packed sequences in the position ids
(``masking_utils.find_packed_sequence_indices``): ``(packed_sequence_mask[:, -1] == 0).all()`` is read
on the host, which waits for the device in every forward. On an H200 the AR baseline's compiled step
at batch 1,024 was then bound by the host (device busy 46% of the step; ``SLD_SYNC_DEBUG=warn``
named that line; docs/results.md, 2026-12-04, seventeenth session).

Inside ``unmasked_causal_attention(lm)`` an SDPA model's attention implementation is, for the
duration, ``UNMASKED_CAUSAL_ATTENTION``: an attention function registered with transformers but not
a mask kind it knows, so transformers builds no mask and runs no check, and the function calls
transformers' own SDPA attention with ``is_causal=True`` (SDPA's causal flash kernel where the device
has one; grouped key/value heads as transformers passes them). The outputs equal the ``sdpa``
implementation's with no mask (``tests/test_unmasked_causal.py``).

Shapes: B rows, H query heads, K key/value heads, L tokens, E head width.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

__all__ = ["UNMASKED_CAUSAL_ATTENTION", "unmasked_causal_attention", "unmasked_causal_attention_forward"]

UNMASKED_CAUSAL_ATTENTION = "sld_unmasked_causal_sdpa"


def unmasked_causal_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: query (B, H, L, E) over key/value (B, K, L, E), causal.

    ``attention_mask`` is None (transformers builds none for this implementation); anything else is
    an error, since this function would ignore it. Returns (B, L, H, E) and no weights.
    """
    if attention_mask is not None:
        raise ValueError(
            f"{UNMASKED_CAUSAL_ATTENTION} attends causally without a mask, but got one of shape "
            f"{tuple(attention_mask.shape)}"
        )
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


AttentionInterface.register(UNMASKED_CAUSAL_ATTENTION, unmasked_causal_attention_forward)


@contextmanager
def unmasked_causal_attention(lm: nn.Module) -> Iterator[bool]:
    """Within the block, ``lm`` attends causally with no mask built, if its attention is ``sdpa``.

    For right-padded rows, called without ``attention_mask`` and without a cache (teacher forcing).
    Yields whether the implementation was switched: models on another implementation (``eager``,
    ``flash_attention_2``, sld's latent memory attention) are left as they are.
    """
    configs = {
        id(module.config): module.config
        for module in lm.modules()
        if getattr(getattr(module, "config", None), "_attn_implementation", None) == "sdpa"
    }
    try:
        for config in configs.values():
            config._attn_implementation = UNMASKED_CAUSAL_ATTENTION
        yield bool(configs)
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"

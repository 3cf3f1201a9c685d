"""One-token attention over grouped key/value heads without copying the cache (on unless ``SLD_PACKED_GQA=0``).

SmolLM2 has 9 query heads and 3 key/value heads. transformers' SDPA attention, traced by dynamo (the
static-cache token step is compiled, ``sld.models.static_decoding``) and given a padding mask, repeats
each key/value head for its query heads (``repeat_kv``) before the kernel: every layer, every token,
the whole static cache is copied three times over, B x 9 x cache length x 64 values for keys and as
many for values. By that arithmetic, the SLD segment decoder at 320 rows over a 64-position bf16 cache
writes about 1.4 GB of copies per token step (30 layers), for a step whose weights are 0.27 GB.

With one query token the copy is not needed: the G query heads of one key/value head become G query
rows of that head, (B, H, 1, E) -> (B, K, G, E), one SDPA call attends them all to the K heads' own
keys and values, and the result is reshaped back. The same mathematics (transformers 5.25 does the
same in its eager decoding, "pack_gqa", but not under dynamo); on the CPU the outputs equal the
repeating path's to float32 rounding, and greedy decodes are the same (tests).

transformers 5.17 (the H200 machines' version) repeats the heads whenever a mask is given, compiled or
not, so the dynamic decode loop (``sld.models.causal_decoding.decode``) copies them too.

The default since its H200 measurement (2026-12-03, ``docs/results.md``): a static token step of
SmolLM2 took 0.99x / 0.85x / 0.58x the time at 4 / 64 / 320 rows, with the same outputs
(``examples/graph_replay_overhead.py``), and ``sld benchmark`` at batch 64 ran AR greedy static at 1.27x
and SLD's dynamic decode at 1.49x the documents/s. Both decode loops run their token steps inside
``packed_gqa(lm)``, which turns it on unless ``$SLD_PACKED_GQA`` is ``0``, when ``lm`` is a
plain-attention causal LM with grouped heads whose attention implementation is SDPA. Anything else
(more than one query token, a mask with its own heads) goes to transformers' SDPA function unchanged.

Shapes: B rows, H query heads, K key/value heads, G = H / K, L cached positions, E head width.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from sld.models.memory_attention import PLAIN_ATTENTION_MODELS

__all__ = [
    "PACKED_GQA",
    "PACKED_GQA_ENV",
    "packed_gqa",
    "packed_gqa_applies",
    "packed_gqa_enabled",
    "packed_gqa_forward",
]

PACKED_GQA = "sld_packed_gqa"
PACKED_GQA_ENV = "SLD_PACKED_GQA"


def packed_gqa_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: query (B, H, 1, E) over key/value (B, K, L, E), packed.

    ``attention_mask``: None or SDPA's (B or 1, 1, 1, L) mask (bool, or additive float). Returns
    (B, 1, H, E) and no weights, as transformers' SDPA function does; cases this function does not
    pack are handed to that function.
    """
    batch, heads, length, width = query.shape
    kv_heads = key.shape[1]
    mask_has_heads = attention_mask is not None and attention_mask.shape[1] != 1
    if length != 1 or heads == kv_heads or mask_has_heads or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    packed = query.reshape(batch, kv_heads, heads // kv_heads, width)  # (B, K, G, E): head h = k * G + g
    out = F.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )  # (B, K, G, E); the mask's query dimension (1) broadcasts over the G rows
    return out.reshape(batch, heads, 1, width).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_GQA, packed_gqa_forward)
# the masks this implementation is given are SDPA's (same function, so the same format)
AttentionMaskInterface.register(PACKED_GQA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def packed_gqa_enabled() -> bool:
    """Whether ``$SLD_PACKED_GQA`` asks for packing: anything but ``0`` (unset = on)."""
    return os.environ.get(PACKED_GQA_ENV, "1") != "0"


def packed_gqa_applies(lm: nn.Module) -> bool:
    """Whether ``lm`` is a plain-attention causal LM with grouped key/value heads, on SDPA."""
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_ATTENTION_MODELS:
        return False
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return bool(heads) and kv_heads < heads and config._attn_implementation in ("sdpa", PACKED_GQA)


@contextmanager
def packed_gqa(lm: nn.Module) -> Iterator[bool]:
    """Within the block, ``lm``'s attention runs through ``packed_gqa_forward`` when
    ``$SLD_PACKED_GQA`` is not ``0`` (the default: on) and ``packed_gqa_applies(lm)``; yields whether
    it does. The
    attention implementation of every config the LM's modules hold is set back afterwards."""
    if not packed_gqa_enabled() or not packed_gqa_applies(lm):
        yield False
        return
    configs = {  # the model configs its modules hold (a transformers config has the attribute)
        id(m.config): m.config
        for m in lm.modules()
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    }
    previous = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = PACKED_GQA
        yield True
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]

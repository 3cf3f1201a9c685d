"""Teacher forcing with key/value latent memory, without a KV cache: one compiled graph for every layer.

``LatentConditioning`` in ``"kv"`` mode gives every attention layer of a causal LM N memory keys and
values. Decoding reads them from a prefilled cache (``LatentConditioning.prefill``), and teacher
forcing could too, but a ``DynamicCache`` changes as the layers run (layer i appends its keys while
layers after it still hold the memory alone), and each layer reads its own entry by its
``layer_idx``. ``torch.compile`` then guards on both and compiles every layer anew: 30 graphs for
SmolLM2 where its layers could share one (dynamo's recompile log on the CPU: "kwargs['cache']
.layers[i].keys size mismatch").

Here each attention module holds its layer's memory as a plain attribute for the duration of one
forward (``memory_attention``), and the LM's attention implementation is, for that forward, an
attention function registered with transformers (``MEMORY_ATTENTION``) that puts the memory in front
of the layer's own keys and values. Nothing reads ``layer_idx`` and nothing changes during the
forward, so the layers share one graph. The result equals the cache path's: each of the L tokens
attends to the N memory slots and, causally, to the tokens up to itself (right padding sits after
every real token, so the causal mask keeps pads out of real positions, as with the cache).

Shapes: B' rows, L tokens, N memory slots, H query heads, K key/value heads, E head width.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

__all__ = [
    "MEMORY_ATTENTION",
    "PLAIN_ATTENTION_MODELS",
    "attention_layers",
    "memory_attention",
    "memory_attention_forward",
]

MEMORY_ATTENTION = "sld_latent_memory"
MEMORY_ATTRIBUTE = "sld_latent_memory"
# Architectures whose attention is plain scaled dot-product attention (no sliding window, logit
# soft-capping or attention sinks), for which the function below is exact; others use the cache.
PLAIN_ATTENTION_MODELS = ("llama", "mistral", "qwen2", "qwen3")
# Attention keywords this function does not implement (an error if a model passes one)
UNSUPPORTED = ("sliding_window", "softcap", "s_aux")


def memory_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: query (B', H, L, E) over [memory ; key/value (B', K, L, E)].

    The memory, (keys, values) each (B', K, N, E), is ``module``'s ``MEMORY_ATTRIBUTE``. The mask
    transformers built for this implementation (none: it is not a known one) is not used; the one
    here lets token i see every memory slot and tokens 0..i. Returns (B', L, H, E) and no weights.
    """
    for name in UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"latent memory attention does not implement {name}")
    memory_keys, memory_values = getattr(module, MEMORY_ATTRIBUTE)
    n, length = memory_keys.shape[2], query.shape[2]
    key = torch.cat([memory_keys, key], dim=2)  # (B', K, N + L, E)
    value = torch.cat([memory_values, value], dim=2)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # each key/value head serves `groups` consecutive query heads (transformers' repeat_kv)
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    visible = torch.ones(length, n + length, dtype=torch.bool, device=query.device).tril(diagonal=n)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, dropout_p=dropout, scale=scaling
    )  # (B', H, L, E)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(MEMORY_ATTENTION, memory_attention_forward)


def attention_layers(lm: nn.Module, num_layers: int) -> list[nn.Module] | None:
    """The LM's ``num_layers`` attention modules in layer order (modules with a ``layer_idx`` and a
    ``config``, one per index 0..num_layers-1), or None when the LM is not laid out that way or is not
    one of ``PLAIN_ATTENTION_MODELS``."""
    if getattr(getattr(lm, "config", None), "model_type", None) not in PLAIN_ATTENTION_MODELS:
        return None
    found = {}
    for module in lm.modules():
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int) and hasattr(module, "config") and "Attention" in type(module).__name__:
            if index in found:
                return None
            found[index] = module
    if sorted(found) != list(range(num_layers)):
        return None
    return [found[i] for i in range(num_layers)]


@contextmanager
def memory_attention(layers: list[nn.Module], keys_values: torch.Tensor) -> Iterator[None]:
    """Within the block, every layer of ``layers`` attends to its memory first.

    Args:
        layers: the LM's attention modules in layer order (``attention_layers``).
        keys_values: (layers, 2, B', K, N, E) memory keys and values
            (``LatentConditioning.memory_keys_values``); gradients flow to them.
    """
    configs = {id(layer.config): layer.config for layer in layers}
    previous = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = MEMORY_ATTENTION
        for layer, (keys, values) in zip(layers, keys_values):
            setattr(layer, MEMORY_ATTRIBUTE, (keys, values))
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]
        for layer in layers:
            setattr(layer, MEMORY_ATTRIBUTE, None)

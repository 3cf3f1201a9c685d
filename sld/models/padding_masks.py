"""Key padding masks in the form transformers' SDPA attention reads without looking at them on the host.

Given a 2-D padding mask (B, K), transformers' mask code asks whether any position is padded before
it builds the attention mask (``padding_mask.all()`` in ``masking_utils``, for bidirectional
attention and cross-attention), and reading that answer on the host waits for the device: a host sync
in every forward of an encoder (BERT, MiniLM, T5's) and of every seq2seq decoder's cross-attention. A
4-D mask is used as it is, with no such check, so this module hands SDPA models the 4-D boolean form
of the same mask, (B, 1, 1, K), True where a key is a token: what transformers builds itself when a
row is padded (SDPA broadcasts it over heads and queries; T5's attention adds its position bias to it).
Models on another attention implementation get the 2-D mask unchanged (their 4-D masks are additive
floats).

The cost: a batch with no padding at all now runs SDPA with a mask instead of none (transformers would
have dropped it), which rules out the flash kernel for that batch; batches of texts are padded anyway.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["key_padding_mask"]


def key_padding_mask(attention_mask: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Padding mask (B, K) of 1 / 0 -> (B, 1, 1, K) bool for an SDPA ``model``, else unchanged.

    ``model``: the transformers module that reads the mask (an encoder, or a seq2seq decoder for its
    cross-attention); its ``config._attn_implementation`` decides. A mask that is not 2-D is returned
    as it is.
    """
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation != "sdpa" or attention_mask.dim() != 2:
        return attention_mask
    return attention_mask.bool()[:, None, None, :]

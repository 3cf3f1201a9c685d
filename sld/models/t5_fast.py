"""T5's feed-forward blocks and norms with fewer elementwise kernels: same weights, same outputs up to rounding.

A step of the from-scratch ROC autoencoder (a 6-layer T5 decoder, batch 1,024, bf16 autocast) spent
most of its GPU time in elementwise kernels, not in matrix products (H200 profile,
docs/results.md, thirteenth session: ``aten::mul`` 20 ms, ``aten::copy_`` 17 ms, ``aten::mm`` 10.5 ms
of 88 ms). On the CPU, the largest ones were on the feed-forward block's (B', L, d_ff) tensors:
transformers' T5

* computes the tanh GELU of T5 v1.1 (``gelu_new``) as eight separate elementwise operations
  (a pow, four muls, two adds, a tanh), each with its own backward;
* casts the block's (B', L, d_ff) activations to the output projection's float32 weight dtype before
  it, which under autocast the projection casts straight back to bfloat16 (two full copies
  forward, two backward, for the same values);
* computes its RMS norm (``T5LayerNorm``) in five elementwise kernels, in float32, and every linear
  layer reading the norm's output casts it to bfloat16 again (query, key and value: three copies).

``fuse_t5_elementwise(lm)`` swaps, in place, ``gelu_new`` for torch's fused ``gelu(approximate=
"tanh")`` (the same formula; float rounding differs by about 1e-7 relative), the feed-forward
blocks' class for one that skips the cast while autocast is on (without autocast it casts exactly
as transformers does: a float16 model keeps ``wo`` in float32), and ``T5LayerNorm`` for
``torch.nn.functional.rms_norm`` with the same weight and epsilon when its weight is float32, cast
once to the autocast dtype under autocast (the values the linear layers would have cast; their
input gradients are then summed in bfloat16 before the cast back, not in float32 after it). No
parameter, buffer or state-dict key changes, so checkpoints load either way. Other model types are
left as they are.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.models.t5.modeling_t5 import (
    T5DenseActDense,
    T5DenseGatedActDense,
    T5ForConditionalGeneration,
    T5LayerNorm,
)

from sld.errors import UserError

__all__ = ["FUSE_T5_ENV", "fuse_t5_elementwise", "maybe_fuse_t5_elementwise", "t5_output_head"]

# SLD_FUSE_T5=0 keeps transformers' own T5 modules (for before/after measurements); default 1
FUSE_T5_ENV = "SLD_FUSE_T5"


def _to_projection_dtype(hidden: torch.Tensor, wo: nn.Linear) -> torch.Tensor:
    """transformers' cast before ``wo``, skipped under autocast (which casts the input itself)."""
    if torch.is_autocast_enabled(hidden.device.type):
        return hidden
    if hidden.dtype != wo.weight.dtype and wo.weight.dtype != torch.int8:
        return hidden.to(wo.weight.dtype)
    return hidden


class FusedT5DenseActDense(T5DenseActDense):
    """``T5DenseActDense`` (B', L, d_model) -> (B', L, d_model) without the autocast round trip."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.act(self.wi(hidden_states)))
        return self.wo(_to_projection_dtype(hidden, self.wo))


class FusedT5DenseGatedActDense(T5DenseGatedActDense):
    """``T5DenseGatedActDense`` (B', L, d_model) -> (B', L, d_model) without the autocast round trip."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states))
        return self.wo(_to_projection_dtype(hidden, self.wo))


class FusedT5LayerNorm(T5LayerNorm):
    """``T5LayerNorm`` (..., d) -> (..., d) as one ``rms_norm`` in float32 when its weight is float32.

    Under autocast the result is cast to the autocast dtype once, here: every reader of a T5 norm's
    output is a linear layer (query / key / value, the feed-forward block's input projections, the
    LM head after the decoder's final norm), which autocast would otherwise cast to it again, each
    its own copy of the same values (three a self-attention block, two a gated feed-forward block).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.float32:
            return super().forward(hidden_states)
        out = F.rms_norm(
            hidden_states.to(torch.float32), self.weight.shape, self.weight, self.variance_epsilon
        )
        device = hidden_states.device.type
        return out.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else out


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    T5DenseActDense: FusedT5DenseActDense,
    T5DenseGatedActDense: FusedT5DenseGatedActDense,
    T5LayerNorm: FusedT5LayerNorm,
}


def fuse_t5_elementwise(model: nn.Module) -> int:
    """Swap ``model``'s T5 feed-forward blocks, their ``gelu_new`` and its T5 norms in place (see the
    module docstring); returns how many modules changed (0 for a model without T5 parts)."""
    changed = 0
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            changed += 1
        if (
            isinstance(module, (T5DenseActDense, T5DenseGatedActDense))
            and type(module.act) is NewGELUActivation
        ):
            module.act = GELUTanh()
            changed += 1
    return changed


def maybe_fuse_t5_elementwise(model: nn.Module) -> int:
    """``fuse_t5_elementwise(model)`` unless ``$SLD_FUSE_T5`` is "0" (default "1"); returns its count."""
    value = os.environ.get(FUSE_T5_ENV, "1").strip()
    if value not in ("0", "1"):
        raise UserError(f"{FUSE_T5_ENV} must be 0 or 1, got {value!r}")
    return fuse_t5_elementwise(model) if value == "1" else 0


def t5_output_head(lm: nn.Module) -> tuple[nn.Linear, float] | None:
    """``(head, scale)`` with T5's logits = ``head(scale * decoder last hidden state)``, or None.

    A loss can then project only the target positions (``SegmentAutoencoder.reconstruction_loss``,
    ``BaselineModel.target_loss``): no float32 logits of padded positions, nor their log-softmax
    forward and backward. None for other
    models, and for transformers versions without T5's ``scale_decoder_outputs`` setting (their
    scaling followed ``tie_word_embeddings``): those keep the LM's own forward.
    """
    if type(lm) is not T5ForConditionalGeneration:
        return None
    head = lm.get_output_embeddings()
    scaled = getattr(lm.config, "scale_decoder_outputs", None)
    if not isinstance(head, nn.Linear) or scaled is None:
        return None
    return head, lm.model_dim**-0.5 if scaled else 1.0

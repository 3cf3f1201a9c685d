"""Perceiver resampler: a variable number of token states -> a fixed number of segment latents.

Follows the compressor of LD4LG (Lovelace et al. 2023) and SLD (Zhu et al. 2025, section 3.2), itself
Flamingo's Perceiver Resampler (Alayrac et al. 2022): N learned queries cross-attend to the
concatenation of the (projected) token states and the queries themselves, so every layer can both
read the segment and let the latents exchange information. Attention uses qk-norm (a LayerNorm on
queries and keys per head), which keeps the attention logits bounded when the latents are later
re-scaled to the sphere of radius sqrt(D).

The resampler may work wider than the latents it emits (``width`` W > D, as LD4LG's, whose attention
has 64-wide heads whatever the latent width): its queries, attention and FFN run at W and one linear
map takes the result down to D. Token positions can be added to the projected token states
(``max_tokens``): without them the latents learn word order only from what the encoder's contextual
states carry.

Shapes: B' segments (``B*S`` folded), L tokens per segment, N latents, W resampler width, D latent width.

``Attention`` and ``FeedForward`` are also used by the autoencoder's reconstructor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sld.backends import short_attention_backends


class QKLayerNorm(nn.LayerNorm):
    """LayerNorm of queries or keys (..., Dh) computed in their own dtype under mixed precision.

    Autocast runs ``layer_norm`` in float32: a bf16 query was cast up for the norm and its float32
    output cast down again for ``scaled_dot_product_attention``, forward and backward (four casts per
    norm, two norms per attention, every compressor and reconstructor layer: part of the casts that
    led the H200 profile of the autoencoder's step on 2026-12-04). Here the norm runs on the bf16 input
    (the CUDA kernel accumulates in float32) with the weight and bias cast to that dtype; the
    parameters, their names and a float32 forward are those of ``nn.LayerNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class Attention(nn.Module):
    """Multi-head attention with optional qk-norm; self-attention when ``context`` is None.

    Args:
        dim: width of the queries (and of the output).
        num_heads: number of heads.
        head_dim: width per head; defaults to ``dim // num_heads``.
        context_dim: width of keys/values input; defaults to ``dim``.
        qk_norm: LayerNorm over each head's queries and keys before the dot product.
        dropout: dropout on the attention weights and the output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        context_dim: int | None = None,
        qk_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
            head_dim = dim // num_heads
        context_dim = dim if context_dim is None else context_dim
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.q_norm = QKLayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = QKLayerNorm(head_dim) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(inner, dim)
        self.out_dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B', T, H*Dh) -> (B', H, T, Dh)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B', Q, dim) to ``context`` (B', K, context_dim) -> (B', Q, dim).

        ``key_padding_mask`` (B', K): True / 1 where the key is real, False / 0 where it is padding.
        """
        context = x if context is None else context
        q = self.q_norm(self._heads(self.to_q(x)))
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k = self.k_norm(self._heads(k))
        v = self._heads(v)
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask.bool()[
                :, None, None, :
            ]  # (B', 1, 1, K), broadcast over heads and queries
        with short_attention_backends():  # SLD_SHORT_ATTENTION: which kernels (sld.backends)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        out = out.transpose(1, 2).flatten(-2)  # (B', Q, H*Dh)
        return self.out_dropout(self.to_out(out))


class FeedForward(nn.Module):
    """Position-wise MLP ``dim -> mult*dim -> dim`` with GELU; (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PerceiverLayer(nn.Module):
    """One pre-LN resampler layer: latents attend to concat(tokens, latents), then an FFN."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=True, dropout=dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(
        self, tokens: torch.Tensor, latents: torch.Tensor, token_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """tokens (B', L, D), latents (B', N, D), token_mask (B', L) -> latents (B', N, D)."""
        latents_normed = self.norm_latents(latents)
        context = torch.cat([self.norm_tokens(tokens), latents_normed], dim=1)  # (B', L+N, D)
        key_mask = None
        if token_mask is not None:
            # The latents are always visible, so no row of the attention is ever fully masked.
            latent_mask = token_mask.new_ones(latents.shape[:2])
            key_mask = torch.cat([token_mask, latent_mask], dim=1)  # (B', L+N)
        latents = latents + self.attn(latents_normed, context, key_mask)
        return latents + self.ff(self.norm_ff(latents))


class PerceiverCompressor(nn.Module):
    """Compress token states (B', L, d_in) into N latents (B', N, D).

    Args:
        input_dim: width of the encoder's token states (d_enc).
        num_latents: N, number of learned queries = latents per segment.
        latent_dim: D, width of each output latent.
        depth: number of resampler layers (paper: 3).
        num_heads: attention heads; the resampler width must be divisible by it.
        width: W, width of the queries, attention and FFN; None = ``latent_dim`` (no output map).
        max_tokens: None = no token positions; else learned positions for up to this many tokens
            are added to the projected token states (longer inputs raise).
        ff_mult: FFN hidden width as a multiple of D.
        dropout: dropout in attention and FFN (gives the two "views" of SimCSE-style positives).
        normalize_latents: l2-normalise each output latent and scale it to norm sqrt(D), so that every
            latent sits on the same sphere whatever the segment (SLD, LD4LG).
    """

    def __init__(
        self,
        input_dim: int,
        num_latents: int,
        latent_dim: int,
        depth: int = 3,
        num_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.0,
        normalize_latents: bool = True,
        width: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        width = latent_dim if width is None else width
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.width = width
        self.normalize_latents = normalize_latents
        self.proj_in = nn.Linear(input_dim, width)
        self.positions = nn.Parameter(torch.randn(max_tokens, width) * 0.02) if max_tokens else None
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)
        self.layers = nn.ModuleList(PerceiverLayer(width, num_heads, ff_mult, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, latent_dim) if width != latent_dim else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token states (B', L, d_in) with mask (B', L) (1 = real token) -> latents z (B', N, D)."""
        tokens = self.proj_in(hidden_states)  # (B', L, W)
        if self.positions is not None:
            length = tokens.shape[1]
            if length > self.positions.shape[0]:
                raise ValueError(
                    f"{length} tokens per segment, but the compressor has positions for {self.positions.shape[0]}"
                )
            tokens = tokens + self.positions[:length]
        # a contiguous copy (B' x N x D, small): every layer then sees latents of one stride, so a
        # compiled layer (``loop.compile``) keeps one graph instead of one for the expanded first input
        latents = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1).contiguous()  # (B', N, W)
        for layer in self.layers:
            latents = layer(tokens, latents, attention_mask)
        latents = self.proj_out(self.norm_out(latents))  # (B', N, D)
        if self.normalize_latents:
            latents = normalize_to_sphere(latents)
        return latents


def normalize_to_sphere(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale every latent vector (last axis, width D) to norm sqrt(D); shape unchanged."""
    return F.normalize(z, dim=-1, eps=eps) * math.sqrt(z.shape[-1])


__all__ = [
    "Attention",
    "FeedForward",
    "PerceiverCompressor",
    "PerceiverLayer",
    "QKLayerNorm",
    "normalize_to_sphere",
]

"""SegmentDiT: the latent denoiser of segment-level diffusion (SLD paper, section 3.3).

One document is a tensor of segment latents ``(S, N, D)``: S segments, each compressed by the
autoencoder into N latent vectors of width D. The denoiser sees all ``S * N`` latent positions at
once and predicts the diffusion target (v, epsilon or x0) for every one of them.

Architecture (DiT with cross-attention, plus U-ViT skips)::

    x_t (B, S, N, D) ++ self_cond (B, S, N, D) --Linear--> (B, S, N, W)
        + segment-index embedding (S, W) + within-segment position embedding (N, W)
    -> flatten to (B, S*N, W)
    -> depth x [ self-attention over S*N positions   (adaLN-Zero: shift/scale/gate from t)
                 cross-attention to the source text  (pre-LN, PixArt-alpha style)
                 MLP                                  (adaLN-Zero) ]
       with U-ViT long skips: the output of block i feeds block depth-1-i (concat + Linear)
    -> final adaLN + zero-initialised Linear W -> D  -> (B, S, N, D)

Padded segments (documents have 1..S segments) are masked out as attention keys, so they never
influence real segments, and their outputs are zeroed. A batch without padded segments
(``segment_mask=None``) runs its self-attention without a mask, which the flash kernels take (a mask
sends ``scaled_dot_product_attention`` to its memory-efficient kernels). How many segments to generate is predicted
by a small count head over the pooled source context (``predict_num_segments``), trained with
cross-entropy alongside the diffusion loss (see ``sld.diffusion.objective``).

Classifier-free guidance: a learned null context of width C replaces the source context of any
example flagged by ``drop_context`` (and of any example with no context tokens at all).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from sld.errors import UserError
from sld.models.key_mask_attention import key_mask_mode, key_masked_attention

__all__ = ["SegmentDiT", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps.

    Args:
        t: (B,) float timesteps, any scale (the caller scales [0, 1] time up to [0, 1000]).
        dim: embedding width.

    Returns:
        (B, dim) float32 embedding, [cos | sin] halves as in DiT / diffusers.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, L, W) normalised, then scaled and shifted per example by (B, W) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (B, W): sinusoidal features of 1000 t followed by a two-layer MLP (DiT)."""

    def __init__(self, width: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Scale to the 0..1000 range the sinusoid frequencies were designed for.
        emb = timestep_embedding(t * 1000.0, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class QKNorm(nn.RMSNorm):
    """RMSNorm of queries or keys (..., Dh) that keeps the fused kernel under mixed precision.

    Under bf16 autocast the projections hand over bf16 queries while the weight stays float32, and
    ``F.rms_norm`` with mismatched dtypes falls back to its composite form (a pow, a mean, an rsqrt,
    two multiplies and casts per call, forward and backward: on the H200 profile of 2026-12-03 the
    denoiser's largest group of elementwise kernels). The weight is cast to the input's dtype
    instead: one fused kernel, the same parameter (its gradient flows back through the cast).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` with optional qk-norm.

    Self-attention when ``context_dim`` is None, cross-attention otherwise. ``key_mask`` (B, L_k)
    is True for keys that may be attended to (None: all of them, no mask); ``SLD_KEY_MASK_ATTENTION``
    (read when the module is built) says how the mask reaches the kernel
    (``sld.models.key_mask_attention``).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        context_dim: int | None = None,
        qk_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise UserError(f"denoiser 'width' ({width}) must be divisible by 'heads' ({heads})")
        self.heads = heads
        self.head_dim = width // heads
        self.dropout = dropout
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(width, width)
            self.to_kv = nn.Linear(context_dim, 2 * width)
        else:
            self.to_qkv = nn.Linear(width, 3 * width)
        # qk-norm keeps attention logits bounded, which matters for latents of norm sqrt(D).
        self.norm_q = QKNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = QKNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(width, width)
        self.key_mask_mode = key_mask_mode()  # SLD_KEY_MASK_ATTENTION: how the mask reaches the kernel

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, L, W), key_mask (B, L_k) bool or None (every key), context (B, L_k, W) or None -> (B, L, W)."""
        if self.is_cross:
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        q, k = self.norm_q(q), self.norm_k(k)
        dropout = self.dropout if self.training else 0.0
        out = key_masked_attention(q, k, v, key_mask, dropout, self.key_mask_mode)
        b, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, length, self.heads * self.head_dim))


class SegmentDiTBlock(nn.Module):
    """One DiT block with cross-attention; optionally the receiving end of a U-ViT long skip."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        qk_norm: bool,
        long_skip: bool,
    ) -> None:
        super().__init__()
        # U-ViT: Linear(concat(hidden, skip)), at the start of the block (``join_skip``).
        self.skip_linear = nn.Linear(2 * width, width) if long_skip else None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(width, heads, qk_norm=qk_norm, dropout=dropout)
        # Cross-attention is not time-modulated (as in PixArt-alpha): the source does not depend on t.
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.cross_attn = Attention(width, heads, context_dim=width, qk_norm=qk_norm, dropout=dropout)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
        )
        # adaLN-Zero: shift, scale, gate for self-attention and for the MLP, from the time embedding.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def join_skip(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """U-ViT's ``skip_linear(concat(x, skip))`` for x, skip (B, L, W) -> (B, L, W), as two products
        over the weight's halves, so the (B, L, 2W) concatenation is never written (nor split again by
        the backward). Before, the concatenation ran eagerly between the compiled blocks (3.3 ms of
        a 177-ms step of the paper-size denoiser on an H100, thirtieth session); joined here, the
        compiled denoiser made 1.03x the documents/s on an H100 (docs/results.md, thirty-third session)."""
        weight = self.skip_linear.weight  # (W, 2W): the columns of x, then those of skip
        width = x.shape[-1]
        return F.linear(x, weight[:, :width], self.skip_linear.bias) + F.linear(skip, weight[:, width:])

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        latent_key_mask: torch.Tensor | None,
        context: torch.Tensor,
        context_key_mask: torch.Tensor,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S*N, W), cond (B, W), latent_key_mask (B, S*N) or None (no padded segment),
        context (B, T', W), context_key_mask (B, T'), skip (B, S*N, W): the output of the block this
        one receives a U-ViT skip from (given exactly when ``skip_linear`` exists).

        The skip is joined inside the block, so a compiled block fuses it with what follows (the
        blocks with and without a skip are then two compiled graphs: ``sld.compilation``).
        """
        if (skip is None) != (self.skip_linear is None):
            raise ValueError("a block with a long skip needs its 'skip', and one without takes none")
        if skip is not None:
            x = self.join_skip(x, skip)
        shift_sa, scale_sa, gate_sa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(
            6, dim=-1
        )
        x = x + gate_sa[:, None] * self.self_attn(
            modulate(self.norm1(x), shift_sa, scale_sa), latent_key_mask
        )
        x = x + self.cross_attn(self.norm2(x), context_key_mask, context)
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised projection W -> D (so the initial prediction is 0)."""

    def __init__(self, width: int, latent_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


class SegmentDiT(ModelMixin, ConfigMixin):
    """Diffusion transformer over the segment latents of a document, conditioned on a source text.

    Args (saved in ``config.json`` by ``save_pretrained``):
        latent_dim: D, width of one latent vector (the autoencoder's ``latent_dim``).
        num_latents: N, latent vectors per segment (the autoencoder's ``num_latents``).
        max_segments: S, the largest number of segments per document.
        context_dim: C, width of the source-encoder states the model cross-attends to.
        width: transformer width W.
        depth: number of blocks; the first ``depth // 2`` feed U-ViT long skips to the last ``depth // 2``.
        heads: attention heads (``width % heads == 0``).
        mlp_ratio: MLP hidden width / W.
        dropout: dropout in attention and MLP.
        qk_norm: RMS-normalise queries and keys per head.
        self_conditioning: the input also takes the model's previous x0 estimate (Chen et al. 2022).
        learned_null_context: the null context for classifier-free guidance is learned (else zeros).
        num_null_tokens: how many null-context vectors replace a dropped source.
        num_count_classes: classes of the segment-count head (class k = k + 1 segments); default S.
        num_train_timesteps: integer timesteps passed to ``forward`` are divided by this.
        low_precision_residual: under autocast, carry the residual stream (the blocks' input and
            output, and the U-ViT skips) in the autocast dtype (bfloat16) from the embeddings on, as
            Megatron-LM does by default (its ``--fp32-residual-connection`` is off). Without it the
            stream is float32 up to the first U-ViT skip, whose Linear hands the autocast dtype on
            to the later blocks. The layer norms still compute in float32 (autocast's rule for
            them); what changes is that the memory-bound kernels of the first half of the blocks
            read and write half the bytes, forward and backward. Without autocast (CPU training,
            float32 inference) it changes nothing.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_dim: int = 64,
        num_latents: int = 32,
        max_segments: int = 5,
        context_dim: int = 384,
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        qk_norm: bool = True,
        self_conditioning: bool = True,
        learned_null_context: bool = True,
        num_null_tokens: int = 4,
        num_count_classes: int | None = None,
        num_train_timesteps: int = 1000,
        low_precision_residual: bool = False,
    ) -> None:
        super().__init__()
        for key, value in (
            ("latent_dim", latent_dim),
            ("num_latents", num_latents),
            ("max_segments", max_segments),
            ("context_dim", context_dim),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("num_null_tokens", num_null_tokens),
            ("num_train_timesteps", num_train_timesteps),
        ):
            if value < 1:
                raise UserError(f"denoiser '{key}' must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"denoiser 'dropout' must be in [0, 1), got {dropout}")
        self.num_classes = num_count_classes if num_count_classes is not None else max_segments
        if self.num_classes < 1:
            raise UserError(f"denoiser 'num_count_classes' must be >= 1, got {num_count_classes}")
        self.gradient_checkpointing = False

        # Input: x_t, and the previous x0 estimate when self-conditioning (zeros on the first pass).
        in_dim = 2 * latent_dim if self_conditioning else latent_dim
        self.proj_in = nn.Linear(in_dim, width)
        # Positions keep segment j's N latents together as block j: segment index + position within it.
        self.segment_embed = nn.Parameter(torch.zeros(max_segments, width))
        self.position_embed = nn.Parameter(torch.zeros(num_latents, width))
        self.time_embed = TimestepEmbedder(width)

        # Source context: normalised, projected once to W; each block's cross-attention reads it.
        self.context_embed = nn.Sequential(nn.LayerNorm(context_dim, eps=1e-6), nn.Linear(context_dim, width))
        null = torch.zeros(num_null_tokens, context_dim)
        if learned_null_context:
            self.null_context = nn.Parameter(null)
        else:
            self.register_buffer("null_context", null)

        num_skips = depth // 2
        self.blocks = nn.ModuleList(
            SegmentDiTBlock(width, heads, mlp_ratio, dropout, qk_norm, long_skip=i >= depth - num_skips)
            for i in range(depth)
        )
        self.final_layer = FinalLayer(width, latent_dim)

        # Count head: pooled source (or null) context -> logits over 1..num_classes segments.
        self.count_head = nn.Sequential(
            nn.LayerNorm(context_dim, eps=1e-6),
            nn.Linear(context_dim, width),
            nn.SiLU(),
            nn.Linear(width, self.num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        nn.init.normal_(self.segment_embed, std=0.02)
        nn.init.normal_(self.position_embed, std=0.02)
        if isinstance(self.null_context, nn.Parameter):
            nn.init.normal_(self.null_context, std=0.02)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: every residual branch gated by t starts closed, and the output starts at zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.proj.weight)
        nn.init.zeros_(self.final_layer.proj.bias)

    # ------------------------------------------------------------------ conditioning helpers

    def prepare_context(
        self,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        drop_context: torch.Tensor | None,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the null context and switch it on for dropped examples.

        Args:
            context: (B, T, C) source-encoder states, or None (unconditional: T = 0).
            context_mask: (B, T) bool, True on real tokens; None means all real.
            drop_context: (B,) bool, True where the source is replaced by the null context.
            batch_size: B, used when ``context`` is None.

        Returns:
            context (B, T + K, C) and key mask (B, T + K): the K null vectors are always present
            (so every parameter stays in the graph, which DDP needs) but only attendable where the
            example is dropped or has no source tokens.
        """
        device, dtype = self.null_context.device, self.null_context.dtype
        if context is None:
            context = torch.zeros(batch_size, 0, self.config.context_dim, device=device, dtype=dtype)
        if context.dim() != 3 or context.shape[0] != batch_size:
            raise UserError(f"context must be (B={batch_size}, T, C), got shape {tuple(context.shape)}")
        if context.shape[-1] != self.config.context_dim:
            raise UserError(
                f"context width {context.shape[-1]} != denoiser 'context_dim' {self.config.context_dim}; "
                "the context encoder and the denoiser config disagree"
            )
        context = context.to(dtype)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = context_mask.bool()
        drop = ~context_mask.any(dim=1)
        if drop_context is not None:
            drop = drop | drop_context.to(device=drop.device, dtype=torch.bool)
        num_null = self.null_context.shape[0]
        null = self.null_context[None].expand(batch_size, num_null, -1)
        full = torch.cat([context, null], dim=1)
        mask = torch.cat([context_mask & ~drop[:, None], drop[:, None].expand(batch_size, num_null)], dim=1)
        return full, mask

    def _count_logits(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(context.dtype)[..., None]
        pooled = (context * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.count_head(pooled)

    def predict_num_segments(
        self,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        drop_context: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Logits of the number of segments: class k means k + 1 segments.

        Args:
            context: (B, T, C) or None (unconditional; then give ``batch_size``).
            context_mask: (B, T) bool.
            drop_context: (B,) bool, use the null context (the unconditional count distribution).

        Returns:
            (B, num_count_classes) logits.
        """
        if batch_size is None:
            if context is None:
                raise UserError("predict_num_segments needs 'batch_size' when context is None")
            batch_size = context.shape[0]
        full, mask = self.prepare_context(context, context_mask, drop_context, batch_size)
        return self._count_logits(full, mask)

    def _timesteps(
        self, timestep: torch.Tensor | float | int, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """Any timestep form -> (B,) float time in [0, 1]; integer steps are divided by num_train_timesteps."""
        t = torch.as_tensor(timestep, device=device)
        if not torch.is_floating_point(t):
            t = t.float() / self.config.num_train_timesteps
        if t.dim() == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise UserError(f"timestep must be a scalar or (B={batch_size},), got shape {tuple(t.shape)}")
        return t.float()

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        segment_mask: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        drop_context: torch.Tensor | None = None,
        return_count_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict the diffusion target for every latent of every segment.

        Args:
            sample: (B, S, N, D) noisy latents x_t; S may be below ``max_segments``.
            timestep: (B,) or scalar; float time in [0, 1], or integer step in [0, num_train_timesteps).
            context: (B, T, C) frozen source-encoder states, or None for unconditional generation.
            context_mask: (B, T) bool, True on real source tokens.
            segment_mask: (B, S) bool, True on real segments; None means all real, and the
                self-attention then runs without a mask (the flash kernels). Each document needs at
                least one real segment.
            self_cond: (B, S, N, D) previous x0 estimate, or None (zeros) when self-conditioning.
            drop_context: (B,) bool, replace the source by the learned null context (CFG).
            return_count_logits: also return the segment-count logits (B, num_count_classes), from
                the same forward call so that data-parallel wrappers see every parameter used.

        Returns:
            (B, S, N, D) prediction, exactly zero on padded segments; with ``return_count_logits``
            the tuple (prediction, count logits).
        """
        cfg = self.config
        if sample.dim() != 4:
            raise UserError(f"sample must be (B, S, N, D), got shape {tuple(sample.shape)}")
        b, s, n, d = sample.shape
        if s > cfg.max_segments or n != cfg.num_latents or d != cfg.latent_dim:
            raise UserError(
                f"sample shape {tuple(sample.shape)} does not fit the denoiser config "
                f"(max_segments={cfg.max_segments}, num_latents={cfg.num_latents}, latent_dim={cfg.latent_dim})"
            )
        dtype = self.proj_in.weight.dtype
        if segment_mask is not None:
            segment_mask = segment_mask.bool()
            if segment_mask.shape != (b, s):
                raise UserError(f"segment_mask must be (B={b}, S={s}), got shape {tuple(segment_mask.shape)}")

        x = sample.to(dtype)
        if cfg.self_conditioning:
            x = torch.cat([x, torch.zeros_like(x) if self_cond is None else self_cond.to(dtype)], dim=-1)
        h = self.proj_in(x)  # (B, S, N, W)
        h = h + self.segment_embed[:s, None] + self.position_embed[None]
        h = h.reshape(b, s * n, -1)  # (B, S*N, W)
        device_type = h.device.type
        if cfg.low_precision_residual and torch.is_autocast_enabled(device_type):
            # The residual stream in the autocast dtype: each block's sums then stay in it.
            h = h.to(torch.get_autocast_dtype(device_type))

        cond = self.time_embed(self._timesteps(timestep, b, sample.device))  # (B, W)
        ctx, ctx_mask = self.prepare_context(context, context_mask, drop_context, b)
        ctx_w = self.context_embed(ctx)  # (B, T + K, W)

        # Padded segments are never keys. A document without any real segment would have no key at
        # all (NaN softmax); such a row attends everywhere instead and its output is zeroed anyway.
        latent_keys = None  # no padded segment: no mask
        if segment_mask is not None:
            latent_keys = segment_mask | ~segment_mask.any(dim=1, keepdim=True)
            latent_keys = latent_keys.repeat_interleave(n, dim=1)  # (B, S*N)

        skips: list[torch.Tensor] = []
        num_skips = cfg.depth // 2
        for i, block in enumerate(self.blocks):
            skip = skips.pop() if block.skip_linear is not None else None  # U-ViT, joined in the block
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, cond, latent_keys, ctx_w, ctx_mask, skip)
            else:
                h = block(h, cond, latent_keys, ctx_w, ctx_mask, skip)
            if i < num_skips:
                skips.append(h)

        out = self.final_layer(h, cond).reshape(b, s, n, d)
        if segment_mask is not None:
            out = out * segment_mask[:, :, None, None].to(out.dtype)
        if return_count_logits:
            return out, self._count_logits(ctx, ctx_mask)
        return out

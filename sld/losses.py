"""Loss terms of the segment autoencoder (SLD section 3.2) as pure functions returning tensors.

Each function returns an unweighted term; weights are applied where the terms are summed
(``sld.autoencoder_objective``), so that every term can be logged on its own and no term is ever
turned into a Python float on its way into the total.

Shapes: B' segments, L tokens, V vocabulary, N latents, D latent width, P anchors, Q extra negatives.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sld.compilation import inductor_options, losses_compiled
from sld.distributed import global_mean, randn_like
from sld.tokenization import IGNORE_INDEX


def conversion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy of decoder logits (B', L, V) against labels (B', L); -100 labels are skipped.

    The mean runs over every target token of the batch (long segments weigh more, as in LM training);
    inside ``fit`` over the target tokens of the global batch of all processes
    (:func:`sld.distributed.global_mean`). Returns a scalar; 0 with a graph if there is no target
    token at all.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    total = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return global_mean(total, (labels != IGNORE_INDEX).sum())


def chunked_token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_tokens: int = 4096,
) -> torch.Tensor:
    """Summed cross-entropy of ``targets`` (T,) under logits ``hidden @ weight.T + bias`` for hidden (T, d).

    The (T, V) logits never exist at once: ``chunk_tokens`` rows at a time are projected, scored in
    float32 and dropped, and recomputed in the backward pass (activation checkpointing). With a
    49k-token vocabulary (SmolLM2) the full logits of 256 segments of 64 tokens take 3.2 GB in float32
    per copy, and the autoencoder's two passes (conversion, adversarial) kept several copies alive:
    over 40 GB per process on the H200 (2026-12-02). Inside ``sld.compilation.compiled_losses`` (a
    ``loop.compile`` run) a chunk is scored by its compiled form (dynamic shapes: one graph for every
    chunk length). Returns a float32 scalar.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden (T, d) and targets (T,) expected, got {tuple(hidden.shape)}, {tuple(targets.shape)}"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    score = compiled_chunk_nll() if losses_compiled() else _chunk_nll
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        total = total + checkpoint(score, hidden[rows], targets[rows], weight, bias, use_reentrant=False)
    return total


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (T,) int64 of the target tokens of ``labels`` (B, L): every label but IGNORE_INDEX.

    The collators call this on the host, where the batch is built, and send the indices with the
    batch (``target_index``): the same selection on the device has a data-dependent size, which makes
    the host wait for the device (a sync per loss call, and the step's kernels stop queueing ahead).
    """
    return (labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)


def target_token_nll(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: torch.nn.Linear,
    scale: float = 1.0,
    target_index: torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Cross-entropy of the target tokens of ``labels`` (B, L) under logits ``head(scale * hidden)`` for
    hidden states (B, L, d), projecting the target positions only (``chunked_token_nll``).

    ``target_index``: ``target_positions(labels)`` computed on the host (a batch's ``target_index``);
    None computes it here, one host sync. ``reduction``: ``"mean"`` over the target tokens, of the
    global batch inside ``fit`` (``global_mean``); ``"sum"``, a float32 sum (for callers that sum
    several passes before one mean). With no target at all the result is 0 with a graph.
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match labels {tuple(labels.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if target_index is None:
        target_index = target_positions(labels)
    rows = hidden.flatten(0, 1).index_select(0, target_index)  # (T, d)
    total = chunked_token_nll(
        rows * scale, head.weight, head.bias, labels.flatten().index_select(0, target_index)
    )
    if target_index.numel() == 0:  # known on the host: no sync
        total = total + hidden.sum() * 0.0
    if reduction == "sum":
        return total
    return global_mean(total, (labels != IGNORE_INDEX).sum())


def _chunk_nll(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


@functools.cache
def compiled_chunk_nll() -> Callable[..., torch.Tensor]:
    """``_chunk_nll`` under ``torch.compile`` (dynamic shapes), made once per process at its first use."""
    return torch.compile(_chunk_nll, dynamic=True, options=inductor_options(dynamic=True))


def mean_pool_latents(z: torch.Tensor) -> torch.Tensor:
    """Segment latents z (B', N, D) -> one vector per segment (B', D), the mean over the N latents."""
    if z.dim() != 3:
        raise ValueError(f"mean_pool_latents expects (B', N, D), got {tuple(z.shape)}")
    return z.mean(dim=1)


def _pooled_unit(x: torch.Tensor) -> torch.Tensor:
    """(B', N, D) or (B', D) -> l2-normalised (B', D)."""
    if x.dim() == 3:
        x = mean_pool_latents(x)
    return F.normalize(x.float(), dim=-1)


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised SimCSE / InfoNCE loss (Gao et al. 2021), a scalar.

    Every anchor i must pick its own positive among all P' positives (the others are in-batch
    negatives) and all Q hard negatives, by cosine similarity / ``temperature``::

        loss = mean_i -log( exp(s(a_i, p_t(i))/t) / (sum_j exp(s(a_i, p_j)/t) + sum_k exp(s(a_i, n_k)/t)) )

    Args:
        anchor: (P, N, D) latents (mean-pooled here) or (P, D) vectors.
        positive: (P', N, D) or (P', D): paraphrases, or a second dropout view.
        negative: optional (Q, N, D) or (Q, D) hard negatives (out-of-domain segments), shared by all anchors.
        temperature: softmax temperature (paper: 0.05).
        targets: (P,) anchor i's positive t(i) among the P' (anchors that share a paraphrase share it:
            each distinct positive once, so that no copy of its own positive is a negative). None:
            positive i is anchor i's (P' = P).
    """
    if targets is None and anchor.shape != positive.shape:
        raise ValueError(f"anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} differ in shape")
    if targets is not None and (targets.shape != anchor.shape[:1] or anchor.shape[1:] != positive.shape[1:]):
        raise ValueError(
            f"targets {tuple(targets.shape)} must hold one positive per anchor {tuple(anchor.shape)} "
            f"among positives {tuple(positive.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a, p = _pooled_unit(anchor), _pooled_unit(positive)
    logits = a @ p.T  # (P, P') cosine similarities
    if negative is not None and negative.shape[0] > 0:
        logits = torch.cat([logits, a @ _pooled_unit(negative).T], dim=1)  # (P, P'+Q)
    if targets is None:
        targets = torch.arange(a.shape[0], device=a.device)  # the diagonal holds the positives
    return F.cross_entropy(logits / temperature, targets)


def adversarial_direction(grad: torch.Tensor, epsilon: float, eps: float = 1e-12) -> torch.Tensor:
    """Miyato et al. (2017): r = epsilon * g / ||g||, the norm taken per example over all but the first axis.

    ``grad`` (B', ...) is d loss / d z; the result has its shape and no graph (the direction is a
    constant of the adversarial loss).
    """
    g = grad.detach()
    norm = g.flatten(1).norm(dim=1).clamp(min=eps).view(-1, *([1] * (g.dim() - 1)))
    return epsilon * g / norm


def adversarial_row_count(rows: int, fraction: float) -> int:
    """How many of a batch's ``rows`` the adversarial term runs on at ``losses.adversarial_fraction``:
    the first ceil(fraction x rows), at least one. The collator (which builds their target positions on
    the host) and the objective (which slices them) both call this, so they agree without a host sync.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"adversarial fraction must be in (0, 1], got {fraction}")
    return max(1, min(rows, math.ceil(round(fraction * rows, 6))))  # round: 0.1 x 30 is 3.0000000000000004


def gaussian_latent_noise(
    z: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z + N(0, std^2) noise, same shape; teaches the decoder that nearby latents mean the same text."""
    if std == 0:
        return z
    if generator is None:  # inside fit: the same noise per row of the global batch on any process count
        return z + std * randn_like(z)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return z + std * noise


__all__ = [
    "adversarial_direction",
    "conversion_loss",
    "gaussian_latent_noise",
    "info_nce",
    "mean_pool_latents",
]

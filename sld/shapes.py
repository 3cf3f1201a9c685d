"""The one place where per-document tensors (B, S, ...) become per-segment tensors (B*S, ...) and back."""

from __future__ import annotations

import torch


def fold_segments(x: torch.Tensor) -> torch.Tensor:
    """(B, S, ...) -> (B*S, ...): every segment of every document becomes one row."""
    if x.dim() < 2:
        raise ValueError(f"fold_segments expects (B, S, ...), got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_segments(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(B*S, ...) -> (B, S, ...), the inverse of ``fold_segments``."""
    if x.shape[0] % num_segments:
        raise ValueError(f"cannot unfold {x.shape[0]} rows into groups of {num_segments} segments")
    return x.reshape(x.shape[0] // num_segments, num_segments, *x.shape[1:])

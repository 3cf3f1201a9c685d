"""A small exact PCA on torch tensors: the 2-D plane of the latent maps and trajectories.

No scikit-learn: the point clouds drawn here hold at most a few thousand vectors of width D (or
N*D), so an exact SVD of the centred data is cheap and deterministic. Component signs are fixed
(the largest-magnitude loading of every component is positive) so that refitting on the same
points always gives the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sld.errors import UserError

__all__ = ["PCA", "fit_pca"]


@dataclass(frozen=True)
class PCA:
    """A fitted linear projection onto the top principal components.

    Attributes:
        mean: (F,) mean of the fitted points.
        components: (K, F) orthonormal principal directions, strongest first.
        explained_variance: (K,) variance of the fitted points along each component.
        explained_variance_ratio: (K,) that variance over the points' total variance.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, points: torch.Tensor | np.ndarray) -> np.ndarray:
        """(M, F) points -> (M, K) coordinates in the fitted plane, as a float64 numpy array."""
        x = torch.as_tensor(points).detach().to(device="cpu", dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise UserError(
                f"PCA was fitted on {self.mean.shape[0]}-dimensional points; got shape {tuple(x.shape)}"
            )
        return ((x - self.mean) @ self.components.T).numpy()

    def axis_label(self, index: int) -> str:
        """``"PC1 (42.0% of variance)"`` for component ``index`` (0-based)."""
        return f"PC{index + 1} ({100.0 * float(self.explained_variance_ratio[index]):.1f}% of variance)"


def fit_pca(points: torch.Tensor | np.ndarray, num_components: int = 2) -> PCA:
    """Fit an exact PCA on (M, F) points (any device / dtype; computed in float64 on the CPU).

    Raises ``UserError`` when there are fewer than two points. With fewer points or features than
    ``num_components``, the missing components are zero vectors with zero variance, so a plot still
    has the requested number of axes.
    """
    x = torch.as_tensor(points).detach().to(device="cpu", dtype=torch.float64)
    if x.dim() != 2:
        raise UserError(f"PCA expects (points, features), got shape {tuple(x.shape)}")
    m, f = x.shape
    if m < 2:
        raise UserError(f"PCA needs at least 2 points, got {m}")
    if num_components < 1:
        raise UserError(f"num_components must be >= 1, got {num_components}")
    mean = x.mean(dim=0)
    centred = x - mean
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(m, f), f)
    k = min(num_components, vh.shape[0])
    components = vh[:k].clone()
    # Deterministic signs: the largest-magnitude loading of each component is positive.
    pivots = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(k), pivots])
    components *= torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    variance = singular[:k] ** 2 / (m - 1)
    total = centred.pow(2).sum() / (m - 1)
    ratio = variance / total if total > 0 else torch.zeros_like(variance)
    if k < num_components:
        pad = num_components - k
        components = torch.cat([components, torch.zeros(pad, f, dtype=torch.float64)])
        variance = torch.cat([variance, torch.zeros(pad, dtype=torch.float64)])
        ratio = torch.cat([ratio, torch.zeros(pad, dtype=torch.float64)])
    return PCA(mean=mean, components=components, explained_variance=variance, explained_variance_ratio=ratio)

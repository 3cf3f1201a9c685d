"""Latent maps of the autoencoder variants: the SLD paper's latent-space figure (method.md).

For every autoencoder (one panel each, side by side), in-domain sentences (blue), their
paraphrases (green) and out-of-domain sentences (orange) from a pairs JSONL are encoded to
segment latents (N, D), mean-pooled to one D-vector each, and drawn in a 2-D PCA plane fitted once
per panel on all the points it shows. A smooth, well-separated latent space puts paraphrases next
to their sentences and out-of-domain text away from them.

Each panel also carries the smoothness ratio::

    ratio = mean_i ||z(sentence_i) - z(paraphrase_i)|| / mean_i ||z(sentence_i) - z(negative_i)||

computed in the full latent space (not the PCA plane), in two versions: on mean-pooled latents
(D,) and on flattened latents (N*D,). The mean-pooled one is *the* reported ratio: it is the
representation the contrastive loss shapes and the one the map shows; the flattened one is kept
next to it in the JSON. Lower is better; the contrastive variant should have the lowest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure

from sld.data.collate import PairDataset
from sld.errors import DataError, UserError
from sld.loading import load_model
from sld.losses import mean_pool_latents
from sld.models.autoencoder import SegmentAutoencoder
from sld.viz.figures import new_figure
from sld.viz.projection import PCA, fit_pca

logger = logging.getLogger(__name__)

__all__ = [
    "GROUPS",
    "GROUP_STYLE",
    "DistanceRatio",
    "LatentMapResult",
    "LatentPanel",
    "PairLatents",
    "PairTexts",
    "Smoothness",
    "autoencoder_label",
    "distance_ratio",
    "encode_pairs",
    "latent_map",
    "latent_panel",
    "load_pair_texts",
    "plot_latent_map",
    "smoothness",
]

GROUPS: tuple[str, ...] = ("sentence", "paraphrase", "negative")
# group -> (legend label, colour)
GROUP_STYLE: dict[str, tuple[str, str]] = {
    "sentence": ("in-domain sentence", "tab:blue"),
    "paraphrase": ("paraphrase", "tab:green"),
    "negative": ("out-of-domain sentence", "tab:orange"),
}
VARIANT_LABELS = {
    "vanilla": "vanilla",
    "noise_robust": "noise-robust",
    "noise_robust_contrastive": "noise-robust + contrastive",
}


@dataclass
class PairTexts:
    """Aligned sentence / paraphrase / out-of-domain negative texts (row i of each belongs together)."""

    sentences: list[str]
    paraphrases: list[str]
    negatives: list[str]
    source: str = "pairs"

    def __len__(self) -> int:
        return len(self.sentences)

    def group(self, name: str) -> list[str]:
        return {"sentence": self.sentences, "paraphrase": self.paraphrases, "negative": self.negatives}[name]


def load_pair_texts(path: str | Path, limit: int | None = 200) -> PairTexts:
    """Read up to ``limit`` rows (None: all) with ``sentence``, ``paraphrase`` and ``negative`` from a JSONL.

    Rows without a ``negative`` are skipped (the map needs all three); the file must have some.
    """
    if limit is not None and limit < 1:
        raise UserError(f"max_pairs must be >= 1 (or null for all rows), got {limit}")
    rows = PairDataset.from_jsonl(path).rows
    complete = [row for row in rows if "negative" in row]
    if not complete:
        raise DataError(f"{path}: no row has a 'negative' (out-of-domain) sentence; the latent map needs one")
    if len(complete) < len(rows):
        logger.info("%s: skipped %d rows without a 'negative'", path, len(rows) - len(complete))
    complete = complete[:limit] if limit is not None else complete
    return PairTexts(
        sentences=[r["sentence"] for r in complete],
        paraphrases=[r["paraphrase"] for r in complete],
        negatives=[r["negative"] for r in complete],
        source=str(path),
    )


@dataclass
class PairLatents:
    """Segment latents (M, N, D), float32 on the CPU, of the three aligned groups of a ``PairTexts``."""

    sentence: torch.Tensor
    paraphrase: torch.Tensor
    negative: torch.Tensor

    def group(self, name: str) -> torch.Tensor:
        return getattr(self, name)


def encode_pairs(autoencoder: SegmentAutoencoder, pairs: PairTexts, batch_size: int = 64) -> PairLatents:
    """Encode every text of the three groups (no noise, eval mode) -> ``PairLatents``."""
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        encoded = {
            name: autoencoder.encode_texts(pairs.group(name), batch_size=batch_size).float().cpu()
            for name in GROUPS
        }
    finally:
        autoencoder.train(was_training)
    return PairLatents(**encoded)


@dataclass
class DistanceRatio:
    """Mean Euclidean distance sentence-paraphrase and sentence-negative, and their ratio."""

    paraphrase_distance: float
    negative_distance: float
    ratio: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def distance_ratio(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> DistanceRatio:
    """Row-aligned (M, F) vectors -> mean ||a_i - p_i|| / mean ||a_i - n_i|| (nan if the latter is 0)."""
    if not anchor.shape == positive.shape == negative.shape or anchor.dim() != 2:
        raise ValueError(
            f"distance_ratio expects three (M, F) tensors of one shape, got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    a, p, n = (x.double() for x in (anchor, positive, negative))
    d_pos = float((a - p).norm(dim=-1).mean())
    d_neg = float((a - n).norm(dim=-1).mean())
    return DistanceRatio(d_pos, d_neg, d_pos / d_neg if d_neg > 0 else float("nan"))


@dataclass
class Smoothness:
    """The paraphrase / out-of-domain distance ratio on mean-pooled and on flattened latents.

    ``ratio`` (the reported number) is the mean-pooled one; see the module docstring.
    """

    pooled: DistanceRatio
    flattened: DistanceRatio

    @property
    def ratio(self) -> float:
        return self.pooled.ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "reported": "pooled",
            "pooled": self.pooled.to_dict(),
            "flattened": self.flattened.to_dict(),
        }


def smoothness(latents: PairLatents) -> Smoothness:
    """Smoothness ratios of encoded pairs, in the full latent space."""
    pooled = [mean_pool_latents(latents.group(g)) for g in GROUPS]
    flat = [latents.group(g).flatten(1) for g in GROUPS]
    return Smoothness(pooled=distance_ratio(*pooled), flattened=distance_ratio(*flat))


@dataclass
class LatentPanel:
    """One panel of the map: 2-D coordinates per group, the PCA that made them, the smoothness."""

    name: str
    coordinates: dict[str, np.ndarray]
    pca: PCA
    smoothness: Smoothness
    folder: str | None = None

    @property
    def num_points(self) -> int:
        return sum(len(c) for c in self.coordinates.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": self.folder,
            "num_points": {g: len(c) for g, c in self.coordinates.items()},
            "explained_variance_ratio": [float(v) for v in self.pca.explained_variance_ratio],
            "smoothness": self.smoothness.to_dict(),
        }


def latent_panel(latents: PairLatents, name: str, folder: str | None = None) -> LatentPanel:
    """Mean-pool every segment's latents (N, D) -> (D,), fit a 2-D PCA on all points, project each group."""
    pooled = {g: mean_pool_latents(latents.group(g)) for g in GROUPS}
    pca = fit_pca(torch.cat([pooled[g] for g in GROUPS]), num_components=2)
    return LatentPanel(
        name=name,
        coordinates={g: pca.transform(pooled[g]) for g in GROUPS},
        pca=pca,
        smoothness=smoothness(latents),
        folder=folder,
    )


def scatter_groups(
    ax: Any, coordinates: Mapping[str, np.ndarray], alpha: float = 0.75, size: float = 14
) -> None:
    """Draw each group of 2-D points in its colour, one scatter (one legend entry) per group."""
    for group in GROUPS:
        if group not in coordinates or len(coordinates[group]) == 0:
            continue
        label, colour = GROUP_STYLE[group]
        xy = coordinates[group]
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colour, alpha=alpha, edgecolors="none", label=label)


def plot_latent_map(panels: Sequence[LatentPanel], title: str | None = None) -> Figure:
    """Side-by-side panels (one per autoencoder) with a shared legend below; returns the figure."""
    if not panels:
        raise UserError("the latent map needs at least one autoencoder")
    figure = new_figure(4.4 * len(panels) + 0.3, 4.9)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        scatter_groups(ax, panel.coordinates)
        ratio = panel.smoothness.ratio
        ax.set_title(f"{panel.name}\nd(paraphrase) / d(out-of-domain) = {ratio:.3f}", fontsize=10)
        ax.set_xlabel(panel.pca.axis_label(0))
        ax.set_ylabel(panel.pca.axis_label(1))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=len(labels), markerscale=1.6, frameon=False
    )
    figure.suptitle(title or "Segment latents (mean-pooled), 2-D PCA per panel", fontsize=11)
    return figure


def autoencoder_label(folder: str | Path) -> str:
    """A panel title for an autoencoder folder: its loss variant (from the run's ``config.yaml``) or its name."""
    folder = Path(folder)
    config = folder / "config.yaml"
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text()) or {}
            variant = (data.get("losses") or {}).get("variant")
        except (yaml.YAMLError, AttributeError):
            variant = None
        if isinstance(variant, str):
            return VARIANT_LABELS.get(variant, variant)
    return folder.name or str(folder)


@dataclass
class LatentMapResult:
    """The drawn figure and the numbers behind it."""

    figure: Figure
    panels: list[LatentPanel]
    pairs: PairTexts

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs.source,
            "num_pairs": len(self.pairs),
            "distance": "euclidean; ratio = mean d(sentence, paraphrase) / mean d(sentence, negative)",
            "reported_ratio": "pooled (mean over the N latents of a segment); 'flattened' uses all N*D values",
            "panels": [p.to_dict() for p in self.panels],
        }


def latent_map(
    autoencoders: Sequence[SegmentAutoencoder | str | Path],
    pairs: PairTexts,
    names: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    title: str | None = None,
) -> LatentMapResult:
    """Encode the pairs with every autoencoder (model or folder), build one panel each and draw the map.

    Folders are loaded one at a time (and released) so that several large models need not fit at once,
    on ``device`` (default: the GPU when there is one).
    """
    if names is not None and len(names) != len(autoencoders):
        raise UserError(f"labels: got {len(names)} labels for {len(autoencoders)} autoencoders")
    if len(pairs) < 1:
        raise UserError(f"{pairs.source}: no pairs to draw")
    panels = []
    for i, item in enumerate(autoencoders):
        folder = None if isinstance(item, SegmentAutoencoder) else str(item)
        model = (
            item
            if isinstance(item, SegmentAutoencoder)
            else load_model(item, device, kinds=("autoencoder",), what="latent_map.autoencoders")
        )
        name = (
            names[i]
            if names is not None
            else (autoencoder_label(folder) if folder else f"autoencoder {i + 1}")
        )
        logger.info("encoding %d x 3 texts with %s", len(pairs), folder or name)
        panels.append(latent_panel(encode_pairs(model, pairs, batch_size), name, folder))
        del model
    return LatentMapResult(plot_latent_map(panels, title), panels, pairs)

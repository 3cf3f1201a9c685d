"""Denoising trajectories: one sentence's latent, noised to pure noise and denoised back (method.md).

The sentence is encoded to its clean latent z0 (one segment, (N, D)). The forward process noises it
along the sampler's own timesteps, x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps, from noise ratio
sqrt(1 - a_t) = 0 up to ~1 (pure noise); the trained denoiser then runs the reverse process from that
x_T back to a clean latent, conditioned on the document's source when one is given (else on the
null context, i.e. unconditionally), and every step is collected through the sampler callback
(``TrajectoryRecorder``). The path is drawn in the 2-D PCA plane of the latent map (mean-pooled
latents; fitted on the pairs' points plus the path) in red, light at noise ratio 1.0 and dark at
0.0, and the latents at a few noise ratios are decoded to text: both x_t itself and the model's
clean estimate x0_hat at that step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure

from sld.data.segmented import read_segmented
from sld.diffusion.sampling import (
    SchedulerName,
    TrajectoryRecorder,
    forward_noise,
    make_scheduler,
    sample_latents,
)
from sld.errors import DataError, UserError
from sld.losses import mean_pool_latents
from sld.pipeline import SLDPipeline
from sld.viz.figures import new_figure
from sld.viz.latent_map import GROUPS, PairLatents, scatter_groups
from sld.viz.projection import PCA, fit_pca

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DECODE_AT",
    "DecodedPoint",
    "Trajectory",
    "TrajectoryPoint",
    "TrajectoryResult",
    "denoising_trajectory",
    "plot_trajectory",
    "sentence_from_segmented",
]

DEFAULT_DECODE_AT: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
# Light red at noise ratio 1.0, dark red at 0.0 (the lightest end of "Reds" is invisible on white).
NOISE_CMAP = LinearSegmentedColormap.from_list("sld_noise", colormaps["Reds"](np.linspace(0.95, 0.2, 256)))


@dataclass
class TrajectoryPoint:
    """One latent on a path: (N, D) float32 CPU tensors, at noise ratio sqrt(1 - alpha_bar_t).

    ``timestep`` is None for a clean latent. ``x0_pred`` is the denoiser's clean estimate at this
    step (reverse path only; for the final point the point itself).
    """

    noise_ratio: float
    timestep: int | None
    latent: torch.Tensor
    x0_pred: torch.Tensor | None = None


@dataclass
class DecodedPoint:
    """Text decoded at one point of the reverse path: from x_t itself and from the x0 estimate."""

    noise_ratio: float
    timestep: int | None
    step: int
    text: str
    x0_text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trajectory:
    """A forward (noise ratio 0 -> 1) and a reverse (1 -> 0) path of one sentence's latent."""

    text: str
    source: str | None
    reconstruction: str
    forward: list[TrajectoryPoint]
    reverse: list[TrajectoryPoint]
    decoded: list[DecodedPoint] = field(default_factory=list)
    scheduler: str = ""
    num_inference_steps: int = 0
    guidance_scale: float = 1.0

    @property
    def clean(self) -> torch.Tensor:
        """The sentence's encoded latent z0 (N, D)."""
        return self.forward[0].latent

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": self.source,
            "conditioning": "source" if self.source is not None else "unconditional (null context)",
            "reconstruction": self.reconstruction,
            "scheduler": self.scheduler,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "forward_noise_ratios": [p.noise_ratio for p in self.forward],
            "reverse_noise_ratios": [p.noise_ratio for p in self.reverse],
            "decoded": [d.to_dict() for d in self.decoded],
        }


def sentence_from_segmented(
    path: str | Path, document_index: int = 0, segment_index: int = 0
) -> tuple[str, str | None]:
    """(segment text, document source) of one segment of a stage-1 ``<split>.jsonl`` file."""
    docs = read_segmented(path)
    if not 0 <= document_index < len(docs):
        raise DataError(f"{path}: document_index {document_index} is out of range ({len(docs)} documents)")
    doc = docs[document_index]
    if not 0 <= segment_index < len(doc.segments):
        raise DataError(
            f"{path}: document {document_index} ({doc.id}) has {len(doc.segments)} segments; "
            f"segment_index {segment_index} is out of range"
        )
    return doc.segments[segment_index], doc.source


def _noise_ratio(alphas_cumprod: torch.Tensor, t: int) -> float:
    return math.sqrt(max(0.0, 1.0 - float(alphas_cumprod[t])))


def _nearest(ratios: Sequence[float], targets: Sequence[float]) -> list[int]:
    """Index of the path point nearest to every target noise ratio, in path order, without repeats."""
    chosen = {min(range(len(ratios)), key=lambda i: (abs(ratios[i] - r), i)) for r in targets}
    return sorted(chosen)


@torch.no_grad()
def denoising_trajectory(
    pipeline: SLDPipeline,
    text: str,
    source: str | None = None,
    num_inference_steps: int = 50,
    scheduler: SchedulerName | None = None,
    guidance_scale: float | None = None,
    decode_at: Sequence[float] = DEFAULT_DECODE_AT,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> Trajectory:
    """Noise ``text``'s latent to pure noise and denoise it back with the pipeline's denoiser.

    Args:
        pipeline: a trained pipeline (denoiser, autoencoder, context encoder).
        text: the sentence (one segment).
        source: the document's source text to condition on; None = unconditional (null context).
        num_inference_steps: reverse steps; the forward path visits the same timesteps.
        scheduler: ``ddpm`` / ``ddim`` / ``dpm++``; None = the pipeline's default.
        guidance_scale: CFG weight; None = the pipeline's default (ignored without a source).
        decode_at: noise ratios at which the reverse path is decoded (nearest point each).
        seed: seeds the forward noise (and the DDPM noise).
        max_new_tokens: decoding length limit; None = the autoencoder's segment length.
    """
    if not text or not text.strip():
        raise UserError("trajectory: the text to encode is empty")
    if num_inference_steps < 1:
        raise UserError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    bad = [r for r in decode_at if not 0.0 <= r <= 1.0]
    if bad:
        raise UserError(f"decode_at: noise ratios must lie in [0, 1], got {bad}")
    cfg = pipeline.config
    autoencoder, denoiser = pipeline.autoencoder, pipeline.denoiser
    device = denoiser.device
    scheduler_name = scheduler or cfg.scheduler
    noise_scheduler = make_scheduler(scheduler_name, cfg.num_train_timesteps, cfg.prediction_type)
    noise_scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = [int(t) for t in noise_scheduler.timesteps]  # descending, first = T - 1
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(torch.float64)

    z0 = autoencoder.encode_texts([text]).to(device=device, dtype=torch.float32)  # (1, N, D)
    x0 = z0[:, None]  # (B=1, S=1, N, D)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    forward = [TrajectoryPoint(0.0, None, z0[0].cpu())]
    for t in reversed(timesteps):
        x_t = forward_noise(x0, t, noise, alphas_cumprod.float())
        forward.append(TrajectoryPoint(_noise_ratio(alphas_cumprod, t), t, x_t[0, 0].cpu()))
    x_start = forward_noise(x0, timesteps[0], noise, alphas_cumprod.float())

    context = context_mask = None
    guidance = 1.0
    if source is not None:
        context, context_mask = pipeline.context_encoder.encode([source])
        guidance = cfg.guidance_scale if guidance_scale is None else guidance_scale
    recorder = TrajectoryRecorder()
    final = sample_latents(
        denoiser,
        noise_scheduler,
        context,
        context_mask,
        segment_mask=torch.ones(1, 1, dtype=torch.bool),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance,
        generator=torch.Generator(device=device).manual_seed(seed),
        renormalize=autoencoder.normalize_latents,
        latents=x_start / noise_scheduler.init_noise_sigma,
        callback=recorder,
    )
    reverse = [
        TrajectoryPoint(_noise_ratio(alphas_cumprod, s.timestep), s.timestep, s.sample[0, 0], s.x0_pred[0, 0])
        for s in recorder.steps
    ]
    clean = final[0, 0].float().cpu()
    reverse.append(TrajectoryPoint(0.0, None, clean, clean))

    # One batched decode: the reconstruction of z0, then x_t and x0_hat at every chosen point.
    chosen = _nearest([p.noise_ratio for p in reverse], decode_at)
    latents = [z0[0].cpu()] + [reverse[i].latent for i in chosen] + [reverse[i].x0_pred for i in chosen]
    batch = torch.stack(latents).to(device=autoencoder.device, dtype=autoencoder.dtype)
    texts = autoencoder.decode_latents(batch, max_new_tokens=max_new_tokens)
    k = len(chosen)
    decoded = [
        DecodedPoint(reverse[i].noise_ratio, reverse[i].timestep, i, texts[1 + j], texts[1 + k + j])
        for j, i in enumerate(chosen)
    ]
    return Trajectory(
        text=text,
        source=source,
        reconstruction=texts[0],
        forward=forward,
        reverse=reverse,
        decoded=decoded,
        scheduler=scheduler_name,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance,
    )


def _pooled(points: Sequence[TrajectoryPoint]) -> torch.Tensor:
    """(P, D) mean-pooled latents of path points."""
    return mean_pool_latents(torch.stack([p.latent for p in points]))


def _spaced(
    points: Sequence[DecodedPoint], xy: np.ndarray, ax: Any, min_gap: float = 0.05
) -> list[DecodedPoint]:
    """The decoded points to label: both ends first, then the others that are not crowded.

    A label is skipped when its point lies within ``min_gap`` of the axes' data span from an already
    labelled one (the noise ratios of all decoded points are in the printed summary and the JSON).
    """
    ax.autoscale_view()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    scale = np.array([max(x1 - x0, 1e-12), max(y1 - y0, 1e-12)])
    order = list(points[:1]) + list(points[-1:]) + list(points[1:-1]) if len(points) > 1 else list(points)
    kept: list[DecodedPoint] = []
    for point in order:
        where = xy[point.step] / scale
        if all(np.linalg.norm(where - xy[k.step] / scale) >= min_gap for k in kept):
            kept.append(point)
    return kept


@dataclass
class TrajectoryResult:
    """The figure, the trajectory it shows and the PCA plane it was drawn in."""

    figure: Figure
    trajectory: Trajectory
    pca: PCA
    num_background_points: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.trajectory.to_dict(),
            "num_background_points": self.num_background_points,
            "explained_variance_ratio": [float(v) for v in self.pca.explained_variance_ratio],
        }


def plot_trajectory(
    trajectory: Trajectory,
    background: PairLatents | None = None,
    show_forward: bool = True,
    title: str | None = None,
) -> TrajectoryResult:
    """Draw the reverse path (red, light -> dark as the noise ratio goes 1 -> 0) in a 2-D PCA plane.

    The PCA is fitted on the mean-pooled ``background`` pairs (drawn faintly in their latent-map
    colours) plus every point of both paths. The points decoded in ``trajectory.decoded`` are
    annotated with their noise ratio; the forward path is a dashed grey line.
    """
    reverse = _pooled(trajectory.reverse)
    forward = _pooled(trajectory.forward)
    background_pooled = (
        {g: mean_pool_latents(background.group(g)) for g in GROUPS} if background is not None else {}
    )
    pca = fit_pca(torch.cat([*background_pooled.values(), forward, reverse]), num_components=2)

    figure = new_figure(7.4, 6.0)
    ax = figure.add_subplot(1, 1, 1)
    scatter_groups(ax, {g: pca.transform(p) for g, p in background_pooled.items()}, alpha=0.3, size=10)
    if show_forward:
        xy = pca.transform(forward)
        ax.plot(
            xy[:, 0], xy[:, 1], "--", color="0.55", lw=0.9, marker=".", ms=3, label="forward (noising) path"
        )

    xy = pca.transform(reverse)
    ratios = np.array([p.noise_ratio for p in trajectory.reverse])
    norm = Normalize(vmin=0.0, vmax=1.0)
    segments = np.stack([xy[:-1], xy[1:]], axis=1)
    lines = LineCollection(segments, cmap=NOISE_CMAP, norm=norm, linewidths=1.8)
    lines.set_array((ratios[:-1] + ratios[1:]) / 2)
    ax.add_collection(lines)
    points = ax.scatter(
        xy[:, 0], xy[:, 1], c=ratios, cmap=NOISE_CMAP, norm=norm, s=16, zorder=3, label="denoising path"
    )
    start = pca.transform(forward[:1])[0]
    ax.scatter(*start, marker="*", s=220, c="gold", edgecolors="black", zorder=4, label="input sentence z0")
    ax.scatter(*xy[-1], marker="X", s=110, c="darkred", edgecolors="black", zorder=4, label="denoised latent")
    for point in _spaced(trajectory.decoded, xy, ax):
        ax.annotate(
            f"{point.noise_ratio:.2f}",
            xy[point.step],
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
            color="darkred",
            zorder=5,
        )
    colorbar = figure.colorbar(points, ax=ax, shrink=0.85)
    colorbar.set_label("noise ratio sqrt(1 - alpha_bar_t)")
    ax.set_xlabel(pca.axis_label(0))
    ax.set_ylabel(pca.axis_label(1))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    conditioning = "conditioned on the source" if trajectory.source is not None else "unconditional"
    short = trajectory.text if len(trajectory.text) <= 70 else trajectory.text[:67] + "..."
    ax.set_title(
        title
        or f'Denoising trajectory of "{short}"\n'
        f"{trajectory.scheduler}, {trajectory.num_inference_steps} steps, {conditioning}",
        fontsize=10,
    )
    n_background = sum(len(p) for p in background_pooled.values())
    return TrajectoryResult(figure, trajectory, pca, n_background)

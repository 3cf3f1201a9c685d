"""Autoencoder report: how well, how robustly and how smoothly a segment autoencoder encodes text.

Three measurements on held-out text, for one or several trained autoencoders:

* **reconstruction**: held-out segments -> clean latents -> greedy decode; sacrebleu corpus BLEU and
  the exact-match rate (the numbers LD4LG reports).
* **robustness curve**: the same decode after Gaussian noise ``z + sigma * eps`` on every latent
  coordinate, for growing ``sigma``. Normalised latents have norm sqrt(D), i.e. a root-mean-square
  of 1 per coordinate, so ``sigma`` is relative to the latents' own scale. With ``renormalize`` the
  noisy latents are projected back to norm sqrt(D), as the diffusion sampler does. A diffusion
  model never lands exactly on a training latent; a decoder whose BLEU holds up under noise turns
  near misses into the right text (SLD paper, robustness figure).
* **smoothness**: mean latent distance sentence-paraphrase / sentence-out-of-domain negative
  (``sld.viz.latent_map.smoothness``, mean-pooled latents); lower = paraphrases closer than
  unrelated text.

``autoencoder_report`` computes one report; ``markdown_table`` and ``plot_robustness`` compare
several (e.g. the vanilla / noise-robust / contrastive ablation). ``write_autoencoder_reports``
does all of it for the folders of an ``AutoencoderReportConfig`` and writes ``report.json``,
``report.md``, ``robustness.png`` / ``.svg`` and ``config.yaml``; the command is
``sld autoencoder-report`` (stages/autoencoder_report.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from sld.config import save_config
from sld.data.segmented import read_segmented
from sld.errors import DataError, UserError
from sld.eval.metrics import bleu, exact_match_rate
from sld.loading import default_device, load_model
from sld.models.autoencoder import SegmentAutoencoder
from sld.viz.figures import new_figure, save_figure
from sld.viz.latent_map import (
    PairTexts,
    Smoothness,
    autoencoder_label,
    encode_pairs,
    load_pair_texts,
    smoothness,
)

__all__ = [
    "DEFAULT_NOISE_LEVELS",
    "AutoencoderReport",
    "AutoencoderReportConfig",
    "AutoencoderReports",
    "RobustnessPoint",
    "autoencoder_report",
    "decode_with_noise",
    "load_segments",
    "markdown_table",
    "plot_robustness",
    "write_autoencoder_reports",
]

logger = logging.getLogger(__name__)

DEFAULT_NOISE_LEVELS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class RobustnessPoint:
    """Reconstruction quality at one noise level."""

    noise_std: float
    bleu: float
    exact_match: float


@dataclass
class AutoencoderReport:
    """Everything measured for one autoencoder; ``curve[0]`` is the clean reconstruction (sigma 0)."""

    name: str
    num_segments: int
    curve: list[RobustnessPoint]
    smoothness: Smoothness | None = None
    num_pairs: int = 0
    renormalize: bool = False
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def bleu(self) -> float:
        return self.curve[0].bleu

    @property
    def exact_match(self) -> float:
        return self.curve[0].exact_match

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_segments": self.num_segments,
            "bleu": self.bleu,
            "exact_match": self.exact_match,
            "renormalize": self.renormalize,
            "robustness": [vars(p) for p in self.curve],
            "num_pairs": self.num_pairs,
            "smoothness": self.smoothness.to_dict() if self.smoothness is not None else None,
            "examples": self.examples,
        }


@torch.no_grad()
def decode_with_noise(
    model: SegmentAutoencoder,
    latents: torch.Tensor,
    noise_std: float,
    seed: int = 0,
    renormalize: bool = False,
    batch_size: int = 128,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Latents (M, N, D) plus seeded N(0, noise_std^2) noise -> M decoded strings (greedy by default).

    The noise depends only on ``seed`` and the shape, so every autoencoder of a comparison with the
    same latent shape sees the same draw.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = latents.float().cpu() + noise_std * noise
    if renormalize:
        noisy = F.normalize(noisy, dim=-1) * math.sqrt(latents.shape[-1])
    outputs: list[str] = []
    for start in range(0, noisy.shape[0], batch_size):
        chunk = noisy[start : start + batch_size].to(model.device, model.dtype)
        outputs += model.decode_latents(chunk, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return outputs


def autoencoder_report(
    model: SegmentAutoencoder,
    segments: Sequence[str],
    name: str = "autoencoder",
    pairs: PairTexts | None = None,
    noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    renormalize: bool = False,
    seed: int = 0,
    batch_size: int = 128,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    num_examples: int = 5,
) -> AutoencoderReport:
    """Reconstruction, robustness curve and (with ``pairs``) smoothness of one autoencoder.

    Args:
        model: the autoencoder (put in eval mode here).
        segments: held-out segment strings (the references of every decode).
        name: label in tables and plots.
        pairs: sentence / paraphrase / negative texts for the smoothness ratio (None: skipped).
        noise_levels: the sigmas of the curve; 0 is always measured first (the clean reconstruction).
        renormalize: project noisy latents back to norm sqrt(D) before decoding.
        seed: seed of the noise draws (one per noise level: ``seed + index``).
        num_examples: segments whose decodes are kept in the report, clean and at the largest sigma.
    """
    if not segments:
        raise ValueError("autoencoder_report needs at least one segment")
    if any(s < 0 for s in noise_levels):
        raise ValueError(f"noise levels must be >= 0, got {list(noise_levels)}")
    levels = [0.0, *sorted({float(s) for s in noise_levels if s > 0})]
    model.eval()
    segments = list(segments)
    latents = model.encode_texts(segments, batch_size=batch_size).float().cpu()  # (M, N, D)
    curve, decoded = [], {}
    for index, sigma in enumerate(levels):
        outputs = decode_with_noise(
            model, latents, sigma, seed + index, renormalize, batch_size, num_beams, max_new_tokens
        )
        decoded[sigma] = outputs
        curve.append(RobustnessPoint(sigma, bleu(outputs, segments), exact_match_rate(outputs, segments)))
    largest = levels[-1]
    examples = [
        {"segment": segments[i], "clean": decoded[0.0][i], f"noise_{largest:g}": decoded[largest][i]}
        for i in range(min(num_examples, len(segments)))
    ]
    smooth = smoothness(encode_pairs(model, pairs, batch_size)) if pairs is not None and len(pairs) else None
    return AutoencoderReport(
        name=name,
        num_segments=len(segments),
        curve=curve,
        smoothness=smooth,
        num_pairs=len(pairs) if pairs is not None else 0,
        renormalize=renormalize,
        examples=examples,
    )


def markdown_table(reports: Sequence[AutoencoderReport]) -> str:
    """One row per autoencoder: BLEU, exact match, BLEU at every noise level, smoothness ratio."""
    if not reports:
        return ""
    levels = [p.noise_std for p in reports[0].curve if p.noise_std > 0]
    header = ["autoencoder", "BLEU", "exact match", *[f"BLEU @ σ={s:g}" for s in levels], "para/neg ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports:
        by_sigma = {p.noise_std: p.bleu for p in report.curve}
        ratio = f"{report.smoothness.ratio:.3f}" if report.smoothness is not None else "n/a"
        cells = [
            report.name,
            f"{report.bleu:.2f}",
            f"{report.exact_match:.3f}",
            *[f"{by_sigma[s]:.2f}" if s in by_sigma else "n/a" for s in levels],
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_robustness(reports: Sequence[AutoencoderReport], title: str | None = None) -> Figure:
    """Reconstruction BLEU (left) and exact match (right) against latent noise, one line per autoencoder."""
    figure = new_figure(9.0, 3.6)
    axes = figure.subplots(1, 2)
    for report in reports:
        sigmas = [p.noise_std for p in report.curve]
        label = report.name
        if report.smoothness is not None:
            label += f" (para/neg {report.smoothness.ratio:.2f})"
        axes[0].plot(sigmas, [p.bleu for p in report.curve], marker="o", label=label)
        axes[1].plot(sigmas, [p.exact_match for p in report.curve], marker="o", label=label)
    renorm = any(r.renormalize for r in reports)
    xlabel = "latent noise σ" + (" (re-projected to norm √D)" if renorm else "")
    for ax, ylabel in zip(axes, ("reconstruction BLEU", "exact-match rate")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title or "Autoencoder robustness to latent noise", fontsize=11)
    return figure


@dataclass
class AutoencoderReportConfig:
    """Which autoencoders, which held-out text, which noise levels (``sld autoencoder-report``).

    ``segments`` is a stage-1 file (``<split>.jsonl`` with ``segments``) or a stage-1 folder (its
    ``valid.jsonl`` is read). ``labels`` default to each run's loss variant (or its folder name).
    """

    autoencoders: list[str] = field(default_factory=lambda: ["runs/autoencoder"])
    labels: list[str] | None = None
    segments: str = "runs/segmented/valid.jsonl"
    num_segments: int = 500
    pairs: str | None = None
    max_pairs: int = 200
    noise_levels: list[float] = field(default_factory=lambda: list(DEFAULT_NOISE_LEVELS))
    renormalize: bool = False
    seed: int = 0
    batch_size: int = 128
    num_beams: int = 1
    # null: "cuda" when available, else "cpu"
    device: str | None = None
    output_dir: str = "runs/autoencoder_report"
    formats: list[str] = field(default_factory=lambda: ["png", "svg"])
    dpi: int = 150
    title: str | None = None


@dataclass
class AutoencoderReports:
    """The reports of one run, in config order, with what they were measured on and the files written."""

    reports: list[AutoencoderReport]
    segments: list[str]
    pairs: PairTexts | None
    numbers: dict[str, Any]
    table: str
    files: list[Path]


def load_segments(path: str | Path, limit: int) -> list[str]:
    """The first ``limit`` segments of a stage-1 file (or of ``<folder>/valid.jsonl``), in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / "valid.jsonl"
    if not path.is_file():
        raise DataError(f"segments: {path} not found (give a stage-1 <split>.jsonl or its folder)")
    if limit < 1:
        raise UserError(f"num_segments must be >= 1, got {limit}")
    segments = [segment for doc in read_segmented(path) for segment in doc.segments][:limit]
    if not segments:
        raise DataError(f"{path}: no segments to reconstruct")
    return segments


def write_autoencoder_reports(cfg: AutoencoderReportConfig) -> AutoencoderReports:
    """Report every autoencoder of ``cfg`` (one loaded at a time) and write the output folder."""
    if not cfg.autoencoders:
        raise UserError("autoencoders: give at least one autoencoder folder")
    if cfg.labels is not None and len(cfg.labels) != len(cfg.autoencoders):
        raise UserError(f"labels: {len(cfg.labels)} labels for {len(cfg.autoencoders)} autoencoders")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    segments = load_segments(cfg.segments, cfg.num_segments)
    pairs = load_pair_texts(cfg.pairs, cfg.max_pairs) if cfg.pairs is not None else None
    labels = cfg.labels or [autoencoder_label(folder) for folder in cfg.autoencoders]

    reports = []
    for folder, label in zip(cfg.autoencoders, labels):
        logger.info("%s: %d segments x %d noise levels", folder, len(segments), len(cfg.noise_levels))
        model = load_model(folder, default_device(cfg.device), kinds=("autoencoder",), what="autoencoders")
        reports.append(
            autoencoder_report(
                model,
                segments,
                name=label,
                pairs=pairs,
                noise_levels=cfg.noise_levels,
                renormalize=cfg.renormalize,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                num_beams=cfg.num_beams,
            )
        )
        del model

    table = markdown_table(reports)
    numbers = {
        "segments": str(cfg.segments),
        "pairs": cfg.pairs,
        "autoencoders": dict(zip(labels, cfg.autoencoders)),
        "reports": [r.to_dict() for r in reports],
    }
    (out / "report.json").write_text(json.dumps(numbers, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(table)
    figures = save_figure(plot_robustness(reports, cfg.title), out, "robustness", cfg.formats, cfg.dpi)
    files = [out / "report.json", out / "report.md", *figures]
    return AutoencoderReports(reports, segments, pairs, numbers, table, files)

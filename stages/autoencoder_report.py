"""Autoencoder report: reconstruction BLEU, robustness to latent noise, and latent smoothness.

    sld autoencoder-report autoencoders=[runs/autoencoder] segments=runs/segmented/valid.jsonl \
        pairs=data/synthetic/pairs_valid.jsonl output_dir=runs/autoencoder_report
    sld autoencoder-report -c configs/autoencoder_report_synthetic_ablation.yaml

For every autoencoder folder: reconstruction BLEU and exact match of ``num_segments`` held-out
segments (the segments of a stage-1 ``<split>.jsonl``, in file order), the BLEU after Gaussian noise
of each ``noise_levels`` sigma on the latents (a robustness curve), and, with ``pairs``, the mean
distance sentence-paraphrase / sentence-negative (the smoothness ratio). See
``sld.eval.autoencoder_report`` for the definitions.

Writes ``report.json`` (all numbers and a few decoded examples), ``report.md`` (the table) and
``robustness.png`` / ``.svg`` (BLEU and exact match against the noise, one line per autoencoder)
into ``output_dir``, and prints the table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sld.cli import run_stage
from sld.config import save_config
from sld.data.segmented import read_segmented
from sld.errors import DataError, UserError
from sld.eval.autoencoder_report import (
    DEFAULT_NOISE_LEVELS,
    autoencoder_report,
    markdown_table,
    plot_robustness,
)
from sld.models.autoencoder import SegmentAutoencoder
from sld.viz.figures import save_figure
from sld.viz.latent_map import autoencoder_label, load_pair_texts

logger = logging.getLogger("sld.autoencoder_report")


@dataclass
class Config:
    """Which autoencoders, which held-out text, which noise levels.

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


def run(cfg: Config) -> dict[str, Any]:
    if not cfg.autoencoders:
        raise UserError("autoencoders: give at least one autoencoder folder")
    if cfg.labels is not None and len(cfg.labels) != len(cfg.autoencoders):
        raise UserError(f"labels: {len(cfg.labels)} labels for {len(cfg.autoencoders)} autoencoders")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    segments = load_segments(cfg.segments, cfg.num_segments)
    pairs = load_pair_texts(cfg.pairs, cfg.max_pairs) if cfg.pairs is not None else None
    labels = cfg.labels or [autoencoder_label(folder) for folder in cfg.autoencoders]

    reports = []
    for folder, label in zip(cfg.autoencoders, labels):
        logger.info("%s: %d segments x %d noise levels", folder, len(segments), len(cfg.noise_levels))
        model = SegmentAutoencoder.from_pretrained(folder, device=device)
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
    files = save_figure(plot_robustness(reports, cfg.title), out, "robustness", cfg.formats, cfg.dpi)

    noise = "re-projected to norm sqrt(D)" if cfg.renormalize else "added to every latent coordinate"
    print(f"autoencoder report: {len(segments)} segments of {cfg.segments}; noise {noise}")
    if pairs is not None:
        print(f"smoothness: {len(pairs)} sentence/paraphrase/negative triples of {cfg.pairs}")
    print(table)
    for report in reports:
        if report.examples:
            example = report.examples[0]
            print(f"{report.name}: " + " | ".join(f"{k}: {v!r}" for k, v in example.items()))
    print("files: " + ", ".join(str(p) for p in [out / "report.json", out / "report.md", *files]))
    return numbers


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

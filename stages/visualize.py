"""Draw the paper's figures: latent maps of autoencoders, denoising trajectories, training curves.

    sld visualize latent-map [--config FILE] [key=value ...]
    sld visualize trajectory trajectory.pipeline=runs/synthetic_stories/diffusion trajectory.text="Anna lost her dog."
    sld visualize curves curves.runs=[runs/ablation_synthetic/vanilla,runs/ablation_synthetic/contrastive]

The first word picks ``kind`` (same as the override ``kind=latent-map``); everything else is a
dotted override of ``Config`` below, as for every stage.

* ``latent-map``: one panel per autoencoder folder (default: the three synthetic ablation runs of
  configs/ablation_synthetic_*.yaml): in-domain sentences (blue), paraphrases (green) and
  out-of-domain sentences (orange) of ``pairs``, mean-pooled latents in a 2-D PCA plane per panel;
  prints and saves the paraphrase / out-of-domain distance ratio of each (lower = smoother).
* ``trajectory``: a sentence (``trajectory.text``, or segment ``segment_index`` of document
  ``document_index`` of the stage-1 file ``trajectory.segmented_file``) noised to pure noise and
  denoised back by a trained pipeline, drawn over the latent map of ``pairs``; prints and saves the
  text decoded at ``trajectory.decode_at`` noise ratios.
* ``curves``: every ``train/*`` and ``eval/*`` metric of the runs' ``metrics.jsonl``, one panel per
  metric, runs overlaid.

Writes ``<name>.png``, ``<name>.svg`` (``formats``), ``<name>.json`` (the numbers behind the
figure) and ``<name>_config.yaml`` (the resolved config) into ``output_dir``; ``name`` defaults to
the kind with ``_`` for ``-``, so the three figures can share one folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sld.cli import run_stage
from sld.config import save_config
from sld.diffusion.sampling import SchedulerName
from sld.errors import UserError
from sld.pipeline import SLDPipeline
from sld.viz.curves import collect_series, plot_curves, read_metrics, run_labels
from sld.viz.figures import save_figure
from sld.viz.latent_map import encode_pairs, latent_map, load_pair_texts
from sld.viz.trajectory import (
    DEFAULT_DECODE_AT,
    denoising_trajectory,
    plot_trajectory,
    sentence_from_segmented,
)

logger = logging.getLogger("sld.visualize")

KINDS: tuple[str, ...] = ("latent-map", "trajectory", "curves")
ABLATION_RUNS = [
    "runs/ablation_synthetic/vanilla",
    "runs/ablation_synthetic/noise_robust",
    "runs/ablation_synthetic/contrastive",
]


@dataclass
class LatentMapConfig:
    """Autoencoder folders, one panel each; ``labels`` default to each run's loss variant (or folder name)."""

    autoencoders: list[str] = field(default_factory=lambda: list(ABLATION_RUNS))
    labels: list[str] | None = None
    batch_size: int = 64


@dataclass
class TrajectoryConfig:
    """The pipeline, the sentence and the sampler of a denoising trajectory.

    The sentence is ``text`` (with ``source`` as its document's source, null = unconditional) or, when
    ``text`` is null, segment ``segment_index`` of document ``document_index`` in ``segmented_file``
    (a stage-1 ``<split>.jsonl``), conditioned on that document's source when ``use_source``.
    """

    pipeline: str = "runs/synthetic_stories/diffusion"
    text: str | None = None
    source: str | None = None
    segmented_file: str | None = "runs/synthetic_stories/segmented/valid.jsonl"
    document_index: int = 0
    segment_index: int = 0
    use_source: bool = True
    scheduler: SchedulerName | None = None
    num_inference_steps: int = 50
    guidance_scale: float | None = None
    decode_at: list[float] = field(default_factory=lambda: list(DEFAULT_DECODE_AT))
    show_forward: bool = True
    seed: int = 0


@dataclass
class CurvesConfig:
    """Run folders (or metrics.jsonl files) to overlay; ``include`` are key prefixes, ``exclude`` exact keys."""

    runs: list[str] = field(default_factory=lambda: list(ABLATION_RUNS))
    labels: list[str] | None = None
    include: list[str] = field(default_factory=lambda: ["train/", "eval/"])
    exclude: list[str] = field(default_factory=list)
    columns: int = 3
    log_scale: bool = False


@dataclass
class Config:
    kind: Literal["latent-map", "trajectory", "curves"] = "latent-map"
    output_dir: str = "runs/figures"
    name: str | None = None
    formats: list[str] = field(default_factory=lambda: ["png", "svg"])
    dpi: int = 150
    title: str | None = None
    # null: "cuda" when available, else "cpu"
    device: str | None = None
    # sentence / paraphrase / negative JSONL for the latent map and the trajectory's background (null: none)
    pairs: str | None = "data/synthetic/pairs_valid.jsonl"
    max_pairs: int = 200
    latent_map: LatentMapConfig = field(default_factory=LatentMapConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    curves: CurvesConfig = field(default_factory=CurvesConfig)

    @property
    def stem(self) -> str:
        return self.name or self.kind.replace("-", "_")


def _device(cfg: Config) -> str:
    return cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _finite(value: Any) -> Any:
    """JSON-safe numbers: NaN / inf become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_outputs(cfg: Config, figure: Any, numbers: dict[str, Any]) -> list[Path]:
    out = Path(cfg.output_dir)
    paths = save_figure(figure, out, cfg.stem, cfg.formats, cfg.dpi)
    numbers_path = out / f"{cfg.stem}.json"
    numbers_path.write_text(json.dumps(_finite(numbers), indent=2, ensure_ascii=False) + "\n")
    return [*paths, numbers_path]


def run_latent_map(cfg: Config) -> dict[str, Any]:
    if cfg.pairs is None:
        raise UserError("pairs: the latent map needs a sentence/paraphrase/negative JSONL")
    if not cfg.latent_map.autoencoders:
        raise UserError("latent_map.autoencoders: give at least one autoencoder folder")
    pairs = load_pair_texts(cfg.pairs, cfg.max_pairs)
    result = latent_map(
        cfg.latent_map.autoencoders,
        pairs,
        names=cfg.latent_map.labels,
        batch_size=cfg.latent_map.batch_size,
        device=_device(cfg),
        title=cfg.title,
    )
    numbers = result.to_dict()
    files = _write_outputs(cfg, result.figure, numbers)
    print(
        f"latent map: {len(result.panels)} panel(s), {result.panels[0].num_points} points each "
        f"({len(pairs)} sentence/paraphrase/out-of-domain triples from {pairs.source})"
    )
    print("  paraphrase / out-of-domain distance ratio (mean-pooled latents; flattened in brackets):")
    for panel in result.panels:
        s = panel.smoothness
        variance = 100 * float(panel.pca.explained_variance_ratio.sum())
        print(
            f"    {panel.name:<28} {s.ratio:.3f}  ({s.flattened.ratio:.3f})   PC1+PC2: {variance:.1f}% of variance"
        )
    if len(result.panels) > 1:
        best = min(result.panels, key=lambda p: p.smoothness.ratio)
        print(f"  smoothest (lowest ratio): {best.name}")
    print("  files: " + ", ".join(str(p) for p in files))
    return {"files": [str(p) for p in files], **numbers}


def _trajectory_sentence(cfg: TrajectoryConfig) -> tuple[str, str | None]:
    if cfg.text is not None:
        return cfg.text, cfg.source
    if cfg.segmented_file is None:
        raise UserError(
            "trajectory: give trajectory.text or trajectory.segmented_file (a stage-1 <split>.jsonl)"
        )
    text, source = sentence_from_segmented(cfg.segmented_file, cfg.document_index, cfg.segment_index)
    return text, source if cfg.use_source else None


def run_trajectory(cfg: Config) -> dict[str, Any]:
    tcfg = cfg.trajectory
    text, source = _trajectory_sentence(tcfg)
    pipeline = SLDPipeline.from_pretrained(tcfg.pipeline, device=_device(cfg))
    background = None
    if cfg.pairs is not None:
        background = encode_pairs(pipeline.autoencoder, load_pair_texts(cfg.pairs, cfg.max_pairs))
    trajectory = denoising_trajectory(
        pipeline,
        text,
        source=source,
        num_inference_steps=tcfg.num_inference_steps,
        scheduler=tcfg.scheduler,
        guidance_scale=tcfg.guidance_scale,
        decode_at=tcfg.decode_at,
        seed=tcfg.seed,
    )
    result = plot_trajectory(trajectory, background, show_forward=tcfg.show_forward, title=cfg.title)
    numbers = {"pipeline": tcfg.pipeline, "pairs": cfg.pairs, **result.to_dict()}
    files = _write_outputs(cfg, result.figure, numbers)
    conditioning = f"source: {source!r}" if source is not None else "unconditional"
    print(
        f"trajectory: {len(trajectory.reverse)} denoising points ({trajectory.scheduler}, "
        f"{trajectory.num_inference_steps} steps, {conditioning}) over {result.num_background_points} pair points"
    )
    print(f"  input:          {text}")
    print(f"  reconstruction: {trajectory.reconstruction}")
    for point in trajectory.decoded:
        print(f"  noise {point.noise_ratio:4.2f}  x_t: {point.text!r}")
        print(f"              x0_hat: {point.x0_text!r}")
    print("  files: " + ", ".join(str(p) for p in files))
    return {"files": [str(p) for p in files], **numbers}


def run_curves(cfg: Config) -> dict[str, Any]:
    ccfg = cfg.curves
    if not ccfg.runs:
        raise UserError("curves.runs: give at least one run folder")
    if ccfg.labels is not None and len(ccfg.labels) != len(ccfg.runs):
        raise UserError(f"curves.labels: {len(ccfg.labels)} labels for {len(ccfg.runs)} runs")
    labels = ccfg.labels or run_labels(ccfg.runs)
    rows = {label: read_metrics(run) for label, run in zip(labels, ccfg.runs)}
    series = collect_series(rows, ccfg.include, ccfg.exclude)
    figure = plot_curves(series, labels, ccfg.columns, ccfg.log_scale, cfg.title)
    numbers = {
        "runs": dict(zip(labels, ccfg.runs)),
        "metrics": {
            metric: {
                s.run: {
                    "points": len(s.values),
                    "last_step": s.steps[-1],
                    "last": s.values[-1],
                    "min": min(s.values),
                }
                for s in group
            }
            for metric, group in series.items()
        },
    }
    files = _write_outputs(cfg, figure, numbers)
    print(f"curves: {len(series)} panel(s) from {len(labels)} run(s): {', '.join(series)}")
    for label in labels:
        print(f"  {label}: {len(rows[label])} rows")
    print("  files: " + ", ".join(str(p) for p in files))
    return {"files": [str(p) for p in files], **numbers}


def run(cfg: Config) -> dict[str, Any]:
    """Draw the figure of ``cfg.kind``, write it with its numbers, print a summary; returns the numbers."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / f"{cfg.stem}_config.yaml")
    if cfg.kind == "latent-map":
        return run_latent_map(cfg)
    if cfg.kind == "trajectory":
        return run_trajectory(cfg)
    return run_curves(cfg)


class _Parser(argparse.ArgumentParser):
    """``--config`` plus overrides in any order; a bare kind word becomes the override ``kind=<word>``."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = self.parse_intermixed_args(args, namespace)
        kinds = [f"kind={o}" for o in parsed.overrides if o in KINDS]
        # Kind words first, so that an explicit kind=... later on the line still wins.
        parsed.overrides = kinds + [o for o in parsed.overrides if o not in KINDS]
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sld visualize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        help=f"a kind ({', '.join(KINDS)}) and dotted overrides, e.g. output_dir=runs/figures max_pairs=100",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0], parser=build_parser())


if __name__ == "__main__":
    raise SystemExit(main())

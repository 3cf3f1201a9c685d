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
the kind with ``_`` for ``-``, so the three figures can share one folder. The work is
``sld.viz.render.render_figure``; ``Config`` is its ``FigureConfig``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from sld.cli import run_stage
from sld.viz.curves import CurvesResult
from sld.viz.latent_map import LatentMapResult
from sld.viz.render import (
    KINDS,
    CurvesConfig,
    LatentMapConfig,
    RenderedFigure,
    TrajectoryConfig,
    render_figure,
)
from sld.viz.render import FigureConfig as Config
from sld.viz.trajectory import TrajectoryResult

__all__ = ["Config", "CurvesConfig", "LatentMapConfig", "TrajectoryConfig", "main", "run"]


def _print_latent_map(result: LatentMapResult) -> None:
    pairs = result.pairs
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


def _print_trajectory(result: TrajectoryResult) -> None:
    trajectory = result.trajectory
    source = trajectory.source
    conditioning = f"source: {source!r}" if source is not None else "unconditional"
    print(
        f"trajectory: {len(trajectory.reverse)} denoising points ({trajectory.scheduler}, "
        f"{trajectory.num_inference_steps} steps, {conditioning}) over {result.num_background_points} pair points"
    )
    print(f"  input:          {trajectory.text}")
    print(f"  reconstruction: {trajectory.reconstruction}")
    for point in trajectory.decoded:
        print(f"  noise {point.noise_ratio:4.2f}  x_t: {point.text!r}")
        print(f"              x0_hat: {point.x0_text!r}")


def _print_curves(result: CurvesResult) -> None:
    print(f"curves: {len(result.series)} panel(s) from {len(result.rows)} run(s): {', '.join(result.series)}")
    for label, rows in result.rows.items():
        print(f"  {label}: {len(rows)} rows")


def run(cfg: Config) -> dict[str, Any]:
    """Draw the figure of ``cfg.kind``, write it with its numbers, print a summary; returns the numbers."""
    rendered: RenderedFigure = render_figure(cfg)
    if isinstance(rendered.result, LatentMapResult):
        _print_latent_map(rendered.result)
    elif isinstance(rendered.result, TrajectoryResult):
        _print_trajectory(rendered.result)
    else:
        _print_curves(rendered.result)
    print("  files: " + ", ".join(str(p) for p in rendered.files))
    return {"files": [str(p) for p in rendered.files], **rendered.numbers}


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

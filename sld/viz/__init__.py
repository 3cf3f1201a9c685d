"""Figures of the SLD paper for this project's models (method.md): latent maps, denoising trajectories,
training curves.

Every plotting function returns a ``matplotlib.figure.Figure`` on an Agg canvas (no pyplot), plus
the numbers behind it, so callers and tests can inspect panels and points; ``save_figure`` writes
PNG / SVG. ``sld.viz.render.render_figure`` draws and writes one figure from a config; the command
line is ``sld visualize {latent-map,trajectory,curves}`` (stages/visualize.py).
"""

from sld.viz.curves import (
    CurvesResult,
    Series,
    collect_series,
    curves_figure,
    plot_curves,
    read_metrics,
    run_labels,
)
from sld.viz.figures import new_figure, save_figure
from sld.viz.latent_map import (
    LatentMapResult,
    LatentPanel,
    PairLatents,
    PairTexts,
    Smoothness,
    autoencoder_label,
    encode_pairs,
    latent_map,
    latent_panel,
    load_pair_texts,
    plot_latent_map,
    smoothness,
)
from sld.viz.projection import PCA, fit_pca
from sld.viz.trajectory import (
    DEFAULT_DECODE_AT,
    Trajectory,
    TrajectoryResult,
    denoising_trajectory,
    plot_trajectory,
    sentence_from_segmented,
)

__all__ = [
    "DEFAULT_DECODE_AT",
    "CurvesResult",
    "PCA",
    "LatentMapResult",
    "LatentPanel",
    "PairLatents",
    "PairTexts",
    "Series",
    "Smoothness",
    "Trajectory",
    "TrajectoryResult",
    "autoencoder_label",
    "collect_series",
    "curves_figure",
    "denoising_trajectory",
    "encode_pairs",
    "fit_pca",
    "latent_map",
    "latent_panel",
    "load_pair_texts",
    "new_figure",
    "plot_curves",
    "plot_latent_map",
    "plot_trajectory",
    "read_metrics",
    "run_labels",
    "save_figure",
    "sentence_from_segmented",
    "smoothness",
]

"""The figures of ``sld visualize`` from one config: draw, then write image, numbers and config.

``render_figure(FigureConfig(kind=...))`` draws one of

* ``latent-map``: one panel per autoencoder folder (``sld.viz.latent_map``);
* ``trajectory``: a sentence noised and denoised by a trained pipeline over the latent map of
  ``pairs`` (``sld.viz.trajectory``);
* ``curves``: the ``train/*`` and ``eval/*`` metrics of run folders (``sld.viz.curves``);

and writes ``<name>.png`` / ``.svg`` (``formats``), ``<name>.json`` (the numbers behind the figure)
and ``<name>_config.yaml`` (the resolved config) into ``output_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sld.config import save_config
from sld.diffusion.sampling import SchedulerName
from sld.errors import UserError
from sld.loading import default_device, load_model
from sld.viz.curves import CurvesResult, curves_figure
from sld.viz.figures import save_figure, save_numbers
from sld.viz.latent_map import LatentMapResult, encode_pairs, latent_map, load_pair_texts
from sld.viz.trajectory import (
    DEFAULT_DECODE_AT,
    TrajectoryResult,
    denoising_trajectory,
    plot_trajectory,
    sentence_from_segmented,
)

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

    def sentence(self) -> tuple[str, str | None]:
        """The sentence to trace and the source it is conditioned on (None: unconditional)."""
        if self.text is not None:
            return self.text, self.source
        if self.segmented_file is None:
            raise UserError(
                "trajectory: give trajectory.text or trajectory.segmented_file (a stage-1 <split>.jsonl)"
            )
        text, source = sentence_from_segmented(self.segmented_file, self.document_index, self.segment_index)
        return text, source if self.use_source else None


@dataclass
class CurvesConfig:
    """Run folders (or metrics.jsonl files) to overlay; ``include`` are key prefixes, ``exclude`` exact keys."""

    runs: list[str] = field(default_factory=lambda: list(ABLATION_RUNS))
    labels: list[str] | None = None
    include: list[str] = field(default_factory=lambda: ["train/", "eval/"])
    exclude: list[str] = field(default_factory=list)
    columns: int = 3
    log_scale: bool = False
    x: Literal["step", "minutes"] = "step"


@dataclass
class FigureConfig:
    """One figure of ``sld visualize``: its kind, where it goes, and each kind's settings."""

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


@dataclass
class RenderedFigure:
    """A drawn figure: the files written, the numbers saved with it, and the kind's own result."""

    files: list[Path]
    numbers: dict[str, Any]
    result: LatentMapResult | TrajectoryResult | CurvesResult


def draw_latent_map(cfg: FigureConfig) -> tuple[LatentMapResult, dict[str, Any]]:
    """The latent map of ``cfg.latent_map.autoencoders`` over ``cfg.pairs`` and its numbers."""
    if cfg.pairs is None:
        raise UserError("pairs: the latent map needs a sentence/paraphrase/negative JSONL")
    if not cfg.latent_map.autoencoders:
        raise UserError("latent_map.autoencoders: give at least one autoencoder folder")
    result = latent_map(
        cfg.latent_map.autoencoders,
        load_pair_texts(cfg.pairs, cfg.max_pairs),
        names=cfg.latent_map.labels,
        batch_size=cfg.latent_map.batch_size,
        device=default_device(cfg.device),
        title=cfg.title,
    )
    return result, result.to_dict()


def draw_trajectory(cfg: FigureConfig) -> tuple[TrajectoryResult, dict[str, Any]]:
    """The denoising trajectory of ``cfg.trajectory`` over the latent map of ``cfg.pairs`` (if any)."""
    tcfg = cfg.trajectory
    text, source = tcfg.sentence()
    pipeline = load_model(tcfg.pipeline, cfg.device, kinds=("pipeline",), what="trajectory.pipeline")
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
    return result, {"pipeline": tcfg.pipeline, "pairs": cfg.pairs, **result.to_dict()}


def draw_curves(cfg: FigureConfig) -> tuple[CurvesResult, dict[str, Any]]:
    """The training curves of ``cfg.curves.runs`` and their numbers."""
    c = cfg.curves
    result = curves_figure(c.runs, c.labels, c.include, c.exclude, c.columns, c.log_scale, cfg.title, c.x)
    return result, result.to_dict()


def render_figure(cfg: FigureConfig) -> RenderedFigure:
    """Draw the figure of ``cfg.kind`` and write it, its numbers and its config into ``cfg.output_dir``."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / f"{cfg.stem}_config.yaml")
    draw = {"latent-map": draw_latent_map, "trajectory": draw_trajectory, "curves": draw_curves}[cfg.kind]
    result, numbers = draw(cfg)
    files = [
        *save_figure(result.figure, out, cfg.stem, cfg.formats, cfg.dpi),
        save_numbers(numbers, out, cfg.stem),
    ]
    return RenderedFigure(files, numbers, result)

"""The quickstart as a library call: every stage on the synthetic corpus, on CPU, then generation.

``run_quickstart(QuickstartConfig(...), echo=print)``:

1. writes the seeded synthetic corpus (``sld.data.synthetic.write_corpus``);
2. segments the stories (title -> story) and the dialogue summaries (dialogue -> summary) with
   ``sld.data.segment_corpus.segment_corpus``;
3. trains one segment autoencoder on the segments of both (``sld.autoencoder_trainer``);
4. trains one SegmentDiT on both tasks (``sld.diffusion.trainer``; the source tells them apart);
5. generates ``num_scored.<task>`` validation stories and summaries (``predictions_<task>.jsonl``), shows
   ``num_examples`` of each next to their inputs and references, and scores how well they keep to
   their input's topic (``sld.eval.topic_agreement``).

Every stage's folder is kept under ``output_dir``; ``quickstart_summary.json`` holds the minutes, the
folders and the topic agreement. Progress, each stage's summary and the examples go to ``echo``
line by line (``print`` for ``sld quickstart``). The default sizes and budgets below are the ones
tuned for 2 CPU cores; any nested key can be overridden.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sld.autoencoder_objective import AutoencoderLossConfig
from sld.autoencoder_trainer import AutoencoderDataConfig, AutoencoderTrainingConfig, train_autoencoder
from sld.config import save_config
from sld.data.records import RecordsConfig, write_jsonl
from sld.data.segment import SegmenterConfig
from sld.data.segment_corpus import SegmentCorpusConfig, segment_corpus
from sld.data.synthetic import SyntheticCorpusConfig, corpus_lines, write_corpus
from sld.diffusion.objective import DiffusionConfig
from sld.diffusion.trainer import (
    DenoiserConfig,
    DiffusionDataConfig,
    DiffusionTrainingConfig,
    train_diffusion,
)
from sld.eval.topic_agreement import format_topic_scores, score_topics
from sld.generation import generate_texts, prediction_rows, read_generation_inputs
from sld.loading import load_model
from sld.models.autoencoder import AutoencoderConfig
from sld.pipeline import SamplingConfig
from sld.training import LoopConfig, OptimConfig

SUMMARY_FILE = "quickstart_summary.json"
# task folder name -> records.task of its stage-1 folder
TASKS = {"stories": "title_to_story", "dialogues": "dialogue_summary"}


def quick_corpus() -> SyntheticCorpusConfig:
    """Smaller than ``sld synthetic``'s default: every document is encoded to latents (and every
    source by the context encoder) once, which costs minutes on a CPU."""
    return SyntheticCorpusConfig(stories_train=2000, dialogues_train=1000)


def quick_autoencoder() -> AutoencoderTrainingConfig:
    """A small autoencoder that learns the synthetic corpus on 2 CPU cores in a few minutes."""
    return AutoencoderTrainingConfig(
        model=AutoencoderConfig(
            decoder_config={
                "d_model": 256,
                "num_decoder_layers": 3,
                "num_heads": 4,
                "d_ff": 1024,
                "d_kv": 64,
                "dropout_rate": 0.0,
            },
            decoder_vocab_size=4000,
            num_latents=8,
            latent_dim=32,
            compressor_layers=2,
            reconstructor_layers=2,
            max_segment_tokens=40,
            # No dropout: drawing its random masks took a tenth of a CPU step, and over 7 minutes (1.3-1.5
            # passes over the rows) it learnt less per step too: 696 steps and BLEU 90.06 against 595
            # and 79.56 with the default 0.1 (docs/results.md, twentieth session; the 12-minute
            # configs/autoencoder_synthetic.yaml gained nothing from it and keeps it; without it the
            # ROC autoencoder on a GPU lost half its validation BLEU: twenty-first session).
            dropout=0.0,
        ),
        # The frozen MiniLM's states of every training text encoded once (27 s for 7,430 texts), not
        # every step: 1.46x the segments a second over steps 100-800, the 1,000 steps in 5.5 of the 7
        # minutes, the same validation BLEU (92.69 both; docs/results.md, twenty-fourth session). The
        # fourth session's quickstart left it off: its 446 steps then paid back less than the build.
        data=AutoencoderDataConfig(num_valid_segments=200, cache_encoder_states=True),
        # The adversarial term on a quarter of each batch's rows: 862 steps in the 7 minutes against
        # 658, validation BLEU 91.62 against 88.03 (docs/results.md, twenty-second session); those
        # rows decoded apart, so that the backward for the direction runs over them alone: 1,000 steps
        # in 293.2 s against 334.9 s, BLEU 92.57 against 92.69 (twenty-fourth session).
        losses=AutoencoderLossConfig(adversarial_fraction=0.25, adversarial_rows_apart=True),
        # The decay spans the steps the 7 minutes allow (optim.decay_over=budget): on a 2-core machine
        # that made about 600 of the 1,000 steps it ended at validation BLEU 88.45 and 88.15 (two runs),
        # against 78.24 with the decay over the 1,000 steps (docs/results.md, thirty-third session).
        optim=OptimConfig(lr=1e-3, warmup_steps=100, decay_over="budget"),
        # Batch 32 rather than 64: on 2 cores it reached BLEU 52 in 6 minutes where batch 64 reached 32.
        # The autoencoder's fidelity is what keeps stories on their title's topic. 7 minutes: with
        # the faster training loop of 2026-12 it reaches BLEU 72.2 (474 steps), what 8 minutes gave
        # before (72.6), and the whole quickstart fits in 15 minutes (docs/results.md). 1,000 steps at
        # most (a fast machine stops there): BLEU 87.17 after 895 steps with the decay over 1,000, against
        # 83.21 after 899 over 3,000 steps, whose rate was still at 82% of its peak (2026-12-04).
        loop=LoopConfig(
            max_steps=1000, max_minutes=7.0, batch_size=32, log_every=25, eval_every=100, save_every=250
        ),
    )


def quick_diffusion() -> DiffusionTrainingConfig:
    """A 6.5M-parameter SegmentDiT; sources encoded once (``cache_context``), no samples of its own
    (step 5 generates and scores more validation inputs)."""
    return DiffusionTrainingConfig(
        data=DiffusionDataConfig(num_valid_documents=32),
        denoiser=DenoiserConfig(width=256, depth=4, heads=4),
        # Batch 32 at lr 1e-3: validation loss 0.32 after 4 minutes on 2 cores, against 0.55 at 64 / 5e-4.
        # 5 minutes: 529 steps (validation loss 0.24) on 2026-12-02, as many as 6 minutes gave before.
        # Over 5,000 steps the rate is still near its peak when the budget ends (fit says so), yet
        # decaying over 1,000 did worse: validation loss 0.2465 against 0.2386 (2026-12-04, one run each).
        # 4.75 minutes since the thirty-fifth session: without self-conditioning (below) a step costs
        # less, and on the slow 2-core machine of that session the quickstart took 15.1 minutes with 5.
        optim=OptimConfig(lr=1e-3, warmup_steps=100),
        loop=LoopConfig(
            max_steps=5000, max_minutes=4.75, batch_size=32, log_every=25, eval_every=100, save_every=250
        ),
        # No self-conditioning (a denoiser without that input): on one quickstart's autoencoder, 317
        # steps in 5 minutes against 248, validation loss 0.435 against 0.544, 16-17% of generated
        # story sentences repeating an earlier one against 26%, the same topic agreement (0.756 against
        # 0.751, two seeds; docs/results.md, thirty-fifth session). The GPU configs keep the paper's 0.5.
        diffusion=DiffusionConfig(self_conditioning_prob=0.0),
        ema_decay=0.995,
        cache_context=True,
        sample_every=0,
        final_samples=False,
        # guidance 4: on one quickstart model, `sld generate guidance_scale=G limit=64` on the validation
        # stories scored (score_topics) 0.66 at G=4 against 0.61 at 2 and 0.36 at 1. 10 DPM-Solver++
        # steps: on a quickstart's model, 256 stories scored 0.77 / 0.76 (two seeds) in 46.0 / 43.6 s
        # against 0.75 / 0.76 in 110.3 / 107.0 s at 25 steps, the 64 summaries 0.93 / 0.91 against
        # 0.92 / 0.91 (docs/results.md, thirty-fourth session)
        sampling=SamplingConfig(num_inference_steps=10, guidance_scale=4.0),
    )


@dataclass
class ScoredInputs:
    """Validation inputs generated and scored per task. 256 stories: one 64-story figure moved by
    +-0.05 between runs of equal models (docs/results.md, 2026-12-04), and 256 cost about 30 s more
    than 64 on 2 cores; the dialogues' summaries score about 1.0 at 64 already."""

    stories: int = 256
    dialogues: int = 64


@dataclass
class QuickstartConfig:
    """``sld quickstart``: where everything goes, the seed of every stage, how many generated
    documents are shown and scored, and the settings of the corpus and the two trainings (their
    output and input folders are set by the quickstart)."""

    output_dir: str = "runs/quickstart"
    seed: int = 0
    num_examples: int = 4
    num_scored: ScoredInputs = field(default_factory=ScoredInputs)
    corpus: SyntheticCorpusConfig = field(default_factory=quick_corpus)
    autoencoder: AutoencoderTrainingConfig = field(default_factory=quick_autoencoder)
    diffusion: DiffusionTrainingConfig = field(default_factory=quick_diffusion)


@dataclass
class QuickstartResult:
    """The examples shown per task (prediction rows), the topic agreement per task and the summary
    written to ``quickstart_summary.json``."""

    shown: dict[str, list[dict[str, Any]]]
    topic_agreement: dict[str, dict[str, Any]]
    summary: dict[str, Any]


def _show(lines: list[str], echo: Callable[[str], None]) -> None:
    for line in lines:
        echo(line)


def _example_lines(name: str, row: dict[str, Any]) -> str:
    source = row["source"] if len(row["source"]) < 300 else row["source"][:300] + " ..."
    return f"\n[{name} input]  {source}\n[generated]    {row['prediction']}\n[reference]    {row.get('reference', '')}"


def _train(
    cfg: QuickstartConfig, root: Path, echo: Callable[[str], None]
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Steps 1-4: corpus, segmentation, autoencoder, diffusion; return the corpus files and the
    stage-1 folders (task name -> folder)."""
    echo("== 1/5 synthetic corpus")
    corpus = cfg.corpus
    corpus.output_dir, corpus.seed = str(root / "data"), cfg.seed
    files = write_corpus(corpus)
    _show(corpus_lines(corpus, files), echo)

    echo("== 2/5 segmentation")
    segmented = {name: root / f"segmented_{name}" for name in TASKS}
    for name, task in TASKS.items():
        seg_cfg = SegmentCorpusConfig(
            splits={"train": str(files[f"{name}_train"]), "valid": str(files[f"{name}_valid"])},
            output_dir=str(segmented[name]),
            records=RecordsConfig(task=task),
            segmenter=SegmenterConfig(kind="sentence", max_segments=cfg.diffusion.max_segments),
        )
        _show(segment_corpus(seg_cfg).summary_lines(), echo)

    echo("== 3/5 autoencoder")
    ae = cfg.autoencoder
    ae.output_dir = str(root / "autoencoder")
    ae.data.segmented_dir = str(segmented["stories"])
    ae.data.extra_segmented_dirs = [str(segmented["dialogues"])]
    ae.data.pairs_train = str(files["pairs_train"])
    ae.loop.seed = cfg.seed
    # its encoder states stay in memory: the diffusion stage's training latents read them (about 30 s
    # of MiniLM on 2 cores)
    trained_ae = train_autoencoder(ae, keep_encoder_states=True)
    _show(trained_ae.summary_lines(), echo)

    echo("== 4/5 diffusion")
    dm = cfg.diffusion
    dm.output_dir = str(root / "diffusion")
    dm.autoencoder = ae.output_dir
    dm.data.segmented_dir = str(segmented["stories"])
    dm.data.extra_segmented_dirs = [str(segmented["dialogues"])]
    dm.loop.seed = cfg.seed
    _show(train_diffusion(dm, encoder_states=trained_ae.encoder_states).summary_lines(), echo)
    return files, segmented


def run_quickstart(cfg: QuickstartConfig, echo: Callable[[str], None] = print) -> QuickstartResult:
    """Run the five steps into ``cfg.output_dir`` (the configs' folders and seeds are set here)."""
    started = time.perf_counter()
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    files, segmented = _train(cfg, root, echo)

    echo("== 5/5 generation")
    pipe = load_model(cfg.diffusion.output_dir, kinds=("pipeline",))
    shown, agreement = {}, {}
    for name in TASKS:
        limit = max(cfg.num_examples, getattr(cfg.num_scored, name))
        inputs = read_generation_inputs(segmented[name] / "valid.jsonl", limit=limit)
        generated = generate_texts(pipe, [item.source for item in inputs], seed=cfg.seed, progress=True)
        rows = prediction_rows(inputs, generated)
        write_jsonl(root / f"predictions_{name}.jsonl", rows)
        shown[name] = rows[: cfg.num_examples]
        for row in shown[name]:
            echo(_example_lines(name, row))
        topic_files = [files[f"{name}_train"], files[f"{name}_valid"]]
        agreement[name] = score_topics(rows, topic_files, segmented[name])
    echo(
        "\ntopic agreement: share of generated sentences whose nearest training sentence has the input's topic"
    )
    for name, scores in agreement.items():
        echo(f"  {name:9s} " + format_topic_scores(scores))
    minutes = (time.perf_counter() - started) / 60
    pipeline_dir = cfg.diffusion.output_dir
    summary = {
        "minutes": round(minutes, 1),
        "folders": {"autoencoder": cfg.autoencoder.output_dir, "pipeline": pipeline_dir},
        "topic_agreement": agreement,
    }
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    echo(f"\nquickstart finished in {minutes:.1f} min; pipeline folder: {pipeline_dir}")
    echo(f"try: sld generate model={pipeline_dir} texts='[\"The Lost Dog\"]'")
    return QuickstartResult(shown, agreement, summary)


__all__ = [
    "QuickstartConfig",
    "QuickstartResult",
    "ScoredInputs",
    "quick_autoencoder",
    "quick_corpus",
    "quick_diffusion",
    "run_quickstart",
]

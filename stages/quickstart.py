"""Quickstart: all three stages on the embedded synthetic corpus, on CPU, then generated examples.

    sld quickstart                              # everything into runs/quickstart
    sld quickstart output_dir=/tmp/qs autoencoder.loop.max_minutes=2

1. writes the seeded synthetic corpus (titled stories, paraphrase pairs, dialogues) with our own code;
2. segments the stories (title -> story) and the dialogue summaries (dialogue -> summary);
3. trains one segment autoencoder on the segments of both;
4. trains one SegmentDiT on both tasks (the source text tells them apart);
5. generates ``num_scored`` validation stories and summaries, prints ``num_examples`` of each next
   to their inputs and references, and measures how well they keep to their input's topic
   (:mod:`sld.eval.topic_agreement`: each generated sentence is matched to its nearest training
   sentence, whose topic label should be the input's; the references and chance are printed too).

Every stage's folder is kept under ``output_dir`` and can be reused with the ``sld`` commands.
Each training stage stops at its ``loop.max_minutes`` budget (8 + 6 by default, or ``max_steps``),
whichever comes first; with encoding and generation the whole run takes about 17 minutes on 2 CPU
cores. The corpus size is ``corpus.*`` (see ``sld synthetic``). Any nested key can be overridden
(``autoencoder.loop.max_minutes=2``); the rest of the quickstart's settings stay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sld.cli import run_stage
from sld.config import save_config
from sld.data.records import RecordsConfig, write_jsonl
from sld.data.segment import SegmenterConfig
from sld.eval.topic_agreement import format_topic_scores, score_topics
from sld.generation import generate_texts, prediction_rows, read_generation_inputs
from sld.loading import load_model
from sld.models.autoencoder import AutoencoderConfig
from sld.training import LoopConfig, OptimConfig
from stages import segment as segment_stage
from stages import synthetic as synthetic_stage
from stages import train_autoencoder, train_diffusion


def _quick_corpus() -> synthetic_stage.Config:
    """Smaller than ``sld synthetic``'s default: every document is encoded to latents (and every
    source by the context encoder) once, which costs minutes on a CPU."""
    return synthetic_stage.Config(stories_train=2000, dialogues_train=1000)


def _quick_autoencoder() -> train_autoencoder.Config:
    """A small autoencoder that learns the synthetic corpus on 2 CPU cores in a few minutes."""
    return train_autoencoder.Config(
        model=AutoencoderConfig(
            decoder_config={
                "d_model": 256,
                "num_decoder_layers": 3,
                "num_heads": 4,
                "d_ff": 1024,
                "d_kv": 64,
            },
            decoder_vocab_size=4000,
            num_latents=8,
            latent_dim=32,
            compressor_layers=2,
            reconstructor_layers=2,
            max_segment_tokens=40,
        ),
        data=train_autoencoder.AutoencoderDataConfig(num_valid_segments=200),
        optim=OptimConfig(lr=1e-3, warmup_steps=100),
        # Batch 32 rather than 64: on 2 cores it reached BLEU 52 in 6 minutes where batch 64 reached 32.
        # 8 minutes rather than 6: BLEU 68.5 instead of 52, and the autoencoder's fidelity is what
        # kept stories on their title's topic (round trip of true sentences: 73% at 6 minutes).
        loop=LoopConfig(
            max_steps=3000, max_minutes=8.0, batch_size=32, log_every=25, eval_every=100, save_every=250
        ),
    )


def _quick_diffusion() -> train_diffusion.Config:
    """A 6.5M-parameter SegmentDiT; sources encoded once (``cache_context``), samples only at the end."""
    return train_diffusion.Config(
        data=train_diffusion.DiffusionDataConfig(num_valid_documents=32),
        denoiser=train_diffusion.DenoiserConfig(width=256, depth=4, heads=4),
        # Batch 32 at lr 1e-3: validation loss 0.32 after 4 minutes on 2 cores, against 0.55 at 64 / 5e-4.
        optim=OptimConfig(lr=1e-3, warmup_steps=100),
        loop=LoopConfig(
            max_steps=5000, max_minutes=6.0, batch_size=32, log_every=25, eval_every=100, save_every=250
        ),
        ema_decay=0.995,
        cache_context=True,
        sample_every=0,
        # guidance 4: on one quickstart model, `sld generate guidance_scale=G limit=64` on the validation
        # stories scored (score_topics) 0.66 at G=4 against 0.61 at 2 and 0.36 at 1
        sampling=train_diffusion.SamplingConfig(num_inference_steps=25, guidance_scale=4.0),
    )


@dataclass
class Config:
    output_dir: str = "runs/quickstart"
    seed: int = 0
    num_examples: int = 4
    num_scored: int = 64
    corpus: synthetic_stage.Config = field(default_factory=_quick_corpus)
    autoencoder: train_autoencoder.Config = field(default_factory=_quick_autoencoder)
    diffusion: train_diffusion.Config = field(default_factory=_quick_diffusion)


def run(cfg: Config) -> dict:
    started = time.perf_counter()
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")

    print("== 1/5 synthetic corpus")
    corpus = cfg.corpus
    corpus.output_dir, corpus.seed = str(root / "data"), cfg.seed
    files = synthetic_stage.run(corpus)

    print("== 2/5 segmentation")
    segmented = {name: root / f"segmented_{name}" for name in ("stories", "dialogues")}
    for name, task in (("stories", "title_to_story"), ("dialogues", "dialogue_summary")):
        segment_stage.run(
            segment_stage.Config(
                splits={"train": str(files[f"{name}_train"]), "valid": str(files[f"{name}_valid"])},
                output_dir=str(segmented[name]),
                records=RecordsConfig(task=task),
                segmenter=SegmenterConfig(kind="sentence", max_segments=cfg.diffusion.max_segments),
            )
        )

    print("== 3/5 autoencoder")
    ae = cfg.autoencoder
    ae.output_dir = str(root / "autoencoder")
    ae.data.segmented_dir = str(segmented["stories"])
    ae.data.extra_segmented_dirs = [str(segmented["dialogues"])]
    ae.data.pairs_train = str(files["pairs_train"])
    ae.loop.seed = cfg.seed
    train_autoencoder.run(ae)

    print("== 4/5 diffusion")
    dm = cfg.diffusion
    dm.output_dir = str(root / "diffusion")
    dm.autoencoder = ae.output_dir
    dm.data.segmented_dir = str(segmented["stories"])
    dm.data.extra_segmented_dirs = [str(segmented["dialogues"])]
    dm.loop.seed = cfg.seed
    train_diffusion.run(dm)

    print("== 5/5 generation")
    pipe = load_model(dm.output_dir, kinds=("pipeline",))
    shown, agreement = {}, {}
    for name in ("stories", "dialogues"):
        limit = max(cfg.num_examples, cfg.num_scored)
        inputs = read_generation_inputs(segmented[name] / "valid.jsonl", limit=limit)
        generated = generate_texts(pipe, [item.source for item in inputs], seed=cfg.seed, progress=True)
        rows = prediction_rows(inputs, generated)
        write_jsonl(root / f"predictions_{name}.jsonl", rows)
        shown[name] = rows[: cfg.num_examples]
        for row in shown[name]:
            source = row["source"] if len(row["source"]) < 300 else row["source"][:300] + " ..."
            print(
                f"\n[{name} input]  {source}\n[generated]    {row['prediction']}\n[reference]    {row.get('reference', '')}"
            )
        topic_files = [files[f"{name}_train"], files[f"{name}_valid"]]
        agreement[name] = score_topics(rows, topic_files, segmented[name])
    print(
        "\ntopic agreement: share of generated sentences whose nearest training sentence has the input's topic"
    )
    for name, scores in agreement.items():
        print(f"  {name:9s} " + format_topic_scores(scores))
    minutes = (time.perf_counter() - started) / 60
    summary = {
        "minutes": round(minutes, 1),
        "folders": {"autoencoder": ae.output_dir, "pipeline": dm.output_dir},
        "topic_agreement": agreement,
    }
    (root / "quickstart_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nquickstart finished in {minutes:.1f} min; pipeline folder: {dm.output_dir}")
    print(f"try: sld generate model={dm.output_dir} texts='[\"The Lost Dog\"]'")
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

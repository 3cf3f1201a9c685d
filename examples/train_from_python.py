"""Train the three stages from Python instead of the command line, then generate.

Each stage is one library call on a config dataclass (the same ones the ``sld`` commands load):
``sld.data.segment_corpus.segment_corpus(SegmentCorpusConfig(...))`` writes stage 1,
``sld.autoencoder_trainer.train_autoencoder(AutoencoderTrainingConfig(...))`` stage 2 and
``sld.diffusion.trainer.train_diffusion(DiffusionTrainingConfig(...))`` stage 3. YAML recipes load
into the same dataclasses with ``sld.config.load_config`` (unknown keys are errors), and plain
attribute assignment changes them. The folders are the ones the ``sld`` commands write.

    python examples/train_from_python.py                      # synthetic corpus, configs/*_synthetic.yaml
    python examples/train_from_python.py --out /tmp/sld --autoencoder-config configs/autoencoder_tiny.yaml \
        --diffusion-config configs/diffusion_tiny.yaml --stories 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sld import SLDPipeline
from sld.autoencoder_trainer import AutoencoderTrainingConfig, train_autoencoder
from sld.config import load_config
from sld.data.records import RecordsConfig
from sld.data.segment import SegmenterConfig
from sld.data.segment_corpus import SegmentCorpusConfig, segment_corpus
from sld.data.synthetic import write_synthetic_corpus
from sld.diffusion.trainer import DiffusionTrainingConfig, train_diffusion


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="runs/from_python", help="folder for the corpus and all three stages"
    )
    parser.add_argument("--autoencoder-config", default="configs/autoencoder_synthetic.yaml")
    parser.add_argument("--diffusion-config", default="configs/diffusion_synthetic.yaml")
    parser.add_argument("--stories", type=int, default=2000, help="synthetic training stories")
    args = parser.parse_args(argv)
    out = Path(args.out)

    # The corpus: seeded synthetic stories (title -> story) and paraphrase pairs of their sentences.
    sizes = dict(stories_train=args.stories, stories_valid=20, pairs_train=args.stories // 4, pairs_valid=20)
    files = write_synthetic_corpus(out / "data", seed=0, **sizes)

    # Stage 1: stories -> sentences.
    segmented = out / "segmented"
    segment_corpus(
        SegmentCorpusConfig(
            splits={"train": str(files["stories_train"]), "valid": str(files["stories_valid"])},
            output_dir=str(segmented),
            records=RecordsConfig(task="title_to_story"),
            segmenter=SegmenterConfig(kind="sentence", max_segments=5),
        )
    )

    # Stage 2: the segment autoencoder, from a YAML recipe plus dotted overrides.
    autoencoder = load_config(
        AutoencoderTrainingConfig,
        args.autoencoder_config,
        [f"output_dir={out / 'autoencoder'}", f"data.segmented_dir={segmented}"],
    )
    autoencoder.data.pairs_train = str(files["pairs_train"])
    print("\n".join(train_autoencoder(autoencoder).summary_lines()))

    # Stage 3: the denoiser on the autoencoder's latents; the result is an SLDPipeline folder.
    diffusion = load_config(DiffusionTrainingConfig, args.diffusion_config)
    diffusion.output_dir = str(out / "diffusion")
    diffusion.autoencoder = autoencoder.output_dir
    diffusion.data.segmented_dir = str(segmented)
    trained = train_diffusion(diffusion)
    print(f"pipeline: {trained.output_dir} ({trained.summary['steps']} steps)")

    pipe = SLDPipeline.from_pretrained(trained.output_dir)
    print(pipe(["The Lost Dog"], seed=0).texts[0])
    return trained.output_dir


if __name__ == "__main__":
    main()

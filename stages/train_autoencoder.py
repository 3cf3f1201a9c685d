"""Stage 2: train the segment autoencoder (compression + contrastive + adversarial).

    sld train-autoencoder -c configs/autoencoder_synthetic.yaml
    accelerate launch -m stages.train_autoencoder -c configs/autoencoder_roc.yaml data.segmented_dir=...

Reads the stage-1 folder, trains a ``SegmentAutoencoder`` with the shared Accelerate loop and writes
a ``from_pretrained`` folder that stage 3 opens by path. Validation reconstructs held-out segments
greedily and reports corpus BLEU (sacrebleu) and the exact-match rate.

The work is ``sld.autoencoder_trainer.train_autoencoder``; ``Config`` is its
``AutoencoderTrainingConfig``, so this file only parses the command line and prints the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sld.autoencoder_trainer import AutoencoderDataConfig, ReconstructionEvalConfig, train_autoencoder
from sld.autoencoder_trainer import AutoencoderTrainingConfig as Config
from sld.cli import print_summary, run_stage

__all__ = ["AutoencoderDataConfig", "Config", "ReconstructionEvalConfig", "main", "run"]


def run(cfg: Config) -> Path:
    """Train into ``cfg.output_dir``; print where the autoencoder went and its summary."""
    return print_summary(train_autoencoder(cfg)).output_dir


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

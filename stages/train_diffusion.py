"""Stage 3: train the segment-level latent diffusion model (SegmentDiT) and save an SLDPipeline.

    sld train-diffusion -c configs/diffusion_synthetic.yaml
    accelerate launch -m stages.train_diffusion -c configs/diffusion_roc_continuation.yaml ...

Reads the stage-1 folder and the stage-2 autoencoder folder. The frozen autoencoder maps every
document's segments to a (S, N, D) latent block once (cached in the run folder); the frozen context
encoder maps each source text to the states the denoiser cross-attends to. Validation reports the
diffusion loss on held-out documents at fixed noise (so it is comparable across steps), and writes
generated samples with ROUGE-L, distinct-2 and the segment-count accuracy to ``samples/``. The
output folder (EMA weights) is an ``SLDPipeline.from_pretrained`` folder.

The work is ``sld.diffusion.trainer.train_diffusion``; ``Config`` is its
``DiffusionTrainingConfig``, so this file only parses the command line and prints the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sld.cli import print_summary, run_stage
from sld.diffusion.trainer import DenoiserConfig, DiffusionDataConfig, train_diffusion
from sld.diffusion.trainer import DiffusionTrainingConfig as Config
from sld.pipeline import SamplingConfig

__all__ = ["Config", "DenoiserConfig", "DiffusionDataConfig", "SamplingConfig", "main", "run"]


def run(cfg: Config) -> Path:
    """Train into ``cfg.output_dir``; print where the pipeline went and every validation."""
    return print_summary(train_diffusion(cfg)).output_dir


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

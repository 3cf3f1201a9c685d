"""Train the autoregressive baseline (same encoder, decoder size and tokenizer recipe as SLD).

    sld train-baseline -c configs/baseline_synthetic.yaml
    sld train-baseline -c configs/baseline_dialogsum.yaml match_autoencoder=runs/dialogsum/autoencoder
    accelerate launch -m stages.train_baseline -c configs/baseline_roc_continuation.yaml loop.max_minutes=60

Reads the same stage-1 folder as stage 3: each document's ``source`` is the input and its
``segments`` joined with spaces are the target, written token by token. Training uses the shared
Accelerate loop (accumulation, clipping, warmup + cosine, checkpoints, resume); ``loop.max_minutes``
caps the wall time so that the baseline can get the same compute budget as SLD. Validation
generates held-out documents and reports ROUGE-L, distinct-2 and the number of distinct outputs
(``samples/step_<n>.jsonl``). The output folder is a ``BaselineModel.from_pretrained`` folder that
``sld generate model=...`` and ``sld benchmark`` open.

The work is ``sld.baseline_trainer.train_baseline``; ``Config`` is its ``BaselineTrainingConfig``,
so this file only parses the command line and prints the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sld.baseline_trainer import BaselineDataConfig, BaselineEvalConfig, train_baseline
from sld.baseline_trainer import BaselineTrainingConfig as Config
from sld.cli import print_summary, run_stage

__all__ = ["BaselineDataConfig", "BaselineEvalConfig", "Config", "main", "run"]


def run(cfg: Config) -> Path:
    """Train into ``cfg.output_dir``; print where the baseline went and every validation."""
    return print_summary(train_baseline(cfg)).output_dir


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

"""Write the seeded synthetic corpus (stories, paraphrase pairs, dialogues) used by the quickstart.

``sld synthetic output_dir=data/synthetic seed=0`` writes ``stories_{train,valid}.jsonl``,
``pairs_{train,valid}.jsonl`` and ``dialogues_{train,valid}.jsonl`` (the field names of the real
ROCStories / DialogSum files, so the same configs read both) plus ``config.yaml``. The same seed
always gives the same files; see ``sld.data.synthetic``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sld.cli import run_stage
from sld.config import save_config
from sld.data.synthetic import write_synthetic_corpus


@dataclass
class Config:
    """``sld synthetic``: how much synthetic data to write, and where."""

    output_dir: str = "data/synthetic"
    seed: int = 0
    stories_train: int = 4000
    stories_valid: int = 300
    dialogues_train: int = 3000
    dialogues_valid: int = 300
    pairs_train: int = 2000
    pairs_valid: int = 300

    def __post_init__(self) -> None:
        sizes = {k: v for k, v in vars(self).items() if k not in ("output_dir", "seed")}
        negative = [k for k, v in sizes.items() if v < 0]
        if negative:
            raise ValueError(f"sizes must not be negative: {', '.join(negative)}")


def run(cfg: Config) -> dict[str, Path]:
    """Write the corpus into ``cfg.output_dir``; return file name -> path."""
    out = Path(cfg.output_dir)
    save_config(cfg, out / "config.yaml")
    sizes = {k: v for k, v in vars(cfg).items() if k not in ("output_dir", "seed")}
    paths = write_synthetic_corpus(out, seed=cfg.seed, **sizes)
    for name, path in paths.items():
        print(f"{name:<17} {sizes[name]:>6} records  {path}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())

"""Write the seeded synthetic corpus (stories, paraphrase pairs, dialogues) used by the quickstart.

``sld synthetic output_dir=data/synthetic seed=0`` writes ``stories_{train,valid}.jsonl``,
``pairs_{train,valid}.jsonl`` and ``dialogues_{train,valid}.jsonl`` (the field names of the real
ROCStories / DialogSum files, so the same configs read both) plus ``config.yaml``. The same seed
always gives the same files; see ``sld.data.synthetic``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from sld.cli import run_stage
from sld.data.synthetic import SyntheticCorpusConfig as Config
from sld.data.synthetic import corpus_lines, write_corpus

__all__ = ["Config", "main", "run"]


def run(cfg: Config) -> dict[str, Path]:
    """Write the corpus into ``cfg.output_dir``; return file name -> path."""
    paths = write_corpus(cfg)
    for line in corpus_lines(cfg, paths):
        print(line)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())

"""Stage 1: split raw JSONL records into segmented documents (sentences or dialogue turns).

``sld segment -c configs/segment_synthetic_stories.yaml`` reads every split named under
``splits`` (split name -> JSONL path), builds (source, target) examples for ``records.task``,
splits each target into at most ``segmenter.max_segments`` segments and writes, into
``output_dir``: ``<split>.jsonl`` (see docs/design.md), ``punkt_params.json`` (when Punkt was
trained on the corpus or loaded from a file, so the segmentation can be reapplied), ``stats.json``
and ``config.yaml``. The first split (normally ``train``) is the corpus Punkt is trained on.
Documents whose target is empty are counted and not written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from sld.cli import print_summary, run_stage
from sld.data.segment_corpus import SegmentCorpusConfig as Config
from sld.data.segment_corpus import format_summary, segment_corpus

__all__ = ["Config", "format_summary", "main", "run"]


def run(cfg: Config) -> dict[str, Any]:
    """Segment every split of ``cfg`` into ``cfg.output_dir``; return the statistics written to stats.json."""
    return print_summary(segment_corpus(cfg)).stats


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())

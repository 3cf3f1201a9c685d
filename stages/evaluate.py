"""Score predictions files (SLD, AR baseline, ...) against references in one table.

``sld evaluate --config configs/evaluate.yaml predictions.sld=runs/sld/predictions.jsonl
predictions.ar=runs/ar/predictions.jsonl output_dir=runs/eval``

Input: one predictions JSONL per system, as ``sld generate`` writes it, one document per line::

    {"id": str, "source": str | null, "prediction": str, "segments": [str, ...],
     "reference": str | [str, ...] | null, "reference_segments": [str, ...]}

``prediction`` is the plain joined text that is scored. The references are either inside the
predictions file (``reference_field``; a list means several acceptable references) or in a separate
JSONL file joined on ``id_field`` (``references=FILE``). ``segments`` / ``reference_segments`` are
optional and add segment-count metrics when present on every line.

Output folder: ``metrics.json`` ({system: metrics}), ``metrics.md`` (the table) and ``config.yaml``;
the table is also printed. A missing file, bad line, missing field or unknown id stops with one
line naming the file and line (exit status 2). The work is ``sld.eval.predictions.evaluate_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sld.cli import run_stage
from sld.eval.predictions import EvaluationConfig as Config
from sld.eval.predictions import evaluate_files
from sld.eval.report import format_table

__all__ = ["Config", "main", "run"]


def run(cfg: Config) -> dict[str, dict[str, Any]]:
    """Score every system, write metrics.json / metrics.md / config.yaml and print the table."""
    results = evaluate_files(cfg)
    print(format_table(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())

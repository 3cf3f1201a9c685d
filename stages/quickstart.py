"""Quickstart: all three stages on the embedded synthetic corpus, on CPU, then generated examples.

    sld quickstart                              # everything into runs/quickstart
    sld quickstart output_dir=/tmp/qs autoencoder.loop.max_minutes=2

1. writes the seeded synthetic corpus (titled stories, paraphrase pairs, dialogues) with our own code;
2. segments the stories (title -> story) and the dialogue summaries (dialogue -> summary);
3. trains one segment autoencoder on the segments of both;
4. trains one SegmentDiT on both tasks (the source text tells them apart);
5. generates ``num_scored`` validation stories and summaries (256 and 64), prints ``num_examples`` of each next
   to their inputs and references, and measures how well they keep to their input's topic
   (:mod:`sld.eval.topic_agreement`: each generated sentence is matched to its nearest training
   sentence, whose topic label should be the input's; the references and chance are printed too).

Every stage's folder is kept under ``output_dir`` and can be reused with the ``sld`` commands.
Each training stage stops at its ``loop.max_minutes`` budget (7 + 5 by default, or ``max_steps``),
whichever comes first; with encoding and generation the whole run takes about 14 minutes on 2 CPU
cores. The corpus size is ``corpus.*`` (see ``sld synthetic``). Any nested key can be overridden
(``autoencoder.loop.max_minutes=2``); the rest of the quickstart's settings stay.
"""

from __future__ import annotations

from collections.abc import Sequence

from sld.cli import run_stage
from sld.quickstart import QuickstartConfig as Config
from sld.quickstart import run_quickstart

__all__ = ["Config", "main", "run"]


def run(cfg: Config) -> dict:
    """Run the quickstart into ``cfg.output_dir``, printing as it goes; return the examples shown."""
    return run_quickstart(cfg, echo=print).shown


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

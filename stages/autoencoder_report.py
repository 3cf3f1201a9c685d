"""Autoencoder report: reconstruction BLEU, robustness to latent noise, and latent smoothness.

    sld autoencoder-report autoencoders=[runs/autoencoder] segments=runs/segmented/valid.jsonl \
        pairs=data/synthetic/pairs_valid.jsonl output_dir=runs/autoencoder_report
    sld autoencoder-report -c configs/autoencoder_report_synthetic_ablation.yaml

For every autoencoder folder: reconstruction BLEU and exact match of ``num_segments`` held-out
segments (the segments of a stage-1 ``<split>.jsonl``, in file order), the BLEU after Gaussian noise
of each ``noise_levels`` sigma on the latents (a robustness curve), and, with ``pairs``, the mean
distance sentence-paraphrase / sentence-negative (the smoothness ratio). See
``sld.eval.autoencoder_report`` for the definitions; the work is its ``write_autoencoder_reports``.

Writes ``report.json`` (all numbers and a few decoded examples), ``report.md`` (the table) and
``robustness.png`` / ``.svg`` (BLEU and exact match against the noise, one line per autoencoder)
into ``output_dir``, and prints the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sld.cli import run_stage
from sld.eval.autoencoder_report import AutoencoderReportConfig as Config
from sld.eval.autoencoder_report import load_segments, write_autoencoder_reports

__all__ = ["Config", "load_segments", "main", "run"]


def run(cfg: Config) -> dict[str, Any]:
    """Report every autoencoder, write the output folder and print the table; returns report.json's numbers."""
    done = write_autoencoder_reports(cfg)
    noise = "re-projected to norm sqrt(D)" if cfg.renormalize else "added to every latent coordinate"
    print(f"autoencoder report: {len(done.segments)} segments of {cfg.segments}; noise {noise}")
    if done.pairs is not None:
        print(f"smoothness: {len(done.pairs)} sentence/paraphrase/negative triples of {cfg.pairs}")
    print(done.table)
    for report in done.reports:
        if report.examples:
            example = report.examples[0]
            print(f"{report.name}: " + " | ".join(f"{k}: {v!r}" for k, v in example.items()))
    print("files: " + ", ".join(str(p) for p in done.files))
    return done.numbers


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

"""How much of the autoencoder's decoder passes is padding, with 1 to K length buckets.

    python examples/decoder_padding.py -c configs/autoencoder_roc.yaml data.segmented_dir=runs/roc/segmented_all \\
        data.pairs_train=../shared/data/roc/pairs_train.jsonl [--batches 20] [--max-buckets 4]

Builds the config's training rows (segments and pair rows, as the trainer does), collates
``--batches`` random batches of the config's ``loop.batch_size`` with ``SegmentCollator`` at
``data.decoder_buckets`` = 1 .. ``--max-buckets`` (``sld.data.decoder_buckets``), with whole targets
and with targets cut at the decoding budget (``data.targets_within_budget``), and prints, per bucket
count, the share of real target tokens among the decoder positions a pass computes, and those
positions against one bucket's with whole targets. ``--flops-rows N`` also counts, for each setting,
the FLOPs of one training loss's forward and backward (``torch.utils.flop_counter``) over the first N
rows of the first batch, with the config's losses, the frozen encoder's forward included (this
example builds no encoder-state cache; run on the CPU: keep N in the hundreds). The share is of the
decoder's positions only (its FLOPs and elementwise work scale with them); the step's time also holds
the encoder, the regularisers and, on a GPU, one round of kernel launches per bucket, which only a
timed run measures.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch

from sld.autoencoder_objective import autoencoder_losses
from sld.autoencoder_trainer import AutoencoderTrainingConfig, build_model, load_segments, training_rows
from sld.config import load_config
from sld.data.collate import SegmentCollator
from sld.data.decoder_buckets import bucket_positions
from sld.throughput import count_flops


def main(argv: list[str] | None = None) -> list[tuple[int, bool, float, int]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="an autoencoder training config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--max-buckets", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flops-rows", type=int, default=0, help="count a loss step's FLOPs on this many rows"
    )
    args = parser.parse_args(argv)
    cfg = load_config(AutoencoderTrainingConfig, args.config, args.overrides)
    docs = load_segments(cfg.data, cfg.data.train_split)
    model = build_model(cfg, docs, Path(tempfile.mkdtemp(prefix="decoder_padding_")))
    dataset = training_rows(cfg, docs)
    size = min(cfg.loop.batch_size, len(dataset))
    rng = random.Random(args.seed)
    batches = [[dataset[i] for i in rng.sample(range(len(dataset)), size)] for _ in range(args.batches)]
    budget = model.config.decode_max_tokens
    print(
        f"{len(dataset)} training rows; {args.batches} random batches of {size}; decoding budget {budget} tokens"
    )
    header = "| decoder buckets | targets | real share of the decoder positions | positions x one bucket's, whole targets |"
    if args.flops_rows:
        header += f" FLOPs of a loss step on {args.flops_rows} rows |"
    print(header)
    print("|---|---|---|---|" + ("---|" if args.flops_rows else ""))
    results = []
    for buckets in range(1, args.max_buckets + 1):
        for within_budget in (False, True):
            collate = SegmentCollator.from_autoencoder(
                model, decoder_buckets=buckets, targets_within_budget=within_budget
            )
            real = computed = 0
            for rows in batches:
                batch = collate(rows)
                counts = bucket_positions(batch.get("decoder_buckets", [batch]))
                real, computed = real + counts[0], computed + counts[1]
            results.append((buckets, within_budget, real / computed, computed))
            targets = f"cut at {budget}" if within_budget else "whole"
            row = f"| {buckets} | {targets} | {real / computed:.1%} | {computed / results[0][3]:.2f} |"
            if args.flops_rows:
                row += f" {step_flops(model, cfg, collate(batches[0][: args.flops_rows])):.3e} |"
            print(row)
    return results


def step_flops(model, cfg: AutoencoderTrainingConfig, batch: dict) -> int:
    """FLOPs of the training loss's forward and backward on ``batch`` (``sld.throughput.count_flops``)."""
    model.train()
    torch.manual_seed(0)
    flops = count_flops(lambda: autoencoder_losses(model, batch, cfg.losses)["loss"].backward())
    model.zero_grad(set_to_none=True)
    return flops


if __name__ == "__main__":
    main()

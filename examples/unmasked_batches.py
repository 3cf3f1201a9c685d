"""How many of the denoiser's training batches hold no padded segment: random batches against batches
grouped by segment count (``data.group_by_segment_count``).

    python examples/unmasked_batches.py SEGMENTED_DIR --max-segments 4 [--batch-sizes 256 1024] [--epochs 5]

SEGMENTED_DIR: stage 1's folder (``sld segment``; its ``train.jsonl``). A batch whose documents all
have ``max_segments`` segments (after truncation to it) runs the denoiser's self-attention without a
mask, on the flash kernels (``sld.models.denoiser``); one padded document sends the whole batch to the
memory-efficient kernels. Batches are drawn the way ``fit`` draws them (``sld.training.training_loader``:
full batches only): a random permutation an epoch (of its own seed, not the loader's), or
``LengthGroupedSampler`` over ``sld.diffusion.data.grouping_lengths`` (the trainer's, seed 0). Prints, per batch size, the share of the full batches of
``--epochs`` epochs that hold no padded segment.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from sld.data.length_grouping import LengthGroupedSampler
from sld.data.segmented import SegmentedDocument, read_split
from sld.diffusion.data import grouping_lengths


def unmasked_share(batches: Sequence[Sequence[int]], counts: Sequence[int], max_segments: int) -> float:
    """The share of ``batches`` (lists of document indices) in which every document has
    ``max_segments`` segments (``counts``: segments kept per document)."""
    if not batches:
        return float("nan")
    full = sum(all(counts[i] >= max_segments for i in batch) for batch in batches)
    return full / len(batches)


def epoch_batches(
    docs: list[SegmentedDocument],
    max_segments: int,
    batch_size: int,
    grouped: bool,
    epoch: int,
    seed: int = 0,
) -> list[list[int]]:
    """One epoch's full batches, random or grouped by segment count."""
    if grouped:
        lengths = grouping_lengths(docs, max_segments, by_segment_count=True, by_source_length=False)
        sampler = LengthGroupedSampler(lengths, batch_size, seed=seed)
        sampler.set_epoch(epoch)
        batches = sampler.batches()
    else:
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batch for batch in batches if len(batch) == batch_size]


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("segmented_dir", type=Path, help="stage 1's folder (its train.jsonl)")
    parser.add_argument("--max-segments", type=int, required=True, help="the diffusion config's max_segments")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    docs = read_split(args.segmented_dir, "train")
    counts = [min(len(doc.segments), args.max_segments) for doc in docs]
    short = sum(count < args.max_segments for count in counts)
    print(
        f"{len(docs):,} documents, {short:,} ({short / max(1, len(docs)):.1%}) with fewer than {args.max_segments} segments"
    )
    print("| batch size | random batches without a padded segment | grouped by segment count |")
    print("|---|---|---|")
    rows = []
    for batch_size in args.batch_sizes:
        shares = []
        for grouped in (False, True):
            batches = [
                batch
                for epoch in range(args.epochs)
                for batch in epoch_batches(docs, args.max_segments, batch_size, grouped, epoch)
            ]
            shares.append(unmasked_share(batches, counts, args.max_segments))
        rows.append((batch_size, shares[0], shares[1]))
        print(f"| {batch_size:,} | {shares[0]:.1%} | {shares[1]:.1%} |")
    return rows


if __name__ == "__main__":
    main()

"""How many distinct paraphrase pairs a training batch of the autoencoder holds, batches grouped by
length against shuffled ones (host only, seconds).

    python examples/pair_copies_per_batch.py runs/roc/segmented_all ../shared/data/roc/pairs_train.jsonl

The autoencoder mixes ``pair_fraction`` of pair rows into the segments (``PairMixDataset``), cycling
through the pair file: a file smaller than its share repeats each pair. Length-grouped batches
(``data.group_by_length``) sort an epoch's rows by length, so the copies of a pair (one length) land in
the same batch. Prints, over the first ``--batches`` batches of epoch 0, the mean pair rows and
distinct paraphrases per batch, both ways.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sld.data.collate import PairDataset, PairMixDataset, SegmentDataset, row_length
from sld.data.length_grouping import LengthGroupedSampler
from sld.data.segmented import read_split


def pair_counts(dataset: PairMixDataset, batches: list[list[int]]) -> tuple[float, float]:
    """Mean pair rows and mean distinct paraphrases per batch."""
    rows, distinct = 0, 0
    for batch in batches:
        paraphrases = [r["paraphrase"] for r in (dataset[i] for i in batch) if isinstance(r, dict)]
        rows += len(paraphrases)
        distinct += len(set(paraphrases))
    return rows / len(batches), distinct / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("segmented_dir", type=Path, help="a stage-1 folder (its train.jsonl)")
    parser.add_argument("pairs", type=Path, help="the pair file (sentence / paraphrase / negative)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--pair-fraction", type=float, default=0.25)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    docs = [doc.segments for doc in read_split(args.segmented_dir, "train")]
    pairs = PairDataset.from_jsonl(args.pairs)
    dataset = PairMixDataset(SegmentDataset(docs), pairs, args.pair_fraction)
    print(
        f"{len(dataset)} rows, {len(dataset) - sum(len(d) for d in docs)} of them pair rows, {len(pairs)} pairs"
    )
    grouped = LengthGroupedSampler([row_length(dataset[i]) for i in range(len(dataset))], args.batch_size)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [
        order[i : i + args.batch_size] for i in range(0, len(order) - args.batch_size + 1, args.batch_size)
    ]
    for name, batches in (("grouped by length", grouped.batches()), ("shuffled", shuffled)):
        rows, distinct = pair_counts(dataset, batches[: args.batches])
        print(
            f"{name}: {rows:.1f} pair rows, {distinct:.1f} distinct paraphrases per batch of {args.batch_size}"
        )


if __name__ == "__main__":
    main()

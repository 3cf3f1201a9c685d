"""How much of the AR baseline's prefix-LM batches is padding: random batches against length-grouped ones.

    python examples/padding_share.py TOKENIZER_DIR SEGMENTED/train.jsonl [--batch-sizes 64 1024]

TOKENIZER_DIR: any tokenizer folder (e.g. an exported SmolLM2, ``sld export-lm``); SEGMENTED/train.jsonl:
stage 1's documents (``sld segment``; ROC continuation: the first sentence is the source). The rows are
built as the trainer builds them (``SourceTargetDataset`` with ``PrefixLMCollator.tokenize``) and batched
in one epoch's order of: a random permutation, ``LengthGroupedSampler`` over characters (the dataset's
lengths for text pairs) and over tokens (its lengths for token rows). Prints, per batch size, the share of
real tokens among the positions of the collated batches (``attention_mask``), averaged over the epoch's
full batches: the share of a step's FLOPs that is model work, not padding (``sld.throughput``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer

from sld.baseline_trainer import SourceTargetDataset
from sld.data.length_grouping import LengthGroupedSampler
from sld.data.segmented import read_split
from sld.models.baseline import PrefixLMCollator
from sld.models.causal_lm import prepare_tokenizer


def real_share(
    dataset: SourceTargetDataset, collate: PrefixLMCollator, order: Sequence[int], batch: int
) -> float:
    """Mean share of real positions over the full batches of ``order``."""
    shares = []
    for start in range(0, len(order) - batch + 1, batch):
        mask = collate([dataset[i] for i in order[start : start + batch]])["attention_mask"]
        shares.append(float(mask.float().mean()))
    return sum(shares) / len(shares)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("documents", type=Path, help="stage 1's train.jsonl")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    prepare_tokenizer(tokenizer, str(args.tokenizer))
    docs = read_split(args.documents.parent, args.documents.stem)
    collate = PrefixLMCollator(tokenizer, max_source_tokens=64, max_target_tokens=128)
    rows = SourceTargetDataset(docs, collate.tokenize)
    chars = SourceTargetDataset(docs).lengths()
    random_order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
    print(f"{len(rows)} rows; share of real tokens in the batches of one epoch")
    print("| batch | random | grouped by characters | grouped by tokens |")
    print("|---|---|---|---|")
    for batch in args.batch_sizes:
        by_chars = list(LengthGroupedSampler(chars, batch, seed=args.seed))
        by_tokens = list(LengthGroupedSampler(rows.lengths(), batch, seed=args.seed))
        shares = [real_share(rows, collate, order, batch) for order in (random_order, by_chars, by_tokens)]
        print(f"| {batch} | " + " | ".join(f"{share:.1%}" for share in shares) + " |")


if __name__ == "__main__":
    main()

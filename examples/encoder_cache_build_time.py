"""Time the autoencoder's encoder-state cache build: texts in first-seen order against like lengths.

    python examples/encoder_cache_build_time.py AUTOENCODER_DIR SEGMENTED_DIR [SEGMENTED_DIR ...] \
        [--pairs PAIRS_JSONL] [--batch-size 256] [--threads 2]

AUTOENCODER_DIR: a trained autoencoder with a frozen encoder (``sld train-autoencoder``);
SEGMENTED_DIR: stage 1's folders (their ``train.jsonl`` segments); ``--pairs``: the paraphrase pairs
(``sentence`` / ``paraphrase`` / ``negative``), e.g. a quickstart's ``segmented_stories``,
``segmented_dialogues`` and ``data/pairs_train.jsonl``: the texts its autoencoder caches.
``sld.models.encoder_cache.EncoderStateCache.build`` runs the frozen encoder over batches of texts
sorted by length; the baseline here runs it over the texts in first-seen order, as the build did
before (2026-12-06), each batch padded to its longest text. Prints the distinct texts, the seconds of
each way, their ratio and the largest difference between their states over the real positions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sld.diffusion.data import read_documents
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.encoder_cache import EncoderStateCache, training_texts


@torch.no_grad()
def first_seen_states(model: SegmentAutoencoder, texts: list[str], batch_size: int) -> torch.Tensor:
    """The baseline: states (U, L, H) float32 of ``texts`` encoded in their order, right-padded to L."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = model.tokenize_for_encoder(texts[start : start + batch_size])
        chunks.append(model.encoder(**batch).last_hidden_state)
    length = max(chunk.shape[1] for chunk in chunks)
    states = torch.zeros(len(texts), length, chunks[0].shape[2])
    row = 0
    for chunk in chunks:
        states[row : row + chunk.shape[0], : chunk.shape[1]] = chunk
        row += chunk.shape[0]
    return states


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("autoencoder_dir", type=Path)
    parser.add_argument("segmented_dirs", type=Path, nargs="+")
    parser.add_argument("--pairs", type=Path, default=None, help="paraphrase-pair JSONL (its texts too)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SegmentAutoencoder.from_pretrained(args.autoencoder_dir).eval()
    texts = [seg for doc in read_documents(args.segmented_dirs, "train") for seg in doc.segments]
    if args.pairs:
        texts += training_texts(json.loads(line) for line in args.pairs.read_text().splitlines())
    unique = list(dict.fromkeys(t for t in texts if t))
    started = time.perf_counter()
    baseline = first_seen_states(model, unique, args.batch_size)
    baseline_s = time.perf_counter() - started
    started = time.perf_counter()
    cache = EncoderStateCache.build(model, unique, batch_size=args.batch_size)
    sorted_s = time.perf_counter() - started
    real = model.tokenize_for_encoder(unique)["attention_mask"].bool()  # (U, L') real positions
    width = real.shape[1]
    diff = (cache.states[:, :width] - baseline[:, :width]).abs()[real].max().item()
    print(f"{len(unique)} distinct texts, batches of {args.batch_size}")
    print(f"first-seen order:   {baseline_s:7.1f} s")
    print(f"like lengths:       {sorted_s:7.1f} s  ({baseline_s / sorted_s:.2f}x faster)")
    print(f"largest difference between the two ways' states (real positions): {diff:.2e}")
    return {"first_seen_s": baseline_s, "sorted_s": sorted_s, "max_diff": diff}


if __name__ == "__main__":
    main()

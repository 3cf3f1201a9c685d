"""Time the diffusion stage's latent encoding: every segment slot encoded, against each distinct text once.

    python examples/latent_encoding_time.py AUTOENCODER_DIR SEGMENTED_DIR [SEGMENTED_DIR ...] \
        [--max-segments 5] [--batch-size 64] [--threads 2]

AUTOENCODER_DIR: a trained autoencoder (``sld train-autoencoder``); SEGMENTED_DIR: stage 1's folders
(their ``train.jsonl``), e.g. a quickstart's ``segmented_stories`` and ``segmented_dialogues``.
``sld.diffusion.data.encode_documents`` encodes each distinct segment text once, in batches of like
lengths; the baseline here encodes every slot in document order, as it did before (2026-12-06). Prints
the slots, the distinct texts, the seconds of each way, their ratio and the largest difference between
their latents.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sld.diffusion.data import encode_documents, read_documents
from sld.models.autoencoder import SegmentAutoencoder


def encode_every_slot(autoencoder, docs, max_segments: int, batch_size: int) -> torch.Tensor:
    """The baseline: latents (num_docs, S, N, D) float16 with every slot's text encoded, in order."""
    slots = [(i, j, seg) for i, d in enumerate(docs) for j, seg in enumerate(d.segments[:max_segments])]
    latents = torch.zeros(
        len(docs), max_segments, autoencoder.num_latents, autoencoder.latent_dim, dtype=torch.float16
    )
    for start in range(0, len(slots), batch_size):
        chunk = slots[start : start + batch_size]
        z = autoencoder.encode_texts([seg for _, _, seg in chunk], batch_size=batch_size).cpu().half()
        for (i, j, _), zij in zip(chunk, z, strict=True):
            latents[i, j] = zij
    return latents


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("autoencoder_dir", type=Path)
    parser.add_argument("segmented_dirs", type=Path, nargs="+")
    parser.add_argument("--max-segments", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    autoencoder = SegmentAutoencoder.from_pretrained(args.autoencoder_dir).eval()
    docs = read_documents(args.segmented_dirs, "train")
    slots = [seg for d in docs for seg in d.segments[: args.max_segments]]
    with torch.no_grad():
        started = time.perf_counter()
        every = encode_every_slot(autoencoder, docs, args.max_segments, args.batch_size)
        every_s = time.perf_counter() - started
        started = time.perf_counter()
        distinct, _ = encode_documents(autoencoder, docs, args.max_segments, args.batch_size)
        distinct_s = time.perf_counter() - started
    diff = (every.float() - distinct.float()).abs().max().item()
    print(f"{len(docs)} documents, {len(slots)} segment slots, {len(set(slots))} distinct texts")
    print(f"every slot:          {every_s:7.1f} s")
    print(f"each distinct once:  {distinct_s:7.1f} s  ({every_s / distinct_s:.2f}x faster)")
    print(f"largest difference between the two ways' latents: {diff:.2e}")
    return {"every_slot_s": every_s, "distinct_s": distinct_s, "max_diff": diff}


if __name__ == "__main__":
    main()

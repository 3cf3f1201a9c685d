"""Time of one autoencoder training step with and without the encoder-state cache, on this machine.

    python examples/encoder_cache_step_time.py runs/quickstart

Loads a finished ``sld quickstart`` folder's autoencoder, builds one batch of 24 story segments and
8 paraphrase pairs, and times forward + backward of the full loss, alternating the plain batch (the
frozen MiniLM runs every step) and the cached one (``sld.models.encoder_cache``), 8 steps each, twice;
then the encoder's forward alone on the 32 rows.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from sld.autoencoder_objective import AutoencoderLossConfig, autoencoder_losses
from sld.data.collate import SegmentCollator
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.encoder_cache import EncoderStateCache, training_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.quickstart_dir
    model = SegmentAutoencoder.from_pretrained(root / "autoencoder").train()
    segments = [
        s for line in open(root / "segmented_stories" / "train.jsonl") for s in json.loads(line)["segments"]
    ]
    pairs = [json.loads(line) for line in open(root / "data" / "pairs_train.jsonl")]
    rows = random.Random(0).sample(segments, 24) + pairs[:8]
    loss_config = AutoencoderLossConfig()
    plain = SegmentCollator.from_autoencoder(model)(rows)
    model.encoder_cache = EncoderStateCache.build(model, training_texts(rows))
    cached = SegmentCollator.from_autoencoder(model)(rows)

    def step(batch: dict) -> None:
        autoencoder_losses(model, batch, loss_config)["loss"].backward()
        model.zero_grad(set_to_none=True)

    for name, batch in [("plain", plain), ("cached", cached)] * 2:
        step(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(8):
            step(batch)
        print(f"{name:7s} {(time.perf_counter() - started) / 8:.3f} s per step")
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(8):
            model.encoder_hidden_states(plain["input_ids"], plain["attention_mask"])
    print(
        f"encoder forward alone, {plain['input_ids'].shape[0]} rows: {(time.perf_counter() - started) / 8:.3f} s"
    )


if __name__ == "__main__":
    main()

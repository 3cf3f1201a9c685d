"""Peak host memory of one autoencoder training step with a causal-LM decoder: full logits vs chunked.

    python examples/step_memory.py [--decoder smollm2] [--rows 64] [--pairs ../shared/data/roc/pairs_valid.jsonl]

Runs one conversion + adversarial step (``losses.variant=noise_robust``) and its backward pass on the
CPU, twice, each in a fresh process: once with the loss as ``sld`` computes it
(``SegmentAutoencoder.reconstruction_loss``: target positions only, head + cross-entropy a chunk at a
time) and once through the full (B', L, V) logits. Prints how much the process's peak resident memory
grew during the step and the conversion loss (the same in both). A CPU stand-in for the GPU peak:
float32, no autocast.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_step(mode: str, decoder: str, rows: int, pairs: str) -> None:
    import torch

    from sld.autoencoder_objective import AutoencoderLossConfig, autoencoder_losses
    from sld.data.collate import SegmentCollator
    from sld.losses import conversion_loss
    from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder

    torch.manual_seed(0)
    config = AutoencoderConfig(encoder="minilm", decoder_name_or_path=decoder, num_latents=16, latent_dim=64)
    model = SegmentAutoencoder.from_config(config).train()
    if mode == "full":
        model.reconstruction_loss = lambda z, labels, inputs=None, target_index=None, buckets=None: (
            conversion_loss(model.reconstruction_logits(z, labels, inputs), labels)
        )
    with open(pairs, encoding="utf-8") as handle:
        texts = [json.loads(line)["sentence"] for line in handle][:rows]
    batch = SegmentCollator.from_autoencoder(model)(texts)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    terms = autoencoder_losses(model, batch, AutoencoderLossConfig(variant="noise_robust"))
    terms["loss"].backward()
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    shape = tuple(batch["labels"].shape)
    print(
        f"{mode:8s} labels {shape}: conversion loss {terms['conversion'].item():.4f}, "
        f"peak memory grew {grown:,.0f} MiB in the step ({seconds:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", default="smollm2")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--pairs", default="../shared/data/roc/pairs_valid.jsonl")
    parser.add_argument("--mode", choices=("full", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        one_step(args.mode, args.decoder, args.rows, args.pairs)
        return
    for mode in ("full", "chunked"):  # a fresh process each: the peak only ever grows
        command = [sys.executable, __file__, "--mode", mode, "--decoder", args.decoder]
        subprocess.run([*command, "--rows", str(args.rows), "--pairs", args.pairs], check=True)


if __name__ == "__main__":
    main()

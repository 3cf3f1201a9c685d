"""Time one AdamW step over a saved model's trainable parameters: the per-parameter loop, foreach, fused.

    python examples/adamw_step_time.py MODEL_DIR [--steps 10] [--threads 2]

MODEL_DIR: a folder written by ``sld train-autoencoder`` (``SegmentAutoencoder.from_pretrained``).
Every trainable parameter gets a random gradient, then each variant takes ``--steps`` optimizer steps
after three untimed ones; prints the mean milliseconds a step. On a CPU torch's default is the
per-parameter loop; ``fit`` uses the fused kernel on CUDA and CPU (``OptimConfig.fused``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sld.models.autoencoder import SegmentAutoencoder

VARIANTS = {"per-parameter loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_milliseconds(params: list[torch.nn.Parameter], options: dict, steps: int) -> float:
    """Mean wall time of one ``AdamW(**options).step()`` over ``params`` (their ``.grad`` set)."""
    optimizer = torch.optim.AdamW(params, lr=1e-3, **options)
    for _ in range(3):
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - started) * 1e3 / steps


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = SegmentAutoencoder.from_pretrained(args.model_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p)
    count = sum(p.numel() for p in params)
    lines = [f"{len(params)} trainable tensors, {count / 1e6:.1f}M parameters, {args.threads} threads"]
    for name, options in VARIANTS.items():
        lines.append(f"{name:<20} {step_milliseconds(params, options, args.steps):8.1f} ms a step")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()

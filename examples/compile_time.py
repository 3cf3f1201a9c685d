"""How long ``torch.compile`` takes: the whole denoiser against its repeated blocks (``sld.compilation``).

Runs the first training steps of a SegmentDiT the way ``sld train-diffusion`` does (a step with and a
step without the self-conditioning pass, then a new context length, which makes the shapes
dynamic) and prints each step's seconds, for eager, whole-model and block-wise compilation. Each
compiled variant runs in a fresh process with an empty inductor cache, so a cache filled by the
other does not hide its cost.

    python examples/compile_time.py                       # a 12-block, width-64 model on the CPU
    python examples/compile_time.py --width 768 --heads 12 --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

# (context length, self-conditioning pass) of each timed step
STEPS = [(7, False), (7, True), (9, False), (11, True), (13, False), (7, False)]


def run_one(mode: str, args: argparse.Namespace) -> None:
    from sld.compilation import compile_model
    from sld.models.denoiser import SegmentDiT

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = SegmentDiT(
        latent_dim=16,
        num_latents=8,
        max_segments=4,
        context_dim=32,
        width=args.width,
        depth=args.depth,
        heads=args.heads,
    ).to(device)
    run = model if mode == "eager" else compile_model(model) if mode == "blocks" else torch.compile(model)
    b, s, n, d = args.batch, 4, 8, 16
    total = 0.0
    for i, (length, self_cond) in enumerate(STEPS):
        x, t = torch.randn(b, s, n, d, device=device), torch.rand(b, device=device)
        context = torch.randn(b, length, 32, device=device)
        mask = torch.ones(b, length, dtype=torch.bool, device=device)
        started = time.perf_counter()
        first = None
        if self_cond:
            with torch.no_grad():
                first = run(x, t, context, mask)
        out, logits = run(x, t, context, mask, None, first, None, return_count_logits=True)
        (out.pow(2).mean() + logits.mean()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        total += seconds
        print(
            f"{mode:6s} step {i} (context {length}, self-conditioning {self_cond}): {seconds:6.1f} s",
            flush=True,
        )
    print(f"{mode:6s} total {total:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="eager,whole,blocks")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args)
        return
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            command = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
            subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()

"""How long ``torch.compile`` takes, and what a step costs after it: eager, the whole model, and its
repeated blocks (``sld.compilation``, what ``loop.compile=true`` does).

``--model denoiser`` (default) runs the first training steps of a SegmentDiT the way ``sld
train-diffusion`` does (steps with and without the self-conditioning pass, then a new context
length, which makes the shapes dynamic); ``--model causal-lm`` runs those of a Llama-style causal LM
(SmolLM2's 30 layers by default, narrow) on batches of changing length, as the AR baseline does.
Each step's seconds are printed, then the mean time of ``--steady`` more steps of one shape (at a
small width that time is mostly per-call overhead: the host's share of a step). Each mode runs in a
fresh process with an empty inductor cache, so a cache filled by another does not hide its cost.

    python examples/compile_time.py                            # a 12-block, width-64 denoiser, CPU
    python examples/compile_time.py --model causal-lm --modes eager,blocks
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

# (context length, self-conditioning pass) of each timed step; the causal LM reads 4 x the length
STEPS = [(7, False), (7, True), (9, False), (11, True), (13, False), (7, False)]


def build(args: argparse.Namespace, device: torch.device):
    """The model and a function ``step(length, self_cond)`` that runs one forward + backward."""
    torch.manual_seed(0)
    if args.model == "causal-lm":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=512,
            hidden_size=args.width,
            intermediate_size=2 * args.width,
            num_hidden_layers=args.depth if args.depth else 30,
            num_attention_heads=args.heads,
            num_key_value_heads=1,
            max_position_embeddings=256,
        )
        model = LlamaForCausalLM(config).to(device)

        def lm_step(run, length: int, self_cond: bool) -> None:
            ids = torch.randint(0, 512, (args.batch, 4 * length), device=device)
            run(input_ids=ids, labels=ids, use_cache=False).loss.backward()  # as the AR trainer

        return model, lm_step

    from sld.models.denoiser import SegmentDiT

    model = SegmentDiT(
        latent_dim=16,
        num_latents=8,
        max_segments=4,
        context_dim=32,
        width=args.width,
        depth=args.depth if args.depth else 12,
        heads=args.heads,
    ).to(device)
    b, s, n, d = args.batch, 4, 8, 16

    def dit_step(run, length: int, self_cond: bool) -> None:
        x, t = torch.randn(b, s, n, d, device=device), torch.rand(b, device=device)
        context = torch.randn(b, length, 32, device=device)
        mask = torch.ones(b, length, dtype=torch.bool, device=device)
        first = None
        if self_cond:
            with torch.no_grad():
                first = run(x, t, context, mask)
        out, logits = run(x, t, context, mask, None, first, None, return_count_logits=True)
        (out.pow(2).mean() + logits.mean()).backward()

    return model, dit_step


def run_one(mode: str, args: argparse.Namespace) -> None:
    from sld.compilation import compile_model

    device = torch.device(args.device)
    model, step = build(args, device)
    run = model if mode == "eager" else compile_model(model) if mode == "blocks" else torch.compile(model)

    def timed(length: int, self_cond: bool) -> float:
        started = time.perf_counter()
        step(run, length, self_cond)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    total = 0.0
    for i, (length, self_cond) in enumerate(STEPS):
        seconds = timed(length, self_cond)
        total += seconds
        print(
            f"{mode:6s} step {i} (context {length}, self-conditioning {self_cond}): {seconds:6.1f} s",
            flush=True,
        )
    print(f"{mode:6s} total {total:.1f} s", flush=True)
    steady = [timed(*STEPS[0]) for _ in range(args.steady)]
    print(
        f"{mode:6s} then {1000 * sum(steady) / max(1, len(steady)):.1f} ms per step ({args.steady} steps)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--model", choices=("denoiser", "causal-lm"), default="denoiser")
    parser.add_argument("--depth", type=int, default=0, help="blocks (0: 12 for the denoiser, 30 for the LM)")
    parser.add_argument("--steady", type=int, default=20, help="steps timed after the first six")
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

"""Time one key-masked attention call, forward and backward, on each of torch's attention kernels.

    python examples/masked_attention_kernels.py [--batch 1024] [--heads 12] [--queries 64] \
        [--keys 64 68] [--head-dim 64] [--repeat 20]

The defaults are the paper-size denoiser's shapes at batch 1,024 (``sld.models.denoiser``): 12 heads of
64 over its 64 latent slots (self-attention; a padded segment masks its slots as keys) and over 64
context tokens + 4 null vectors (cross-attention; padded context tokens masked). Every call of that
denoiser passes a key mask, so torch runs its memory-efficient kernels (flash attention takes no mask);
``SLD_CUDNN_ATTENTION=first`` (``sld.backends``) asks for cuDNN's instead. For each key length the
script prints, per kernel: milliseconds per forward + backward call (bfloat16 on a GPU; float32 on the
CPU, where only ``math`` and torch's CPU flash kernel run), the largest difference of the output from ``math``'s, and the GPU
kernels that ran (the two longest, from ``torch.profiler``). ``flash, no mask`` is the same call with
no mask at all: what the masked kernels are measured against, not a substitute for them. A kernel that
refuses the call prints why.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
    "flash, no mask": SDPBackend.FLASH_ATTENTION,
}


def masked_inputs(
    batch: int, heads: int, queries: int, keys: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, L_q, D), k, v (B, H, L_k, D) that need gradients, and a key mask (B, L_k) keeping a
    random prefix of at least one key per row (seeded)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, generator=gen).to(device, dtype).requires_grad_()
        for length in (queries, keys, keys)
    )
    kept = torch.randint(1, keys + 1, (batch, 1), generator=gen)
    mask = (torch.arange(keys)[None] < kept).to(device)
    return q, k, v, mask


def attention_call(kernel: str, q, k, v, mask) -> Callable[[], torch.Tensor]:
    """One forward + backward of the masked attention (no mask for ``flash, no mask``) on ``kernel``."""
    attn_mask = None if kernel == "flash, no mask" else mask[:, None, None, :]

    def run() -> torch.Tensor:
        with sdpa_kernel([KERNELS[kernel]]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out.backward(torch.ones_like(out))
        return out.detach()

    return run


def seconds_per_call(run: Callable[[], torch.Tensor], repeat: int, device: torch.device) -> float:
    run()  # warm-up: kernel selection, cuDNN's plan for these shapes
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat


def longest_kernels(run: Callable[[], torch.Tensor], device: torch.device, top: int = 2) -> list[str]:
    """The names of the ``top`` GPU kernels with the most time in one call (empty on the CPU)."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    return [e.key[:60] for e in events[:top]]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--queries", type=int, default=64, help="L_q: the latent slots (S x N)")
    parser.add_argument("--keys", type=int, nargs="+", default=[64, 68], help="L_k values to time")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for keys in args.keys:
        q, k, v, mask = masked_inputs(
            args.batch, args.heads, args.queries, keys, args.head_dim, device, dtype
        )
        reference = attention_call("math", q, k, v, mask)()
        print(
            f"B={args.batch} H={args.heads} L_q={args.queries} L_k={keys} D={args.head_dim} {dtype} on {device}"
        )
        for kernel in KERNELS:
            run = attention_call(kernel, q, k, v, mask)
            try:
                out = run()
            except RuntimeError as err:  # "No available kernel": the kernel refuses these inputs
                print(f"  {kernel:15s} not available: {str(err).splitlines()[0][:150]}")
                rows.append({"keys": keys, "kernel": kernel, "ms": None})
                continue
            ms = 1000 * seconds_per_call(run, args.repeat, device)
            diff = (
                "-"
                if kernel == "flash, no mask"
                else f"{(out.float() - reference.float()).abs().max().item():.2e}"
            )
            names = ", ".join(longest_kernels(run, device))
            print(f"  {kernel:15s} {ms:8.3f} ms forward+backward   max |out - math| {diff:>8s}   {names}")
            rows.append({"keys": keys, "kernel": kernel, "ms": ms})
            q.grad = k.grad = v.grad = None
    return rows


if __name__ == "__main__":
    main()

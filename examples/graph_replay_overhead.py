"""sld's CUDA-graph backends side by side in one run (a GPU): static_graphs, torch's "cudagraphs", Inductor's.

    python examples/graph_replay_overhead.py             # a random LM of SmolLM2-135M's shape
    python examples/graph_replay_overhead.py --lm PATH   # a saved causal LM (random weights time the same)

Times, for each backend of ``sld.models.cuda_graphs`` (``--backends``: ``static``, sld's default;
``cudagraphs``, torch's, which copies every weight at each replay; ``inductor``, Inductor's fused kernels
in its own CUDA graphs), with grouped-head attention as transformers runs it under dynamo (the cache's
key/value heads repeated for their query heads) and/or packed (``--packed-gqa``; ``SLD_PACKED_GQA=1``,
``sld.models.packed_gqa``), after warm-up calls that trace, compile and record:
- the static-cache one-token step of the LM (``StaticStepper.step``) at each --rows, alone;
- a whole static decode (``decode_static``: --tokens greedy tokens after a 16-token prompt, no eos) of
  --decode-rows rows (64);
- with --vary-rows: a whole static decode at 256 rows, then one whose row count changes at every call
  (241, 242, ..., 272 in turn, as SLD's segment rows change from batch to batch); with the row buckets of
  ``sld.models.static_decoding`` both run graphs traced once (256 and 320 rows), so the second costs
  about what 320 rows cost, not a trace per call;
- one forward of a denoiser of the ROC profile's size (512 wide, or --denoiser-width; 8 blocks, 4
  segments of 16 x 64 latents, 64-token context) through ``graphed_denoiser`` at --denoiser-batch;
- ten DPM-Solver++ steps with guidance 2 (``sample_latents(graphed=True)``) with that denoiser at
  --denoiser-batch, the scheduler's own step after the denoiser's graph (``SLD_FUSED_SAMPLER=0``) and
  each step as one graph (``SLD_FUSED_SAMPLER=1``, ``sld.diffusion.linear_steps``); their ratio is
  printed per backend at the end.
Prints a row per case as it is measured (a case that fails, out of memory or otherwise, is a row too):
the seconds of the first call (trace, compile, record), the median wall time of --repeats runs (each
--calls calls, synchronised), the CPU time the calling thread spent per call, the peak memory, torch's
cudagraph_skips count, and whether the output equals the first setting's (static_graphs and torch's
run the same kernels and agree to the bit; Inductor's fused kernels and the packed attention may
differ in the last bits, so the largest absolute difference is printed too); then each setting's time
over the first setting's. The denoiser has no grouped heads: it runs once per backend.
2026-12-03: the first H200 run of this ran out of memory before printing: its token-step case ran
without ``torch.no_grad`` (decoding itself runs under it), so every step was traced for training and
kept its activations (on a CPU the same mistake grew the process from 7 to 23 GB between 10 and 100
calls per case). Fixed; the LM and denoiser are also frozen (``requires_grad_(False)``).
``--device cpu`` runs the same code without graphs (a smoke test: the timings then mean nothing;
``--layers 1 --vocab-size 512`` keeps it short).
Each token-step call writes one more position of its static cache, so --cache-len must exceed the
calls of a case (3 warm-ups + --calls x --repeats + 1).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from sld.diffusion import sampling
from sld.models import cuda_graphs, packed_gqa, static_decoding
from sld.models.causal_decoding import DecodeSettings
from sld.models.denoiser import SegmentDiT

# SmolLM2-135M-Instruct's shape (its config.json)
SMOLLM2_SHAPE = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
    tie_word_embeddings=True, rms_norm_eps=1e-5,
)  # fmt: skip
# label -> $SLD_GRAPH_BACKEND; static_graphs first: the ratios are taken against it
BACKENDS = {
    "static_graphs (sld)": "static",
    "cudagraphs (torch)": "cudagraphs",
    "inductor + its graphs": "inductor",
}


def use_backend(choice: str, packed: bool) -> None:
    """Make sld's static decoding and graphed denoiser compile with ``choice`` from now on, the
    one-token attention packed or not."""
    os.environ[cuda_graphs.GRAPH_BACKEND_ENV] = choice
    os.environ[packed_gqa.PACKED_GQA_ENV] = "1" if packed else "0"
    torch._dynamo.reset()
    static_decoding._STEPPERS.clear()
    cuda_graphs.clear_replays()  # the denoiser's and the fused sampler step's graphs
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], calls: int, repeats: int, warmup: int = 3) -> tuple[float, float, float]:
    """(seconds of the first call, median wall ms per call, median CPU ms per call of this thread)."""
    first = time.perf_counter()
    fn()
    synchronize()
    first = time.perf_counter() - first
    for _ in range(warmup - 1):
        fn()
    synchronize()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            fn()
        cpu = time.thread_time() - cpu
        synchronize()
        walls.append((time.perf_counter() - wall) * 1000 / calls)
        cpus.append(cpu * 1000 / calls)
    return first, statistics.median(walls), statistics.median(cpus)


def token_step_case(lm, rows: int, cache_len: int) -> Callable[[], torch.Tensor]:
    stepper = static_decoding.stepper_for(lm, compile_step=True)
    cache = stepper.cache(rows, cache_len, lm.dtype, lm.device)
    ids = torch.zeros(rows, 1, dtype=torch.long, device=lm.device)
    positions = torch.full((rows, 1), cache_len // 2, dtype=torch.long, device=lm.device)
    mask = torch.ones(rows, cache.layers[0].max_cache_len, dtype=torch.long, device=lm.device)

    def run() -> torch.Tensor:
        # as decode_static: no_grad (a step traced with gradients keeps its activations), and the
        # attention packed when SLD_PACKED_GQA=1
        with torch.no_grad(), packed_gqa.packed_gqa(lm):
            return stepper.step(cache, ids, positions, mask)

    return run


def decode_case(lm, rows: int | range, tokens: int) -> Callable[[], torch.Tensor]:
    """A static decode of ``rows`` rows; a range: the next count of it at every call, in turn."""
    counts = rows if isinstance(rows, range) else range(rows, rows + 1)
    gen = torch.Generator(device=lm.device).manual_seed(0)
    prompts = torch.randint(0, lm.config.vocab_size, (max(counts), 16), device=lm.device, generator=gen)
    settings = DecodeSettings(max_new_tokens=tokens, static_cache=True)
    calls = itertools.count()

    def run() -> torch.Tensor:
        rows = counts[next(calls) % len(counts)]
        prompt = prompts[:rows]
        cache = DynamicCache()
        with torch.no_grad():
            logits = lm(input_ids=prompt, past_key_values=cache, use_cache=True).logits[:, -1]
        first = logits.argmax(-1)
        positions = torch.full((rows,), 16, dtype=torch.long, device=lm.device)
        return static_decoding.decode_static(lm, cache, first, positions, -1, 0, settings, compile_step=True)

    return run


def denoiser_case(model: SegmentDiT, batch: int) -> Callable[[], torch.Tensor]:
    cfg = model.config
    gen = torch.Generator(device=model.device).manual_seed(0)
    shape = (batch, cfg.max_segments, cfg.num_latents, cfg.latent_dim)
    latents = torch.randn(shape, device=model.device, generator=gen, dtype=model.dtype)
    t = torch.full((batch,), 500, device=model.device)
    context = torch.randn(batch, 64, cfg.context_dim, device=model.device, generator=gen, dtype=model.dtype)
    context_mask = torch.ones(batch, 64, dtype=torch.bool, device=model.device)
    segment_mask = torch.ones(batch, cfg.max_segments, dtype=torch.bool, device=model.device)
    forward = sampling.graphed_denoiser(model)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return forward(latents, t, context, context_mask, segment_mask)

    return run


def sampling_case(model: SegmentDiT, batch: int, fused: bool) -> Callable[[], torch.Tensor]:
    """Ten DPM-Solver++ steps (guidance 2) of ``model`` on a random context, fused or not."""
    cfg = model.config
    gen = torch.Generator(device=model.device).manual_seed(0)
    context = torch.randn(batch, 64, cfg.context_dim, device=model.device, generator=gen, dtype=model.dtype)
    context_mask = torch.ones(batch, 64, dtype=torch.bool, device=model.device)
    counts = torch.full((batch,), cfg.max_segments, device=model.device)
    scheduler = sampling.make_scheduler("dpm++")

    def run() -> torch.Tensor:
        previous = os.environ.get(sampling.FUSED_SAMPLER_ENV)
        os.environ[sampling.FUSED_SAMPLER_ENV] = "1" if fused else "0"
        try:
            with torch.no_grad():
                return sampling.sample_latents(
                    model, scheduler, context, context_mask, num_segments=counts, num_inference_steps=10,
                    guidance_scale=2.0, generator=torch.Generator(device=model.device).manual_seed(0),
                    graphed=True,
                )  # fmt: skip
        finally:
            if previous is None:
                os.environ.pop(sampling.FUSED_SAMPLER_ENV, None)
            else:
                os.environ[sampling.FUSED_SAMPLER_ENV] = previous

    return run


def main(argv: list[str] | None = None) -> dict[str, dict[str, tuple[float, float, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", help="a causal LM folder (default: random weights of SmolLM2-135M's shape)")
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 64, 320])
    parser.add_argument("--cache-len", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--decode-rows", type=int, default=64, help="rows of the whole-decode case")
    parser.add_argument("--denoiser-batch", type=int, default=64)
    parser.add_argument("--denoiser-width", type=int, default=512, help="the denoiser's width (8 heads)")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--vary-rows", action="store_true", help="also decode at 256 rows, and at a new row count every call"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only as a smoke test (no graphs)")
    parser.add_argument(
        "--backends", nargs="+", choices=list(BACKENDS.values()), default=list(BACKENDS.values())
    )
    parser.add_argument(
        "--packed-gqa",
        choices=["off", "on", "both"],
        default="on",
        help="the LM cases with the grouped-head attention packed (SLD_PACKED_GQA=1, sld's default), "
        "not, or both",
    )
    parser.add_argument("--layers", type=int, help="LM and denoiser depth (default: SmolLM2's 30, 8)")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=SMOLLM2_SHAPE["vocab_size"],
        help="the random LM's vocabulary (default SmolLM2's; a CPU smoke test takes a small one: its "
        "output projection is most of a CPU token step)",
    )
    args = parser.parse_args(argv)
    step_calls = 3 + args.calls * args.repeats + 1
    if step_calls > args.cache_len:
        parser.error(
            f"a token-step case writes {step_calls} cache positions: --cache-len must be at least that"
        )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this measures CUDA-graph replays: it needs a GPU (--device cpu: a smoke test)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    if args.lm:
        lm = AutoModelForCausalLM.from_pretrained(args.lm, dtype=dtype).to(device).eval()
    else:
        shape = dict(
            SMOLLM2_SHAPE,
            num_hidden_layers=args.layers or SMOLLM2_SHAPE["num_hidden_layers"],
            vocab_size=args.vocab_size,
        )
        lm = LlamaForCausalLM(LlamaConfig(**shape)).to(device=device, dtype=dtype).eval()
    lm.requires_grad_(False)
    denoiser = SegmentDiT(
        latent_dim=64,
        num_latents=16,
        max_segments=4,
        width=args.denoiser_width,
        depth=args.layers or 8,
        heads=8,
    )
    with torch.no_grad():  # zero-initialised parts (adaLN-Zero, output) made random: outputs not all 0
        for parameter in denoiser.parameters():
            if torch.count_nonzero(parameter) == 0:
                parameter.normal_(std=0.02)
    denoiser = denoiser.to(device=device, dtype=dtype).eval().requires_grad_(False)
    cases = {f"token step, {rows} rows": (lambda rows=rows: token_step_case(lm, rows, args.cache_len))
             for rows in args.rows}  # fmt: skip
    cases[f"decode {args.tokens} tokens, {args.decode_rows} rows"] = lambda: decode_case(
        lm, args.decode_rows, args.tokens
    )
    if args.vary_rows:
        cases[f"decode {args.tokens} tokens, 256 rows"] = lambda: decode_case(lm, 256, args.tokens)
        cases[f"decode {args.tokens} tokens, 241-272 rows in turn"] = lambda: decode_case(
            lm, range(241, 273), args.tokens
        )
    cases[f"denoiser forward, batch {args.denoiser_batch}"] = lambda: denoiser_case(
        denoiser, args.denoiser_batch
    )
    for fused, how in ((False, "scheduler step"), (True, "fused step")):
        cases[f"dpm++ 10 steps, batch {args.denoiser_batch}, {how}"] = lambda fused=fused: sampling_case(
            denoiser, args.denoiser_batch, fused
        )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (no graphs: timings mean nothing)"
    print(f"device: {name} (torch {torch.__version__})", flush=True)
    print(
        "| case | backend | first call s | ms per call | CPU ms per call | peak GiB | graphs skipped "
        "| outputs equal (max abs diff) |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    results: dict[str, dict[str, tuple[float, float, float]]] = {name: {} for name in cases}
    outputs: dict[str, torch.Tensor] = {}
    counters = torch._dynamo.utils.counters["inductor"]
    packings = {"off": [False], "on": [True], "both": [False, True]}[args.packed_gqa]
    variants = [
        (f"{label}, packed GQA" if packed else label, choice, packed)
        for label, choice in BACKENDS.items()
        if choice in args.backends
        for packed in packings
    ]
    previous = {
        name: os.environ.get(name) for name in (cuda_graphs.GRAPH_BACKEND_ENV, packed_gqa.PACKED_GQA_ENV)
    }
    try:
        for label, choice, packed in variants:
            use_backend(choice, packed)
            for name, make in cases.items():
                if name.startswith(("denoiser", "dpm++")) and packed and False in packings:
                    continue  # no grouped heads: the same as the unpacked row
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                skips = counters["cudagraph_skips"]
                try:  # one row per case as it is measured: a failure keeps the rows before it
                    fn = make()
                    calls = (
                        4 if name.startswith("dpm++")
                        else 8 if "in turn" in name
                        else 2 if "decode" in name
                        else args.calls
                    )  # fmt: skip
                    results[name][label] = timed(fn, calls, args.repeats)
                    out = fn().detach().clone()
                except Exception as error:  # noqa: BLE001 - out of memory, or a backend that cannot
                    first_line = (str(error).splitlines() or [""])[0][:200]
                    print(f"| {name} | {label} | failed: {type(error).__name__}: {first_line} |", flush=True)
                    results[name].pop(label, None)
                    fn = None
                    continue
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
                same = compare(outputs[name], out) if name in outputs else "(first)"
                outputs.setdefault(name, out)
                first, wall, cpu = results[name][label]
                skipped = counters["cudagraph_skips"] - skips
                print(
                    f"| {name} | {label} | {first:.1f} | {wall:.3f} | {cpu:.3f} | {peak:.1f} | {skipped} | {same} |",
                    flush=True,
                )
    finally:  # the caller's choices back (the example also runs in-process, from the tests)
        for variable, value in previous.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
    for name, by_variant in results.items():
        if not by_variant:
            continue
        reference, (_, reference_wall, _) = next(iter(by_variant.items()))
        for label, (_, wall, _) in by_variant.items():
            if label != reference:
                print(f"{name}: {label} / {reference} = {wall / reference_wall:.2f}x")
    sampler = [name for name in results if name.startswith("dpm++")]
    for label in results[sampler[0]]:
        if all(label in results[name] for name in sampler):
            plain, fused = (results[name][label][1] for name in sampler)
            print(f"dpm++ 10 steps, {label}: fused step / scheduler step = {fused / plain:.2f}x")
    return results


def compare(expected: torch.Tensor, got: torch.Tensor) -> str:
    """`True`, or `False (largest absolute difference)` for tensors of one shape."""
    if torch.equal(expected, got):
        return "True"
    if expected.shape != got.shape:
        return f"False (shapes {tuple(expected.shape)} / {tuple(got.shape)})"
    diff = (expected.float() - got.float()).abs().max().item()
    return f"False ({diff:.3g})"


if __name__ == "__main__":
    main()

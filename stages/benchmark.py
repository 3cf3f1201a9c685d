"""Benchmark SLD against the AR baseline: speed, fewest sampling steps, time against document length.

    sld benchmark -c configs/benchmark.yaml mode=all input=runs/roc/segmented/valid.jsonl \
        sld_model=runs/roc/diffusion baseline_model=runs/roc/baseline output_dir=runs/roc/benchmark

``mode=speed`` (sld/eval/benchmark.py): documents/s, latency, SLD's context/denoise/decode split,
peak memory and quality of every AR decoding and SLD sampling setting at every batch size; each
row's speed over the fastest AR setting within 1 ROUGE-L of the best AR setting -> benchmark.json,
.md, .png/.svg and predictions/. ``mode=steps`` (sld/eval/step_count.py): the fewest DPM-Solver++ /
DDIM steps within 1 ROUGE-L of 250-step DDPM -> steps.json/.md/.png/.svg. ``mode=length_scaling``
(sld/eval/length_scaling.py): latency at batch 1 and throughput at batch 64 for 1..20 segments of
forced length -> length_scaling.json/.md/.png/.svg. ``mode=all`` runs the three with one model load.
Both systems decode under the same rules (sld/eval/decoding_rules.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from sld.cli import run_stage
from sld.config import config_to_dict, save_config
from sld.diffusion.sampling import FUSED_SAMPLER_ENV, fused_sampler_enabled
from sld.errors import UserError
from sld.eval.benchmark import SpeedConfig, benchmark_rows, token_step_mismatch, write_speed_report
from sld.eval.decoding_rules import BudgetRule, resolve_decoding_rules
from sld.eval.length_scaling import LengthScalingConfig, run_length_scaling, write_length_scaling_report
from sld.eval.runner import (
    load_documents,
    load_models,
    predictions_writer,
    run_speed,
    unavailable_decodings,
    unavailable_samplers,
    weights_mib,
)
from sld.eval.step_count import StepsConfig, run_steps, write_steps_report
from sld.eval.timing import cuda_graph_skips, device_description
from sld.models.cuda_graphs import (
    DEFAULT_GRAPH_BACKEND,
    DENOISER_GRAPH_BACKEND_ENV,
    GRAPH_BACKEND_ENV,
    graph_backend_choice,
)
from sld.models.packed_gqa import PACKED_GQA_ENV, packed_gqa_enabled

MODES = ("speed", "steps", "length_scaling")


@dataclass
class Config(SpeedConfig):
    """The speed keys (``batch_sizes``, ``samplers``, ``decodings``, ...) are ``SpeedConfig``'s; ``steps``
    and ``length_scaling`` hold the other modes' keys. ``no_repeat_ngram_size`` null = the SLD
    pipeline's saved value (0 without one), applied to both systems; ``token_budget`` and
    ``budget_percentile``: see sld/eval/decoding_rules.py; ``*_max_new_tokens`` override them.
    ``static_cache``: both systems' causal-LM decoders use a static KV cache with the token step
    replayed as a CUDA graph (``sld.models.static_decoding``) in the speed mode; ``length_scaling.static_cache``
    sets the same for that mode."""

    output_dir: str = "runs/benchmark"
    input: str = "runs/segmented/valid.jsonl"
    sld_model: str | None = "runs/diffusion"
    baseline_model: str | None = "runs/baseline"
    mode: Literal["speed", "steps", "length_scaling", "all"] = "speed"
    no_repeat_ngram_size: int | None = None
    token_budget: BudgetRule = "saved"
    budget_percentile: float = 99.0
    sld_max_new_tokens: int | None = None
    ar_max_new_tokens: int | None = None
    static_cache: bool = False
    steps: StepsConfig = field(default_factory=StepsConfig)
    length_scaling: LengthScalingConfig = field(default_factory=LengthScalingConfig)
    seed: int = 0
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def run(cfg: Config) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    modes = MODES if cfg.mode == "all" else (cfg.mode,)
    if "steps" in modes and not cfg.sld_model:
        raise UserError("mode=steps needs sld_model (it compares SLD samplers)")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    num_docs = max(
        cfg.num_documents if "speed" in modes else 0, cfg.steps.num_documents if "steps" in modes else 0
    )
    docs = load_documents(cfg.input, num_docs) if num_docs else []
    pipe, baseline = load_models(cfg.sld_model, cfg.baseline_model, device, getattr(torch, cfg.dtype))
    weights = weights_mib(pipe, baseline)
    device_text = device_description(device)
    header = [
        f"- device: {device_text}, dtype {cfg.dtype}",
        f"- SLD: {cfg.sld_model or 'not run'}; AR baseline: {cfg.baseline_model or 'not run'}",
        "- weights (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in weights.items()),
    ]
    rules = None
    if docs:
        rules = resolve_decoding_rules(
            docs, pipe, baseline, cfg.no_repeat_ngram_size, cfg.token_budget, cfg.budget_percentile,
            cfg.sld_max_new_tokens, cfg.ar_max_new_tokens,
        )  # fmt: skip
        rules = replace(rules, static_cache=cfg.static_cache)
        header += [
            f"- input: {cfg.input} (first {len(docs)} documents)",
            f"- both systems: no_repeat_ngram_size {rules.no_repeat_ngram_size}; token budget: {rules.rule}; "
            f"{'static KV cache + CUDA-graph token step' if rules.static_cache else 'dynamic KV cache'}",
        ]
    results: dict[str, Any] = {}
    if "speed" in modes:
        sink = predictions_writer(output_dir / "predictions") if cfg.save_predictions else None
        measurements = run_speed(
            cfg, pipe, baseline, docs[: cfg.num_documents], rules, device, cfg.seed, sink
        )
        rows, references = benchmark_rows(measurements, cfg.quality_tolerance)
        skipped = unavailable_decodings(baseline, cfg.decodings)
        if skipped:
            header.append(
                "- not run (beam search needs an encoder-decoder baseline, a static cache a causal-LM one): "
                f"AR {', '.join(skipped)}"
            )
        skipped_samplers = unavailable_samplers(pipe, cfg.samplers)
        if skipped_samplers:
            header.append(
                f"- not run (a static cache needs a causal-LM segment decoder): SLD {', '.join(skipped_samplers)}"
            )
        if device.type == "cuda" and pipe is not None and baseline is not None:  # graphs run on CUDA only
            mismatch = token_step_mismatch(
                [s for s in cfg.samplers if s.label not in skipped_samplers],
                [d for d in cfg.decodings if d.label not in skipped],
                graph_backend_choice(),
                rules.static_cache,
            )
            if mismatch:
                header.append(mismatch)
        warmup = "an untimed pass over its documents" if cfg.warmup else "none"
        timing = f"- timed runs per cell: {cfg.repeats} (median), warm-up: {warmup}"
        timing += f"\n{attention_line()}\n{sampler_line()}"
        if device.type == "cuda":
            timing += f"\n{graph_skips_line()}"
        extra = dict(device=device_text, dtype=cfg.dtype, weights_mib=weights, decoding_rules=rules.to_dict())
        extra["config"] = config_to_dict(cfg)
        title = f"SLD vs AR on {device_text}" if cfg.plot else None
        print(
            write_speed_report(
                output_dir, rows, references, [*header, timing], cfg.quality_tolerance, extra, title
            )
        )
        results["speed"] = rows
    if "steps" in modes:
        report = run_steps(
            cfg.steps, pipe, docs, rules, device, cfg.guidance_scale, cfg.sld_num_beams, cfg.seed
        )
        report.update(device=device_text, decoding_rules=rules.to_dict())
        print(write_steps_report(report, output_dir, header))
        results["steps"] = report
    if "length_scaling" in modes:
        report = run_length_scaling(
            cfg.length_scaling, pipe, baseline, device, cfg.guidance_scale, cfg.seed, profile_dir=output_dir
        )
        report["device"] = device_text
        lines = header[:3] + [attention_line(), sampler_line()]
        lines += [graph_skips_line()] if device.type == "cuda" else []
        print(write_length_scaling_report(report, output_dir, lines))
        results["length_scaling"] = report
    print(f"benchmark ({', '.join(modes)}) written to {output_dir}")
    return results


def attention_line() -> str:
    """The report line that says how causal-LM decoders attended over grouped key/value heads."""
    packed = packed_gqa_enabled()
    how = "packed (sld.models.packed_gqa)" if packed else "transformers' SDPA (heads repeated under a mask)"
    return f"- one-token attention over grouped key/value heads ({PACKED_GQA_ENV}={int(packed)}): {how}"


def sampler_line() -> str:
    """The report line that says whether static-cache SLD settings ran each DDIM / DPM-Solver++ step
    as one fused graph (``sld.diffusion.linear_steps``) or the scheduler's own step after the graph."""
    fused = fused_sampler_enabled()
    how = (
        "one graph a step (denoiser, guidance, the scheduler's update as a linear map)"
        if fused
        else "the scheduler's own step, eagerly, after the denoiser's graph"
    )
    return f"- DDIM / DPM-Solver++ steps of static-cache settings ({FUSED_SAMPLER_ENV}={int(fused)}): {how}"


def graph_skips_line() -> str:
    """The report line that says which backend recorded the static-cache settings' CUDA graphs and
    whether they really ran as graphs."""
    backend = os.environ.get(GRAPH_BACKEND_ENV, DEFAULT_GRAPH_BACKEND)
    denoiser = os.environ.get(DENOISER_GRAPH_BACKEND_ENV)
    own = f", {DENOISER_GRAPH_BACKEND_ENV}={denoiser} for SLD's denoiser" if denoiser else ""
    return (
        f"- CUDA graphs ({GRAPH_BACKEND_ENV}={backend}{own}; a setting labelled [backend] used its own for "
        f"all its graphs): torch ran {cuda_graph_skips()} compiled "
        "function(s) of this run without them (its cudagraph_skips counter; 0 = every static-cache "
        "step was replayed as a graph)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

"""What a compiled autoencoder step still runs eagerly: the aten operations outside its compiled graphs (CPU).

    python examples/eager_remainder.py -c configs/autoencoder_roc.yaml data.segmented_dir=runs/roc/segmented_all \\
        data.pairs_train=../shared/data/roc/pairs_train.jsonl data.fixed_decoder_length=true [--rows 8] [--top 15]

On an H200 the compiled ROC autoencoder's device idled 58% of its step while the host issued the
step's 3,078 launches (docs/results.md, twenty-eighth session). The host pays for every eager aten
operation (dispatch, then a launch) and for every call of a compiled graph (guards, wrappers, the
graph's launches). This compiles the model's repeated blocks as ``loop.compile`` does, and the
losses' token cross-entropy as ``compiled_losses`` does, but with a backend that runs each graph's
own code inside a profiler range (no Inductor: the counts, not the kernels, and no compile time);
runs one step to trace, then profiles the next under bfloat16 autocast and prints, for the losses'
forward and for the backward:
- the calls of compiled graphs;
- the aten operations dispatched outside them, top level only (an operation's own sub-operations
  are not counted), by name, and how many of them are not views or allocations (``NO_KERNEL_OPS``:
  the others may each launch a kernel on a GPU; a cast to the dtype a tensor has launches none);
- forward: by the sld source line that called them; backward: by the autograd node that ran them.
Counts, not times: on the CPU an operation's cost is not the GPU host's. The model and batch are the
trainer's (``sld.autoencoder_trainer.sample_training_batch``), with the encoder-state cache when the
config has one.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

GRAPH_RANGE = "sld.compiled_graph"  # the profiler range around every compiled graph's call
# aten operations that only make a new view of a tensor (or a tensor of no data yet): no kernel launch
NO_KERNEL_OPS = frozenset(
    "aten::" + name
    for name in (
        "detach alias view reshape _reshape_alias _unsafe_view t transpose permute expand slice select "
        "unsqueeze squeeze flatten unflatten split split_with_sizes chunk narrow as_strided unbind "
        "lift_fresh empty empty_like new_empty empty_strided"
    ).split()
)


def recorded_backend() -> Callable[..., Any]:
    """A ``torch.compile`` backend: AOTAutograd's forward and backward graphs, each run as traced (its
    aten operations, no fusion) inside a ``GRAPH_RANGE`` profiler range."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def compiler(kind: str) -> Callable[..., Any]:
        def compile_graph(graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            inner = make_boxed_func(graph_module.forward)

            def run(args: list[Any]) -> Any:
                with record_function(f"{GRAPH_RANGE}:{kind}"):
                    return inner(args)

            run._boxed_call = True  # AOTAutograd passes the arguments as one list
            return run

        return compile_graph

    return aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))


@dataclass
class Remainder:
    """One phase's census: compiled graph calls, top-level eager aten ops by name and by origin."""

    graph_calls: int = 0
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    origins: collections.Counter[str] = field(default_factory=collections.Counter)


def _origin(ancestors: list[Any]) -> str:
    """Where an eager op came from: the innermost sld source line among its ancestors (the profiler's
    Python frames), else the autograd node whose backward ran it, else ``?`` (torch's own code,
    e.g. the wrappers around compiled graphs)."""
    for ancestor in ancestors:
        where = ancestor.name.replace("\\", "/")
        if re.match(r"(.*/)?sld/[\w/]+\.py\(\d+\)", where) and "autoencoder_trainer.py" not in where:
            return "sld/" + where.rsplit("sld/", 1)[1]
        if where.startswith("autograd::engine::evaluate_function: "):
            return where.split(": ", 1)[1]
    return "?"


def census(events: list[Any], phase_range: str) -> Remainder:
    """The ``Remainder`` of the profiled events under ``phase_range`` (a record_function name)."""
    found = Remainder()
    for event in events:
        ancestors = []
        parent = event.cpu_parent
        while parent is not None:
            ancestors.append(parent)
            parent = parent.cpu_parent
        names = [a.name for a in ancestors]
        if phase_range not in names:
            continue
        if event.name.startswith(GRAPH_RANGE):
            found.graph_calls += 1
            continue
        if not event.name.startswith("aten::"):
            continue
        if any(n.startswith("aten::") or n.startswith(GRAPH_RANGE) for n in names):
            continue  # a sub-operation, or inside a compiled graph
        found.ops[event.name] += 1
        found.origins[_origin(ancestors)] += 1
    return found


def profiled_step(config: str, overrides: list[str], rows: int, documents: int) -> list[Any]:
    """The profiler events of the second compiled training step of ``config`` (the first traces)."""
    import sld.losses
    from sld.autoencoder_objective import autoencoder_losses
    from sld.autoencoder_trainer import AutoencoderTrainingConfig, sample_training_batch, training_loop
    from sld.compilation import compile_model, compiled_losses, retained_graphs
    from sld.config import load_config

    cfg = load_config(AutoencoderTrainingConfig, config, overrides)
    work_dir = Path(tempfile.mkdtemp(prefix="eager_remainder_"))
    model, batch = sample_training_batch(cfg, documents, rows, work_dir)
    backend = recorded_backend()
    loop = training_loop(cfg)  # the trainer's compile settings (shape-generic unless fixed_decoder_length)
    compile_model(model, backend=backend, only=loop.compile_blocks, dynamic=loop.compile_dynamic)
    chunk_nll = torch.compile(sld.losses._chunk_nll, backend=backend, dynamic=True)
    original = sld.losses.compiled_chunk_nll
    sld.losses.compiled_chunk_nll = lambda: chunk_nll

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with record_function("sld.forward"):
            terms = autoencoder_losses(model, batch, cfg.losses, training=True)
        with record_function("sld.backward"):
            terms["loss"].backward()

    try:
        with retained_graphs(), compiled_losses(), torch.autocast("cpu", dtype=torch.bfloat16):
            step()  # traces the graphs
            with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
                step()
    finally:
        sld.losses.compiled_chunk_nll = original
    return list(prof.events())


def report(name: str, found: Remainder, top: int) -> list[str]:
    total = sum(found.ops.values())
    launching = sum(count for op, count in found.ops.items() if op not in NO_KERNEL_OPS)
    lines = [
        f"{name}: {found.graph_calls} compiled graph calls, {total} eager aten ops outside them, "
        f"{launching} of them not views or allocations (at most that many kernel launches)"
    ]
    lines += [f"  {count:5d} x {op}" for op, count in found.ops.most_common(top)]
    lines.append("  by origin:")
    lines += [f"  {count:5d} x {origin}" for origin, count in found.origins.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="an autoencoder training config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument(
        "--rows", type=int, default=8, help="training rows in the step (counts barely depend on it)"
    )
    parser.add_argument(
        "--documents", type=int, default=100, help="training documents to build the model from"
    )
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    events = profiled_step(args.config, args.overrides, args.rows, args.documents)
    lines = report("forward", census(events, "sld.forward"), args.top)
    lines += report("backward", census(events, "sld.backward"), args.top)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()

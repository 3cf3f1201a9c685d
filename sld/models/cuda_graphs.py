"""A ``torch.compile`` backend that replays a graph as a CUDA graph with the model's weights in place.

torch's own backend ``"cudagraphs"`` keeps only the arguments that AOTAutograd lifts (parameters of
modules dynamo did not inline) at fixed addresses. Dynamo now always inlines ``nn.Module`` calls, so a
module's parameters are plain graph inputs to it, and every replay copies every parameter into the
graph's own buffers. It also has AOTAutograd functionalise writes into its inputs, so a ``StaticCache``
update becomes a new whole cache tensor that the caller copies back. On an H200 (2026-12-03, torch
profile of one SLD batch of 64 documents with SmolLM2, 320 decoder rows) a replay of the one-token step
cost about 340 copies and 4.5 ms of CPU time (``aten::_foreach_copy_``), against about 5.8 ms of GPU
time for the step.

``static_graphs`` is the same recipe with what Inductor's own CUDA graphs (``mode="reduce-overhead"``)
treat as static: AOTAutograd's fixed arguments plus its ``static_input_indices`` (parameters, buffers
and tensors given to ``torch._dynamo.mark_static_address``, as transformers' ``StaticCache`` does). Those
are used where they are; writes into them stay inside the graph (``keep_inference_input_mutations``).
Only the other inputs (token ids, positions, masks, latents) are copied at each replay. A graph that
would write into a copied input, or has CPU tensors or ops CUDA graphs cannot hold, runs without a
graph and bumps torch's ``cudagraph_skips`` counter, as the stock backend does (the benchmark reports
it). If the weights move (another model through one compiled function), CUDA-graph trees record anew.

Status: the default (``SLD_GRAPH_BACKEND=static``; ``replay_backend``); ``SLD_GRAPH_BACKEND=cudagraphs``
selects torch's. Measured on an H200 on 2026-12-03 (docs/results.md, tenth session):
``examples/graph_replay_overhead.py`` gave the same outputs to the bit with 0.7-0.9 ms of CPU time per
SmolLM2 token step against 5.3-10.1 ms, and steps 1.18-1.48x faster; ``sld benchmark`` on the same ROC
models gave AR greedy static 179.47 against 147.17 documents/s and SLD DPM-Solver++ 10 static 323.19
against 271.80 at batch 64, the same ROUGE-L, 0 graphs skipped.

Inference only (sampling and decoding run under ``torch.no_grad``); a graph that needs gradients runs
eagerly. ``graph_plan`` is the static/mutated split itself, so a CPU test can check it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from sld.errors import UserError

# torch's private helpers (those its own "cudagraphs" backend is built from) are imported where they
# are used: importing sld stays as fast as before, and a torch that moved one fails at compile time,
# naming it, not at import.

Runner = Callable[..., Any]


@dataclass(frozen=True)
class GraphPlan:
    """How one AOT inference graph is replayed.

    static: indices of its inputs used in place (weights, static buffers).
    mutated: indices of the inputs it writes into.
    skip: why it runs without a CUDA graph, or None.
    """

    static: list[int]
    mutated: set[int]
    skip: str | None


def static_input_indices(num_fixed: int) -> list[int]:
    """AOTAutograd's fixed arguments plus the inputs it marked static (parameters, buffers, tensors
    passed through ``torch._dynamo.mark_static_address``), as Inductor's CUDA graphs take them."""
    indices = set(range(num_fixed))
    context = torch._guards.TracingContext.try_get()
    if context is not None and context.fw_metadata is not None:
        indices.update(context.fw_metadata.static_input_indices)
    return sorted(indices)


def graph_plan(aot_model: torch.fx.GraphModule, num_aot_inputs: int, num_dynamo_inputs: int) -> GraphPlan:
    """The static inputs, the written ones, and whether the graph can be replayed at all."""
    from torch._dynamo.backends import cudagraphs as stock
    from torch._inductor.cudagraph_utils import (
        check_multiple_devices_or_any_cpu_nodes,
        get_mutation_stack_trace,
        get_placeholder_info,
    )
    from torch._inductor.utils import get_first_incompatible_cudagraph_node, num_fw_fixed_arguments

    static = static_input_indices(num_fw_fixed_arguments(num_dynamo_inputs, num_aot_inputs))
    mutated = stock.find_input_mutations(aot_model.graph)
    skip = None
    copied_and_written = mutated - set(static)
    if copied_and_written:
        placeholders = get_placeholder_info(aot_model.graph)
        skip = get_mutation_stack_trace(placeholders, copied_and_written)
    elif reason := check_multiple_devices_or_any_cpu_nodes(stock.get_device_node_mapping(aot_model)):
        skip = reason
    elif node := get_first_incompatible_cudagraph_node(aot_model):
        skip = f"skipping cudagraphs due to incompatible op ({node.name})"
    return GraphPlan(static=static, mutated=mutated, skip=skip)


def _cuda_graph_runner(
    interp: Runner, aot_model: torch.fx.GraphModule, aot_inputs: list[Any], plan: GraphPlan
) -> Runner:
    from torch._dynamo.backends import cudagraphs as stock
    from torch._inductor.cudagraph_trees import cudagraphify_impl
    from torch._inductor.cudagraph_utils import get_placeholder_info

    return cudagraphify_impl(
        interp,
        aot_inputs,
        plan.static,
        device_index=stock.get_device_index(aot_model),
        is_backward=False,
        is_inference=True,
        stack_traces=stock.get_stack_traces(aot_model),
        placeholders=get_placeholder_info(aot_model.graph),
        mutated_input_idxs=plan.mutated,
    )


def static_graphs_backend(
    runner: Callable[[Runner, torch.fx.GraphModule, list[Any], GraphPlan], Runner] = _cuda_graph_runner,
    inspect: Callable[[torch.fx.GraphModule, GraphPlan], None] | None = None,
) -> Callable[[torch.fx.GraphModule, Sequence[Any]], Any]:
    """A ``torch.compile`` backend; ``runner`` turns (eager interpreter, AOT graph, inputs, plan) into
    what runs (default: a CUDA graph); ``inspect`` sees (dynamo's graph, plan) of every graph, even
    one that runs without a CUDA graph (tests: on a CPU every graph does).
    """

    def backend(dynamo_model: torch.fx.GraphModule, dynamo_inputs: Sequence[Any]) -> Any:
        from torch._dynamo.backends.common import aot_autograd
        from torch._dynamo.backends.debugging import boxed_nop
        from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

        num_dynamo_inputs = len(dynamo_inputs)

        def inference(aot_model: torch.fx.GraphModule, aot_inputs: list[Any]) -> Runner:
            interp = boxed_nop(aot_model, aot_inputs)
            plan = graph_plan(aot_model, len(aot_inputs), num_dynamo_inputs)
            if inspect is not None:
                inspect(dynamo_model, plan)
            if plan.skip is not None:
                log_cudagraph_skip_and_bump_counter(f"static_graphs: {plan.skip}")
                return interp
            out = runner(interp, aot_model, aot_inputs, plan)
            out._boxed_call = True
            return out

        def training(aot_model: torch.fx.GraphModule, aot_inputs: list[Any]) -> Runner:
            log_cudagraph_skip_and_bump_counter("static_graphs: a graph that needs gradients runs eagerly")
            return boxed_nop(aot_model, aot_inputs)

        compile_with_aot = aot_autograd(
            fw_compiler=training,
            inference_compiler=inference,
            keep_inference_input_mutations=True,
        )
        return compile_with_aot(dynamo_model, dynamo_inputs)

    return backend


# the backend sld's static decoding and graphed denoiser compile with on a GPU when chosen
static_graphs = static_graphs_backend()


def inductor_graphs(graph_module: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
    """Inductor's generated (fused) kernels, replayed by Inductor's own CUDA-graph trees: what
    ``torch.compile(mode="reduce-overhead")`` does, as a backend callable.

    Those trees also keep parameters and ``mark_static_address`` tensors in place. The difference
    from ``static_graphs``: fewer, fused kernels per replay (a step of many small kernels is bound by
    their count on the GPU once the host copies are gone), against minutes of code generation per
    new shape for a 30-layer LM, and outputs that may differ in the last bits (other kernels).
    Opt-in (``SLD_GRAPH_BACKEND=inductor``) until measured on a GPU
    (``examples/graph_replay_overhead.py`` times it beside the two others, first call included).
    """
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph_module, list(example_inputs), config_patches={"triton.cudagraphs": True})


# SLD_GRAPH_BACKEND: "static" (static_graphs; the default), "cudagraphs" (torch's backend) or
# "inductor" (inductor_graphs; opt-in)
GRAPH_BACKEND_ENV = "SLD_GRAPH_BACKEND"
GRAPH_BACKENDS = ("static", "cudagraphs", "inductor")
DEFAULT_GRAPH_BACKEND = "static"


# SLD_DENOISER_GRAPH_BACKEND: the same choices for SLD's denoiser graphs alone (graphed_denoiser and the
# fused sampler step); unset, they follow SLD_GRAPH_BACKEND. A denoiser forward at batch 64 took 0.47x
# the time with "inductor" on an H200 (docs/results.md, twelfth session), while the LM's token step
# (both systems') keeps the default: an A/B of the denoising part of SLD's time alone.
DENOISER_GRAPH_BACKEND_ENV = "SLD_DENOISER_GRAPH_BACKEND"


# denoiser_graph_backend's choice inside its block (a benchmark sampler setting's own backend)
_DENOISER_BACKEND: ContextVar[str | None] = ContextVar("sld_denoiser_graph_backend", default=None)
# graph_backend's choice inside its block: every graph's backend (a benchmark setting's own)
_GRAPH_BACKEND: ContextVar[str | None] = ContextVar("sld_graph_backend", default=None)


@contextlib.contextmanager
def _chosen_backend(variable: ContextVar[str | None], choice: str | None, key: str) -> Iterator[None]:
    """``variable`` holds ``choice`` inside the block (checked first: an unknown name is a ``UserError``
    naming ``key``); None changes nothing."""
    if choice is None:
        yield
        return
    graph_backend_choice(choice, key)
    token = variable.set(choice)
    try:
        yield
    finally:
        variable.reset(token)


def graph_backend(choice: str | None) -> contextlib.AbstractContextManager[None]:
    """Inside the block every CUDA-graph replay of sld (the LM's token step, the context encoder, and
    the denoiser unless ``denoiser_graph_backend`` names its own) uses backend ``choice`` (one of
    ``GRAPH_BACKENDS``) before ``$SLD_GRAPH_BACKEND`` and ``$SLD_DENOISER_GRAPH_BACKEND``; None changes
    nothing. A benchmark setting's own backend: both token-step backends in one table, so that the AR
    reference is the fastest of them (on an H200 Inductor's token step took both systems' documents/s
    to 2.06-2.10x the static graphs': docs/results.md, eighteenth session)."""
    return _chosen_backend(_GRAPH_BACKEND, choice, "graph_backend")


def denoiser_graph_backend(choice: str | None) -> contextlib.AbstractContextManager[None]:
    """Inside the block SLD's denoiser graphs use backend ``choice`` (one of ``GRAPH_BACKENDS``) before
    ``graph_backend``'s and ``$SLD_DENOISER_GRAPH_BACKEND``; None changes nothing. The LM's token step
    keeps its own."""
    return _chosen_backend(_DENOISER_BACKEND, choice, "denoiser_backend")


def denoiser_replay_backend(device: torch.device) -> str | Callable[..., Any]:
    """The backend of the denoiser's CUDA-graph replays on ``device``: ``denoiser_graph_backend``'s
    inside its block, else ``graph_backend``'s inside its block, else ``$SLD_DENOISER_GRAPH_BACKEND``
    when set (the choices of ``replay_backend``), else ``replay_backend(device)``'s."""
    chosen = _DENOISER_BACKEND.get()
    if chosen is not None:
        return replay_backend(device, chosen, "denoiser_backend")
    if _GRAPH_BACKEND.get() is not None:
        return replay_backend(device)
    return replay_backend(
        device, os.environ.get(DENOISER_GRAPH_BACKEND_ENV) or None, DENOISER_GRAPH_BACKEND_ENV
    )


def graph_backend_choice(choice: str | None = None, variable: str = GRAPH_BACKEND_ENV) -> str:
    """The name of the backend ``replay_backend`` uses on CUDA: ``choice``, else ``graph_backend``'s
    inside its block, else ``$SLD_GRAPH_BACKEND``, else the default; an unknown name is a ``UserError``
    naming ``variable``."""
    if not choice and _GRAPH_BACKEND.get() is not None:
        choice, variable = _GRAPH_BACKEND.get(), "graph_backend"
    if not choice:
        choice, variable = os.environ.get(GRAPH_BACKEND_ENV, DEFAULT_GRAPH_BACKEND), GRAPH_BACKEND_ENV
    if choice not in GRAPH_BACKENDS:
        raise UserError(f"{variable}={choice!r}: expected one of {', '.join(GRAPH_BACKENDS)}")
    return choice


def replay_backend(
    device: torch.device, choice: str | None = None, variable: str = GRAPH_BACKEND_ENV
) -> str | Callable[..., Any]:
    """The backend of sld's CUDA-graph replays on ``device``.

    On CUDA, ``$SLD_GRAPH_BACKEND``: ``"static"`` (``static_graphs``, weights and static cache used in
    place; the default since 2026-12-03), torch's ``"cudagraphs"`` (every weight copied at each
    replay; the backend of the GPU figures in docs/results.md before the tenth H200 session) or
    ``"inductor"`` (``inductor_graphs``: fused kernels in Inductor's CUDA graphs; opt-in, unmeasured).
    Elsewhere dynamo's ``"eager"`` backend (the traced graph runs as it is: a graph break is still an
    error under ``fullgraph``). ``choice`` overrides the environment (``variable`` names where it came
    from in an error).
    """
    if device.type != "cuda":
        return "eager"
    choice = graph_backend_choice(choice, variable)
    return {"static": static_graphs, "cudagraphs": "cudagraphs", "inductor": inductor_graphs}[choice]


# replayed's compiled functions: one per (function, device type, backend)
_REPLAYED: dict[tuple[Callable[..., Any], str, Any], Callable[..., Any]] = {}


def replayed(
    fn: Callable[..., Any], device: torch.device, backend: Any, recompile_limit: int | None = None
) -> Callable[..., Any]:
    """``fn`` under ``torch.compile(backend=backend, fullgraph=True, dynamic=False)``: dynamo traces it
    once per input shape and every later call replays the recorded graph (a graph break is an error).
    Compiled once per (``fn``, device type, backend) and kept for the process; a module ``fn`` reads
    is one of its arguments, so no model is kept alive here. ``recompile_limit``: raise dynamo's limit
    of graphs per function to at least this (one graph per shape met)."""
    key = (fn, device.type, backend)
    step = _REPLAYED.get(key)
    if step is None:
        if recompile_limit is not None:
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, recompile_limit)
        step = _REPLAYED[key] = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)
    return step


def clear_replays() -> None:
    """Forget every function ``replayed`` compiled (after ``torch._dynamo.reset()``: the next call
    compiles anew, e.g. with another backend's settings)."""
    _REPLAYED.clear()

"""``loop.compile``: ``torch.compile`` the repeated blocks of a model (regional compilation).

A transformer is mostly one block repeated: the denoiser's 12 DiT blocks, SmolLM2's 30 decoder
layers, MiniLM's 6 encoder layers. Compiling the whole model traces and compiles every block
again, and once more per variant (training and ``no_grad`` forwards, the first change of a sequence
length); ``examples/compile_time.py`` times both (figures in ``docs/results.md``). Compiling each block in place
(``nn.Module.compile``) compiles the block's code once per variant and reuses the graph for every
block of the same shape, since the parameters are graph inputs, not constants. The fusion that
matters (norms, modulations, activations, residual adds between two matrix products) happens inside
the blocks; what stays eager around them (embeddings, heads, most losses) is a few kernels. The
token cross-entropy over a large vocabulary is the exception: it is compiled too (``compiled_losses``;
in the AR baseline's step on an H200 its log-softmax and backward took 9.7% of the device time, and
the float32 copies among the 6.5% of ``aten::copy_``).

Evaluation inside ``fit`` runs under ``eager()``: generation calls the blocks with other shapes and
without gradients (key/value caches, one token at a time), each a new graph to compile, for a few
calls. ``uncompile`` turns the blocks back into plain modules once training is done.

A block whose code reads one of its own integer attributes (a layer index, as a causal LM's
attention does when it writes a key/value cache, which the SmolLM2 autoencoder's kv conditioning
does in training) gets a graph of its own per block, since dynamo treats such integers as
constants. torch's default of 8 graphs per function would then run every block past the eighth
eagerly, with only a warning; ``compile_model`` raises that limit to 4 graphs per block, so such a
model compiles every block (at the whole model's compile time) rather than running most of it eagerly.

Inductor's coalescing analysis (``triton.coalesce_tiling_analysis``, on by default) is switched off
for these blocks: it does not support dynamic shapes, which a block gets once it meets a second
sequence length, yet it runs on them, and in torch 2.11 an assertion in it
(``tiling_utils.get_pw_red_splits``) stopped the compiled SmolLM2 autoencoder at its first step on
an H200 (its Perceiver layer, at the contrastive positives' length; docs/results.md, 2026-12-03).

Blocks compiled for any shape (``dynamic=True``), and the compiled token cross-entropy (always
shape-generic), also go without Inductor's mix-order reductions
(``triton.mix_order_reduction``: a row reduction and a column reduction, as in a norm's backward,
in one kernel whose partial column sums a second step adds up) on torch releases before 2.13. Their
code generator wrote that second step's slice of the workspace without parentheses (``0 * a*b + c*16
: (0 + 1) * a*b + c*16`` for ``(a*b + c) * 16``), right only when the number of partial sums is one
term: with both a block's batch size and length symbolic it is a sum, and on torch 2.11 on an H200
the bucketed autoencoder stopped at its first backward ("shape '[3558, 16]' is invalid for input of
size 2846", docs/results.md, 2026-12-05). torch 2.13 parenthesises it.

``repeated_blocks`` finds the blocks: the members of every ``nn.ModuleList`` (outermost ones only)
whose members are two or more modules of one class. A model without such a list is compiled whole.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import torch
import torch._functorch.config  # not imported by `import torch`: retained_graphs patches it
from torch import nn

from sld.config import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "INDUCTOR_OPTIONS",
    "inductor_options",
    "compile_model",
    "compiled_graphs",
    "compiled_losses",
    "cuda_graph_step",
    "eager",
    "losses_compiled",
    "repeated_blocks",
    "retained_graphs",
    "uncompile",
]

# Inductor settings of every compiled block (see the module docstring)
INDUCTOR_OPTIONS = {"triton.coalesce_tiling_analysis": False}
# the first torch release whose mix-order reductions are right on shape-generic graphs (module docstring)
MIX_ORDER_DYNAMIC_FIXED_IN = "2.13"


def inductor_options(
    max_autotune: bool = False,
    dynamic: bool | None = None,
    cuda_graphs: bool = False,
    extra_options: Mapping[str, Any] | None = None,
) -> dict:
    """Inductor's options for what sld compiles (the repeated blocks, ``compiled_losses``' token
    cross-entropy): ``INDUCTOR_OPTIONS``, ``max_autotune`` and ``cuda_graphs`` when asked (see
    ``compile_model``), and no mix-order reductions in shape-generic graphs
    (``dynamic=True``) on a torch older than ``MIX_ORDER_DYNAMIC_FIXED_IN`` (see the module docstring).
    ``extra_options`` (``loop.compile_options``) come last, over all of these; a name Inductor does not
    know is a ``ConfigError`` naming the key."""
    options = dict(INDUCTOR_OPTIONS)
    if max_autotune:
        options["max_autotune"] = True
    if cuda_graphs:  # what torch.compile(mode="reduce-overhead") sets, for graphs of fixed shapes only
        options["triton.cudagraphs"] = True
        options["triton.cudagraph_skip_dynamic_graphs"] = True
        options["graph_partition"] = False  # see compile_model
    if dynamic and torch.torch_version.TorchVersion(torch.__version__) < MIX_ORDER_DYNAMIC_FIXED_IN:
        options["triton.mix_order_reduction"] = False
    if extra_options:
        known = set(torch._inductor.list_options())
        unknown = sorted(str(name) for name in extra_options if name not in known)
        if unknown:
            raise ConfigError(
                f"loop.compile_options: Inductor has no option {', '.join(map(repr, unknown))} "
                "(the names of torch._inductor.config, e.g. coordinate_descent_tuning)"
            )
        options.update(extra_options)
    return options


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The members of ``model``'s outermost ``nn.ModuleList``s made of >= 2 modules of one class."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList) and len(child) >= 2 and len({type(m) for m in child}) == 1:
                found.extend(child)
            else:
                visit(child)

    visit(model)
    return found


def compile_model(
    model: nn.Module,
    backend: str = "inductor",
    only: Sequence[str] | None = None,
    max_autotune: bool = False,
    dynamic: bool | None = None,
    cuda_graphs: bool = False,
    extra_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Compile ``model``'s repeated blocks in place and return ``model``; a model without repeated
    blocks is returned as ``torch.compile(model)`` (unwrap it with ``_orig_mod``). ``backend``:
    ``torch.compile``'s (``"eager"`` traces without generating kernels: tests). ``only``: the class
    names of the blocks to compile (``loop.compile_blocks``), e.g. the blocks whose shapes never change
    (the reconstructor's ``TransformerBlock``) and not those that meet a new sequence length at every
    length-grouped batch (``T5Block``); None compiles them all. ``max_autotune``
    (``loop.compile_max_autotune``): Inductor times every matrix product of the blocks against its own
    Triton templates, which can take the following elementwise work (bias, activation) into the same
    kernel, and keeps the fastest (``torch.compile``'s ``max-autotune-no-cudagraphs``); the first steps
    then take minutes longer. ``dynamic`` (``loop.compile_dynamic``): ``torch.compile``'s; True compiles
    each block for any batch size and sequence length from its first call. With the default (None)
    a block is compiled for the first shapes it meets, and again, with the changed sizes symbolic,
    at each call that breaks the last graph's guards: batches whose shapes change at every step (the
    autoencoder's decoder buckets, ``data.decoder_buckets``) then pay a compilation at each of their
    first steps (on an H100, 2026-12-05: about 17 s a step, three steps in 101 s).

    ``cuda_graphs`` (``loop.compile_cuda_graphs``) shortens the host's work per block call, for steps
    whose device waits on the host (the compiled ROC autoencoder on an H200: device busy 42% of its
    step, docs/results.md): each block's fixed-shape forward and backward replay as CUDA graphs
    (Inductor's CUDA-graph trees, as ``mode="reduce-overhead"``; a block graph with symbolic shapes
    runs without, ``triton.cudagraph_skip_dynamic_graphs``); the caller marks each training step's
    start (``cuda_graph_step``). Inductor's graph partitions are off then (``graph_partition``): on a
    lent H100 (2026-12-06, docs/results.md) the ROC autoencoder's first replay of a recorded backward
    partition stopped at an illegal memory access, with and without its regularisers; whole block
    graphs ran, 1.11x the compiled step's segments/s. (Inductor's C++ wrapper, ``cpp_wrapper``, the
    other way to shorten a call, crashed the same autoencoder's first step there with a segmentation
    fault: not offered.) ``extra_options``: more Inductor options (``loop.compile_options``,
    ``inductor_options``)."""
    blocks = repeated_blocks(model)
    if only is not None:
        found = sorted({type(b).__name__ for b in blocks})
        unknown = sorted(set(only) - set(found))
        if unknown or not only:
            raise ConfigError(
                f"loop.compile_blocks={list(only)}: {type(model).__name__}'s repeated blocks are "
                f"{found or 'none'}" + (f"; no block is a {', '.join(unknown)}" if unknown else "")
            )
        blocks = [b for b in blocks if type(b).__name__ in only]
    if backend != "inductor" and cuda_graphs:
        raise ConfigError(f"loop.compile_cuda_graphs is Inductor's: backend={backend!r}")
    options = (
        {"options": inductor_options(max_autotune, dynamic, cuda_graphs, extra_options)}
        if backend == "inductor"
        else {}
    )
    if not blocks:
        logger.info("compiling %s whole (no repeated blocks found)", type(model).__name__)
        return torch.compile(model, backend=backend, dynamic=dynamic, **options)
    # four variants per block (training and no_grad forwards, static and dynamic shapes), and every
    # block its own graph at worst (see the module's docstring)
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4 * len(blocks))
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 8 * len(blocks)
    )
    for block in blocks:
        block.compile(backend=backend, dynamic=dynamic, **options)
    kinds = sorted({type(b).__name__ for b in blocks})
    logger.info(
        "compiling %d repeated blocks (%s) of %s", len(blocks), ", ".join(kinds), type(model).__name__
    )
    return model


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far (its ``unique_graphs`` counter):
    ``fit`` logs it as ``compile/graphs`` in a compiled run's rows, where a count still rising after
    the first steps means the blocks are being compiled again (new shapes breaking their guards)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cuda_graph_step(enabled: bool) -> None:
    """Mark the start of a training step for Inductor's CUDA-graph trees (``cuda_graphs``), when
    ``enabled`` (``fit``: at the first micro-batch of each optimizer step): the outputs of the
    previous step's graph replays, the parameters' gradients among them, may then be overwritten by
    this step's. Without the mark, the trees guess a step's end from the calls they see, which the
    autoencoder's two backward passes over one graph (the adversarial term's latent gradient, then
    the loss's) make ambiguous."""
    if enabled:
        torch.compiler.cudagraph_mark_step_begin()


def uncompile(model: nn.Module) -> nn.Module:
    """Undo ``compile_model``: the plain model, its blocks no longer compiled."""
    model = getattr(model, "_orig_mod", model)
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    return model


def retained_graphs():
    """A context in which compiled backward functions may run twice on one graph.

    The autoencoder's adversarial term takes the latents' gradient from the conversion loss's graph
    (``retain_graph=True``) before the loss's own backward. A backward compiled with donated buffers
    (torch's default) refuses that: "This backward function was compiled with non-empty donated
    buffers which requires create_graph=False and retain_graph=False" (seen in a compiled CPU run of
    the quickstart autoencoder). Inside this context backward functions are compiled without them
    (``torch._functorch.config.donated_buffer=False``): a little more memory, the same arithmetic.
    Compilation happens at the first calls, so the whole training run goes inside.
    """
    return torch._functorch.config.patch(donated_buffer=False)


def eager():
    """A context in which compiled code runs eagerly (``torch.compiler.set_stance("force_eager")``)."""
    return torch.compiler.set_stance("force_eager")


# compiled_losses' switch: read by the loss functions that have a compiled form (sld.losses)
_LOSSES_COMPILED: ContextVar[bool] = ContextVar("sld_losses_compiled", default=False)


@contextlib.contextmanager
def compiled_losses(enabled: bool = True) -> Iterator[None]:
    """Inside the block, loss functions with a compiled form use it (``fit`` enters it around
    ``loss_fn`` when ``loop.compile`` is on): the token cross-entropy over a large vocabulary
    (``sld.losses.chunked_token_nll``), whose float32 cast, log-softmax and their backward are
    elementwise passes over (T, V) logits that Inductor fuses into one read of the bf16 logits."""
    token = _LOSSES_COMPILED.set(enabled)
    try:
        yield
    finally:
        _LOSSES_COMPILED.reset(token)


def losses_compiled() -> bool:
    """Whether the caller runs inside ``compiled_losses()`` (enabled)."""
    return _LOSSES_COMPILED.get()

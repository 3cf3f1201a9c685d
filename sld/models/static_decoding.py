"""Decoding from a static KV cache, the one-token step replayed as a CUDA graph (``static_cache=True``).

The default loop (``sld.models.causal_decoding.decode``) grows a ``DynamicCache`` and drops finished
rows from it: every step has new shapes, so each of the LM's layers launches its kernels from Python.
For a small LM at a small batch that launch work, not the GPU, sets the speed of a decode step.
Here the cache is a preallocated ``StaticCache`` (lengths rounded up to ``LENGTH_BUCKET``), the batch
keeps its size (finished rows write padding until every row has stopped), and on CUDA the step
``(ids, positions, mask) -> logits`` goes through ``torch.compile(backend=..., fullgraph=True)`` with
the CUDA-graph backend ``sld.models.cuda_graphs.replay_backend`` picks (``static_graphs``, the weights
and the cache used in place, or torch's ``"cudagraphs"`` with ``SLD_GRAPH_BACKEND=cudagraphs``): dynamo
traces it once per (batch, cache length), then every token is one replay of the recorded kernels. No
Inductor code generation (minutes for a 30-layer LM), and a graph break (a host sync inside the step)
is an error instead of a silent slow path.

What it costs: a trace of a few seconds per new shape, and finished rows keep computing; so it pays
for many batches of similar shape (a benchmark, a large generation run), not for one short call.
Row counts are rounded up (``row_bucket``: powers of two to 64, then multiples of 64; the extra rows
are finished from the start) so that batches of SLD segments, whose count changes with the number of
segments the denoiser gives each document, share a few graphs: on an H200 (2026-12-03) a ROC model
whose documents had varying segment counts met a new row count in every batch of 64 documents and
spent 97% of its time in the decode, 2.4 s a batch against 0.6 s for the dynamic loop.
Greedy outputs equal the dynamic loop's (tested on CPU, where the traced step runs eagerly).

Shapes: B rows, P prefilled cache length, T = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.profiler import record_function
from transformers.cache_utils import DynamicCache, StaticCache

from sld.models.causal_lm import attention_geometry, cache_argument
from sld.models.cuda_graphs import graph_backend_choice, replay_backend
from sld.models.packed_gqa import packed_gqa

if TYPE_CHECKING:
    from sld.models.causal_decoding import DecodeSettings

# Cache lengths are rounded up to a multiple of this, so that batches whose sources differ a little in
# length share one cache and one compiled graph (positions past the written ones are masked).
LENGTH_BUCKET = 64
# Compiled graphs kept per step function: one per (batch size, cache length) met, for every LM
RECOMPILE_LIMIT = 64

# Row counts above this are rounded up to a multiple of it; below, to a power of two
ROW_BUCKET = 64

StepFn = Callable[[StaticCache, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class StaticStepper:
    """The static caches and the (compiled) one-token step of one LM.

    Caches are kept per (batch, length, dtype, device) and reset between calls: a compiled step is
    specialised to the cache tensors it has seen, so reusing them avoids compiling again.
    """

    def __init__(self, lm: nn.Module, compile_step: bool) -> None:
        self._lm = weakref.ref(lm)  # weak: the stepper lives in a WeakKeyDictionary keyed by the LM
        self.cache_keyword = cache_argument(lm)
        self.caches: dict[tuple, StaticCache] = {}
        self.compiled = compile_step
        # the backend's name (graph_backend_choice) when compiled: a stepper per LM and backend
        self.backend_name = graph_backend_choice() if compile_step else None
        self.step: StepFn = self._step
        if compile_step:
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
            # a CUDA-graph backend (replay_backend): dynamo traces the step once per shape (seconds)
            # and replays it as a CUDA graph of the eager kernels; no Inductor code generation
            # (minutes for a 30-layer LM). fullgraph: a graph break (a host sync in the step) is an
            # error, not a slow path.
            backend = replay_backend(lm_device(lm))
            self.step = torch.compile(self._step, backend=backend, fullgraph=True, dynamic=False)

    @property
    def lm(self) -> nn.Module:
        lm = self._lm()
        if lm is None:
            raise RuntimeError("the LM of this StaticStepper no longer exists")
        return lm

    def _step(
        self, cache: StaticCache, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """ids, positions (B, 1), mask (B, P + T) -> next-token logits (B, V)."""
        out = self.lm(
            **{self.cache_keyword: cache},
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def cache(self, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> StaticCache:
        """An empty static cache for ``batch`` rows and at least ``length`` positions (``LENGTH_BUCKET``
        multiples; reused when seen before)."""
        length = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
        key = (batch, length, dtype, str(device))
        cache = self.caches.get(key)
        if cache is None:
            _, kv_heads, head_dim = attention_geometry(self.lm.config)
            cache = StaticCache(config=self.lm.config, max_cache_len=length)
            cache.early_initialization(batch, kv_heads, head_dim, dtype, device)
            self.caches[key] = cache
        else:
            cache.reset()
        return cache


def row_bucket(rows: int) -> int:
    """The row count a static step runs ``rows`` rows at: the next power of two up to ``ROW_BUCKET``,
    then the next multiple of it (1 -> 1, 5 -> 8, 64 -> 64, 65 -> 128, 257 -> 320)."""
    if rows <= ROW_BUCKET:
        return 1 << max(rows - 1, 0).bit_length()
    return -(-rows // ROW_BUCKET) * ROW_BUCKET


def lm_device(lm: nn.Module) -> torch.device:
    return next(lm.parameters()).device


# LM -> its steppers by (compiled, backend name)
_STEPPERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[bool, str | None], StaticStepper]] = (
    weakref.WeakKeyDictionary()
)


def stepper_for(lm: nn.Module, compile_step: bool) -> StaticStepper:
    """The ``StaticStepper`` of ``lm`` for the compile setting and, compiled, the graph backend chosen
    now (``sld.models.cuda_graphs.graph_backend_choice``): one per LM and such pair, each with its
    compiled step and caches, kept while the LM lives (settings of a benchmark that alternate
    backends reuse theirs instead of compiling again)."""
    key = (compile_step, graph_backend_choice() if compile_step else None)
    steppers = _STEPPERS.setdefault(lm, {})
    if key not in steppers:
        steppers[key] = StaticStepper(lm, compile_step)
    return steppers[key]


def prefilled_length(cache: DynamicCache) -> int:
    """P, the positions a prefilled cache holds (0 for an empty one)."""
    return int(cache.get_seq_length()) if len(cache.layers) else 0


def fill_static(static: StaticCache, cache: DynamicCache, rows: int | None = None) -> None:
    """Copy the prefilled ``cache`` (B rows, P positions) into the front of ``static``; ``rows`` > B:
    the static cache has that many rows, and the rows past B get zeros."""
    if prefilled_length(cache):
        for index, layer in enumerate(cache.layers):
            dtype = static.layers[index].keys.dtype
            keys, values = layer.keys.to(dtype), layer.values.to(dtype)  # (B, K, P, E)
            if rows is not None and rows > keys.shape[0]:
                extra = (rows - keys.shape[0], *keys.shape[1:])
                keys = torch.cat([keys, keys.new_zeros(extra)])
                values = torch.cat([values, values.new_zeros(extra)])
            static.layers[index].update(keys, values)


def cache_dtype(lm: nn.Module, cache: DynamicCache) -> torch.dtype:
    """The dtype the LM's attention writes keys in: the prefill's, else the LM's."""
    if len(cache.layers) and getattr(cache.layers[0], "keys", None) is not None:
        return cache.layers[0].keys.dtype
    return next(lm.parameters()).dtype


@torch.no_grad()
def decode_static(
    lm: nn.Module,
    cache: DynamicCache,
    first_ids: torch.Tensor,
    positions: torch.Tensor,
    eos_id: int,
    pad_id: int,
    settings: DecodeSettings,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    compile_step: bool | None = None,
) -> torch.Tensor:
    """``sld.models.causal_decoding.decode`` over a static cache; the same arguments and output (B, T').

    ``compile_step`` None = compile (CUDA graphs) when the rows are on a CUDA device. The step runs at
    ``row_bucket(B)`` rows (R); the R - B extra rows are finished from the start and dropped at the end.
    """
    from sld.models.causal_decoding import next_tokens

    device = first_ids.device
    batch, steps = first_ids.shape[0], settings.max_new_tokens
    if batch == 0:
        return torch.full((0, steps), pad_id, dtype=torch.long, device=device)
    if compile_step is None:
        compile_step = device.type == "cuda"
    stepper = stepper_for(lm, compile_step)
    prefix = prefilled_length(cache)
    rows = row_bucket(batch)  # R >= B
    static = stepper.cache(rows, prefix + steps, cache_dtype(lm, cache), device)
    fill_static(static, cache, rows)
    mask = torch.ones(rows, static.layers[0].max_cache_len, dtype=torch.long, device=device)
    if attention_mask is not None:
        mask[:batch, :prefix] = attention_mask
    # fresh contiguous copies (R rows; the extra ones read pad at row 0's position): a compiled step
    # guards on its inputs' strides, and ``first_ids`` may be a column of the prompt (stride = the
    # prompt's length), which would trace the first step anew for every prompt length (seen on an
    # H200: the AR baseline at batch 1 took 4.6 s a document)
    current = torch.full((rows,), pad_id, dtype=first_ids.dtype, device=device)
    current[:batch] = first_ids
    position = positions[:1].repeat(rows)
    position[:batch] = positions
    finished = torch.arange(rows, device=device) >= batch  # (R,) the extra rows are done from the start
    out = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)  # (R, T)
    written = 0
    # a range in torch.profiler summaries; grouped-head attention packed unless SLD_PACKED_GQA=0
    with record_function("sld.token_steps"), packed_gqa(lm):
        for step in range(steps):
            logits = stepper.step(static, current[:, None], position[:, None], mask).clone()  # (R, V)
            generated = out[:, :step] if settings.no_repeat_ngram_size > 0 else None
            token = next_tokens(logits, generated, step, eos_id, settings, generator)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            out[:, step] = token
            written = step + 1
            finished = finished | (token == eos_id)
            current, position = token, position + 1
            if (step + 1) % settings.check_every == 0 and bool(finished.all()):  # the only host sync
                break
    return out[:batch, :written]


__all__ = ["StaticStepper", "decode_static", "fill_static", "row_bucket", "stepper_for"]

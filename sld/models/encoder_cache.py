"""The frozen segment encoder's hidden states for every training text, computed once.

With a frozen encoder (MiniLM by default) a segment's encoder states never change, yet every training
step ran the encoder again over the batch's segments, paraphrases and negatives: on 2 CPU cores
MiniLM over 48 short texts takes about as long as the rest of a quickstart autoencoder step.
``EncoderStateCache.build`` runs the encoder once over every distinct text of a training set and keeps
the states (U texts, L positions, H) on the training device; the collator then sends each row's index
(``SegmentCollator(text_index=...)``) and ``SegmentAutoencoder.encode`` gathers the rows' states
instead of running the encoder. The Perceiver compressor, the only consumer of the states, reads them
through the attention mask, so the padding positions of the cached rows do not matter.

The cache is a plain attribute of the model (``model.encoder_cache``), not a buffer: it is neither
saved with the model nor synchronised between processes; every process builds its own.

Shapes: U distinct texts, L = the longest tokenized text (<= max_segment_tokens), H encoder width.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from sld.config import ConfigError
from sld.data.length_grouping import batches_by_length

if TYPE_CHECKING:
    from sld.models.autoencoder import SegmentAutoencoder

logger = logging.getLogger(__name__)


class EncoderStateCache:
    """Encoder states (U, L, H) of U known texts and each text's row.

    Args:
        states: (U, L, H) the encoder's last hidden states, right-padded to L.
        index: text -> its row in ``states``.
    """

    def __init__(self, states: torch.Tensor, index: Mapping[str, int]) -> None:
        if states.dim() != 3 or states.shape[0] != len(index):
            raise ValueError(
                f"states must be (U, L, H) with U = {len(index)} texts, got {tuple(states.shape)}"
            )
        self.states = states
        self.index = dict(index)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: SegmentAutoencoder,
        texts: Iterable[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 256,
    ) -> EncoderStateCache:
        """Run ``model``'s frozen encoder over every distinct text once, on ``device``.

        ``dtype`` of the kept states: None = float32 on a CPU, bfloat16 on an accelerator (half the
        memory; the compressor's attention runs in bfloat16 there anyway under mixed precision).
        """
        if not model.encoder_frozen:
            raise ConfigError("data.cache_encoder_states needs a frozen encoder (model.freeze_encoder=true)")
        unique = list(dict.fromkeys(t for t in texts if t))
        device = torch.device(device)
        dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
        encoder = model.encoder
        moved_from = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.to(device).eval()
        started = time.perf_counter()
        chunks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows (b,), states (b, l, H))
        # batches of like lengths, so a batch of short texts is not padded to a long one
        for rows in batches_by_length(unique, batch_size):
            batch = model.tokenize_for_encoder([unique[i] for i in rows])
            hidden = encoder(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).last_hidden_state
            chunks.append((torch.tensor(rows, device=device), hidden.to(dtype)))
        encoder.to(moved_from).train(was_training)
        length = max((c.shape[1] for _, c in chunks), default=1)
        width = chunks[0][1].shape[2] if chunks else 1
        states = torch.zeros(len(unique), length, width, dtype=dtype, device=device)
        for rows, chunk in chunks:
            states[rows, : chunk.shape[1]] = chunk
        logger.info(
            "encoder states of %d distinct texts cached on %s in %.1f s (%.0f MiB)",
            len(unique),
            device,
            time.perf_counter() - started,
            states.numel() * states.element_size() / 2**20,
        )
        return cls(states, {text: i for i, text in enumerate(unique)})

    def rows_of(self, texts: Sequence[str]) -> list[int] | None:
        """Each text's row, or None when any of them is not cached."""
        rows = [self.index.get(text) for text in texts]
        return None if any(row is None for row in rows) else rows  # type: ignore[return-value]

    @torch.no_grad()
    def check_against(self, model: SegmentAutoencoder, num_texts: int = 4, tolerance: float = 2e-2) -> None:
        """Raise ``ValueError`` unless ``model``'s encoder gives the cached states of the first
        ``num_texts`` texts (within ``tolerance``, absolute and relative: the cache may hold bfloat16).

        A cache built by one training stage and handed to another (``train_diffusion``'s
        ``encoder_states``) must come from the same frozen encoder; this costs one small forward.
        """
        texts = list(self.index)[:num_texts]
        if not texts:
            return
        inputs = model.tokenize_for_encoder(texts)
        mask = inputs["attention_mask"].to(model.device)
        fresh = model.encoder_hidden_states(inputs["input_ids"].to(model.device), mask).float()
        cached = self.gather(
            torch.tensor(self.rows_of(texts), device=mask.device), mask.shape[1], torch.float32
        )
        keep = mask.bool()[..., None]  # padding positions are never read (the compressor masks them)
        fresh, cached = fresh * keep, cached * keep
        if not torch.allclose(fresh, cached, rtol=tolerance, atol=tolerance):
            difference = (fresh - cached).abs().max().item()
            raise ValueError(
                f"the cached encoder states are not this model's encoder's (largest difference {difference:.3g} "
                f"over {len(texts)} texts): the cache was built with another encoder"
            )

    def gather(self, rows: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
        """States (B', length, H) of cache rows ``rows`` (B',), as ``dtype``, on ``rows``' device."""
        if self.states.device != rows.device:  # once: the cache follows the model to its device
            self.states = self.states.to(rows.device)
        if length > self.states.shape[1]:
            raise ValueError(f"a batch of {length} positions, but the cache holds {self.states.shape[1]}")
        return self.states[rows, :length].to(dtype)


def training_texts(rows: Iterable[str | Mapping[str, str]]) -> list[str]:
    """Every text an encoder reads in training rows: segments, paraphrases and negatives."""
    texts: list[str] = []
    for row in rows:
        if isinstance(row, str):
            texts.append(row)
        else:
            texts += [row[k] for k in ("sentence", "paraphrase", "negative") if row.get(k)]
    return texts


__all__ = ["EncoderStateCache", "training_texts"]

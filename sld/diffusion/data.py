"""The data of stage 3: stage-1 documents as (S, N, D) latent blocks, their batches and their cache.

The frozen autoencoder maps every segment of every document to N x D latents once
(``encode_documents``); ``cached_latents`` keeps the result in the run folder under a fingerprint of
the autoencoder weights and the data, so a re-run (or a resume) does not encode again.
``LatentDocuments`` + ``LatentCollator`` turn the blocks into batches for ``LatentDiffusion``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import Dataset

from sld.data.length_grouping import batches_by_length
from sld.data.segmented import SegmentedDocument, read_split
from sld.errors import DataError
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.parts import WEIGHTS_NAME
from sld.throughput import real_position_fraction
from sld.tokenization import decoder_labels

logger = logging.getLogger(__name__)


def read_documents(
    folders: Sequence[str | Path], split: str, limit_per_folder: int | None = None
) -> list[SegmentedDocument]:
    """Documents with at least one segment from ``<folder>/<split>.jsonl`` of every stage-1 folder,
    at most ``limit_per_folder`` from each; a missing or empty file is a ``DataError`` naming it."""
    docs: list[SegmentedDocument] = []
    for folder in folders:
        found = [d for d in read_split(folder, split) if d.segments]
        if not found:
            raise DataError(f"{Path(folder) / f'{split}.jsonl'} has no document with at least one segment")
        docs += found[:limit_per_folder]
    return docs


class LatentDocuments(Dataset):
    """Documents as (S, N, D) latent blocks plus source text and segment strings.

    Args:
        docs: stage-1 documents.
        latents: (num_docs, S, N, D) latents, zero on padded segments.
        counts: (num_docs,) real segments kept (<= S).
        index_only: items carry their row (``index``) instead of their latents: the trainer keeps
            ``latents`` on the device and gathers a batch's rows there (``gather_latents``), so the
            loader's workers never copy latents and no batch of them crosses to the GPU.
    """

    def __init__(
        self,
        docs: Sequence[SegmentedDocument],
        latents: torch.Tensor,
        counts: torch.Tensor,
        index_only: bool = False,
    ) -> None:
        self.docs = list(docs)
        self.latents = latents
        self.counts = counts
        self.index_only = index_only

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, index: int) -> dict:
        doc = self.docs[index]
        item = {
            "index": index,
            "count": int(self.counts[index]),
            "true_count": int(doc.num_segments),
            "source": doc.source,
            "segments": list(doc.segments[: self.latents.shape[1]]),
        }
        if not self.index_only:
            item["latents"] = self.latents[index]
        return item


def gather_latents(batch: dict, latents_on_device: torch.Tensor | None) -> torch.Tensor:
    """A batch's (B, S, N, D) float32 latents: its own ``latents``, or, for a batch of an
    ``index_only`` dataset, the rows ``document_index`` (B,) of ``latents_on_device`` (num_docs, S, N, D),
    gathered on their device."""
    if "latents" in batch:
        return batch["latents"]
    if latents_on_device is None:
        raise ValueError("a batch of document indices needs the latents they index (latents_on_device)")
    index = batch["document_index"].to(latents_on_device.device, non_blocking=True)
    return latents_on_device[index].float()


class LatentCollator:
    """Batch dict: latents (B, S, N, D) float32 (or, from an ``index_only`` dataset, document_index
    (B,) long: ``gather_latents``), segment_mask (B, S), num_segments (B,), all_segments_real (a
    Python bool: no document of the batch has fewer than S segments, known on the host so that the
    trainer can call the denoiser without a mask and no device sync), sources, and decoder labels
    (B, S, L) of every segment (-100 on padding) for the post-diffusion CE (only when an autoencoder
    is given)."""

    def __init__(self, autoencoder: SegmentAutoencoder | None, max_segments: int) -> None:
        self.tokenizer = autoencoder.decoder_tokenizer if autoencoder is not None else None
        self.max_tokens = autoencoder.max_segment_tokens if autoencoder is not None else 0
        self.max_segments = max_segments

    def __call__(self, items: list[dict]) -> dict:
        counts = torch.tensor([it["count"] for it in items])
        batch = {
            "num_segments": counts,
            "segment_mask": torch.arange(self.max_segments)[None, :] < counts[:, None],
            "all_segments_real": bool((counts >= self.max_segments).all()),
            "sources": [it["source"] for it in items],
        }
        if "latents" in items[0]:
            batch["latents"] = torch.stack([it["latents"] for it in items]).float()
        else:
            batch["document_index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        if self.tokenizer is not None:
            texts = [
                it["segments"][j] if j < it["count"] else "" for it in items for j in range(self.max_segments)
            ]
            labels = decoder_labels(self.tokenizer, texts, self.max_tokens)
            batch["segment_labels"] = labels.view(len(items), self.max_segments, -1)
        return batch


def grouping_lengths(
    docs: list[SegmentedDocument], max_segments: int, by_segment_count: bool, by_source_length: bool
) -> list[int] | None:
    """The key per document that ``fit``'s length-grouped sampler batches by (None: no grouping):
    the number of segments kept (at most ``max_segments``), the source's length in characters, or
    both, the count first (``count * (longest source + 1) + source length``)."""
    if not (by_segment_count or by_source_length):
        return None
    sources = [len(doc.source or "") if by_source_length else 0 for doc in docs]
    if not by_segment_count:
        return sources
    scale = max(sources, default=0) + 1
    return [
        min(len(doc.segments), max_segments) * scale + length
        for doc, length in zip(docs, sources, strict=True)
    ]


def segment_slot_fraction(batch: dict) -> torch.Tensor:
    """The share of a batch's segment slots that hold a real segment (``segment_mask`` (B, S)): the
    denoiser computes on every slot of the (B, S, N, D) block, so the empty ones are padding
    (``fit``'s ``real_fraction_in_batch``; the context tokens past a source's length, which only the
    context's key/value projection and the masked cross-attention see, are not discounted)."""
    return real_position_fraction(batch["segment_mask"])


def fixed_batches(dataset: LatentDocuments, max_segments: int, batch_size: int = 64) -> list[dict]:
    """The whole dataset as consecutive batches (no labels), built once: validation reuses them."""
    collate = LatentCollator(None, max_segments)
    return [
        collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        for start in range(0, len(dataset), batch_size)
    ]


def latent_fingerprint(
    autoencoder_dir: str | Path, docs: Sequence[SegmentedDocument], max_segments: int
) -> str:
    """16 hex digits that change with the autoencoder weights (path and mtime), the number of
    documents, ``max_segments`` and a sample of every 50th document's text."""
    weights = Path(autoencoder_dir) / WEIGHTS_NAME
    stamp = f"{weights.resolve()}:{weights.stat().st_mtime_ns}:{len(docs)}:{max_segments}"
    stamp += ":" + "|".join(" ".join(d.segments) for d in docs[:: max(1, len(docs) // 50)])
    return hashlib.sha1(stamp.encode()).hexdigest()[:16]


@torch.no_grad()
def encode_documents(
    autoencoder: SegmentAutoencoder, docs: Sequence[SegmentedDocument], max_segments: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (num_docs, S, N, D) float16 on the CPU (zeros on padding) and kept counts (num_docs,).

    Each distinct segment text is encoded once (in batches of like lengths) and its latent copied to
    every slot that holds it. The CPU quickstart's 11,173 training segments are 4,547 distinct texts (a
    generated corpus repeats its sentences): 32.0 s on 2 cores against 93.9 s for every slot
    (``examples/latent_encoding_time.py``, docs/results.md, thirty-third session). Real corpora repeat
    few sentences and lose nothing by it.
    """
    counts = torch.tensor([min(len(d.segments), max_segments) for d in docs])
    slots = [(i, j, seg) for i, d in enumerate(docs) for j, seg in enumerate(d.segments[:max_segments])]
    distinct = list(dict.fromkeys(seg for _, _, seg in slots))  # first-seen order
    codes = torch.empty(len(distinct), autoencoder.num_latents, autoencoder.latent_dim, dtype=torch.float16)
    for rows in batches_by_length(distinct, batch_size):  # like lengths pad less
        z = autoencoder.encode_texts([distinct[r] for r in rows], batch_size=batch_size)
        codes[torch.tensor(rows)] = z.cpu().half()
    latents = torch.zeros(
        len(docs), max_segments, autoencoder.num_latents, autoencoder.latent_dim, dtype=torch.float16
    )
    if slots:
        row = {text: r for r, text in enumerate(distinct)}
        docs_index = torch.tensor([i for i, _, _ in slots])
        slot_index = torch.tensor([j for _, j, _ in slots])
        latents[docs_index, slot_index] = codes[torch.tensor([row[seg] for _, _, seg in slots])]
    return latents, counts


def cached_latents(
    autoencoder: SegmentAutoencoder,
    autoencoder_dir: str | Path,
    docs: Sequence[SegmentedDocument],
    max_segments: int,
    batch_size: int,
    accelerator: Accelerator,
    cache_dir: str | Path | None,
    split: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_documents``, kept in ``cache_dir/<split>-<fingerprint>.safetensors`` (None: no cache).

    The main process encodes and writes; the others wait and read the file, so several processes
    never encode the same data at once.
    """
    path = None
    if cache_dir is not None:
        path = (
            Path(cache_dir) / f"{split}-{latent_fingerprint(autoencoder_dir, docs, max_segments)}.safetensors"
        )
        # Every process must take the same branch (the one below has a barrier): the main process
        # looks and tells the others. Each looking for itself raced: a process that saw the file the
        # main process had just written skipped the barrier the main process was waiting at.
        (cached,) = broadcast_object_list([path.is_file()], from_process=0)
        if cached:
            data = safetensors.torch.load_file(path)
            return data["latents"], data["counts"]
    if accelerator.is_main_process or path is None:
        started = time.perf_counter()
        latents, counts = encode_documents(autoencoder, docs, max_segments, batch_size)
        logger.info(
            "encoded %d %s documents to latents in %.1f s", len(docs), split, time.perf_counter() - started
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".tmp-{path.name}")  # a killed write never leaves a corrupt cache
            safetensors.torch.save_file(
                {"latents": latents.contiguous(), "counts": counts.contiguous()}, partial
            )
            partial.replace(path)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process and path is not None:
        data = safetensors.torch.load_file(path)
        latents, counts = data["latents"], data["counts"]
    return latents, counts

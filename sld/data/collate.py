"""Batches for the autoencoder objective: segment strings (and paraphrase pairs) -> tensors.

A row is either a segment string, or a mapping with ``sentence`` (the segment, reconstructed like any
other), an optional ``paraphrase`` (its contrastive positive) and an optional ``negative`` (a hard
negative, e.g. an out-of-domain sentence). ``SegmentCollator`` turns a list of rows into::

    input_ids, attention_mask          (B', L)  encoder inputs of every row
    labels                             (B', L') decoder targets, eos included, -100 at padding
    target_index                       (T,)     flat positions of the labels' T target tokens (the
                                       loss selects them without a host sync: sld.losses.target_positions)
    adversarial_target_index           (T',)    with ``adversarial_fraction`` < 1 only: flat target positions of
                                       the first K rows' labels, the rows the adversarial term runs on
                                       (K = sld.losses.adversarial_row_count(B', fraction))
    positive_index                     (P,)     rows that have a paraphrase
    positive_input_ids, ..._mask       (P', L)  encoder inputs of the batch's P' distinct paraphrases
                                       (first-appearance order)
    positive_target                    (P,)     each of those rows' paraphrase among the P'
    negative_input_ids, ..._mask       (Q, L)   encoder inputs of the batch's Q distinct hard negatives
    encoder_index, positive_/negative_encoder_index   (B',) / (P',) / (Q,)  rows of the model's
                                       encoder-state cache (only with ``text_index``)
    decoder_buckets                    with ``decoder_buckets`` > 1 (or ``adversarial_apart``) only: a list
                                       of dicts (``rows``, ``labels``, ``target_index``), the batch's rows
                                       grouped by target length, each cut to its longest
                                       (sld.data.decoder_buckets); with ``adversarial_apart`` the
                                       adversarial rows' buckets first, then the rest of each bucket
    adversarial_buckets                with both: the adversarial term's rows of each bucket (it then
                                       replaces ``adversarial_target_index``)

The positive/negative keys are present only when some row has one. Hard negatives are not tied to
their row: in supervised SimCSE every anchor is contrasted with every negative of the batch.
Paraphrases and negatives are encoded once per distinct text: a pair file smaller than its share of
the rows repeats each pair (ROC: 500 pairs for about 9,000 pair rows an epoch, each about 18 times),
length-grouped batches put the copies of a pair together (equal lengths), and a copy of an anchor's
own paraphrase counted as an in-batch negative held the contrastive loss near log(copies) on the
H200 (2.56 against 0.32 ungrouped, 2026-12-04).

The two datasets feed it: ``SegmentDataset`` (all segments of the stage-1 documents, optionally each
with a negative drawn from an out-of-domain pool) and ``PairDataset`` (paraphrase pairs);
``PairMixDataset`` mixes a fixed share of pair rows into the segments.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from sld.data.decoder_buckets import adversarial_buckets, decoder_buckets, rest_buckets
from sld.data.records import iter_jsonl_numbered
from sld.errors import DataError
from sld.losses import adversarial_row_count, target_positions
from sld.tokenization import decoder_labels, encoder_inputs

Row = str | Mapping[str, str]


class SegmentCollator:
    """Picklable collate function (DataLoader workers): a list of rows -> a batch dict (see module doc).

    Args:
        encoder_tokenizer: the autoencoder's encoder tokenizer.
        decoder_tokenizer: the autoencoder's (cased) decoder tokenizer.
        max_segment_tokens: L, truncation length on both sides.
        text_index: text -> its row in the model's ``encoder_cache`` (``sld.models.encoder_cache``);
            when given, every ``*input_ids`` key comes with ``*encoder_index`` (the rows' cache rows).
        adversarial_fraction: ``losses.adversarial_fraction``; below 1 each batch also carries
            ``adversarial_target_index`` (built here, on the host, so the loss needs no host sync).
        decoder_buckets: ``data.decoder_buckets``; above 1 each batch also carries its rows grouped
            into at most that many length buckets (``sld.data.decoder_buckets``), which the decoder
            runs on one at a time, each padded to its own longest target only.
        adversarial_apart: ``losses.adversarial_rows_apart``; with ``adversarial_fraction`` < 1 each
            bucket's adversarial rows become buckets of their own: ``decoder_buckets`` lists those
            (``adversarial_buckets``) first, then the rest of each bucket (``rest_buckets``).
        target_tokens: cut every row's decoder targets after this many positions (the decoding
            budget, ``data.targets_within_budget``; ``sld.tokenization.decoder_labels``' ``keep``);
            None keeps them up to ``max_segment_tokens``.
        fixed_decoder_length: ``data.fixed_decoder_length``; every batch's ``labels`` are padded to
            exactly ``target_tokens`` (or ``max_segment_tokens``) positions, whatever the rows'
            lengths, so that compiled decoder blocks meet one shape. Not with ``decoder_buckets`` > 1
            or ``adversarial_apart`` (their buckets' shapes vary).
    """

    def __init__(
        self,
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizer: PreTrainedTokenizerBase,
        max_segment_tokens: int = 64,
        text_index: Mapping[str, int] | None = None,
        adversarial_fraction: float = 1.0,
        decoder_buckets: int = 1,
        adversarial_apart: bool = False,
        target_tokens: int | None = None,
        fixed_decoder_length: bool = False,
    ) -> None:
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.max_segment_tokens = max_segment_tokens
        self.text_index = text_index
        adversarial_row_count(1, adversarial_fraction)  # raises on a fraction outside (0, 1]
        self.adversarial_fraction = adversarial_fraction
        if decoder_buckets < 1:
            raise ValueError(f"decoder_buckets must be >= 1, got {decoder_buckets}")
        self.decoder_buckets = decoder_buckets
        self.adversarial_apart = adversarial_apart and adversarial_fraction < 1.0
        if target_tokens is not None and target_tokens < 1:
            raise ValueError(f"target_tokens must be >= 1, got {target_tokens}")
        self.target_tokens = target_tokens
        if fixed_decoder_length and (decoder_buckets > 1 or self.adversarial_apart):
            raise ValueError(
                "fixed_decoder_length pads every batch's targets to one length; decoder_buckets > 1 and "
                "adversarial_apart split them into buckets whose lengths vary: use one or the other"
            )
        # the labels' width: every batch's (fixed_decoder_length), or None: each batch's longest
        self.label_width = (target_tokens or max_segment_tokens) if fixed_decoder_length else None

    @classmethod
    def from_autoencoder(
        cls,
        model: Any,
        adversarial_fraction: float = 1.0,
        decoder_buckets: int = 1,
        adversarial_apart: bool = False,
        targets_within_budget: bool = False,
        fixed_decoder_length: bool = False,
    ) -> SegmentCollator:
        """The collator matching a ``SegmentAutoencoder``'s tokenizers and segment length (and its
        ``encoder_cache``, when it has one); ``targets_within_budget``: decoder targets cut at the
        model's decoding budget (``model.config.decode_max_tokens``, which must be set);
        ``fixed_decoder_length``: every batch's targets padded to that budget (or to
        ``max_segment_tokens``)."""
        cache = getattr(model, "encoder_cache", None)
        target_tokens = None
        if targets_within_budget:
            target_tokens = model.config.decode_max_tokens
            if target_tokens is None:
                raise ValueError(
                    "targets_within_budget needs the model's decoding budget (decode_max_tokens)"
                )
        return cls(
            model.encoder_tokenizer,
            model.decoder_tokenizer,
            model.max_segment_tokens,
            cache.index if cache is not None else None,
            adversarial_fraction,
            decoder_buckets,
            adversarial_apart,
            target_tokens,
            fixed_decoder_length,
        )

    def _encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = encoder_inputs(self.encoder_tokenizer, texts, self.max_segment_tokens)
        if self.text_index is not None:
            try:
                batch["encoder_index"] = torch.tensor([self.text_index[t] for t in texts], dtype=torch.long)
            except KeyError as err:
                raise DataError(f"a training text is missing from the encoder-state cache: {err}") from err
        return batch

    def __call__(self, rows: Sequence[Row]) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        texts: list[str] = []
        positive_index: list[int] = []
        positive_target: list[int] = []
        positives: dict[str, int] = {}  # each distinct paraphrase once: a copy would be a false negative
        negatives: dict[str, None] = {}  # each distinct hard negative once
        for i, row in enumerate(rows):
            if isinstance(row, str):
                texts.append(row)
                continue
            texts.append(row["sentence"])
            if row.get("paraphrase"):
                positive_index.append(i)
                positive_target.append(positives.setdefault(row["paraphrase"], len(positives)))
            if row.get("negative"):
                negatives[row["negative"]] = None

        batch: dict[str, Any] = self._encode(texts)
        batch["labels"] = decoder_labels(
            self.decoder_tokenizer, texts, self.max_segment_tokens, self.target_tokens, self.label_width
        )
        batch["target_index"] = target_positions(batch["labels"])
        if self.decoder_buckets > 1 or self.adversarial_apart:
            buckets = decoder_buckets(batch["labels"], self.decoder_buckets)
            if self.adversarial_fraction < 1.0:
                heads = adversarial_buckets(buckets, self.adversarial_fraction)
                batch["adversarial_buckets"] = heads
                if self.adversarial_apart:
                    buckets = heads + rest_buckets(buckets, self.adversarial_fraction)
            batch["decoder_buckets"] = buckets
        elif self.adversarial_fraction < 1.0:
            rows = adversarial_row_count(len(texts), self.adversarial_fraction)
            batch["adversarial_target_index"] = target_positions(batch["labels"][:rows])
        if positives:
            pos = self._encode(list(positives))
            batch["positive_index"] = torch.tensor(positive_index, dtype=torch.long)
            batch["positive_target"] = torch.tensor(positive_target, dtype=torch.long)
            batch["positive_input_ids"] = pos["input_ids"]
            batch["positive_attention_mask"] = pos["attention_mask"]
            if "encoder_index" in pos:
                batch["positive_encoder_index"] = pos["encoder_index"]
        if negatives:
            neg = self._encode(list(negatives))
            batch["negative_input_ids"] = neg["input_ids"]
            batch["negative_attention_mask"] = neg["attention_mask"]
            if "encoder_index" in neg:
                batch["negative_encoder_index"] = neg["encoder_index"]
        return batch


def _document_segments(doc: Any) -> Sequence[str]:
    """The segment list of a stage-1 document: a list of strings, a mapping or an object with ``segments``."""
    if isinstance(doc, Mapping):
        return doc["segments"]
    if hasattr(doc, "segments"):
        return doc.segments
    return doc


class SegmentDataset(Dataset):
    """Every non-empty segment of the stage-1 documents, one item each.

    Args:
        documents: stage-1 documents: lists of segment strings (or objects / dicts with ``segments``).
        negative_pool: optional out-of-domain texts; item i then becomes
            ``{"sentence": segment, "negative": pool[k]}`` with k fixed by (seed, i), so workers and
            resumed runs see the same pairs.
        seed: seed of the negative draw.
    """

    def __init__(
        self,
        documents: Iterable[Any],
        negative_pool: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.segments = [s for doc in documents for s in _document_segments(doc) if s and s.strip()]
        if negative_pool is not None and len(negative_pool) == 0:
            raise DataError("negative_pool is empty")
        self.negative_pool = list(negative_pool) if negative_pool is not None else None
        self.seed = seed

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> Row:
        segment = self.segments[index]
        if self.negative_pool is None:
            return segment
        k = random.Random(self.seed * 1_000_003 + index).randrange(len(self.negative_pool))
        return {"sentence": segment, "negative": self.negative_pool[k]}


class PairDataset(Dataset):
    """Paraphrase pairs for the contrastive loss: rows ``{"sentence", "paraphrase", "negative"?}``.

    ``source`` names where the rows came from in error messages (file name).
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], source: str = "pairs") -> None:
        self.rows: list[dict[str, str]] = []
        for i, row in enumerate(rows, start=1):
            self.rows.append(_check_pair(row, f"{source}: row {i}"))

    @classmethod
    def from_jsonl(cls, path: str | Path) -> PairDataset:
        """Read one JSON object per line (``sentence``, ``paraphrase``, optional ``negative``); plain or .gz."""
        rows = [_check_pair(row, f"{path}, line {n}") for n, row in iter_jsonl_numbered(path)]
        if not rows:
            raise DataError(f"{path}: no pairs")
        return cls(rows, str(path))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, str]:
        return self.rows[index]


class PairMixDataset(Dataset):
    """Segments with a fixed share of paraphrase-pair rows mixed in.

    Item i is a pair row when ``i % every == 0`` (cycling through the pairs), else a segment row, so
    after shuffling about ``pair_fraction`` of every batch carries a positive and a hard negative.
    """

    def __init__(self, segments: Dataset, pairs: Dataset, pair_fraction: float) -> None:
        self.segments = segments
        self.pairs = pairs
        self.every = max(2, round(1 / pair_fraction)) if pair_fraction > 0 else 0
        extra = len(segments) // (self.every - 1) if self.every else 0
        self.length = len(segments) + extra

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if self.every and index % self.every == 0:
            return self.pairs[(index // self.every) % len(self.pairs)]
        pair_rows_before = index // self.every + 1 if self.every else 0
        return self.segments[(index - pair_rows_before) % len(self.segments)]


def row_length(row: Row) -> int:
    """Characters of a training row's segment (a plain segment, or a pair row's ``sentence``)."""
    return len(row if isinstance(row, str) else row["sentence"])


def _check_pair(row: Any, where: str) -> dict[str, str]:
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: a pair must be an object with 'sentence' and 'paraphrase'")
    out = {}
    for key in ("sentence", "paraphrase", "negative"):
        value = row.get(key)
        if value is None and key == "negative":
            continue
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
        out[key] = value
    return out


def load_text_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, e.g. the out-of-domain negative pool."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: text file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: no non-empty line")
    return lines


__all__ = [
    "PairDataset",
    "PairMixDataset",
    "Row",
    "SegmentCollator",
    "SegmentDataset",
    "load_text_lines",
    "row_length",
]

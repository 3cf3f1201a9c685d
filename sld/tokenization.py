"""Tokenizers of the segment autoencoder: training the cased decoder tokenizer, and turning segments into ids.

The decoder writes the text that users read and metrics score, so its tokenizer must be cased and
lossless: a byte-level BPE (GPT-2 style, no prefix space, no normaliser) decodes back to exactly the
text it encoded. The offline default trains it on the stage-1 segments with the ``tokenizers``
library and wraps it as a ``transformers`` fast tokenizer so that it saves and reloads with
``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any hub tokenizer.

The encoder keeps its own tokenizer (all-MiniLM-L6-v2's is uncased WordPiece: fine for reading,
useless for writing), so every segment is tokenised twice: ``encoder_inputs`` for the encoder and
``decoder_labels`` for the decoder's targets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sld.errors import UserError

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3 in this order

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch and transformers convention)


def train_decoder_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a cased byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Special tokens: ``<pad>`` = 0, ``<s>`` = 1, ``<eos>`` = ``</s>`` = 2, ``<unk>`` = 3. Encoding appends
    ``</s>`` (the decoder must learn where a segment ends); decoding with ``skip_special_tokens=True``
    gives back the original string (spaces, case, punctuation and any Unicode preserved).

    Args:
        texts: training text, e.g. every segment of the training split.
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included. A small
            corpus can end below it (no pair left to merge).
        out_dir: if given, the tokenizer is also saved there (``save_pretrained``).
        min_frequency: a pair must occur this often to be merged.
        model_max_length: recorded in the tokenizer config (truncation default).
    """
    texts = [t for t in texts if t]
    if not texts:
        raise UserError("train_decoder_tokenizer: no non-empty training text given")
    min_vocab = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < min_vocab:
        raise UserError(
            f"decoder vocab_size must be at least {min_vocab} (specials + 256 bytes), got {vocab_size}"
        )

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # No normaliser and no prefix space: the byte-level round trip is then exact.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        clean_up_tokenization_spaces=False,  # would turn "do n't" style text into something else
        model_max_length=model_max_length,
    )
    logger.info("trained a byte-level BPE decoder tokenizer: %d tokens on %d texts", len(wrapped), len(texts))
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped


def encoder_inputs(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Segments -> encoder inputs ``{"input_ids": (B', L), "attention_mask": (B', L)}``, right-padded.

    Truncation keeps the tokenizer's special tokens ([CLS]/[SEP], </s>) inside ``max_length``.
    """
    enc = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def appends_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ends every encoded text with eos on its own (T5, BART, the trained BPE);
    causal-LM tokenizers (GPT-2, Llama, SmolLM2) do not."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[-1] == tokenizer.eos_token_id


def decoder_labels(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    keep: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """Segments -> decoder targets ``labels`` (B', L) with ``IGNORE_INDEX`` at padding positions.

    Every row ends with exactly one eos (the decoder must learn where a segment ends), kept inside
    ``max_length`` when the text is truncated: added by the tokenizer where it does so itself, else
    appended here (``decoder_label_ids``). Pads are never label ids, so this is right even where the
    pad id doubles as another token (T5 starts decoding from its pad id; causal LMs often pad with eos).

    ``keep``: cut every row's targets after its first ``keep`` (the autoencoder's decoding budget,
    ``data.targets_within_budget``), eos included, and add no eos to a cut row: a causal decoder's
    outputs at a row's first ``keep`` positions do not depend on the later ones, so those positions'
    losses are the uncut row's, and the positions past the budget, which generation never reaches,
    are not computed (L <= ``keep``).

    ``width``: L exactly, whatever the rows' lengths (at least the longest row: ``keep`` or
    ``max_length``); None pads to the longest row.
    """
    adds_eos = appends_eos(tokenizer)  # probed once a call: the collators call this at every batch
    ids = _label_ids(tokenizer, texts, max_length, adds_eos)
    if keep is not None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        ids = [row[:keep] for row in ids]
    return pad_labels(ids, labels_padding_side(tokenizer, adds_eos), width)


def decoder_label_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """Segments -> their unpadded decoder targets, one list of ids per text, each ending in one eos
    within ``max_length`` (``decoder_labels`` before padding; a dataset can hold these, tokenized once)."""
    return _label_ids(tokenizer, texts, max_length, appends_eos(tokenizer))


def _label_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, adds_eos: bool
) -> list[list[int]]:
    """``decoder_label_ids`` for a tokenizer that does (``adds_eos``) or does not end texts with eos."""
    if adds_eos:
        return tokenizer(list(texts), truncation=True, max_length=max_length, return_token_type_ids=False)[
            "input_ids"
        ]
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1)[
        "input_ids"
    ]
    return [row + [tokenizer.eos_token_id] for row in ids]


def labels_padding_side(tokenizer: PreTrainedTokenizerBase, adds_eos: bool | None = None) -> str:
    """Where ``decoder_labels`` pads: the tokenizer's side for tokenizers that add eos themselves (their
    labels are the padded encoding), else the right. ``adds_eos``: ``appends_eos(tokenizer)`` when the
    caller has it (None probes the tokenizer)."""
    if adds_eos is None:
        adds_eos = appends_eos(tokenizer)
    return tokenizer.padding_side if adds_eos else "right"


def _padded(rows: Sequence[Sequence[int]], fill: int, side: str, width: int | None = None) -> torch.Tensor:
    """Rows of ints -> (B', L) int64, each padded with ``fill`` on ``side`` ("right" or "left") to the
    longest, or to L = ``width`` (which no row may exceed)."""
    longest = max((len(row) for row in rows), default=0)
    if width is None:
        width = longest
    elif longest > width:
        raise ValueError(f"a row of {longest} ids does not fit width {width}")
    padded = [
        list(row) + [fill] * (width - len(row))
        if side == "right"
        else [fill] * (width - len(row)) + list(row)
        for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)


def pad_inputs(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Token id rows -> ``{"input_ids", "attention_mask"}`` (B', L), padded as ``encoder_inputs`` pads
    (the tokenizer's pad id and side): the batch of texts tokenized once beforehand."""
    side = tokenizer.padding_side
    return {
        "input_ids": _padded(rows, tokenizer.pad_token_id, side),
        "attention_mask": _padded([[1] * len(row) for row in rows], 0, side),
    }


def pad_labels(rows: Sequence[Sequence[int]], side: str = "right", width: int | None = None) -> torch.Tensor:
    """Label rows -> (B', L) int64, ``IGNORE_INDEX`` where a row has ended (``side``: "right" or "left");
    L = the longest row, or ``width``."""
    return _padded(rows, IGNORE_INDEX, side, width)


def token_budget(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, percentile: float = 99.0
) -> int:
    """Decoder tokens (eos included) that ``percentile`` % of ``texts`` fit in, at most ``max_length``.

    A decoding budget measured on the training targets: generation then stops at the length real
    texts need, not at the truncation length (a looping row costs at most this many steps).
    """
    if not texts:
        return max_length
    lengths = (decoder_labels(tokenizer, list(texts), max_length) != IGNORE_INDEX).sum(dim=1).float()
    return int(min(max_length, math.ceil(torch.quantile(lengths, percentile / 100).item())))


__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "IGNORE_INDEX",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "appends_eos",
    "decoder_labels",
    "encoder_inputs",
    "token_budget",
    "train_decoder_tokenizer",
]

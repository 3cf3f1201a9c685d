"""The AR baseline as a library call: train a ``BaselineModel`` on stage-1 documents and save it.

``train_baseline(BaselineTrainingConfig(...))`` reads the same stage-1 folder as stage 3: each
document's ``source`` is the input and its ``segments`` joined with spaces (``target_text``) are the
target, written token by token. Training uses the shared Accelerate loop (``sld.training.fit``:
accumulation, clipping, warmup + cosine, checkpoints, resume); ``loop.max_minutes`` caps the wall
time so that the baseline can get the same compute budget as SLD. Every evaluation generates the
held-out documents and reports ROUGE-L, distinct-2 and the number of distinct outputs
(``samples/step_<n>.jsonl``). The output folder is a ``BaselineModel.from_pretrained`` folder, with
``config.yaml``, ``init/``, ``metrics.jsonl``, ``checkpoints/`` and ``summary.json`` beside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import Dataset
from transformers import AutoTokenizer

from sld.checkpointing import INIT_DIR, resumable_init_dir
from sld.config import save_config
from sld.data.segmented import SegmentedDocument, read_split
from sld.distributed import is_main_process, map_shards
from sld.errors import DataError
from sld.eval.metrics import distinct_n, num_distinct_outputs, rouge_scores
from sld.models.baseline import BaselineConfig, BaselineModel, baseline_loss
from sld.models.parts import DECODER_DIR
from sld.run_summary import (
    TrainedRun,
    evaluation_rows,
    format_evaluation,
    training_summary,
    write_summary,
)
from sld.throughput import real_position_fraction
from sld.tokenization import IGNORE_INDEX
from sld.training import LoopConfig, OptimConfig, fit

logger = logging.getLogger("sld.train_baseline")

# (metric, label, format) of the validation lines printed at the end
VALIDATION_FIELDS = [
    ("rougeL", "rougeL", ".2f"),
    ("distinct2", "distinct2", ".3f"),
    ("num_distinct", "distinct outputs", ".0f"),
]


@dataclass
class BaselineDataConfig:
    """Stage-1 folder with ``<split>.jsonl`` documents (``source`` + ``segments``).

    ``decode_budget_percentile``: the saved decoding budget (``model.decode_max_tokens``) is the token
    length this percentile of the training targets fits in (SLD's autoencoder does the same per segment).
    ``group_by_length`` batches documents of similar source + target length together (characters;
    less padding per step, ``sld.data.length_grouping``).
    """

    segmented_dir: str = "runs/segmented"
    train_split: str = "train"
    valid_split: str = "valid"
    num_valid_documents: int = 64
    decode_budget_percentile: float = 99.0
    group_by_length: bool = False


@dataclass
class BaselineEvalConfig:
    """Decoding of the validation samples."""

    batch_size: int = 64
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    max_new_tokens: int | None = None


@dataclass
class BaselineTrainingConfig:
    """``match_autoencoder``: an SLD autoencoder folder whose encoder, decoder sizes and trained
    decoder tokenizer the baseline copies (``model.encoder``, ``model.decoder_*`` are then ignored);
    with it, ``max_segments`` sets ``model.max_target_tokens`` to S x the segment length."""

    output_dir: str = "runs/baseline"
    match_autoencoder: str | None = None
    max_segments: int = 5
    data: BaselineDataConfig = field(default_factory=BaselineDataConfig)
    model: BaselineConfig = field(default_factory=BaselineConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: BaselineEvalConfig = field(default_factory=BaselineEvalConfig)

    def __post_init__(self) -> None:
        if self.max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {self.max_segments}")


@dataclass
class TrainedBaseline(TrainedRun):
    """Where the baseline was saved, ``summary.json``'s content (None off the main process) and how
    many validation documents it was scored on."""

    num_valid_documents: int = 0

    def describe(self, summary: dict[str, Any]) -> list[str]:
        """What ``sld train-baseline`` prints at the end: the folder and every validation."""
        return [f"AR baseline saved to {self.output_dir}"] + [
            f"  {format_evaluation(row, VALIDATION_FIELDS)}/{self.num_valid_documents}"
            for row in summary["validation"]
        ]


class SourceTargetDataset(Dataset):
    """Stage-1 documents as ``(source, target)`` pairs: the target is the plain joined text.

    ``tokenize``: a collator's ``tokenize`` (``PrefixLMCollator``), applied to every pair once here;
    items are then its token rows, which that collator batches without the tokenizer.
    """

    def __init__(
        self,
        docs: Sequence[SegmentedDocument],
        tokenize: Callable[[Sequence[tuple[str | None, str]]], list[Any]] | None = None,
    ) -> None:
        self.pairs = [(doc.source, target_text(doc)) for doc in docs]
        self.items: Sequence[Any] = self.pairs if tokenize is None else tokenize(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def lengths(self) -> list[int]:
        """What the length-grouped sampler sorts by: the tokens of each row when the pairs were tokenized
        (``PrefixLMRow``, ``Seq2SeqRow``: their token lists summed), else the characters of source + target.
        ROC's SmolLM2 rows in batches of 64 (1,024): random 70% (60%) real tokens, grouped by characters
        85% (73%), by tokens 99% (94%) (``examples/padding_share.py``)."""
        if self.items is not self.pairs:
            return [sum(len(part) for part in row) for row in self.items]
        return [len(source or "") + len(target) for source, target in self.pairs]


def target_text(doc: SegmentedDocument) -> str:
    """The reference a document is scored against: its segments joined with spaces (no separator token)."""
    return " ".join(s.strip() for s in doc.segments if s.strip())


def build_model(
    cfg: BaselineTrainingConfig, train_docs: Sequence[SegmentedDocument], output_dir: Path
) -> BaselineModel:
    """A fresh model, or, on resume, the initial model saved by the interrupted run (same tokenizer)."""
    init_dir = resumable_init_dir(output_dir, cfg.loop.resume)
    if init_dir is not None:
        return BaselineModel.from_pretrained(init_dir)
    model_cfg, tokenizer = cfg.model, None
    if cfg.match_autoencoder:
        model_cfg = model_cfg.matching_autoencoder(cfg.match_autoencoder, cfg.max_segments)
        # The SLD decoder's own tokenizer: both systems then write from the same vocabulary.
        tokenizer = AutoTokenizer.from_pretrained(str(Path(cfg.match_autoencoder) / DECODER_DIR))
        logger.info("baseline sizes and tokenizer copied from %s", cfg.match_autoencoder)
    corpus = [target_text(doc) for doc in train_docs]
    if model_cfg.encoder == "decoder":  # the decoder tokenizer also reads the sources
        corpus += [doc.source for doc in train_docs if doc.source]
    model = BaselineModel.from_config(model_cfg, corpus_texts=corpus, decoder_tokenizer=tokenizer)
    if model.config.decode_max_tokens is None:
        targets = [target_text(doc) for doc in train_docs]
        model.config.decode_max_tokens = model.measure_decode_budget(
            targets, cfg.data.decode_budget_percentile
        )
        logger.info("decoding budget: %d tokens", model.config.decode_max_tokens)
    model.save_pretrained(output_dir / INIT_DIR)
    return model


def validation_scores(
    model: BaselineModel, docs: Sequence[SegmentedDocument], eval_cfg: BaselineEvalConfig
) -> tuple[dict[str, float], list[str]]:
    """Generate the held-out documents: ROUGE-L, distinct-2, number of distinct outputs, and the texts.
    The batches are split between the processes of a multi-process run (every process calls this)."""

    def generate(chunk: list[SegmentedDocument], _: int) -> list[str]:
        return model.generate_texts(
            [doc.source for doc in chunk],
            batch_size=eval_cfg.batch_size,
            num_beams=eval_cfg.num_beams,
            no_repeat_ngram_size=eval_cfg.no_repeat_ngram_size,
            max_new_tokens=eval_cfg.max_new_tokens,
        )

    predictions = map_shards(generate, list(docs), eval_cfg.batch_size)
    references = [target_text(doc) for doc in docs]
    scores = {
        "rougeL": rouge_scores(predictions, references)["rougeL"],
        "distinct2": distinct_n(predictions, 2),
        "num_distinct": float(num_distinct_outputs(predictions)),
    }
    return scores, predictions


def write_samples(path: Path, docs: Sequence[SegmentedDocument], predictions: Sequence[str]) -> None:
    """One JSON row per document: ``id``, ``source``, ``prediction``, ``reference``."""
    path.parent.mkdir(exist_ok=True)
    rows = [
        {"id": doc.id, "source": doc.source, "prediction": pred, "reference": target_text(doc)}
        for doc, pred in zip(docs, predictions)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def baseline_real_fraction(model: BaselineModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The share of real tokens among the positions a training step of ``model`` computes on: the
    prefix LM's rows (``attention_mask`` (B, W), source and target in one right-padded row), or an
    encoder-decoder's sources (``attention_mask`` (B, T)) and targets (``labels`` (B, L)) together."""
    if model.is_causal:  # PrefixLMCollator's rows
        return real_position_fraction(batch["attention_mask"])
    return real_position_fraction(batch["attention_mask"], batch["labels"] != IGNORE_INDEX)


def train_baseline(cfg: BaselineTrainingConfig) -> TrainedBaseline:
    """Train (or resume) the AR baseline into ``cfg.output_dir`` and save it there."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")

    train_docs = read_split(cfg.data.segmented_dir, cfg.data.train_split)
    valid_docs = read_split(cfg.data.segmented_dir, cfg.data.valid_split)[: cfg.data.num_valid_documents]
    if not train_docs:
        raise DataError(f"{cfg.data.segmented_dir}/{cfg.data.train_split}.jsonl has no documents")
    set_seed(cfg.loop.seed)  # the new parts' initialisation is reproducible
    model = build_model(cfg, train_docs, output_dir)
    logger.info(
        "%d training documents, %d validation documents; %.1fM trainable parameters",
        len(train_docs),
        len(valid_docs),
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )

    def evaluate(module: BaselineModel, step: int) -> dict[str, float]:
        scores, predictions = validation_scores(module, valid_docs, cfg.eval)
        if not is_main_process():
            return scores
        write_samples(output_dir / "samples" / f"step_{step}.jsonl", valid_docs, predictions)
        return scores

    collate = model.collator()
    train_set = SourceTargetDataset(train_docs, getattr(collate, "tokenize", None))
    result = fit(
        model,
        train_set,
        collate,
        baseline_loss,
        output_dir,
        cfg.optim,
        cfg.loop,
        evaluate_fn=evaluate if valid_docs else None,
        items_in_batch=lambda batch: int(batch["input_ids"].shape[0]),
        tokens_in_batch=lambda batch: (batch["labels"] != IGNORE_INDEX).sum(),
        real_fraction_in_batch=lambda batch: baseline_real_fraction(model, batch),
        lengths=train_set.lengths() if cfg.data.group_by_length else None,
    )
    if not result.accelerator.is_main_process:
        return TrainedBaseline(output_dir, None, len(valid_docs))
    result.model.save_pretrained(output_dir)
    summary = training_summary(
        result,
        trainable_parameters=sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        validation=evaluation_rows(result.history),
    )
    write_summary(output_dir, summary)
    return TrainedBaseline(output_dir, summary, len(valid_docs))


__all__ = [
    "BaselineDataConfig",
    "BaselineEvalConfig",
    "BaselineTrainingConfig",
    "SourceTargetDataset",
    "TrainedBaseline",
    "build_model",
    "target_text",
    "train_baseline",
    "validation_scores",
    "write_samples",
]

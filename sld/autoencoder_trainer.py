"""Stage 2 as a library call: train the segment autoencoder and save its ``from_pretrained`` folder.

``train_autoencoder(AutoencoderTrainingConfig(...))`` reads the stage-1 folder(s), trains a
``SegmentAutoencoder`` (compression + contrastive + adversarial terms, ``sld.autoencoder_objective``)
with the shared Accelerate loop (``sld.training.fit``) and writes a folder that stage 3 opens by
path. Every evaluation reconstructs held-out segments greedily and reports corpus BLEU (sacrebleu)
and the exact-match rate; the first 20 reconstructions go to ``reconstructions.jsonl``. Beside the
weights: ``config.yaml``, ``init/`` (the initial model, for resuming), ``metrics.jsonl``,
``checkpoints/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from sld.autoencoder_objective import AutoencoderLossConfig, autoencoder_losses
from sld.checkpointing import INIT_DIR, resumable_init_dir
from sld.compilation import retained_graphs
from sld.config import ConfigError, save_config
from sld.data.collate import (
    PairDataset,
    PairMixDataset,
    SegmentCollator,
    SegmentDataset,
    load_text_lines,
    row_length,
)
from sld.data.segmented import read_split
from sld.distributed import is_main_process, map_shards
from sld.errors import DataError
from sld.eval.metrics import bleu, exact_match_rate
from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
from sld.models.encoder_cache import EncoderStateCache, training_texts
from sld.run_summary import TrainedRun, evaluation_rows, training_summary, write_summary
from sld.throughput import real_position_fraction
from sld.tokenization import IGNORE_INDEX
from sld.training import LoopConfig, OptimConfig, fit

logger = logging.getLogger("sld.train_autoencoder")

RECONSTRUCTIONS_FILE = "reconstructions.jsonl"


@dataclass
class AutoencoderDataConfig:
    """Where the segments come from.

    ``segmented_dir`` is a stage-1 output folder; its ``<train_split>.jsonl`` segments are trained
    on, ``<valid_split>.jsonl`` segments are reconstructed for validation. ``pairs_train`` is a JSONL
    of ``sentence`` / ``paraphrase`` / ``negative`` rows for the contrastive loss; ``pair_fraction``
    of every batch are pair rows. Without a pairs file, ``negatives_file`` (one out-of-domain text
    per line) gives hard negatives and positives come from ``losses.contrastive_positives=dropout``.
    ``group_by_length`` batches segments of similar length together (less padding per step).
    ``decode_budget_percentile``: the saved decoding budget (``model.decode_max_tokens``) is the
    decoder-token length this percentile of the training segments fits in.
    ``cache_encoder_states``: run the frozen encoder once over every training text before training
    and read its states from that cache at every step (``sld.models.encoder_cache``).
    ``num_train_eval_segments``: also reconstruct that many training segments (a fixed sample) at every
    evaluation, as ``eval/train_bleu`` and ``eval/train_exact_match``: far above ``eval/bleu``, the
    autoencoder recalls the sentences it trained on rather than encoding new ones; close to it, it has
    not fitted its training data yet either.
    ``decoder_buckets``: above 1, the decoder passes of a training step run on at most that many
    groups of the batch's rows of similar target length, each padded to its own longest target
    (``sld.data.decoder_buckets``): the same losses with fewer padded positions computed, in more,
    smaller decoder calls. 1 pads the whole batch to its longest target.
    ``targets_within_budget``: the decoder's training targets stop at the decoding budget (the
    ``decode_budget_percentile`` length, eos included): a segment longer than it is trained on its
    first budget tokens only, which are the only ones generation ever emits (``decode_latents`` stops
    there). The losses at those positions are the same as with whole targets (the decoder is causal);
    a batch is then padded to at most the budget instead of its longest segment
    (``sld.tokenization.decoder_labels``).
    ``fixed_decoder_length``: every training batch's decoder targets padded to one length, whatever
    its segments' lengths: the decoding budget with ``targets_within_budget``, else
    ``model.max_segment_tokens``. None (the default): on exactly when the compiled blocks replay as
    CUDA graphs (``loop.compile`` and ``loop.compile_cuda_graphs``, which need one decoder shape).
    More padded positions than a batch's longest segment needs (next to none in random ROC batches
    of 1,024, nearly every one of which holds a segment at the budget), for decoder blocks that meet
    one shape (the batch size is fixed too: the loader drops a last partial batch): with
    ``loop.compile`` they are then compiled for that shape (torch's default) instead of
    shape-generic. The compressor's inputs still vary (the segments' lengths, the rows of
    paraphrases and negatives); torch compiles its blocks again, shape-generic in what changed.
    Not with ``decoder_buckets`` > 1 or ``losses.adversarial_rows_apart``.
    """

    segmented_dir: str = "runs/segmented"
    train_split: str = "train"
    valid_split: str = "valid"
    pairs_train: str | None = None
    negatives_file: str | None = None
    pair_fraction: float = 0.25
    num_valid_segments: int = 500
    extra_segmented_dirs: list[str] = field(default_factory=list)
    group_by_length: bool = False
    decode_budget_percentile: float = 99.0
    cache_encoder_states: bool = False
    num_train_eval_segments: int = 0
    decoder_buckets: int = 1
    targets_within_budget: bool = False
    fixed_decoder_length: bool | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.pair_fraction < 1.0:
            raise ValueError(f"pair_fraction must be in [0, 1), got {self.pair_fraction}")
        if not 0.0 < self.decode_budget_percentile <= 100.0:
            raise ValueError(
                f"decode_budget_percentile must be in (0, 100], got {self.decode_budget_percentile}"
            )
        if self.decoder_buckets < 1:
            raise ValueError(f"decoder_buckets must be >= 1, got {self.decoder_buckets}")
        if self.fixed_decoder_length and self.decoder_buckets > 1:
            raise ValueError(
                "data.fixed_decoder_length pads every batch's targets to one length and "
                "data.decoder_buckets > 1 splits them into buckets of varying lengths: set one of them off"
            )


@dataclass
class ReconstructionEvalConfig:
    """Decoding of the held-out segments at every evaluation."""

    num_beams: int = 1
    max_new_tokens: int | None = None
    batch_size: int = 128


@dataclass
class AutoencoderTrainingConfig:
    """Stage-2 settings (``sld train-autoencoder``)."""

    output_dir: str = "runs/autoencoder"
    data: AutoencoderDataConfig = field(default_factory=AutoencoderDataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    losses: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: ReconstructionEvalConfig = field(default_factory=ReconstructionEvalConfig)

    def __post_init__(self) -> None:
        if self.data.cache_encoder_states and not self.model.encoder_frozen:
            raise ValueError(
                "data.cache_encoder_states needs a frozen encoder, but model.freeze_encoder is false (the "
                f"encoder {self.model.encoder!r} trains, so its states change): set data.cache_encoder_states=false"
            )
        if self.data.fixed_decoder_length is None:  # one decoder shape where CUDA graphs need it
            self.data.fixed_decoder_length = self.loop.replays_cuda_graphs
            if self.data.fixed_decoder_length and self.data.decoder_buckets > 1:
                raise ValueError(
                    "loop.compile_cuda_graphs replays the decoder blocks' graphs of one shape (data."
                    "fixed_decoder_length) and data.decoder_buckets > 1 splits a batch's targets into "
                    "buckets of varying lengths: set one of them off"
                )
        if self.data.fixed_decoder_length and self.losses.collated_adversarial_apart:
            raise ValueError(
                "data.fixed_decoder_length (on with loop.compile_cuda_graphs) pads every batch's targets to "
                "one length and losses.adversarial_rows_apart splits them into buckets of varying lengths: "
                "set one of them off"
            )
        if self.losses.conversion_backward_once is None and self.loop.mixed_precision == "fp16":
            self.losses.conversion_backward_once = False  # the default (on) cannot run there
        elif self.losses.conversion_backward_once and self.loop.mixed_precision == "fp16":
            raise ValueError(
                "losses.conversion_backward_once runs the latent gradient's backward without fp16's loss "
                "scale, and keeps the weight gradients it takes: use loop.mixed_precision=bf16 (or no)"
            )


@dataclass
class TrainedAutoencoder(TrainedRun):
    """Where the autoencoder was saved, and ``summary.json``'s content (None off the main process);
    ``encoder_states``: its frozen encoder's cached states when ``train_autoencoder`` was asked to keep
    them (``keep_encoder_states``), for a next stage in the same process (``train_diffusion``)."""

    encoder_states: EncoderStateCache | None = None

    def describe(self, summary: dict[str, Any]) -> list[str]:
        """What ``sld train-autoencoder`` prints at the end: the folder and the summary's values."""
        values = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        return [f"autoencoder saved to {self.output_dir}", "  " + ", ".join(values)]


def load_segments(cfg: AutoencoderDataConfig, split: str) -> list[list[str]]:
    """Segment lists of every document of ``split`` in the main and the extra stage-1 folders."""
    docs = []
    for folder in [cfg.segmented_dir, *cfg.extra_segmented_dirs]:
        docs += [doc.segments for doc in read_split(folder, split)]
    return docs


def build_model(
    cfg: AutoencoderTrainingConfig, train_docs: Sequence[Sequence[str]], output_dir: Path
) -> SegmentAutoencoder:
    """A fresh model, or, on resume, the initial model saved by the interrupted run (same tokenizer)."""
    init_dir = resumable_init_dir(output_dir, cfg.loop.resume)
    if init_dir is not None:
        return SegmentAutoencoder.from_pretrained(init_dir)
    corpus = [segment for doc in train_docs for segment in doc]
    model = SegmentAutoencoder.from_config(cfg.model, corpus_texts=corpus)
    if cfg.model.decode_max_tokens is None:
        model.config.decode_max_tokens = model.measure_decode_budget(
            corpus, cfg.data.decode_budget_percentile
        )
        logger.info(
            "decoding budget: %d tokens (%g%% of training segments fit)",
            model.config.decode_max_tokens,
            cfg.data.decode_budget_percentile,
        )
    model.save_pretrained(output_dir / INIT_DIR)
    return model


def training_rows(cfg: AutoencoderTrainingConfig, train_docs: Sequence[Sequence[str]]) -> Dataset:
    """The training rows: every segment (with a hard negative when ``data.negatives_file`` is set),
    plus the paraphrase-pair rows of ``data.pairs_train`` when given."""
    negatives = load_text_lines(cfg.data.negatives_file) if cfg.data.negatives_file else None
    dataset: Dataset = SegmentDataset(train_docs, negative_pool=negatives, seed=cfg.loop.seed)
    if cfg.data.pairs_train:
        pairs = PairDataset.from_jsonl(cfg.data.pairs_train)
        mixed = PairMixDataset(dataset, pairs, cfg.data.pair_fraction)
        copies = (len(mixed) - len(dataset)) / max(1, len(pairs))
        if cfg.data.group_by_length and copies >= 2:
            logger.warning(
                "data.group_by_length with %d pairs for %d pair rows an epoch: each pair comes %.0f times, "
                "and length-grouped batches put its copies together (one positive per distinct pair, so "
                "a batch holds few: 24 of about 266 pair rows on ROC). data.group_by_length=false mixes them",
                len(pairs),
                len(mixed) - len(dataset),
                copies,
            )
        return mixed
    if cfg.losses.uses_contrastive and cfg.losses.contrastive_positives == "pairs":
        raise DataError(
            "losses.contrastive_positives=pairs needs data.pairs_train (a JSONL of sentence/paraphrase/negative); "
            "or set losses.contrastive_positives=dropout"
        )
    return dataset


def validation_segments(cfg: AutoencoderDataConfig) -> list[str]:
    """``num_valid_segments`` non-empty validation segments, shuffled with a fixed seed."""
    segments = [s for doc in load_segments(cfg, cfg.valid_split) for s in doc if s.strip()]
    random.Random(0).shuffle(segments)
    return segments[: cfg.num_valid_segments]


def training_eval_segments(train_docs: Sequence[Sequence[str]], count: int) -> list[str]:
    """``count`` non-empty training segments, shuffled with a fixed seed (another than validation's)."""
    segments = [s for doc in train_docs for s in doc if s.strip()]
    random.Random(1).shuffle(segments)
    return segments[:count]


def reconstruction_scores(
    model: SegmentAutoencoder, segments: Sequence[str], eval_cfg: ReconstructionEvalConfig
) -> tuple[dict[str, float], list[str]]:
    """Encode and greedily decode held-out segments: corpus BLEU, exact-match rate and outputs.
    The batches are split between the processes of a multi-process run (every process calls this)."""

    def reconstruct(chunk: list[str], _: int) -> list[str]:
        z = model.encode_texts(chunk, batch_size=eval_cfg.batch_size)
        return model.decode_latents(z, max_new_tokens=eval_cfg.max_new_tokens, num_beams=eval_cfg.num_beams)

    outputs = map_shards(reconstruct, list(segments), eval_cfg.batch_size)
    scores = {"bleu": bleu(outputs, list(segments)), "exact_match": exact_match_rate(outputs, list(segments))}
    return scores, outputs


def training_collator(model: SegmentAutoencoder, cfg: AutoencoderTrainingConfig) -> SegmentCollator:
    """The collator of ``cfg``'s training batches: the adversarial term's share and its rows apart
    (``losses``, when the term runs), the decoder's length buckets (``data.decoder_buckets``) and its
    targets cut at the decoding budget (``data.targets_within_budget``), its targets padded to one
    length (``data.fixed_decoder_length``)."""
    return SegmentCollator.from_autoencoder(
        model,
        cfg.losses.collated_adversarial_fraction,
        cfg.data.decoder_buckets,
        cfg.losses.collated_adversarial_apart,
        cfg.data.targets_within_budget,
        cfg.data.fixed_decoder_length,
    )


def sample_training_batch(
    cfg: AutoencoderTrainingConfig, documents: int, rows: int, work_dir: Path, seed: int = 0
) -> tuple[SegmentAutoencoder, dict[str, Any]]:
    """A model built as the trainer builds it from ``cfg``'s first ``documents`` training documents
    (its tokenizer and initial weights written under ``work_dir``), in train mode, and one batch of
    ``rows`` training rows drawn at random (``seed``) collated as the trainer collates them, on the
    CPU, with the encoder-state cache of those rows when ``cfg`` caches: for tools that study one
    training step (``examples/cast_census.py``, ``examples/eager_remainder.py``)."""
    torch.manual_seed(seed)
    docs = load_segments(cfg.data, cfg.data.train_split)[:documents]
    model = build_model(cfg, docs, work_dir).train()
    dataset = training_rows(cfg, docs)
    picked = random.Random(seed).sample(range(len(dataset)), min(rows, len(dataset)))
    batch_rows = [dataset[i] for i in picked]
    if cfg.data.cache_encoder_states:
        model.encoder_cache = EncoderStateCache.build(
            model, training_texts(batch_rows), device=torch.device("cpu")
        )
    return model, training_collator(model, cfg)(batch_rows)


def training_loop(cfg: AutoencoderTrainingConfig) -> LoopConfig:
    """``cfg.loop``, compiled shape-generic (``loop.compile_dynamic=true``) when ``compile_dynamic``
    is left unset. The autoencoder's shapes change from step to step: a batch's rows are padded to
    its longest segment, the compressor's rows count its paraphrases and negatives, and the decoder's
    length buckets (``data.decoder_buckets``) change both at every step. Graphs compiled for the
    first shapes met were compiled again at the first steps that broke them: on an H200 (2026-12-05)
    the ROC profile's first three steps took 92 s unbucketed (two compilations of about 45 s), and
    with buckets an H100 made 3 steps in 101 s; on the CPU, 10 steps of the ROC profile took 5
    compilations after the first, 2 shape-generic (7 against 2 with buckets; docs/results.md,
    ``sld.compilation.compile_model``). With ``data.fixed_decoder_length`` the decoder blocks meet one
    shape and ``compile_dynamic`` stays torch's default (graphs for the shapes met, made shape-generic
    only in a dimension that changes)."""
    loop = cfg.loop
    if loop.replays_cuda_graphs and not cfg.data.fixed_decoder_length:
        raise ConfigError(
            "loop.compile_cuda_graphs replays the decoder blocks' graphs of one shape: it needs "
            "data.fixed_decoder_length (its default with loop.compile_cuda_graphs; set false here), else "
            "every step brings new shapes"
        )
    if loop.replays_cuda_graphs and cfg.losses.collated_adversarial_fraction < 1.0:
        logger.warning(
            "loop.compile_cuda_graphs with losses.adversarial_fraction=%g: the adversarial pass decodes "
            "fewer rows than the conversion pass, so the decoder blocks meet two batch sizes, are compiled "
            "again shape-generic and run without CUDA graphs (0.77x the segments/s of the fraction 1.0 on "
            "an H100, docs/results.md, thirty-second session)",
            cfg.losses.adversarial_fraction,
        )
    if loop.compile and loop.compile_dynamic is None and not cfg.data.fixed_decoder_length:
        logger.info(
            "loop.compile: the blocks are compiled for any batch size and length (loop.compile_dynamic=true; "
            "the segments' lengths and the rows of paraphrases change at every step)"
        )
        loop = replace(loop, compile_dynamic=True)
    return loop


def train_autoencoder(
    cfg: AutoencoderTrainingConfig, keep_encoder_states: bool = False
) -> TrainedAutoencoder:
    """Train (or resume) stage 2 into ``cfg.output_dir`` and save the autoencoder there.

    ``keep_encoder_states``: return the encoder-state cache (``data.cache_encoder_states``) with the
    result, so that the diffusion stage of the same process reads its training segments' states
    instead of running the encoder over them again (the CPU quickstart: about 30 s on 2 cores). It
    holds the cache's memory (the device's, on a GPU) for as long as the result lives.
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")

    train_docs = load_segments(cfg.data, cfg.data.train_split)
    valid_segments = validation_segments(cfg.data)
    train_eval_segments = training_eval_segments(train_docs, cfg.data.num_train_eval_segments)
    set_seed(cfg.loop.seed)  # the new parts' initialisation is reproducible
    model = build_model(cfg, train_docs, output_dir)
    dataset = training_rows(cfg, train_docs)
    logger.info(
        "%d training rows (%d segments), %d validation segments; %d trainable parameters",
        len(dataset),
        sum(len(d) for d in train_docs),
        len(valid_segments),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    if cfg.losses.uses_adversarial:
        logger.info(
            "the conversion pass backpropagated %s a step (losses.conversion_backward_once=%s)",
            "once" if cfg.losses.runs_conversion_backward_once else "twice",
            cfg.losses.conversion_backward_once,
        )

    if cfg.data.cache_encoder_states:
        texts = training_texts(dataset[i] for i in range(len(dataset)))
        model.encoder_cache = EncoderStateCache.build(model, texts, device=PartialState().device)

    def loss_fn(module, batch):
        return autoencoder_losses(module, batch, cfg.losses, training=True)

    def evaluate(module, step):
        scores, outputs = reconstruction_scores(module, valid_segments, cfg.eval)
        examples = [{"reference": r, "reconstruction": o} for r, o in zip(valid_segments[:20], outputs[:20])]
        if is_main_process():
            (output_dir / RECONSTRUCTIONS_FILE).write_text("".join(json.dumps(e) + "\n" for e in examples))
        if train_eval_segments:
            train_scores, _ = reconstruction_scores(module, train_eval_segments, cfg.eval)
            scores.update({f"train_{name}": value for name, value in train_scores.items()})
        return scores

    # the adversarial term differentiates the conversion loss's graph twice (sld.compilation says why)
    double_backward = cfg.loop.compile and cfg.losses.uses_adversarial
    with retained_graphs() if double_backward else nullcontext():
        result = fit(
            model,
            dataset,
            training_collator(model, cfg),
            loss_fn,
            output_dir,
            cfg.optim,
            training_loop(cfg),
            evaluate_fn=evaluate if valid_segments else None,
            items_in_batch=lambda batch: int(batch["input_ids"].shape[0]),
            tokens_in_batch=lambda batch: (batch["labels"] != IGNORE_INDEX).sum(),
            # the encoder's (or the cached states') and the decoder's positions (its buckets' with them)
            real_fraction_in_batch=lambda batch: real_position_fraction(
                batch["attention_mask"],
                *[b["labels"] != IGNORE_INDEX for b in batch.get("decoder_buckets", [batch])],
            ),
            lengths=[row_length(dataset[i]) for i in range(len(dataset))]
            if cfg.data.group_by_length
            else None,
        )
    if not result.accelerator.is_main_process:
        return TrainedAutoencoder(output_dir, None)
    result.model.save_pretrained(output_dir)
    evals = evaluation_rows(result.history)
    final = {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {}
    summary = training_summary(result, **final)
    write_summary(output_dir, summary)
    return TrainedAutoencoder(
        output_dir, summary, result.model.encoder_cache if keep_encoder_states else None
    )


__all__ = [
    "AutoencoderDataConfig",
    "AutoencoderTrainingConfig",
    "ReconstructionEvalConfig",
    "TrainedAutoencoder",
    "build_model",
    "load_segments",
    "reconstruction_scores",
    "sample_training_batch",
    "training_collator",
    "training_eval_segments",
    "train_autoencoder",
    "training_rows",
    "validation_segments",
]

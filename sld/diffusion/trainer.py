"""Stage 3 as a library call: train a SegmentDiT on autoencoder latents and save an SLDPipeline.

``train_diffusion(DiffusionTrainingConfig(...))`` reads the stage-1 folder(s) and the stage-2
autoencoder folder. The frozen autoencoder maps every document's segments to a (S, N, D) latent
block once (``sld.diffusion.data``, cached in the run folder); the frozen context encoder maps each
source text to the states the denoiser cross-attends to. Every evaluation reports the diffusion loss
on held-out documents at fixed noise (so it is comparable across steps); generated samples with
ROUGE-L, distinct-2 and the segment-count accuracy go to ``samples/`` (``sld.diffusion.validation``).
The output folder (EMA weights) is an ``SLDPipeline.from_pretrained`` folder, with ``config.yaml``,
``metrics.jsonl``, ``checkpoints/``, ``samples/`` and ``summary.json`` beside it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from sld.config import ConfigError, save_config
from sld.diffusion.data import (
    LatentCollator,
    LatentDocuments,
    cached_latents,
    fixed_batches,
    gather_latents,
    grouping_lengths,
    read_documents,
    segment_slot_fraction,
)
from sld.diffusion.objective import DiffusionConfig, LatentDiffusion, autoencoder_decoder
from sld.diffusion.validation import validation_loss, write_samples
from sld.loading import load_model
from sld.models.context_encoder import ContextCache, ContextEncoder
from sld.models.denoiser import SegmentDiT
from sld.models.encoder_cache import EncoderStateCache
from sld.pipeline import PipelineConfig, SamplingConfig, SLDPipeline
from sld.run_summary import (
    TrainedRun,
    evaluation_rows,
    format_evaluation,
    training_summary,
    write_summary,
)
from sld.training import LoopConfig, OptimConfig, fit, make_accelerator

logger = logging.getLogger("sld.train_diffusion")

# (metric, label, format) of the validation lines printed at the end
VALIDATION_FIELDS = [
    ("diffusion_mse", "diffusion_mse", ".4f"),
    ("rougeL", "rougeL", ".2f"),
    ("distinct2", "distinct2", ".3f"),
    ("count_accuracy", "count_acc", ".2f"),
]


@dataclass
class DiffusionDataConfig:
    """Stage-1 folder(s) with ``<split>.jsonl`` documents (``source`` + ``segments``).

    ``extra_segmented_dirs`` trains one model on several tasks at once (the source text tells
    them apart); validation takes ``num_valid_documents`` from each folder.
    ``group_by_source_length`` batches documents whose sources have similar lengths, so a batch of
    short sources (titles) is not padded to the length of a long one (a dialogue): cross-attention
    to the context costs in proportion to the longest source of the batch. Off by default: on the
    quickstart's synthetic corpus it gave more steps per minute but a worse model per minute, since
    sources of equal length there are often the same title, which makes batches far less varied.
    Documents without a source count as length 0. ``group_by_segment_count`` batches documents with
    the same number of segments (within the sampler's mega-batches; with the source length as the second
    key when both are on): a batch without a padded segment runs the denoiser's self-attention
    without a mask, on the flash kernels (``sld.models.denoiser``); on ROC continuations 1% of the
    documents have fewer than four segments, so without it nearly every batch of 1,024 holds one.
    """

    segmented_dir: str = "runs/segmented"
    train_split: str = "train"
    valid_split: str = "valid"
    num_valid_documents: int = 64
    extra_segmented_dirs: list[str] = field(default_factory=list)
    group_by_source_length: bool = False
    group_by_segment_count: bool = False

    @property
    def folders(self) -> list[str]:
        return [self.segmented_dir, *self.extra_segmented_dirs]


@dataclass
class DenoiserConfig:
    """Architecture of the SegmentDiT (latent sizes come from the autoencoder).

    ``low_precision_residual`` (on) carries the residual stream in bfloat16 under mixed precision
    (``SegmentDiT``'s argument of that name; without autocast, as on a CPU, it changes nothing); saved
    with the model, so generation under autocast computes as training did. The paper-size denoiser
    (768 x 12, ROC, batch 1,024, compiled) made 1.03x the documents/s with it in two pairs of runs on
    one H100, with the same training losses to three decimals at steps 20-360 (docs/results.md,
    thirty-fourth session).
    """

    width: int = 384
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_null_tokens: int = 4
    low_precision_residual: bool = True


@dataclass
class DiffusionTrainingConfig:
    """Stage-3 settings (``sld train-diffusion``; the ``sampling`` section is saved as the pipeline's
    generation defaults).

    ``cache_latents`` keeps the documents' latents in ``output_dir/latent_cache`` (encoded once per
    autoencoder and data). ``latents_on_device`` keeps the training documents' latents on the training
    device (float16, S x N x D x 2 bytes a document: 10 KB at 5 x 16 x 64, 56 MB for 5,431 documents)
    and gathers each batch's rows there: the loader's batches carry document indices, not latents.
    ``cache_context`` encodes every training source once with the frozen context encoder and keeps
    the states in memory (float16, about T x C x 2 bytes per document): much faster on a CPU, where
    re-encoding the sources costs more than the denoiser step. With
    ``loop.compile`` the cached states of every batch are padded to the longest source (one shape,
    one compiled graph; ``ContextCache``'s ``fixed_length``).

    Every evaluation (``loop.eval_every``) reports the validation diffusion loss; generating samples
    (``samples/step_N.jsonl`` with ROUGE-L, distinct-2, count accuracy) costs far more, so it runs
    every ``sample_every`` steps (None: at every evaluation; 0: only the final model), and for the
    final model unless ``final_samples`` is false (the quickstart, which generates and scores more
    validation inputs itself right after: on a 2-core machine the final samples cost 40 s of its
    minutes, docs/results.md, thirty-fourth session).
    """

    output_dir: str = "runs/diffusion"
    autoencoder: str = "runs/autoencoder"
    context_encoder: str = "minilm"
    context_max_length: int = 256
    max_segments: int = 5
    task: str = ""
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=1000))
    loop: LoopConfig = field(default_factory=LoopConfig)
    ema_decay: float | None = 0.9999
    cache_latents: bool = True
    latents_on_device: bool = True
    latent_batch_size: int = 256
    cache_context: bool = False
    sample_every: int | None = None
    final_samples: bool = True

    def samples_at(self, step: int) -> bool:
        """Whether the evaluation at ``step`` also generates samples (see ``sample_every``)."""
        return self.sample_every is None or (self.sample_every > 0 and step % self.sample_every == 0)


@dataclass
class TrainedPipeline(TrainedRun):
    """Where the pipeline was saved, and ``summary.json``'s content (None off the main process)."""

    def describe(self, summary: dict[str, Any]) -> list[str]:
        """What ``sld train-diffusion`` prints at the end: the folder and every validation."""
        rows = summary["validation"]
        return [f"pipeline saved to {self.output_dir}"] + [
            "  " + format_evaluation(r, VALIDATION_FIELDS) for r in rows
        ]


def train_diffusion(
    cfg: DiffusionTrainingConfig, encoder_states: EncoderStateCache | None = None
) -> TrainedPipeline:
    """Train (or resume) stage 3 into ``cfg.output_dir`` and save the EMA weights as an SLDPipeline.

    ``encoder_states``: the autoencoder stage's encoder-state cache (``train_autoencoder(...,
    keep_encoder_states=True)`` in the same process): the training segments' latents are then
    computed from those states instead of running the frozen encoder again. It is checked against
    the loaded autoencoder's encoder first (``EncoderStateCache.check_against``: a cache of another
    encoder raises ``ValueError``).
    """
    if cfg.sample_every is not None and cfg.sample_every < 0:
        raise ConfigError(f"sample_every must be >= 0 or null, got {cfg.sample_every}")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    accelerator = make_accelerator(output_dir, cfg.loop)
    device = accelerator.device

    autoencoder = load_model(cfg.autoencoder, device, kinds=("autoencoder",), what="autoencoder")
    autoencoder.requires_grad_(False)
    if encoder_states is not None:
        encoder_states.check_against(autoencoder)
        autoencoder.encoder_cache = encoder_states
    context_encoder = ContextEncoder.from_pretrained(
        cfg.context_encoder, max_length=cfg.context_max_length, device=device
    )

    train_docs = read_documents(cfg.data.folders, cfg.data.train_split)
    valid_docs = read_documents(cfg.data.folders, cfg.data.valid_split, cfg.data.num_valid_documents)
    cache_dir = output_dir / "latent_cache" if cfg.cache_latents else None

    def latent_set(docs: list, split: str, index_only: bool = False) -> LatentDocuments:
        latents, counts = cached_latents(
            autoencoder,
            cfg.autoencoder,
            docs,
            cfg.max_segments,
            cfg.latent_batch_size,
            accelerator,
            cache_dir,
            split,
        )
        return LatentDocuments(docs, latents, counts, index_only=index_only)

    train_set = latent_set(train_docs, "train", index_only=cfg.latents_on_device)
    valid_set = latent_set(valid_docs, "valid")
    autoencoder.encoder_cache = None  # the latents are encoded: the pipeline does not keep the states
    # (num_docs, S, N, D) float16 on the device, or None: the batches then carry their latents
    train_latents = train_set.latents.to(device) if cfg.latents_on_device else None

    set_seed(cfg.loop.seed)  # the denoiser's initialisation is reproducible
    denoiser = SegmentDiT(
        **asdict(cfg.denoiser),
        # a self-conditioning input that training never fills would get the sampler's estimates
        self_conditioning=cfg.diffusion.self_conditioning_prob > 0,
        latent_dim=autoencoder.latent_dim,
        num_latents=autoencoder.num_latents,
        max_segments=cfg.max_segments,
        context_dim=context_encoder.context_dim,
        num_train_timesteps=cfg.diffusion.num_train_timesteps,
    )
    diffusion = LatentDiffusion(cfg.diffusion)
    post = cfg.diffusion.uses_post_diffusion
    decode_fn = autoencoder_decoder(autoencoder) if post else None
    sources: ContextEncoder | ContextCache = context_encoder
    if cfg.cache_context:
        started = time.perf_counter()
        # compiled: one context length for every batch (one graph, no recompiles for new lengths)
        sources = ContextCache(
            context_encoder, [d.source for d in [*train_docs, *valid_docs]], fixed_length=cfg.loop.compile
        )
        logger.info(
            "encoded %d distinct sources once in %.1f s (%.0f MB kept)%s",
            len(sources),
            time.perf_counter() - started,
            sources.num_bytes / 2**20,
            f"; every batch padded to the longest, {sources.longest} tokens (loop.compile)"
            if sources.fixed_length
            else "",
        )
    valid_batches = fixed_batches(valid_set, cfg.max_segments)
    pipeline_config = PipelineConfig(
        **asdict(cfg.sampling),
        prediction_type=cfg.diffusion.prediction_type,
        num_train_timesteps=cfg.diffusion.num_train_timesteps,
        task=cfg.task,
    )
    logger.info(
        "%d training documents, %d validation documents, denoiser with %.1fM parameters",
        len(train_docs),
        len(valid_docs),
        sum(p.numel() for p in denoiser.parameters()) / 1e6,
    )

    def loss_fn(model, batch):
        context, context_mask = sources.encode(batch["sources"])
        return diffusion.training_losses(
            model,
            gather_latents(batch, train_latents),
            batch["segment_mask"],
            context,
            context_mask,
            batch["num_segments"],
            decode_fn=decode_fn,
            segment_tokens=batch.get("segment_labels"),
            all_segments_real=batch["all_segments_real"],
        )

    def samples(pipe: SLDPipeline, step: int) -> dict[str, float]:
        return write_samples(
            pipe, valid_docs, output_dir / "samples" / f"step_{step}.jsonl", cfg.max_segments
        )

    def evaluate(model, step):
        scores = {"diffusion_mse": validation_loss(model, diffusion, sources, valid_batches)}
        if cfg.samples_at(step):
            scores.update(samples(SLDPipeline(model, autoencoder, context_encoder, pipeline_config), step))
            model.eval()
        return scores

    result = fit(
        denoiser,
        train_set,
        LatentCollator(autoencoder if post else None, cfg.max_segments),
        loss_fn,
        output_dir,
        cfg.optim,
        cfg.loop,
        evaluate_fn=evaluate,
        items_in_batch=lambda batch: int(batch["num_segments"].shape[0]),
        real_fraction_in_batch=segment_slot_fraction,
        ema_decay=cfg.ema_decay,
        accelerator=accelerator,
        lengths=grouping_lengths(
            train_docs, cfg.max_segments, cfg.data.group_by_segment_count, cfg.data.group_by_source_length
        ),
    )
    model = result.model
    if result.ema is not None:
        result.ema.copy_to([p for p in model.parameters() if p.requires_grad])
    pipe = SLDPipeline(model, autoencoder, context_encoder, pipeline_config)
    evals = evaluation_rows(result.history)
    if cfg.final_samples and evals and "eval/rougeL" not in evals[-1]:
        final = samples(pipe, result.state.step)  # on every process: they share the generation
        evals[-1].update({f"eval/{k}": v for k, v in final.items()})
    if not accelerator.is_main_process:
        return TrainedPipeline(output_dir, None)
    pipe.save_pretrained(output_dir)
    summary = training_summary(
        result,
        validation=evals,
        pipeline=asdict(pipeline_config),
    )
    write_summary(output_dir, summary)
    return TrainedPipeline(output_dir, summary)

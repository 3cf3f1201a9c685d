"""Stage 3: train the segment-level latent diffusion model (SegmentDiT) and save an SLDPipeline.

    sld train-diffusion -c configs/diffusion_synthetic.yaml
    accelerate launch -m stages.train_diffusion -c configs/diffusion_roc_continuation.yaml ...

Reads the stage-1 folder and the stage-2 autoencoder folder. The frozen autoencoder maps every
document's segments to a (S, N, D) latent block once (cached in the run folder); the frozen context
encoder maps each source text to the states the denoiser cross-attends to. Validation reports the
diffusion loss on held-out documents at fixed noise (so it is comparable across steps), and writes
generated samples with ROUGE-L, distinct-2 and the segment-count accuracy to ``samples/``. The
output folder (EMA weights) is an ``SLDPipeline.from_pretrained`` folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from sld.cli import run_stage
from sld.config import ConfigError, save_config
from sld.data.segmented import SegmentedDocument, read_segmented
from sld.diffusion.objective import DiffusionConfig, LatentDiffusion
from sld.diffusion.sampling import SchedulerName
from sld.errors import DataError, UserError
from sld.eval.metrics import distinct_n, rouge_scores, segment_count_accuracy
from sld.losses import conversion_loss
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.context_encoder import ContextCache, ContextEncoder
from sld.models.denoiser import SegmentDiT
from sld.pipeline import PipelineConfig, SLDPipeline
from sld.tokenization import decoder_labels
from sld.training import LoopConfig, OptimConfig, fit, make_accelerator

logger = logging.getLogger("sld.train_diffusion")


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
    Documents without a source count as length 0.
    """

    segmented_dir: str = "runs/segmented"
    train_split: str = "train"
    valid_split: str = "valid"
    num_valid_documents: int = 64
    extra_segmented_dirs: list[str] = field(default_factory=list)
    group_by_source_length: bool = False


@dataclass
class DenoiserConfig:
    """Architecture of the SegmentDiT (latent sizes come from the autoencoder)."""

    width: int = 384
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_null_tokens: int = 4


@dataclass
class SamplingConfig:
    """Generation settings for validation samples; saved as the pipeline's defaults."""

    scheduler: SchedulerName = "dpm++"
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    count_mode: Literal["argmax", "sample"] = "argmax"


@dataclass
class Config:
    """Stage-3 settings.

    ``cache_latents`` keeps the documents' latents in ``output_dir/latent_cache`` (encoded once per
    autoencoder and data). ``cache_context`` encodes every training source once with the frozen
    context encoder and keeps the states in memory (float16, about T x C x 2 bytes per document):
    much faster on a CPU, where re-encoding the sources costs more than the denoiser step.

    Every evaluation (``loop.eval_every``) reports the validation diffusion loss; generating samples
    (``samples/step_N.jsonl`` with ROUGE-L, distinct-2, count accuracy) costs far more, so it runs
    every ``sample_every`` steps (None: at every evaluation; 0: only the final model), and always for
    the final model.
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
    latent_batch_size: int = 256
    cache_context: bool = False
    sample_every: int | None = None


class LatentDocuments(Dataset):
    """Documents as (S, N, D) latent blocks plus source text and segment strings.

    Args:
        docs: stage-1 documents.
        latents: (num_docs, S, N, D) latents, zero on padded segments.
        counts: (num_docs,) real segments kept (<= S).
    """

    def __init__(
        self, docs: Sequence[SegmentedDocument], latents: torch.Tensor, counts: torch.Tensor
    ) -> None:
        self.docs = list(docs)
        self.latents = latents
        self.counts = counts

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, index: int) -> dict:
        doc = self.docs[index]
        return {
            "latents": self.latents[index],
            "count": int(self.counts[index]),
            "true_count": int(doc.num_segments),
            "source": doc.source,
            "segments": list(doc.segments[: self.latents.shape[1]]),
        }


class LatentCollator:
    """Batch dict: latents (B, S, N, D) float32, segment_mask (B, S), num_segments (B,), sources,
    and decoder labels (B, S, L) of every segment (-100 on padding) for the post-diffusion CE."""

    def __init__(self, autoencoder: SegmentAutoencoder | None, max_segments: int) -> None:
        self.tokenizer = autoencoder.decoder_tokenizer if autoencoder is not None else None
        self.max_tokens = autoencoder.max_segment_tokens if autoencoder is not None else 0
        self.max_segments = max_segments

    def __call__(self, items: list[dict]) -> dict:
        counts = torch.tensor([it["count"] for it in items])
        batch = {
            "latents": torch.stack([it["latents"] for it in items]).float(),
            "num_segments": counts,
            "segment_mask": torch.arange(self.max_segments)[None, :] < counts[:, None],
            "sources": [it["source"] for it in items],
        }
        if self.tokenizer is not None:
            texts = [
                it["segments"][j] if j < it["count"] else "" for it in items for j in range(self.max_segments)
            ]
            labels = decoder_labels(self.tokenizer, texts, self.max_tokens)
            batch["segment_labels"] = labels.view(len(items), self.max_segments, -1)
        return batch


def _fingerprint(autoencoder_dir: Path, docs: Sequence[SegmentedDocument], max_segments: int) -> str:
    weights = autoencoder_dir / "model.safetensors"
    stamp = f"{weights.resolve()}:{weights.stat().st_mtime_ns}:{len(docs)}:{max_segments}"
    stamp += ":" + "|".join(" ".join(d.segments) for d in docs[:: max(1, len(docs) // 50)])
    return hashlib.sha1(stamp.encode()).hexdigest()[:16]


@torch.no_grad()
def encode_documents(
    autoencoder: SegmentAutoencoder, docs: Sequence[SegmentedDocument], max_segments: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (num_docs, S, N, D) float16 on the CPU (zeros on padding) and kept counts (num_docs,)."""
    counts = torch.tensor([min(len(d.segments), max_segments) for d in docs])
    flat = [(i, j, seg) for i, d in enumerate(docs) for j, seg in enumerate(d.segments[:max_segments])]
    latents = torch.zeros(
        len(docs), max_segments, autoencoder.num_latents, autoencoder.latent_dim, dtype=torch.float16
    )
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        z = autoencoder.encode_texts([seg for _, _, seg in chunk], batch_size=batch_size).float().cpu()
        for (i, j, _), zij in zip(chunk, z):
            latents[i, j] = zij.half()
    return latents, counts


def cached_latents(
    cfg: Config, autoencoder: SegmentAutoencoder, docs: Sequence[SegmentedDocument], split: str, accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode once per (autoencoder, data) and keep the result in the run folder."""
    autoencoder_dir = Path(cfg.autoencoder)
    path = (
        Path(cfg.output_dir)
        / "latent_cache"
        / f"{split}-{_fingerprint(autoencoder_dir, docs, cfg.max_segments)}.pt"
    )
    if cfg.cache_latents and path.is_file():
        data = torch.load(path)
        return data["latents"], data["counts"]
    if accelerator.is_main_process or not cfg.cache_latents:
        started = time.perf_counter()
        latents, counts = encode_documents(autoencoder, docs, cfg.max_segments, cfg.latent_batch_size)
        logger.info(
            "encoded %d %s documents to latents in %.1f s", len(docs), split, time.perf_counter() - started
        )
        if cfg.cache_latents:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"latents": latents, "counts": counts}, path)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process and cfg.cache_latents:
        data = torch.load(path)
        latents, counts = data["latents"], data["counts"]
    return latents, counts


def _read_split(cfg: Config, split: str, limit_per_folder: int | None = None) -> list[SegmentedDocument]:
    """Documents with at least one segment from every stage-1 folder (at most ``limit_per_folder`` each)."""
    docs: list[SegmentedDocument] = []
    for folder in [cfg.data.segmented_dir, *cfg.data.extra_segmented_dirs]:
        path = Path(folder) / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} not found: run `sld segment` first (data.segmented_dir={folder!r})")
        found = [d for d in read_segmented(path) if d.segments]
        if not found:
            raise DataError(f"{path} has no document with at least one segment")
        docs += found[:limit_per_folder]
    return docs


def make_decode_fn(autoencoder: SegmentAutoencoder):
    """Post-diffusion losses (paper): decode the predicted clean latents through the frozen
    reconstructor and decoder. Gradients flow through them into the denoiser's prediction."""

    def decode_fn(x0_pred: torch.Tensor, x0_true: torch.Tensor, labels: torch.Tensor):
        # x0_pred, x0_true (B', N, D); labels (B', L) decoder targets of the same real segments
        memory_pred = autoencoder.memory(x0_pred)
        with torch.no_grad():
            memory_true = autoencoder.memory(x0_true)
        mse = (memory_pred.float() - memory_true.float()).pow(2).mean()
        ce = conversion_loss(autoencoder.reconstruction_logits(x0_pred, labels), labels)
        return mse, ce

    return decode_fn


def validation_loss(
    model: SegmentDiT,
    diffusion: LatentDiffusion,
    context_encoder: ContextEncoder | ContextCache,
    batches: list[dict],
) -> float:
    """Mean diffusion MSE on held-out documents at fixed timesteps and noise (seeded)."""
    generator = torch.Generator(device="cpu").manual_seed(1234)
    total, weight = 0.0, 0
    for batch in batches:
        device = model.device
        x0 = batch["latents"].to(device)
        t = torch.randint(0, diffusion.num_train_timesteps, (x0.shape[0],), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        context, mask = context_encoder.encode(batch["sources"])
        terms = diffusion.training_losses(
            model,
            x0,
            batch["segment_mask"].to(device),
            context,
            mask,
            batch["num_segments"].to(device),
            t=t,
            noise=noise,
            generator=torch.Generator(device="cpu").manual_seed(0),
            post_diffusion=False,
        )
        total += float(terms["diffusion_mse"]) * x0.shape[0]
        weight += x0.shape[0]
    return total / max(1, weight)


def write_samples(
    pipe: SLDPipeline, docs: Sequence[SegmentedDocument], path: Path, max_segments: int
) -> dict[str, float]:
    """Generate for ``docs`` (seed 0), write JSONL rows (source, prediction, segments, reference) to
    ``path``, and return ROUGE-L, distinct-2 and the segment-count accuracy against the references."""
    out = pipe([d.source for d in docs], seed=0, batch_size=64)
    references = [" ".join(d.segments) for d in docs]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for doc, text, segs, ref in zip(docs, out.texts, out.segments, references):
            row = {"id": doc.id, "source": doc.source, "prediction": text, "segments": segs, "reference": ref}
            handle.write(json.dumps(row) + "\n")
    return {
        "rougeL": rouge_scores(out.texts, references)["rougeL"],
        "distinct2": distinct_n(out.texts, 2),
        "count_accuracy": segment_count_accuracy(
            out.num_segments, [min(len(d.segments), max_segments) for d in docs]
        ),
    }


def run(cfg: Config) -> Path:
    if cfg.sample_every is not None and cfg.sample_every < 0:
        raise ConfigError(f"sample_every must be >= 0 or null, got {cfg.sample_every}")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    accelerator = make_accelerator(output_dir, cfg.loop)
    device = accelerator.device

    if not (Path(cfg.autoencoder) / "autoencoder_config.json").is_file():
        raise UserError(
            f"autoencoder={cfg.autoencoder!r} is not a stage-2 folder: run `sld train-autoencoder` first"
        )
    autoencoder = SegmentAutoencoder.from_pretrained(cfg.autoencoder).to(device).eval().requires_grad_(False)
    context_encoder = ContextEncoder.from_pretrained(
        cfg.context_encoder, max_length=cfg.context_max_length, device=device
    )

    train_docs = _read_split(cfg, cfg.data.train_split)
    valid_docs = _read_split(cfg, cfg.data.valid_split, cfg.data.num_valid_documents)
    train_latents, train_counts = cached_latents(cfg, autoencoder, train_docs, "train", accelerator)
    valid_latents, valid_counts = cached_latents(cfg, autoencoder, valid_docs, "valid", accelerator)

    denoiser = SegmentDiT(
        latent_dim=autoencoder.latent_dim,
        num_latents=autoencoder.num_latents,
        max_segments=cfg.max_segments,
        context_dim=context_encoder.context_dim,
        width=cfg.denoiser.width,
        depth=cfg.denoiser.depth,
        heads=cfg.denoiser.heads,
        mlp_ratio=cfg.denoiser.mlp_ratio,
        dropout=cfg.denoiser.dropout,
        num_null_tokens=cfg.denoiser.num_null_tokens,
        num_train_timesteps=cfg.diffusion.num_train_timesteps,
    )
    diffusion = LatentDiffusion(cfg.diffusion)
    post = cfg.diffusion.uses_post_diffusion
    collate = LatentCollator(autoencoder if post else None, cfg.max_segments)
    decode_fn = make_decode_fn(autoencoder) if post else None
    sources: ContextEncoder | ContextCache = context_encoder
    if cfg.cache_context:
        started = time.perf_counter()
        sources = ContextCache(context_encoder, [d.source for d in [*train_docs, *valid_docs]])
        logger.info(
            "encoded %d distinct sources once in %.1f s (%.0f MB kept)",
            len(sources),
            time.perf_counter() - started,
            sources.num_bytes / 2**20,
        )
    valid_set = LatentDocuments(valid_docs, valid_latents, valid_counts)
    valid_batches = [
        LatentCollator(None, cfg.max_segments)([valid_set[i] for i in range(s, min(s + 64, len(valid_set)))])
        for s in range(0, len(valid_set), 64)
    ]
    pipeline_config = PipelineConfig(
        prediction_type=cfg.diffusion.prediction_type,
        num_train_timesteps=cfg.diffusion.num_train_timesteps,
        scheduler=cfg.sampling.scheduler,
        num_inference_steps=cfg.sampling.num_inference_steps,
        guidance_scale=cfg.sampling.guidance_scale,
        num_beams=cfg.sampling.num_beams,
        no_repeat_ngram_size=cfg.sampling.no_repeat_ngram_size,
        count_mode=cfg.sampling.count_mode,
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
        labels = batch.get("segment_labels")
        return diffusion.training_losses(
            model,
            batch["latents"],
            batch["segment_mask"],
            context,
            context_mask,
            batch["num_segments"],
            decode_fn=decode_fn,
            segment_tokens=labels,
        )

    def evaluate(model, step):
        scores = {"diffusion_mse": validation_loss(model, diffusion, sources, valid_batches)}
        if cfg.sample_every is None or (cfg.sample_every > 0 and step % cfg.sample_every == 0):
            pipe = SLDPipeline(model, autoencoder, context_encoder, pipeline_config)
            scores.update(
                write_samples(
                    pipe, valid_docs, output_dir / "samples" / f"step_{step}.jsonl", cfg.max_segments
                )
            )
            model.eval()
        return scores

    started = time.perf_counter()
    result = fit(
        denoiser,
        LatentDocuments(train_docs, train_latents, train_counts),
        collate,
        loss_fn,
        output_dir,
        cfg.optim,
        cfg.loop,
        evaluate_fn=evaluate,
        items_in_batch=lambda batch: int(batch["latents"].shape[0]),
        ema_decay=cfg.ema_decay,
        accelerator=accelerator,
        lengths=[len(doc.source or "") for doc in train_docs] if cfg.data.group_by_source_length else None,
    )
    if accelerator.is_main_process:
        model = result.model
        if result.ema is not None:
            result.ema.copy_to([p for p in model.parameters() if p.requires_grad])
        pipe = SLDPipeline(model, autoencoder, context_encoder, pipeline_config)
        pipe.save_pretrained(output_dir)
        evals = [row for row in result.history if "eval/diffusion_mse" in row]
        if evals and "eval/rougeL" not in evals[-1]:
            step = result.state.step
            final = write_samples(
                pipe, valid_docs, output_dir / "samples" / f"step_{step}.jsonl", cfg.max_segments
            )
            evals[-1].update({f"eval/{k}": v for k, v in final.items()})
        summary = {
            "steps": result.state.step,
            "stopped_by": result.stopped_by,
            "train_seconds": round(time.perf_counter() - started, 1),
            "validation": [{k: v for k, v in row.items()} for row in evals],
            "pipeline": asdict(pipeline_config),
        }
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"pipeline saved to {output_dir}")
        for row in evals:
            line = f"  step {row['step']}: valid diffusion_mse={row['eval/diffusion_mse']:.4f}"
            if "eval/rougeL" in row:
                line += " rougeL={:.2f} distinct2={:.3f} count_acc={:.2f}".format(
                    row["eval/rougeL"], row["eval/distinct2"], row["eval/count_accuracy"]
                )
            print(line)
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())

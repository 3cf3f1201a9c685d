"""Validation of stage 3: a diffusion loss comparable across steps, and generated samples with scores.

``validation_loss`` draws timesteps and noise from fixed seeds, so the same held-out documents get
the same noise at every evaluation and the numbers can be compared along training.
``write_samples`` generates for held-out documents and scores the texts against their references
(ROUGE-L, distinct-2, segment-count accuracy), which costs far more than the loss.

Both run on every process of a multi-process run and split the work between them
(:func:`sld.distributed.map_shards`: batches round-robin, results gathered in order, each batch
seeded by its index), so they return the same numbers on any process count; the samples file is
written by the main process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sld.data.records import write_jsonl
from sld.data.segmented import SegmentedDocument
from sld.diffusion.objective import LatentDiffusion
from sld.distributed import is_main_process, map_shards
from sld.eval.metrics import distinct_n, rouge_scores, segment_count_accuracy
from sld.models.context_encoder import ContextCache, ContextEncoder
from sld.models.denoiser import SegmentDiT
from sld.pipeline import SLDPipeline


@torch.no_grad()
def validation_loss(
    model: SegmentDiT,
    diffusion: LatentDiffusion,
    context_encoder: ContextEncoder | ContextCache,
    batches: Sequence[dict],
) -> float:
    """Mean diffusion MSE on held-out batches (``sld.diffusion.data.fixed_batches``) at fixed
    timesteps and noise (seeded by the batch's index), weighted by batch size."""

    def score(chunk: list[dict], index: int) -> list[tuple[float, int]]:
        (batch,) = chunk
        return [_batch_loss(model, diffusion, context_encoder, batch, 1234 + index)]

    parts = map_shards(score, list(batches), 1)
    total = sum(loss * size for loss, size in parts)
    weight = sum(size for _, size in parts)
    return total / max(1, weight)


def _batch_loss(
    model: SegmentDiT,
    diffusion: LatentDiffusion,
    context_encoder: ContextEncoder | ContextCache,
    batch: dict,
    seed: int,
) -> tuple[float, int]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
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
        post_diffusion=False,  # scores the diffusion MSE alone (no decoder batch needed)
    )
    return float(terms["diffusion_mse"]), int(x0.shape[0])


def write_samples(
    pipe: SLDPipeline,
    docs: Sequence[SegmentedDocument],
    path: str | Path,
    max_segments: int,
    batch_size: int = 64,
) -> dict[str, float]:
    """Generate for ``docs`` (batch ``k`` with seed ``k``, the batches split between the processes),
    write JSONL rows (id, source, prediction, segments, reference) to ``path`` (main process), and
    return ROUGE-L, distinct-2 and the segment-count accuracy against the references (the first
    ``max_segments`` segments of each document)."""

    def generate(chunk: list[SegmentedDocument], index: int) -> list[tuple[str, list[str], int]]:
        out = pipe([d.source for d in chunk], seed=index, batch_size=batch_size)
        return list(zip(out.texts, out.segments, out.num_segments))

    generated = map_shards(generate, list(docs), batch_size)
    texts = [text for text, _, _ in generated]
    references = [" ".join(d.segments) for d in docs]
    if is_main_process():
        write_jsonl(
            path,
            (
                {"id": doc.id, "source": doc.source, "prediction": text, "segments": segs, "reference": ref}
                for doc, (text, segs, _), ref in zip(docs, generated, references)
            ),
        )
    return {
        "rougeL": rouge_scores(texts, references)["rougeL"],
        "distinct2": distinct_n(texts, 2),
        "count_accuracy": segment_count_accuracy(
            [int(count) for _, _, count in generated], [min(len(d.segments), max_segments) for d in docs]
        ),
    }

"""Validation of stage 3: a diffusion loss comparable across steps, and generated samples with scores.

``validation_loss`` draws timesteps and noise from fixed seeds, so the same held-out documents get
the same noise at every evaluation and the numbers can be compared along training.
``write_samples`` generates for held-out documents and scores the texts against their references
(ROUGE-L, distinct-2, segment-count accuracy), which costs far more than the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sld.data.records import write_jsonl
from sld.data.segmented import SegmentedDocument
from sld.diffusion.objective import LatentDiffusion
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
    timesteps and noise (seeded), weighted by batch size."""
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
            post_diffusion=False,  # scores the diffusion MSE alone (no decoder batch needed)
        )
        total += float(terms["diffusion_mse"]) * x0.shape[0]
        weight += x0.shape[0]
    return total / max(1, weight)


def write_samples(
    pipe: SLDPipeline, docs: Sequence[SegmentedDocument], path: str | Path, max_segments: int
) -> dict[str, float]:
    """Generate for ``docs`` (seed 0), write JSONL rows (id, source, prediction, segments, reference)
    to ``path``, and return ROUGE-L, distinct-2 and the segment-count accuracy against the references
    (the first ``max_segments`` segments of each document)."""
    out = pipe([d.source for d in docs], seed=0, batch_size=64)
    references = [" ".join(d.segments) for d in docs]
    write_jsonl(
        path,
        (
            {"id": doc.id, "source": doc.source, "prediction": text, "segments": segs, "reference": ref}
            for doc, text, segs, ref in zip(docs, out.texts, out.segments, references)
        ),
    )
    return {
        "rougeL": rouge_scores(out.texts, references)["rougeL"],
        "distinct2": distinct_n(out.texts, 2),
        "count_accuracy": segment_count_accuracy(
            out.num_segments, [min(len(d.segments), max_segments) for d in docs]
        ),
    }

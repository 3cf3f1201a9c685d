"""sld.diffusion.validation: a seeded validation loss comparable across calls, and scored samples."""

import json

import pytest
import torch
from tiny_models import save_tiny_bert, tiny_autoencoder, tiny_pipeline

from sld.data.segmented import SegmentedDocument
from sld.diffusion.data import LatentDocuments, encode_documents, fixed_batches
from sld.diffusion.objective import DiffusionConfig, LatentDiffusion
from sld.diffusion.validation import validation_loss, write_samples

DOCS = [
    SegmentedDocument("a", "The Dog", ["Anna walked her dog.", "It rained."], 2),
    SegmentedDocument("b", None, ["Tom baked a cake."], 1),
    SegmentedDocument("c", "Keys", ["Lucy lost her keys.", "She found them.", "At home."], 3),
]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    bert = save_tiny_bert(tmp_path_factory.mktemp("validation") / "bert")
    return tiny_pipeline(bert, tiny_autoencoder(bert, seed=0))


def test_validation_loss_is_seeded_and_weighted_by_batch_size(pipe):
    latents, counts = encode_documents(pipe.autoencoder, DOCS, max_segments=2, batch_size=8)
    dataset = LatentDocuments(DOCS, latents, counts)
    diffusion = LatentDiffusion(DiffusionConfig(self_conditioning_prob=0.5))
    loss = validation_loss(pipe.denoiser, diffusion, pipe.context_encoder, fixed_batches(dataset, 2, 2))
    again = validation_loss(pipe.denoiser, diffusion, pipe.context_encoder, fixed_batches(dataset, 2, 2))
    assert loss == again and loss > 0
    with torch.no_grad():
        for p in pipe.denoiser.final_layer.parameters():
            p.add_(0.1)
    changed = validation_loss(pipe.denoiser, diffusion, pipe.context_encoder, fixed_batches(dataset, 2, 2))
    with torch.no_grad():
        for p in pipe.denoiser.final_layer.parameters():
            p.sub_(0.1)
    assert changed != loss
    assert validation_loss(pipe.denoiser, diffusion, pipe.context_encoder, []) == 0.0


def test_write_samples_rows_and_scores(pipe, tmp_path):
    path = tmp_path / "samples" / "step_3.jsonl"
    scores = write_samples(pipe, DOCS, path, max_segments=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[2]["reference"] == "Lucy lost her keys. She found them. At home."
    assert all(r["prediction"] == " ".join(s for s in r["segments"] if s) for r in rows)
    expected = sum(len(r["segments"]) == min(len(d.segments), 2) for r, d in zip(rows, DOCS)) / 3
    assert scores["count_accuracy"] == pytest.approx(expected)
    assert 0 <= scores["rougeL"] <= 100 and 0 <= scores["distinct2"] <= 1

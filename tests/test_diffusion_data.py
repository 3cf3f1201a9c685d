"""sld.diffusion.data: stage-1 documents -> latent blocks, their cache and fingerprint, their batches."""

import os

import pytest
import safetensors.torch
import torch
from accelerate import Accelerator
from tiny_models import LATENTS, WIDTH, save_tiny_bert, tiny_autoencoder

from sld.data.segmented import SegmentedDocument, write_segmented
from sld.diffusion.data import (
    LatentCollator,
    LatentDocuments,
    cached_latents,
    encode_documents,
    fixed_batches,
    gather_latents,
    grouping_lengths,
    latent_fingerprint,
    read_documents,
    segment_slot_fraction,
)
from sld.errors import DataError
from sld.tokenization import IGNORE_INDEX

DOCS = [
    SegmentedDocument("a", "The Dog", ["Anna walked her dog.", "It rained.", "They went home."], 4),
    SegmentedDocument("b", None, ["Tom baked a cake."], 1),
    SegmentedDocument("c", "Keys", ["Lucy lost her keys.", "She found them."], 2),
]


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion_data")
    return tiny_autoencoder(save_tiny_bert(root / "bert"), seed=0).save_pretrained(root / "ae")


@pytest.fixture(scope="module")
def autoencoder(autoencoder_dir):
    from sld.models.autoencoder import SegmentAutoencoder

    return SegmentAutoencoder.from_pretrained(autoencoder_dir)


def test_read_documents_skips_empty_and_limits_per_folder(tmp_path):
    for name, docs in (("one", DOCS), ("two", DOCS[:2])):
        write_segmented(tmp_path / name / "valid.jsonl", [*docs, SegmentedDocument("e", "x", [], 0)])
    docs = read_documents([tmp_path / "one", tmp_path / "two"], "valid", limit_per_folder=2)
    assert [d.id for d in docs] == ["a", "b", "a", "b"]
    assert len(read_documents([tmp_path / "one"], "valid")) == 3
    with pytest.raises(DataError, match=r"train.jsonl not found: run `sld segment` first"):
        read_documents([tmp_path / "one"], "train")
    write_segmented(tmp_path / "empty" / "valid.jsonl", [SegmentedDocument("e", "x", [], 0)])
    with pytest.raises(DataError, match="no document with at least one segment"):
        read_documents([tmp_path / "empty"], "valid")


def test_encode_documents_zero_pads_and_matches_the_autoencoder(autoencoder):
    latents, counts = encode_documents(autoencoder, DOCS, max_segments=2, batch_size=2)
    assert latents.shape == (3, 2, LATENTS, WIDTH) and latents.dtype == torch.float16
    assert counts.tolist() == [2, 1, 2]
    assert torch.count_nonzero(latents[1, 1]) == 0  # document b has one segment
    direct = autoencoder.encode_texts(["It rained."]).float()[0]
    torch.testing.assert_close(latents[0, 1].float(), direct, atol=2e-3, rtol=2e-3)


def test_encode_documents_encodes_each_distinct_segment_once(autoencoder, monkeypatch):
    repeated = [*DOCS, SegmentedDocument("d", "Again", ["It rained.", "Tom baked a cake.", "New."], 3)]
    encoded = []
    real = type(autoencoder).encode_texts

    def spy(self, texts, batch_size=64):
        encoded.extend(texts)
        return real(self, texts, batch_size=batch_size)

    monkeypatch.setattr(type(autoencoder), "encode_texts", spy)
    latents, counts = encode_documents(autoencoder, repeated, max_segments=3, batch_size=2)
    assert sorted(encoded) == sorted({seg for d in repeated for seg in d.segments[:3]})  # 7 texts, not 9
    assert counts.tolist() == [3, 1, 2, 3]
    assert torch.equal(latents[3, 0], latents[0, 1]) and torch.equal(latents[3, 1], latents[1, 0])
    for i, doc in enumerate(repeated):
        for j, seg in enumerate(doc.segments[:3]):
            direct = real(autoencoder, [seg]).float()[0]
            torch.testing.assert_close(latents[i, j].float(), direct, atol=2e-3, rtol=2e-3)
    assert torch.count_nonzero(latents[1, 1:]) == 0 and torch.count_nonzero(latents[2, 2]) == 0


def test_dataset_and_collator_shapes_masks_and_labels(autoencoder):
    latents, counts = encode_documents(autoencoder, DOCS, max_segments=2, batch_size=8)
    dataset = LatentDocuments(DOCS, latents, counts)
    item = dataset[0]
    assert item["count"] == 2 and item["true_count"] == 4 and item["segments"] == DOCS[0].segments[:2]
    batch = LatentCollator(autoencoder, max_segments=2)([dataset[i] for i in range(3)])
    assert batch["latents"].shape == (3, 2, LATENTS, WIDTH) and batch["latents"].dtype == torch.float32
    assert batch["segment_mask"].tolist() == [[True, True], [True, False], [True, True]]
    assert batch["num_segments"].tolist() == [2, 1, 2] and batch["sources"] == ["The Dog", None, "Keys"]
    labels = batch["segment_labels"]
    assert labels.shape[:2] == (3, 2) and labels.shape[2] <= autoencoder.max_segment_tokens
    # a padded slot is the empty text (its end token only); the objective hands real slots only to decode
    assert (labels[1, 1, 1:] == IGNORE_INDEX).all() and (labels[0, 0, :3] != IGNORE_INDEX).all()
    assert "segment_labels" not in LatentCollator(None, 2)([dataset[0]])
    assert batch["all_segments_real"] is False
    assert LatentCollator(None, 2)([dataset[0], dataset[2]])["all_segments_real"] is True
    batches = fixed_batches(dataset, max_segments=2, batch_size=2)
    assert [b["latents"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(torch.cat([b["latents"] for b in batches]), latents.float())


def test_index_only_batches_gather_the_same_latents_on_their_device(autoencoder):
    latents, counts = encode_documents(autoencoder, DOCS, max_segments=2, batch_size=8)
    carried = LatentCollator(None, 2)([LatentDocuments(DOCS, latents, counts)[i] for i in (2, 0)])
    index_only = LatentDocuments(DOCS, latents, counts, index_only=True)
    assert "latents" not in index_only[0] and index_only[2]["index"] == 2
    batch = LatentCollator(None, 2)([index_only[i] for i in (2, 0)])
    assert "latents" not in batch and batch["document_index"].tolist() == [2, 0]
    assert torch.equal(batch["segment_mask"], carried["segment_mask"])
    gathered = gather_latents(batch, latents)
    assert gathered.dtype == torch.float32 and torch.equal(gathered, carried["latents"])
    assert gather_latents(carried, None) is carried["latents"]
    with pytest.raises(ValueError, match="latents_on_device"):
        gather_latents(batch, None)


def test_fingerprint_follows_weights_and_data(autoencoder_dir):
    first = latent_fingerprint(autoencoder_dir, DOCS, 2)
    assert first == latent_fingerprint(autoencoder_dir, list(DOCS), 2) and len(first) == 16
    assert first != latent_fingerprint(autoencoder_dir, DOCS, 3)
    assert first != latent_fingerprint(autoencoder_dir, DOCS[:2], 2)
    weights = autoencoder_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # retrained weights
    assert first != latent_fingerprint(autoencoder_dir, DOCS, 2)


def test_cached_latents_are_written_once_and_reused(autoencoder, autoencoder_dir, tmp_path):
    accelerator = Accelerator(cpu=True)
    first = cached_latents(autoencoder, autoencoder_dir, DOCS, 2, 4, accelerator, tmp_path, "valid")
    files = list(tmp_path.glob("valid-*.safetensors"))
    assert len(files) == 1
    safetensors.torch.save_file(
        {"latents": torch.ones_like(first[0]), "counts": first[1]}, files[0]
    )  # marks it
    again = cached_latents(autoencoder, autoencoder_dir, DOCS, 2, 4, accelerator, tmp_path, "valid")
    assert torch.equal(again[0], torch.ones_like(first[0]))  # read back, not encoded again
    fresh = cached_latents(autoencoder, autoencoder_dir, DOCS, 2, 4, accelerator, None, "valid")
    assert torch.equal(fresh[0], first[0]) and torch.equal(fresh[1], first[1])


def test_segment_slot_fraction_is_the_share_of_real_segments():
    """Two documents of one and three segments in a block of four slots: 4 of 8 slots hold a segment."""
    collate = LatentCollator(None, max_segments=4)
    items = [
        {"index": i, "count": n, "true_count": n, "source": "s", "segments": ["a"] * n}
        for i, n in enumerate((1, 3))
    ]
    assert segment_slot_fraction(collate(items)).item() == pytest.approx(4 / 8)


def test_grouping_lengths_put_the_segment_count_first():
    # DOCS: 3 segments kept of 4 with a source of 7 characters, 1 without one, 2 with one of 4
    assert grouping_lengths(DOCS, 2, by_segment_count=False, by_source_length=False) is None
    assert grouping_lengths(DOCS, 2, by_segment_count=False, by_source_length=True) == [7, 0, 4]
    assert grouping_lengths(DOCS, 2, by_segment_count=True, by_source_length=False) == [2, 1, 2]
    # both: count * (longest source + 1) + source length, so the count decides and the source breaks ties
    assert grouping_lengths(DOCS, 3, by_segment_count=True, by_source_length=True) == [
        3 * 8 + 7,
        8,
        2 * 8 + 4,
    ]

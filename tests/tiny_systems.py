"""Tiny seeded systems for the benchmark tests: an SLD pipeline and an AR baseline sharing one random
BERT encoder (CPU, offline, seconds to build), and a few two-sentence stories as a stage-1 split."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizer

from sld.data.segmented import SegmentedDocument, write_segmented

TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=1, num_heads=4, dropout_rate=0.0
)
STORIES = [
    ("lost dog", ["Rex ran away.", "Tom found him."]),
    ("snow", ["It snowed.", "School was closed."]),
    ("cake", ["Anna baked a cake.", "It burned."]),
    (None, ["A cat sat.", "It was happy."]),
    ("rain", ["It rained.", "We stayed in."]),
]


def write_stories(path: Path) -> Path:
    """The stories as a stage-1 split file."""
    docs = [SegmentedDocument(f"d{i}", src, segs, len(segs)) for i, (src, segs) in enumerate(STORIES)]
    write_segmented(path, docs)
    return path


def save_tiny_bert(folder: Path) -> str:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'#"]
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(folder))
    return str(folder)


def save_tiny_models(root: Path, corpus: list[str]) -> tuple[Path, Path]:
    """A tiny SLD pipeline and a tiny AR baseline sharing one random BERT encoder; returns both folders."""
    from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
    from sld.models.baseline import BaselineConfig, BaselineModel
    from sld.models.context_encoder import ContextEncoder
    from sld.models.denoiser import SegmentDiT
    from sld.pipeline import PipelineConfig, SLDPipeline

    bert = save_tiny_bert(root / "bert")
    torch.manual_seed(0)
    autoencoder = SegmentAutoencoder.from_config(
        AutoencoderConfig(
            encoder=bert,
            decoder_config=dict(TINY_T5),
            decoder_vocab_size=280,
            num_latents=2,
            latent_dim=8,
            compressor_layers=1,
            compressor_heads=2,
            reconstructor_layers=0,
            dropout=0.0,
            max_segment_tokens=6,
        ),
        corpus,
    )
    context = ContextEncoder(
        AutoModel.from_pretrained(bert), AutoTokenizer.from_pretrained(bert), max_length=16
    )
    denoiser = SegmentDiT(
        latent_dim=8,
        num_latents=2,
        max_segments=2,
        context_dim=16,
        width=16,
        depth=2,
        heads=2,
        num_null_tokens=1,
    )
    pipeline = SLDPipeline(denoiser, autoencoder, context, PipelineConfig(guidance_scale=1.5))
    sld_dir = pipeline.save_pretrained(root / "sld")
    baseline = BaselineModel.from_config(
        BaselineConfig(
            encoder=bert, decoder_config=dict(TINY_T5), decoder_vocab_size=280, max_target_tokens=8
        ),
        corpus,
    )
    baseline_dir = baseline.save_pretrained(root / "baseline")
    return sld_dir, baseline_dir


def save_tiny_systems(root: Path) -> tuple[Path, Path]:
    """``save_tiny_models`` trained on nothing but the stories' sentences (their tokenizers' corpus)."""
    return save_tiny_models(root, [s for _, segs in STORIES for s in segs] * 4)

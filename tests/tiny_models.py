"""Tiny seeded models shared by the tests.

* ``tiny_dit``: the denoiser, objective and sampling tests (N=4, D=8, S=3, C=16);
* ``save_tiny_bert`` + ``tiny_autoencoder``: a random BERT folder and a frozen-BERT autoencoder with
  a from-config T5 decoder (N=LATENTS, D=WIDTH), for the visualisation and report tests;
* ``tiny_pipeline`` / ``tiny_baseline``: an SLDPipeline over such an autoencoder and an AR baseline
  on the same BERT, for the loading and generation tests.
"""

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
from sld.models.baseline import BaselineConfig, BaselineModel
from sld.models.context_encoder import ContextEncoder
from sld.models.denoiser import SegmentDiT
from sld.pipeline import PipelineConfig, SLDPipeline

PAIRS = [
    (
        "Anna walked her dog in the park.",
        "Anna took her dog for a walk in the park.",
        "Stocks fell sharply on Monday.",
    ),
    ("Tom baked a cake for his mother.", "Tom made his mother a cake.", "The senate passed the budget bill."),
    (
        "The kids played soccer after school.",
        "After school the kids played soccer.",
        "Oil prices rose by 3 percent.",
    ),
    ("Lucy lost her keys at the mall.", "At the mall, Lucy lost her keys.", "The storm closed two airports."),
    ("Sam fixed the old bike.", "Sam repaired the old bicycle.", "Officials said the talks had stalled."),
]
CORPUS = [text for row in PAIRS for text in row] * 3
LATENTS, WIDTH = 4, 16
# the from-config T5 decoder of the tiny autoencoder and the tiny AR baseline
TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=1, num_heads=4, dropout_rate=0.0
)


def tiny_dit(**overrides) -> SegmentDiT:
    """A seeded 3-block, width-32 SegmentDiT; keyword arguments override its config."""
    kwargs = dict(latent_dim=8, num_latents=4, max_segments=3, context_dim=16, width=32, depth=3, heads=4)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return SegmentDiT(**kwargs)


def randomize_zero_init(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give zero-initialised tensors (adaLN-Zero, output projection, biases) random values so outputs are non-trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def save_tiny_bert(folder: Path, num_layers: int = 1, max_positions: int = 96) -> str:
    """A seeded random BERT (width 24) with a character-level wordpiece vocabulary, saved to ``folder``."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'#%"]
    words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=24,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def tiny_autoencoder(bert: str, seed: int) -> SegmentAutoencoder:
    config = AutoencoderConfig(
        encoder=bert,
        freeze_encoder=True,
        decoder_config=dict(TINY_T5),
        decoder_vocab_size=300,
        num_latents=LATENTS,
        latent_dim=WIDTH,
        compressor_layers=1,
        compressor_heads=4,
        reconstructor_layers=1,
        dropout=0.0,
        max_segment_tokens=16,
    )
    torch.manual_seed(seed)
    return SegmentAutoencoder.from_config(config, CORPUS).eval()


def tiny_pipeline(bert: str, autoencoder: SegmentAutoencoder, max_segments: int = 2) -> SLDPipeline:
    """A seeded SLDPipeline over ``autoencoder`` with the BERT folder as context encoder (ddim, 4 steps)."""
    torch.manual_seed(0)
    denoiser = SegmentDiT(
        latent_dim=WIDTH,
        num_latents=LATENTS,
        max_segments=max_segments,
        context_dim=24,
        width=32,
        depth=2,
        heads=4,
    )
    randomize_zero_init(denoiser)
    context = ContextEncoder.from_pretrained(bert, max_length=16)
    config = PipelineConfig(scheduler="ddim", num_inference_steps=4, guidance_scale=2.0)
    return SLDPipeline(denoiser, autoencoder, context, config)


def tiny_baseline(bert: str) -> BaselineModel:
    """A seeded AR baseline: the BERT folder as encoder, a from-config T5 decoder trained on CORPUS."""
    config = BaselineConfig(
        encoder=bert,
        decoder_config=dict(TINY_T5),
        decoder_vocab_size=300,
        max_source_tokens=16,
        max_target_tokens=16,
    )
    torch.manual_seed(0)
    return BaselineModel.from_config(config, CORPUS).eval()

"""The segment autoencoder of stage 2: one text segment <-> N latent vectors of width D.

SLD (Zhu et al. 2025, section 3.2), after LD4LG (Lovelace et al. 2023). Per segment::

    tokens --encoder--> h (B', L, d_enc) --compressor--> z (B', N, D)
           --reconstructor--> memory (B', N, d_dec) --seq2seq decoder (cross-attends to memory)--> tokens

* encoder: a pretrained BERT-style model (offline default: the packaged all-MiniLM-L6-v2, frozen),
  ``"decoder"``: the encoder stack of the seq2seq LM itself (the paper fine-tunes Flan-T5's), or
  ``"scratch"``: a new BERT over the decoder's own tokens, its token embeddings copied from the LM's.
* compressor: ``PerceiverCompressor``; each latent is re-scaled to norm sqrt(D).
* reconstructor: Linear D -> d_dec, learned positions, pre-LN transformer layers.
* decoder, one of two kinds:
  - a ``transformers`` encoder-decoder LM (``AutoModelForSeq2SeqLM``) whose encoder is bypassed: the
    reconstructor's memory is handed in as ``encoder_outputs``. Offline it is built from a config (T5
    by default) with a cased byte-level BPE tokenizer trained on the corpus (the CPU quickstart);
  - a pretrained causal LM (``AutoModelForCausalLM``: a hub name, a folder, a GGUF file, or the offline
    ``"smollm2"``) with its own tokenizer; the memory enters it through ``LatentConditioning``
    (per-layer key/value memory and/or an input prefix, ``sld.models.causal_lm``), and segments are
    decoded by ``sld.models.causal_decoding`` (finished rows leave the batch).

Shapes: B' segments (``B*S`` folded, see ``sld.shapes``), L tokens, N latents, D latent width,
V decoder vocabulary. ``labels`` are decoder token ids with -100 at padding.

A saved folder holds everything needed to rebuild the model without network access::

    autoencoder_config.json   AutoencoderConfig (architecture)
    model.safetensors         all weights (tied tensors stored once), loaded strictly
    encoder/                  encoder HF config + its tokenizer (tokenizer only for encoder="decoder";
                              for encoder="scratch" the tokenizer is the decoder's)
    decoder/                  decoder LM HF config + generation config + its tokenizer
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from sld.autoencoder_objective import AutoencoderLossConfig, compute_autoencoder_losses
from sld.backends import short_attention_backends
from sld.config import ConfigError
from sld.data.decoder_buckets import Bucket, bucket_target_count
from sld.distributed import global_mean
from sld.errors import UserError
from sld.losses import conversion_loss, target_token_nll
from sld.models.causal_decoding import DecodeSettings, decode
from sld.models.causal_lm import (
    Conditioning,
    LatentConditioning,
    cache_argument,
    is_causal_config,
    shift_in_start,
    start_token_id,
    teacher_forced_hidden,
    teacher_forced_logits,
    word_dropout,
)
from sld.models.encoder_cache import EncoderStateCache
from sld.models.padding_masks import key_padding_mask
from sld.models.parts import (
    DECODER_ENCODER,
    SCRATCH_ENCODER,
    build_model_parts,
    check_decoder_tokenizer,
    config_from_dict,
    default_decoder_config,
    freeze_unused_parameters,
    hidden_size,
    load_model_parts,
    load_saved_weights,
    read_config_json,
    save_model_parts,
    shift_labels_right,
    split_output_head,
)
from sld.models.perceiver import Attention, FeedForward, PerceiverCompressor
from sld.pretrained import MINILM
from sld.tokenization import IGNORE_INDEX, decoder_labels, encoder_inputs, token_budget

logger = logging.getLogger(__name__)

CONFIG_NAME = "autoencoder_config.json"


@dataclass
class AutoencoderConfig:
    """Architecture of a ``SegmentAutoencoder``; saved as ``autoencoder_config.json`` next to the weights.

    Attributes:
        encoder: ``"minilm"`` (packaged all-MiniLM-L6-v2), a hub name or local folder of a BERT-style
            ``AutoModel``, ``"decoder"`` (the encoder stack of the decoder LM), or ``"scratch"``: a new
            BERT encoder over the decoder tokenizer's tokens (``sld.models.parts.scratch_encoder``: as
            wide as the decoder, its token embeddings copied from the decoder LM's), trained at the full
            learning rate.
        encoder_config: ``BertConfig`` settings of the ``"scratch"`` encoder (e.g. ``num_hidden_layers``).
        freeze_encoder: keep the encoder's weights fixed (and its dropout off). None = True for
            ``"minilm"``, False otherwise.
        decoder_name_or_path: a pretrained LM with its own tokenizer: an ``AutoModelForSeq2SeqLM`` or an
            ``AutoModelForCausalLM`` (hub name, folder, ``.gguf`` file, or ``"smollm2"``, the offline
            SmolLM2-135M-Instruct); None = build ``decoder_config`` from scratch with a tokenizer trained
            on the corpus.
        decoder_gguf_file: the GGUF file inside the ``decoder_name_or_path`` folder, if it is one.
        latent_conditioning: how the memory enters a causal-LM decoder: ``"kv"`` (per-layer key/value
            memory), ``"prefix"`` (input embeddings before the text) or ``"kv+prefix"``. Unused by a
            seq2seq decoder, which cross-attends to the memory.
        decode_max_tokens: default token budget of a decoded segment (eos included); set by
            ``sld train-autoencoder`` from a percentile of the training segments' lengths. None =
            ``max_segment_tokens``.
        decoder_config: HF config of the from-scratch decoder LM (``model_type`` picks the family,
            default T5; T5 keys not given keep ``default_decoder_config()``); token ids and vocabulary
            size come from the trained tokenizer. Ignored when ``decoder_name_or_path`` is set.
        decoder_vocab_size: vocabulary size of the trained decoder tokenizer.
        num_latents: N, latents per segment.
        latent_dim: D, width of each latent.
        compressor_layers, compressor_heads: Perceiver depth and heads (its width must divide by the heads).
        compressor_width: width W of the Perceiver's queries, attention and FFN, mapped down to D at
            its end (LD4LG's resampler is wide, with 64-wide heads); None = D, the narrow resampler
            of the first profiles (16-wide heads at D=64, 4 heads).
        compressor_positions: add learned token positions (up to ``max_segment_tokens``) to the
            Perceiver's token inputs (LD4LG does); False = the latents see word order only through the
            encoder's contextual states.
        reconstructor_layers: pre-LN transformer layers between the latents and the decoder.
        reconstructor_heads: None = d_dec // 64 (64-wide heads).
        ff_mult: FFN width multiple in compressor and reconstructor.
        dropout: dropout in compressor and reconstructor.
        normalize_latents: project each latent to norm sqrt(D).
        max_segment_tokens: L, truncation length of a segment on both encoder and decoder side.
    """

    encoder: str = MINILM
    encoder_config: dict[str, Any] = field(default_factory=dict)
    freeze_encoder: bool | None = None
    decoder_name_or_path: str | None = None
    decoder_gguf_file: str | None = None
    latent_conditioning: Conditioning = "kv"
    decode_max_tokens: int | None = None
    decoder_config: dict[str, Any] = field(default_factory=default_decoder_config)
    decoder_vocab_size: int = 8192
    num_latents: int = 32
    latent_dim: int = 64
    compressor_layers: int = 3
    compressor_heads: int = 4
    compressor_width: int | None = None
    compressor_positions: bool = False
    reconstructor_layers: int = 3
    reconstructor_heads: int | None = None
    ff_mult: int = 4
    dropout: float = 0.1
    normalize_latents: bool = True
    max_segment_tokens: int = 64

    def __post_init__(self) -> None:
        for name in ("num_latents", "latent_dim", "compressor_heads", "ff_mult", "max_segment_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("compressor_layers", "reconstructor_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.compressor_width is not None and self.compressor_width < 1:
            raise ValueError(f"compressor_width must be >= 1 or null, got {self.compressor_width}")
        width = self.compressor_width or self.latent_dim
        if width % self.compressor_heads:
            name = "compressor_width" if self.compressor_width else "latent_dim"
            raise ValueError(f"{name} {width} must be divisible by compressor_heads {self.compressor_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.encoder:
            raise ValueError("encoder must be 'minilm', 'decoder', 'scratch', a hub name or a folder")
        if self.encoder_config and self.encoder != SCRATCH_ENCODER:
            raise ValueError(f"encoder_config sets up encoder: scratch; encoder is {self.encoder!r}")
        if self.encoder == SCRATCH_ENCODER and self.freeze_encoder:
            raise ValueError("encoder: scratch is new and untrained; it cannot be frozen (freeze_encoder)")
        if self.latent_conditioning not in ("kv", "prefix", "kv+prefix"):
            raise ValueError(
                f"latent_conditioning must be kv, prefix or kv+prefix, got {self.latent_conditioning!r}"
            )
        if self.decode_max_tokens is not None and not 1 <= self.decode_max_tokens <= self.max_segment_tokens:
            raise ValueError(
                f"decode_max_tokens must be in [1, max_segment_tokens={self.max_segment_tokens}], "
                f"got {self.decode_max_tokens}"
            )
        # A partial T5 decoder_config (e.g. only d_model) keeps the other offline defaults; the
        # completed dict is what gets saved, so the file always shows the whole architecture.
        default = default_decoder_config()
        if self.decoder_config.get("model_type", default["model_type"]) == default["model_type"]:
            self.decoder_config = {**default, **self.decoder_config}

    @property
    def encoder_frozen(self) -> bool:
        """``freeze_encoder`` with its default resolved."""
        return self.encoder == MINILM if self.freeze_encoder is None else self.freeze_encoder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "autoencoder config") -> AutoencoderConfig:
        return config_from_dict(cls, data, source)

    @classmethod
    def from_json(cls, path: str | Path) -> AutoencoderConfig:
        return cls.from_dict(read_config_json(path, "a SegmentAutoencoder"), str(path))


class TransformerBlock(nn.Module):
    """Pre-LN self-attention + FFN block; (B', T, dim) -> (B', T, dim)."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=True, dropout=dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.ff(self.norm_ff(x))


class Reconstructor(nn.Module):
    """Latents z (B', N, D) -> decoder memory (B', N, d_dec): Linear D -> d_dec, learned positions, blocks.

    The positions tell the decoder which latent is which: the compressor's output has no order of
    its own, but each latent slot consistently carries its own kind of information.
    """

    def __init__(
        self,
        latent_dim: int,
        model_dim: int,
        num_latents: int,
        depth: int = 3,
        num_heads: int = 8,
        ff_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(latent_dim, model_dim)
        self.positions = nn.Parameter(torch.randn(num_latents, model_dim) * 0.02)
        self.layers = nn.ModuleList(
            TransformerBlock(model_dim, num_heads, ff_mult, dropout) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(model_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(z) + self.positions  # (B', N, d_dec)
        for layer in self.layers:
            x = layer(x)
        return self.norm_out(x)


class SegmentAutoencoder(nn.Module):
    """Encoder -> Perceiver compressor -> reconstructor -> decoder LM (seq2seq or causal), per segment.

    Build with ``from_config`` (new model) or ``from_pretrained`` (saved folder); the constructor takes
    already-built parts.

    Args:
        config: the architecture.
        lm: the decoder LM: ``AutoModelForSeq2SeqLM`` or ``AutoModelForCausalLM``.
        decoder_tokenizer: its (cased) tokenizer.
        encoder: the BERT-style encoder, or None when ``config.encoder == "decoder"``.
        encoder_tokenizer: the encoder's tokenizer (defaults to the decoder's for ``"decoder"``).
    """

    def __init__(
        self,
        config: AutoencoderConfig,
        lm: PreTrainedModel,
        decoder_tokenizer: PreTrainedTokenizerBase,
        encoder: PreTrainedModel | None = None,
        encoder_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.uses_lm_encoder = config.encoder == DECODER_ENCODER
        if self.uses_lm_encoder and encoder is not None:
            raise ValueError("encoder='decoder' uses the LM's own encoder; do not pass a separate encoder")
        if not self.uses_lm_encoder and (encoder is None or encoder_tokenizer is None):
            raise ValueError(f"encoder='{config.encoder}' needs an encoder model and its tokenizer")
        check_decoder_tokenizer(decoder_tokenizer, "decoder")
        # Labels are built assuming right padding (the tokens first, then -100).
        decoder_tokenizer.padding_side = "right"
        self.lm = lm
        self.decoder_tokenizer = decoder_tokenizer
        self.text_encoder = encoder  # None: self.encoder is the LM's encoder stack
        # the frozen encoder's states of the training texts (sld.models.encoder_cache); not saved
        self.encoder_cache: EncoderStateCache | None = None
        self.encoder_tokenizer = encoder_tokenizer if encoder_tokenizer is not None else decoder_tokenizer

        d_enc = hidden_size(self.encoder.config)
        d_dec = hidden_size(lm.config)
        self.compressor = PerceiverCompressor(
            input_dim=d_enc,
            num_latents=config.num_latents,
            latent_dim=config.latent_dim,
            depth=config.compressor_layers,
            num_heads=config.compressor_heads,
            ff_mult=config.ff_mult,
            dropout=config.dropout,
            normalize_latents=config.normalize_latents,
            width=config.compressor_width,
            max_tokens=config.max_segment_tokens if config.compressor_positions else None,
        )
        heads = config.reconstructor_heads or max(1, d_dec // 64)
        if d_dec % heads:
            raise ConfigError(f"reconstructor_heads: decoder width {d_dec} is not divisible by {heads} heads")
        self.reconstructor = Reconstructor(
            latent_dim=config.latent_dim,
            model_dim=d_dec,
            num_latents=config.num_latents,
            depth=config.reconstructor_layers,
            num_heads=heads,
            ff_mult=config.ff_mult,
            dropout=config.dropout,
        )
        self.is_causal = is_causal_config(lm.config)
        if self.is_causal and self.uses_lm_encoder:
            raise ConfigError("encoder=decoder: a causal-LM decoder has no encoder stack; name an encoder")
        # How the memory reaches a causal LM (a seq2seq LM cross-attends to it instead).
        self.latent_conditioning = (
            LatentConditioning.for_lm(config.latent_conditioning, lm) if self.is_causal else None
        )
        freeze_unused_parameters(self.lm, self.text_encoder, self.uses_lm_encoder, self.encoder_frozen)

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def from_config(
        cls, config: AutoencoderConfig, corpus_texts: Sequence[str] | None = None
    ) -> SegmentAutoencoder:
        """A new autoencoder: pretrained parts loaded, new parts randomly initialised.

        ``corpus_texts`` (e.g. the training segments) trains the decoder tokenizer; it is required when
        ``config.decoder_name_or_path`` is None.
        """
        if config.decoder_name_or_path is None and config.encoder == DECODER_ENCODER:
            logger.warning(
                "encoder='decoder' with a from-scratch decoder: the encoder is untrained too "
                "(this collapsed in our offline runs; a pretrained encoder is the safer default)"
            )
        lm, decoder_tokenizer, encoder, encoder_tokenizer = build_model_parts(
            config.encoder,
            config.decoder_name_or_path,
            config.decoder_config,
            config.decoder_vocab_size,
            corpus_texts=corpus_texts,
            owner="SegmentAutoencoder.from_config",
            decoder_gguf_file=config.decoder_gguf_file,
            encoder_config=config.encoder_config,
            max_segment_tokens=config.max_segment_tokens,
        )
        return cls(config, lm, decoder_tokenizer, encoder, encoder_tokenizer)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SegmentAutoencoder:
        """Rebuild a saved autoencoder from its folder alone (no network, no encoder package needed)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise UserError(f"{folder}: not a SegmentAutoencoder folder (no {CONFIG_NAME})")
        config = AutoencoderConfig.from_json(folder / CONFIG_NAME)
        model = cls(config, *load_model_parts(folder, uses_own_encoder=config.encoder == DECODER_ENCODER))
        load_saved_weights(model, folder, "the SegmentAutoencoder", device, dtype)
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the folder that ``from_pretrained`` reads (see the module docstring)."""
        folder = Path(folder)
        save_model_parts(self, folder, self.config.to_dict(), CONFIG_NAME)
        return folder

    def train(self, mode: bool = True) -> SegmentAutoencoder:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()  # a frozen encoder is a fixed function: no dropout
        return self

    # ------------------------------------------------------------------------------------ properties

    @property
    def encoder(self) -> nn.Module:
        """The module that reads token ids: the BERT-style encoder or the LM's own encoder stack."""
        return self.text_encoder if self.text_encoder is not None else self.lm.get_encoder()

    @property
    def encoder_frozen(self) -> bool:
        return self.config.encoder_frozen

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def normalize_latents(self) -> bool:
        return self.config.normalize_latents

    @property
    def max_segment_tokens(self) -> int:
        return self.config.max_segment_tokens

    @property
    def decoder_dim(self) -> int:
        """d_dec, the width of the decoder memory."""
        return hidden_size(self.lm.config)

    @property
    def device(self) -> torch.device:
        return self.compressor.latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.compressor.latents.dtype

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that came pretrained: a loaded decoder LM and a trainable loaded encoder.

        The optimizer trains them at ``optim.pretrained_lr_scale`` x the learning rate of the new parts.
        """
        found: list[nn.Parameter] = []
        if self.config.decoder_name_or_path is not None:
            found += [p for p in self.lm.parameters() if p.requires_grad]
        if (
            self.text_encoder is not None
            and not self.encoder_frozen
            and self.config.encoder != SCRATCH_ENCODER
        ):
            found += [p for p in self.text_encoder.parameters() if p.requires_grad]
        unique = {id(p): p for p in found}
        return list(unique.values())

    def measure_decode_budget(self, texts: Sequence[str], percentile: float = 99.0) -> int:
        """Decoder tokens (eos included) that ``percentile`` % of ``texts`` fit in, at most L.

        ``sld train-autoencoder`` saves this as ``config.decode_max_tokens``.
        """
        return token_budget(self.decoder_tokenizer, texts, self.max_segment_tokens, percentile)

    # ---------------------------------------------------------------------------------- tokenization

    def tokenize_for_encoder(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Segments -> ``{"input_ids", "attention_mask"}`` (B', L) for ``encode``, on the CPU."""
        return encoder_inputs(self.encoder_tokenizer, texts, self.max_segment_tokens)

    def tokenize_for_decoder(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Segments -> ``{"labels"}`` (B', L) decoder targets (eos included, -100 at pads), on the CPU."""
        return {"labels": decoder_labels(self.decoder_tokenizer, texts, self.max_segment_tokens)}

    # --------------------------------------------------------------------------------------- forward

    def encoder_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B', L) -> encoder states (B', L, d_enc); no graph through a frozen encoder. An SDPA
        encoder gets the 4-D mask (no host read of it, ``sld.models.padding_masks``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            out = self.encoder(
                input_ids=input_ids, attention_mask=key_padding_mask(attention_mask, self.encoder)
            )
        return out.last_hidden_state

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B', L) and mask (B', L) -> latents z (B', N, D), each of norm sqrt(D) (no noise).

        ``encoder_index`` (B',): the rows' entries in ``encoder_cache``; their cached encoder states
        replace running the frozen encoder (``sld.models.encoder_cache``).
        """
        if encoder_index is not None and self.encoder_cache is not None:
            dtype = next(self.compressor.parameters()).dtype
            hidden = self.encoder_cache.gather(encoder_index, attention_mask.shape[1], dtype)
        else:
            hidden = self.encoder_hidden_states(input_ids, attention_mask)
        return self.compressor(hidden, attention_mask)

    def memory(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B', N, D) -> decoder memory (B', N, d_dec), what the decoder cross-attends to."""
        return self.reconstructor(z)

    def decoder_inputs(self, labels: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        """Teacher-forcing decoder inputs (B', L) for targets ``labels`` (B', L): start token, then
        ``labels`` shifted right; with ``dropout`` > 0 that share of them (not the start) is replaced by
        the unk (else pad) token (word dropout, ``sld.models.causal_lm.word_dropout``)."""
        pad = self.decoder_tokenizer.pad_token_id
        if self.is_causal:
            inputs = shift_in_start(labels, start_token_id(self.decoder_tokenizer), pad)
        else:
            start = self.lm.config.decoder_start_token_id
            if start is None:
                start = self.lm.generation_config.decoder_start_token_id
            inputs = shift_labels_right(labels, start, self.lm.config.pad_token_id)
        unk = self.decoder_tokenizer.unk_token_id
        return word_dropout(inputs, dropout, unk if unk is not None else pad)

    def reconstruction_logits(
        self, z: torch.Tensor, labels: torch.Tensor, decoder_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced decoder logits (B', L, V) for targets ``labels`` (B', L) given latents z (B', N, D).

        ``decoder_inputs`` (B', L) replaces the default ``decoder_inputs(labels)`` (e.g. with word dropout).
        """
        inputs = self.decoder_inputs(labels) if decoder_inputs is None else decoder_inputs
        return self._decoder_logits(self.memory(z), inputs)

    def _decoder_logits(self, memory: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B', L, V) for ``inputs`` (B', L) given decoder memory (B', N, d_dec)."""
        if self.is_causal:
            with self.latent_conditioning.teacher_forcing(self.lm, memory) as (cache, offset):
                return teacher_forced_logits(self.lm, cache, offset, inputs)
        with short_attention_backends():  # SLD_SHORT_ATTENTION: the decoder's kernels too (sld.backends)
            out = self.lm(
                encoder_outputs=BaseModelOutput(last_hidden_state=memory),
                decoder_input_ids=inputs,
                use_cache=False,
            )
        return out.logits

    def reconstruction_loss(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        decoder_inputs: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
        buckets: Sequence[Bucket] | None = None,
    ) -> torch.Tensor:
        """The conversion loss: mean token cross-entropy of ``labels`` (B', L) given latents z (B', N, D).

        Equal to ``conversion_loss(reconstruction_logits(z, labels, decoder_inputs), labels)`` (a mean
        over the global batch inside ``fit``). A causal LM with a plain output head projects only the
        target positions, a chunk of tokens at a time (``sld.losses.chunked_token_nll``): its (B', L, V)
        logits, the largest tensors of a training step, are never held; so does a T5 decoder
        (``sld.models.parts.split_output_head``). ``target_index``: the batch's flat target positions
        (``sld.losses.target_positions``, built by the collator on the host); None finds them on the
        device, a host sync.

        ``buckets`` (``sld.data.decoder_buckets``, from the collator): the decoder runs once per bucket,
        on the bucket's rows cut to its longest target, and the loss is the mean over the buckets'
        targets: the same tokens' losses as one pass over the padded batch when the buckets hold every
        row; over a subset of the rows (the adversarial term's) it is that subset's mean.
        """
        inputs = self.decoder_inputs(labels) if decoder_inputs is None else decoder_inputs
        split = split_output_head(self.lm)
        if buckets is None:
            if split is None:
                return conversion_loss(self.reconstruction_logits(z, labels, inputs), labels)
            hidden = self._decoder_hidden(self.memory(z), inputs)  # (B', L, d)
            return target_token_nll(hidden, labels, split[0], split[1], target_index)
        return global_mean(self.bucket_nll_sum(z, inputs, buckets), bucket_target_count(buckets))

    def bucket_nll_sum(
        self, z: torch.Tensor, inputs: torch.Tensor, buckets: Sequence[Bucket]
    ) -> torch.Tensor:
        """The summed token NLL of the ``buckets``' targets (``reconstruction_loss``'s numerator) given
        the batch's latents z (B', N, D) and teacher-forced ``inputs`` (B', L'): the reconstructor once
        over the buckets' rows (it is per row), then one decoder pass per bucket, cut to its longest."""
        split = split_output_head(self.lm)
        rows = torch.cat([bucket["rows"] for bucket in buckets])
        memories = self.memory(z.index_select(0, rows)).split([len(b["rows"]) for b in buckets])
        total = z.new_zeros((), dtype=torch.float32)
        for bucket, memory in zip(buckets, memories):
            cut = bucket["labels"]  # (n, L_b)
            bucket_inputs = inputs.index_select(0, bucket["rows"])[:, : cut.shape[1]]
            if split is None:
                logits = self._decoder_logits(memory, bucket_inputs)  # (n, L_b, V)
                nll = F.cross_entropy(
                    logits.flatten(0, 1).float(), cut.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            else:
                hidden = self._decoder_hidden(memory, bucket_inputs)  # (n, L_b, d)
                nll = target_token_nll(hidden, cut, split[0], split[1], bucket["target_index"], "sum")
            total = total + nll
        return total

    def _decoder_hidden(self, memory: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states (B', L, d) for teacher-forced ``inputs`` (B', L) given its
        memory (B', N, d_dec) (``memory(z)``)."""
        if self.is_causal:
            with self.latent_conditioning.teacher_forcing(self.lm, memory) as (cache, offset):
                return teacher_forced_hidden(self.lm, cache, offset, inputs)
        with short_attention_backends():  # SLD_SHORT_ATTENTION: the decoder's kernels too (sld.backends)
            return self.lm.get_decoder()(
                input_ids=inputs, encoder_hidden_states=memory, use_cache=False
            ).last_hidden_state

    def reconstruction_nll(
        self, z: torch.Tensor, labels: torch.Tensor, reduction: Literal["none", "mean", "sum"] = "none"
    ) -> torch.Tensor:
        """Negative log-likelihood of ``labels`` (B', L) given latents z (B', N, D).

        ``"none"``: (B',) mean NLL per target token of each segment; ``"mean"``: scalar mean over all
        target tokens of the batch (the conversion loss); ``"sum"``: scalar total. -100 labels are skipped.
        """
        logits = self.reconstruction_logits(z, labels)
        nll = F.cross_entropy(
            logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        counts = (labels != IGNORE_INDEX).sum(dim=1)
        if reduction == "none":
            return nll.sum(dim=1) / counts.clamp(min=1)
        if reduction == "mean":
            return nll.sum() / counts.sum().clamp(min=1)
        if reduction == "sum":
            return nll.sum()
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        loss_config: AutoencoderLossConfig | None = None,
        training: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training entry point: every term of the stage-2 objective on a collated batch.

        Goes through ``forward`` (rather than calling ``encode`` etc. from outside) so that wrappers
        see the whole computation: DDP's gradient synchronisation, accelerate's autocast. Use
        ``sld.autoencoder_objective.autoencoder_losses(model, batch, cfg)``, which calls this.

        Args:
            batch: tensors from ``SegmentCollator`` (see ``sld.data.collate``).
            loss_config: the loss settings (default ``AutoencoderLossConfig()``).
            training: add training-only noise; None = ``self.training``.
        """
        return compute_autoencoder_losses(
            self,
            batch,
            loss_config or AutoencoderLossConfig(),
            self.training if training is None else training,
        )

    # ------------------------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate_ids(
        self,
        z: torch.Tensor,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Latents z (B', N, D) -> generated decoder ids (B', T), T <= 1 + max_new_tokens.

        All rows are decoded together. ``max_new_tokens`` None = the saved budget
        (``config.decode_max_tokens``, else ``max_segment_tokens``). A seq2seq decoder goes through one
        ``generate`` call (rows start with the start token; extra keyword arguments go to ``generate``);
        a causal decoder through ``sld.models.causal_decoding.decode`` (greedy or ``do_sample`` with
        ``temperature`` / ``top_k`` / ``min_new_tokens``; no beam search; ``static_cache=True``:
        ``sld.models.static_decoding``). Call ``eval()`` first unless
        dropout is wanted.
        """
        budget = max_new_tokens or self.config.decode_max_tokens or self.max_segment_tokens
        memory = self.memory(z)
        if self.is_causal:
            if num_beams != 1:
                raise UserError("num_beams > 1: beam search is not available with a causal-LM decoder")
            unknown = sorted(
                set(generate_kwargs) - {"do_sample", "temperature", "top_k", "min_new_tokens", "static_cache"}
            )
            if unknown:
                raise UserError(
                    f"unsupported decoding option(s) for a causal-LM decoder: {', '.join(unknown)}"
                )
            cache, offset = self.latent_conditioning.prefill(self.lm, memory)
            rows = z.shape[0]
            start = torch.full((rows,), start_token_id(self.decoder_tokenizer), device=z.device)
            return decode(
                self.lm,
                cache,
                start,
                torch.full((rows,), offset, device=z.device),
                eos_id=self.decoder_tokenizer.eos_token_id,
                pad_id=self.decoder_tokenizer.pad_token_id,
                settings=DecodeSettings(
                    max_new_tokens=budget, no_repeat_ngram_size=no_repeat_ngram_size, **generate_kwargs
                ),
            )
        if generate_kwargs.pop("static_cache", False):
            raise UserError(
                "static_cache=true needs a causal-LM segment decoder; this one is encoder-decoder"
            )
        memory_mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        generate_kwargs.setdefault("do_sample", False)
        return self.lm.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=memory_mask,
            # An explicit cache: the default one is sized from the LM's encoder depth, which is 0 for
            # the from-scratch decoder (IndexError in cache_utils otherwise). Passed under the keyword
            # this transformers version takes (``cache``; ``past_key_values`` warns in 5.2x).
            **{cache_argument(self.lm): EncoderDecoderCache(DynamicCache(), DynamicCache())},
            max_new_tokens=budget,
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            **generate_kwargs,
        )

    def decode_latents(
        self,
        z: torch.Tensor,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Latents z (B', N, D) -> B' segment strings, decoded in one batched ``generate`` call."""
        if z.shape[0] == 0:
            return []
        ids = self.generate_ids(z, max_new_tokens, num_beams, no_repeat_ngram_size, **generate_kwargs)
        texts = self.decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [t.strip() for t in texts]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Segment strings -> latents z (len(texts), N, D) on the model's device (no noise, no graph).

        A batch whose texts are all in ``encoder_cache`` reads their cached encoder states instead of
        running the encoder (the quickstart hands its autoencoder's cache to the diffusion stage).
        """
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            inputs = self.tokenize_for_encoder(batch)
            rows = self.encoder_cache.rows_of(batch) if self.encoder_cache is not None else None
            index = None if rows is None else torch.tensor(rows, device=self.device)
            chunks.append(
                self.encode(
                    inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device), index
                )
            )
        if not chunks:
            return torch.empty(0, self.num_latents, self.latent_dim, device=self.device, dtype=self.dtype)
        return torch.cat(chunks)

    def latent_norm(self) -> float:
        """The norm every latent has when ``normalize_latents`` is on: sqrt(D)."""
        return math.sqrt(self.latent_dim)


__all__ = [
    "AutoencoderConfig",
    "CONFIG_NAME",
    "DECODER_ENCODER",
    "MINILM",
    "Reconstructor",
    "SegmentAutoencoder",
    "TransformerBlock",
    "default_decoder_config",
    "shift_labels_right",
]

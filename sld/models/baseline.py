"""The autoregressive baseline: the model a user would otherwise pick, built from SLD's own parts.

Same encoder as SLD (default: the packaged all-MiniLM-L6-v2, frozen), same from-config T5 decoder
(width, layers, heads, FFN) and the same decoder-tokenizer recipe (a cased byte-level BPE trained on
the corpus), but no latents: the decoder cross-attends directly to the encoder's token states of the
SOURCE and writes the whole target token by token::

    source tokens --encoder--> h (B, T, d_enc) --Linear (if d_enc != d_dec)--> memory (B, T, d_dec)
                  --seq2seq decoder (cross-attends to memory)--> target tokens (B, L_target)

This is the "Flan-T5 fine-tune" row of the SLD paper's tables, made comparable offline: when an SLD
autoencoder folder is given (``BaselineConfig.matching_autoencoder``) the encoder, the decoder sizes
and even the trained decoder tokenizer are copied from it, so the two systems differ only in how
they generate. ``encoder="decoder"`` gives a plain seq2seq model (the LM's own encoder stack reads
the source with the decoder tokenizer).

With a pretrained causal LM (``decoder_name_or_path`` a causal LM or ``"smollm2"``; ``encoder`` must be
``"decoder"``) the baseline is that LM fine-tuned as a prefix LM: it reads the source tokens, a start
token, and writes the target after it::

    [s_1 .. s_T, start, y_1 .. y_L]  --causal LM-->  predicts y_1 .. y_L, eos (loss on these only)

so SLD and the baseline stand on the same pretrained model. Generation prefills the left-padded
source and decodes with ``sld.models.causal_decoding`` (the same loop as SLD's segment decoder).

Shapes: B documents, T source tokens, L target tokens (all segments joined with spaces, eos
included), V decoder vocabulary. ``labels`` are decoder ids with -100 at padding.

A saved folder (what ``sld generate model=...`` and ``sld benchmark`` open)::

    baseline_config.json   BaselineConfig (architecture)
    model.safetensors      all weights (tied tensors stored once), loaded strictly
    encoder/               encoder HF config + its tokenizer (tokenizer only for encoder="decoder")
    decoder/               decoder LM HF config + generation config + its tokenizer
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from sld.config import ConfigError
from sld.errors import UserError
from sld.losses import conversion_loss, target_positions, target_token_nll
from sld.models.autoencoder import CONFIG_NAME as AUTOENCODER_CONFIG_NAME
from sld.models.autoencoder import AutoencoderConfig
from sld.models.causal_decoding import DecodeSettings, decode
from sld.models.causal_lm import cache_argument, is_causal_config, lm_forward, start_token_id
from sld.models.padding_masks import key_padding_mask
from sld.models.parts import (
    DECODER_DIR,
    DECODER_ENCODER,
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
from sld.models.unmasked_causal import unmasked_causal_attention
from sld.pretrained import MINILM
from sld.tokenization import (
    IGNORE_INDEX,
    decoder_label_ids,
    encoder_inputs,
    labels_padding_side,
    pad_inputs,
    pad_labels,
    token_budget,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "baseline_config.json"


@dataclass
class BaselineConfig:
    """Architecture of a ``BaselineModel``; saved as ``baseline_config.json`` next to the weights.

    Attributes:
        encoder: ``"minilm"`` (packaged all-MiniLM-L6-v2), a hub name or local folder of a BERT-style
            ``AutoModel``, or ``"decoder"`` (the encoder stack of the decoder LM: a plain seq2seq model).
        freeze_encoder: keep the encoder's weights fixed (and its dropout off). None = True for
            ``"minilm"``, False otherwise (as in ``AutoencoderConfig``).
        decoder_name_or_path: a pretrained LM with its tokenizer: an ``AutoModelForSeq2SeqLM``, or an
            ``AutoModelForCausalLM`` (hub name, folder, ``.gguf`` file or ``"smollm2"``; then
            ``encoder`` must be ``"decoder"``: a prefix LM); None = build ``decoder_config`` from scratch
            with a tokenizer trained on the corpus.
        decoder_gguf_file: the GGUF file inside the ``decoder_name_or_path`` folder, if it is one.
        decoder_config: HF config of the from-scratch decoder LM (default: SLD's default decoder).
        decoder_vocab_size: vocabulary size of the trained decoder tokenizer.
        max_source_tokens: T, truncation length of the source.
        max_target_tokens: L, truncation length of the target in training (SLD: max_segments x
            max_segment_tokens).
        decode_max_tokens: default ``max_new_tokens`` of generation; ``sld train-baseline`` sets it from
            a percentile of the training targets' lengths (as SLD's autoencoder does per segment).
            None = ``max_target_tokens``.
    """

    encoder: str = MINILM
    freeze_encoder: bool | None = None
    decoder_name_or_path: str | None = None
    decoder_gguf_file: str | None = None
    decoder_config: dict[str, Any] = field(default_factory=default_decoder_config)
    decoder_vocab_size: int = 8192
    max_source_tokens: int = 256
    max_target_tokens: int = 320
    decode_max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_source_tokens", "max_target_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.encoder:
            raise ValueError("encoder must be 'minilm', 'decoder', a hub name or a folder")

    @property
    def encoder_frozen(self) -> bool:
        """``freeze_encoder`` with its default resolved."""
        return self.encoder == MINILM if self.freeze_encoder is None else self.freeze_encoder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "baseline config") -> BaselineConfig:
        return config_from_dict(cls, data, source)

    @classmethod
    def from_json(cls, path: str | Path) -> BaselineConfig:
        return cls.from_dict(read_config_json(path, "an AR baseline"), str(path))

    def matching_autoencoder(self, folder: str | Path, max_segments: int | None = None) -> BaselineConfig:
        """A copy with the encoder and decoder of a saved SLD autoencoder (same sizes, same encoder).

        ``max_segments`` (S) also sets ``max_target_tokens`` to S x the autoencoder's segment length,
        so that both systems may write equally long documents. A causal-LM autoencoder gives a prefix
        LM on the same pretrained model (``encoder="decoder"``).
        """
        path = Path(folder) / AUTOENCODER_CONFIG_NAME
        if not path.is_file():
            raise UserError(f"{folder}: not a SegmentAutoencoder folder (no {AUTOENCODER_CONFIG_NAME})")
        ae = AutoencoderConfig.from_json(path)
        updates: dict[str, Any] = dict(
            encoder=ae.encoder,
            freeze_encoder=ae.freeze_encoder,
            decoder_name_or_path=ae.decoder_name_or_path,
            decoder_gguf_file=ae.decoder_gguf_file,
            decoder_config=dict(ae.decoder_config),
            decoder_vocab_size=ae.decoder_vocab_size,
        )
        decoder_config = Path(folder) / DECODER_DIR / "config.json"
        if decoder_config.is_file() and is_causal_config(AutoConfig.from_pretrained(decoder_config.parent)):
            updates.update(encoder=DECODER_ENCODER, freeze_encoder=False)
        if max_segments is not None:
            updates["max_target_tokens"] = max_segments * ae.max_segment_tokens
        return dataclasses.replace(self, **updates)


def baseline_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"loss"}`` of a batch already on the model's device: mean target-token cross-entropy.

    Goes through ``model(...)`` (not a method) so that a ``DistributedDataParallel`` wrapper from
    ``accelerate`` sees the forward pass and synchronises gradients.
    """
    loss = model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        return_loss=True,
        target_index=batch.get("target_index"),
    )
    return {"loss": loss}


class BaselineCollator:
    """Picklable collate function: ``(source, target)`` pairs -> a training batch.

    ``None`` sources become empty strings. Batch keys: ``input_ids``, ``attention_mask`` (B, T)
    encoder inputs of the sources, ``labels`` (B, L) decoder targets (eos included, -100 at pads),
    ``target_index`` (T,) their flat target positions (``sld.losses.target_positions``). Items may
    also be ``Seq2SeqRow``s from ``tokenize`` (a training set tokenized once).
    """

    def __init__(
        self,
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizer: PreTrainedTokenizerBase,
        max_source_tokens: int,
        max_target_tokens: int,
    ) -> None:
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.max_source_tokens = max_source_tokens
        self.max_target_tokens = max_target_tokens

    @classmethod
    def from_model(cls, model: BaselineModel) -> BaselineCollator:
        cfg = model.config
        return cls(
            model.encoder_tokenizer, model.decoder_tokenizer, cfg.max_source_tokens, cfg.max_target_tokens
        )

    def sources(self, sources: Sequence[str | None]) -> dict[str, torch.Tensor]:
        """Sources -> ``{"input_ids", "attention_mask"}`` (B, T), right-padded, on the CPU."""
        texts = ["" if s is None else s for s in sources]
        return encoder_inputs(self.encoder_tokenizer, texts, self.max_source_tokens)

    def tokenize(self, pairs: Sequence[tuple[str | None, str]]) -> list[Seq2SeqRow]:
        """``(source, target)`` pairs -> their token ids, once (a training set's rows: the collator then
        batches them without the tokenizers, see ``PrefixLMCollator.tokenize``)."""
        texts = ["" if source is None else source for source, _ in pairs]
        sources = self.encoder_tokenizer(
            texts, truncation=True, max_length=self.max_source_tokens, return_token_type_ids=False
        )["input_ids"]
        targets = decoder_label_ids(self.decoder_tokenizer, [t for _, t in pairs], self.max_target_tokens)
        return [Seq2SeqRow(source, target) for source, target in zip(sources, targets)]

    def __call__(self, pairs: Sequence[tuple[str | None, str] | Seq2SeqRow]) -> dict[str, torch.Tensor]:
        """Text pairs, or rows already tokenized by ``tokenize``, -> a training batch."""
        rows = pairs if all(isinstance(p, Seq2SeqRow) for p in pairs) else self.tokenize(pairs)
        encoded = pad_inputs(self.encoder_tokenizer, [row.source for row in rows])
        labels = pad_labels([row.labels for row in rows], labels_padding_side(self.decoder_tokenizer))
        return {
            **encoded,
            "labels": labels,
            "target_index": target_positions(labels),
        }


class Seq2SeqRow(NamedTuple):
    """One seq2seq training row's token ids: ``source`` (the encoder's, special tokens included) and
    ``labels`` (the decoder's targets, eos included)."""

    source: list[int]
    labels: list[int]


class PrefixLMCollator:
    """Picklable collate function of a causal-LM baseline: ``(source, target)`` pairs -> a prefix-LM batch.

    A row reads ``[s_1 .. s_T, start, y_1 .. y_L]`` (source tokens truncated to ``max_source_tokens``,
    target tokens to ``max_target_tokens - 1``) and must predict ``y_1 .. y_L, eos`` at its last
    L + 1 positions. Training rows are right-padded: every row starts at column 0, so a causal LM
    reads them with no padding mask at all (its real tokens never look at the pads after them), its
    positions are plain column numbers, and SDPA runs its causal flash kernel (a padding mask would
    have sent it to the slower memory-efficient one). ``None`` sources are empty. Batch keys:
    ``input_ids``, ``attention_mask`` (B, W) right-padded, W = max(T + 1 + L); ``labels`` (B, W):
    label j is the token after column j where that token is a target token or eos, -100 elsewhere
    (the source, the pads); ``target_index`` (T,) the labels' flat target positions. Generation
    prompts (``sources``) are left-padded instead, so that every row's next token is the same column.
    Items may also be ``PrefixLMRow``s from ``tokenize`` (a training set tokenized once).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_tokens: int, max_target_tokens: int):
        self.tokenizer = tokenizer
        self.max_source_tokens = max_source_tokens
        self.max_target_tokens = max_target_tokens

    @classmethod
    def from_model(cls, model: BaselineModel) -> PrefixLMCollator:
        return cls(model.decoder_tokenizer, model.config.max_source_tokens, model.config.max_target_tokens)

    def prompts(self, sources: Sequence[str | None]) -> list[list[int]]:
        """Source token ids followed by the start token, one list per source."""
        texts = ["" if s is None else s for s in sources]
        ids = self.tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=self.max_source_tokens
        )["input_ids"]
        start = start_token_id(self.tokenizer)
        return [row + [start] for row in ids]

    def sources(self, sources: Sequence[str | None]) -> dict[str, torch.Tensor]:
        """Sources -> left-padded prompts ``{"input_ids", "attention_mask"}`` (B, T + 1), on the CPU."""
        prompts = self.prompts(sources)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, row in enumerate(prompts):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def tokenize(self, pairs: Sequence[tuple[str | None, str]]) -> list[PrefixLMRow]:
        """``(source, target)`` pairs -> their token ids, once: a dataset of these rows (the trainer's)
        spares the loader workers the tokenizer at every batch of every epoch (on an H200 the AR
        baseline's step at batch 1,024 waited 74-90 ms a step for the next batch, tokenized in the
        workers)."""
        prompts = self.prompts([source for source, _ in pairs])
        targets = self.tokenizer(
            [target for _, target in pairs],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_target_tokens - 1,
        )["input_ids"]
        return [PrefixLMRow(prompt, target) for prompt, target in zip(prompts, targets)]

    def __call__(self, pairs: Sequence[tuple[str | None, str] | PrefixLMRow]) -> dict[str, torch.Tensor]:
        """Text pairs, or rows already tokenized by ``tokenize``, -> a training batch."""
        rows = pairs if all(isinstance(p, PrefixLMRow) for p in pairs) else self.tokenize(pairs)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        width = max(len(row.prompt) + len(row.target) for row in rows)
        ids, mask, labels = [], [], []
        for prompt, target in rows:
            used = len(prompt) + len(target)
            ids.append(prompt + target + [pad] * (width - used))
            mask.append([1] * used + [0] * (width - used))
            # the start token (the prompt's last column) predicts y_1, ..., the last y_L predicts eos
            labels.append(
                [IGNORE_INDEX] * (len(prompt) - 1) + target + [eos] + [IGNORE_INDEX] * (width - used)
            )
        labels = torch.tensor(labels, dtype=torch.long)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": labels,
            "target_index": target_positions(labels),
        }


class PrefixLMRow(NamedTuple):
    """One prefix-LM training row's token ids: ``prompt`` (source tokens + the start token) and
    ``target`` (its tokens, without eos)."""

    prompt: list[int]
    target: list[int]


class BaselineModel(nn.Module):
    """Source encoder -> (projection) -> seq2seq decoder writing the whole target, token by token; or a
    causal LM reading the source and writing the target after it (a prefix LM, module docstring).

    Build with ``from_config`` (new model) or ``from_pretrained`` (saved folder); the constructor takes
    already-built parts (same arguments as ``SegmentAutoencoder``).
    """

    def __init__(
        self,
        config: BaselineConfig,
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
        decoder_tokenizer.padding_side = "right"  # labels assume the tokens first, then -100
        self.lm = lm
        self.decoder_tokenizer = decoder_tokenizer
        self.text_encoder = encoder
        self.encoder_tokenizer = encoder_tokenizer if encoder_tokenizer is not None else decoder_tokenizer
        self.is_causal = is_causal_config(lm.config)
        if self.is_causal:
            if not self.uses_lm_encoder:
                raise ConfigError(
                    f"encoder={config.encoder}: a causal-LM baseline reads the source itself (a prefix LM); "
                    "set encoder: decoder"
                )
            self.proj = nn.Identity()
            return
        d_enc, d_dec = hidden_size(self.encoder.config), hidden_size(lm.config)
        self.proj = nn.Linear(d_enc, d_dec) if d_enc != d_dec else nn.Identity()
        freeze_unused_parameters(self.lm, self.text_encoder, self.uses_lm_encoder, self.encoder_frozen)

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def from_config(
        cls,
        config: BaselineConfig,
        corpus_texts: Sequence[str] | None = None,
        decoder_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> BaselineModel:
        """A new baseline: pretrained parts loaded, new parts randomly initialised.

        The decoder tokenizer is ``decoder_tokenizer`` when given (e.g. the SLD autoencoder's, for an
        identical vocabulary), else trained on ``corpus_texts`` (the training targets) with the SLD
        recipe; one of them is required for a from-scratch decoder.
        """
        lm, tokenizer, encoder, encoder_tokenizer = build_model_parts(
            config.encoder,
            config.decoder_name_or_path,
            config.decoder_config,
            config.decoder_vocab_size,
            corpus_texts=corpus_texts,
            decoder_tokenizer=decoder_tokenizer,
            owner="BaselineModel.from_config",
            decoder_gguf_file=config.decoder_gguf_file,
        )
        return cls(config, lm, tokenizer, encoder, encoder_tokenizer)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> BaselineModel:
        """Rebuild a saved baseline from its folder alone (no network, no encoder package needed)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise UserError(f"{folder}: not an AR baseline folder (no {CONFIG_NAME})")
        config = BaselineConfig.from_json(folder / CONFIG_NAME)
        model = cls(config, *load_model_parts(folder, uses_own_encoder=config.encoder == DECODER_ENCODER))
        load_saved_weights(model, folder, "the AR baseline", device, dtype)
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the folder that ``from_pretrained`` reads (see the module docstring)."""
        folder = Path(folder)
        save_model_parts(self, folder, self.config.to_dict(), CONFIG_NAME)
        return folder

    def train(self, mode: bool = True) -> BaselineModel:
        super().train(mode)
        if self.encoder_frozen and not self.is_causal:
            self.encoder.eval()  # a frozen encoder is a fixed function: no dropout
        return self

    def measure_decode_budget(self, targets: Sequence[str], percentile: float = 99.0) -> int:
        """Target tokens (eos included) that ``percentile`` % of ``targets`` fit in, at most L."""
        return token_budget(self.decoder_tokenizer, targets, self.max_target_tokens, percentile)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that came pretrained (a loaded LM, a trainable loaded encoder); the
        optimizer trains them at ``optim.pretrained_lr_scale`` x the learning rate."""
        found: list[nn.Parameter] = []
        if self.config.decoder_name_or_path is not None:
            found += [p for p in self.lm.parameters() if p.requires_grad]
        if self.text_encoder is not None and not self.encoder_frozen:
            found += [p for p in self.text_encoder.parameters() if p.requires_grad]
        return list({id(p): p for p in found}.values())

    # ------------------------------------------------------------------------------------ properties

    @property
    def encoder(self) -> nn.Module:
        """The module that reads source ids: the BERT-style encoder or the LM's own encoder stack."""
        return self.text_encoder if self.text_encoder is not None else self.lm.get_encoder()

    @property
    def encoder_frozen(self) -> bool:
        return self.config.encoder_frozen

    @property
    def max_target_tokens(self) -> int:
        return self.config.max_target_tokens

    @property
    def device(self) -> torch.device:
        return self.lm.get_output_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.get_output_embeddings().weight.dtype

    def collator(self) -> BaselineCollator | PrefixLMCollator:
        """The training collate function for this model's tokenizers and lengths."""
        return PrefixLMCollator.from_model(self) if self.is_causal else BaselineCollator.from_model(self)

    # --------------------------------------------------------------------------------------- forward

    def _decoder_start_id(self) -> int:
        start = self.lm.config.decoder_start_token_id
        return self.lm.generation_config.decoder_start_token_id if start is None else start

    def memory(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Source ids (B, T) and mask (B, T) -> decoder memory (B, T, d_dec); no graph through a frozen encoder."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            mask = key_padding_mask(attention_mask, self.encoder)  # (B, 1, 1, T): no host read of the mask
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        # An encoder stored in another precision (e.g. an fp16 copy) still feeds the decoder's dtype.
        return self.proj(hidden.to(self.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        return_loss: bool = False,
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) for targets ``labels`` (B, L) given source ids (B, T).

        A causal-LM baseline reads a right-padded prefix-LM batch (``PrefixLMCollator``): logits
        (B, W, V) of every column, aligned with ``labels`` (B, W); no padding mask (right padding needs none).
        ``return_loss``: the mean target-token cross-entropy instead (a scalar; ``target_loss``, with
        the batch's ``target_index``).
        """
        if return_loss:
            return self.target_loss(input_ids, attention_mask, labels, target_index)
        if self.is_causal:
            with unmasked_causal_attention(self.lm):
                return self.lm(input_ids=input_ids, use_cache=False).logits
        out = self.lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.memory(input_ids, attention_mask)),
            attention_mask=key_padding_mask(attention_mask, self.lm.get_decoder()),
            decoder_input_ids=shift_labels_right(
                labels, self._decoder_start_id(), self.lm.config.pad_token_id
            ),
            use_cache=False,
        )
        return out.logits

    def target_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the target tokens of ``labels`` (B, L) (a mean over the global batch
        inside ``fit``), equal to ``conversion_loss(self(input_ids, attention_mask, labels), labels)``.

        When the LM's logits are a plain projection of its last hidden states
        (``sld.models.parts.split_output_head``: a causal LM's head, T5's) only the target positions
        are projected, a chunk of tokens at a time (``chunked_token_nll``): the (B, L, V) logits of
        every position, float32 for the loss (SmolLM2: V = 49,152), never exist. ``target_index``: the
        batch's flat target positions from the collator (``sld.losses.target_positions``); None finds
        them on the device (a host sync).
        """
        split = split_output_head(self.lm)
        if split is None:
            return conversion_loss(self(input_ids, attention_mask, labels), labels)
        head, scale = split
        if self.is_causal:
            # right-padded rows (PrefixLMCollator): causal attention alone keeps the pads out of every
            # real token's view, so no mask is built (SDPA's causal flash kernel), and transformers' mask
            # code, which reads the device on the host when given no mask, does not run
            with unmasked_causal_attention(self.lm):
                hidden = self.lm.base_model(
                    input_ids=input_ids, use_cache=False
                ).last_hidden_state  # (B, W, d)
        else:
            hidden = self.lm.get_decoder()(
                input_ids=shift_labels_right(labels, self._decoder_start_id(), self.lm.config.pad_token_id),
                encoder_hidden_states=self.memory(input_ids, attention_mask),
                encoder_attention_mask=key_padding_mask(attention_mask, self.lm.get_decoder()),
                use_cache=False,
            ).last_hidden_state  # (B, L, d)
        return target_token_nll(hidden, labels, head, scale, target_index)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss"}``: mean token cross-entropy of the target given the source (a scalar with a graph)."""
        return baseline_loss(self, {k: v.to(self.device) for k, v in batch.items()})

    # ------------------------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Source ids (B, T) -> generated decoder ids (B, L'), L' <= 1 + max_new_tokens, KV cache on.

        Seq2seq: one ``generate`` call for the whole batch; extra keyword arguments go to ``generate``.
        Causal: ``input_ids`` are left-padded prompts (``PrefixLMCollator.sources``); the source is
        prefilled and ``sld.models.causal_decoding.decode`` writes the target (rows leave as they end;
        greedy, or ``do_sample`` with ``temperature`` / ``top_k`` / ``min_new_tokens``; no beams;
        ``static_cache=True``: ``sld.models.static_decoding``).
        """
        budget = max_new_tokens or self.config.decode_max_tokens or self.max_target_tokens
        if self.is_causal:
            return self._decode_causal(
                input_ids, attention_mask, budget, num_beams, no_repeat_ngram_size, generate_kwargs
            )
        if generate_kwargs.pop("static_cache", False):
            raise UserError("static_cache=true needs a causal-LM decoder; this baseline is encoder-decoder")
        generate_kwargs.setdefault("do_sample", False)
        return self.lm.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.memory(input_ids, attention_mask)),
            attention_mask=attention_mask,
            # Explicit cache, as in SegmentAutoencoder: the default one is sized from the LM's encoder
            # depth, which is 0 for the from-scratch decoder.
            **{cache_argument(self.lm): EncoderDecoderCache(DynamicCache(), DynamicCache())},
            use_cache=True,
            max_new_tokens=budget,
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            **generate_kwargs,
        )

    def _decode_causal(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        budget: int,
        num_beams: int,
        no_repeat_ngram_size: int,
        options: dict[str, Any],
    ) -> torch.Tensor:
        """Prefill the prompts (B, T+1) but their last (start) token, then decode from it."""
        if num_beams != 1:
            raise UserError("num_beams > 1: beam search is not available with a causal-LM baseline")
        unknown = sorted(
            set(options) - {"do_sample", "temperature", "top_k", "min_new_tokens", "static_cache"}
        )
        if unknown:
            raise UserError(f"unsupported decoding option(s) for a causal-LM baseline: {', '.join(unknown)}")
        cache = DynamicCache()
        prefix_mask = None
        if input_ids.shape[1] > 1:
            prefix_mask = attention_mask[:, :-1]
            positions = (prefix_mask.cumsum(dim=1) - 1).clamp(min=0)
            lm_forward(
                self.lm,
                cache,
                input_ids=input_ids[:, :-1],
                attention_mask=prefix_mask,
                position_ids=positions,
                logits_to_keep=1,
            )
        return decode(
            self.lm,
            cache,
            input_ids[:, -1],
            attention_mask.sum(dim=1) - 1,
            eos_id=self.decoder_tokenizer.eos_token_id,
            pad_id=self.decoder_tokenizer.pad_token_id,
            settings=DecodeSettings(
                max_new_tokens=budget, no_repeat_ngram_size=no_repeat_ngram_size, **options
            ),
            attention_mask=prefix_mask,
        )

    @torch.no_grad()
    def generate_texts(
        self,
        sources: Sequence[str | None],
        batch_size: int = 64,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        max_new_tokens: int | None = None,
        progress: bool = False,
        **generate_kwargs: Any,
    ) -> list[str]:
        """One text per source (``None`` = unconditional, read as an empty source), in input order.

        Documents go through ``generate`` ``batch_size`` at a time (one call per batch). Call
        ``eval()`` first unless dropout is wanted.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        collate = self.collator()
        texts: list[str] = []
        starts = range(0, len(sources), batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress):
            inputs = collate.sources(sources[start : start + batch_size])
            ids = self.generate_ids(
                inputs["input_ids"].to(self.device),
                inputs["attention_mask"].to(self.device),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                no_repeat_ngram_size=no_repeat_ngram_size,
                **generate_kwargs,
            )
            texts += [t.strip() for t in self.decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return texts


__all__ = [
    "BaselineCollator",
    "BaselineConfig",
    "BaselineModel",
    "CONFIG_NAME",
    "PrefixLMCollator",
    "PrefixLMRow",
    "Seq2SeqRow",
    "baseline_loss",
]

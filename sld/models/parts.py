"""Parts shared by the encoder + decoder-LM models (SegmentAutoencoder, the AR baseline).

Both read text with a pretrained BERT-style encoder (or the LM's own encoder stack) and write with a
``transformers`` LM: a seq2seq LM loaded by name or built from a config with a corpus-trained
tokenizer, or a pretrained causal LM (``sld.models.causal_lm``: hub name, folder, GGUF file or the
offline default ``"smollm2"``). This module builds those parts alike for both, and owns their folder
layout::

    <config>.json         the model's own config (written by the model)
    model.safetensors     all weights (tied tensors stored once), loaded strictly
    encoder/              encoder HF config + its tokenizer (tokenizer only for encoder="decoder")
    decoder/              decoder LM HF config + generation config + its tokenizer
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sld.config import ConfigError
from sld.errors import UserError
from sld.models.causal_lm import is_causal_config, load_causal_lm, plain_output_head, prepare_tokenizer
from sld.models.t5_fast import maybe_fuse_t5_elementwise, t5_output_head
from sld.pretrained import resolve_language_model, resolve_pretrained
from sld.tokenization import IGNORE_INDEX, train_decoder_tokenizer

C = TypeVar("C")
logger = logging.getLogger(__name__)

DECODER_ENCODER = "decoder"  # use the encoder stack of the seq2seq decoder LM
SCRATCH_ENCODER = "scratch"  # a BERT encoder trained from scratch on the decoder's tokens

WEIGHTS_NAME = "model.safetensors"
ENCODER_DIR = "encoder"
DECODER_DIR = "decoder"

# Keys every transformers config understands even when they are not attributes of a fresh instance.
_GENERIC_CONFIG_KEYS = {
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "sep_token_id",
}
# Per model type: the key that sets the number of encoder layers, set to 0 when the LM's own encoder
# is never run (the reconstructor's memory replaces it).
_ENCODER_LAYERS_KEY = {"t5": "num_layers", "bart": "encoder_layers"}


def default_decoder_config() -> dict[str, Any]:
    """Offline default decoder: a 6-layer T5 decoder (gated-GELU like T5 v1.1; tied embeddings, which keep the initial logits at unit scale), about 20M parameters plus the vocabulary."""
    return {
        "model_type": "t5",
        "d_model": 512,
        "d_kv": 64,
        "d_ff": 1536,
        "num_decoder_layers": 6,
        "num_heads": 8,
        "dropout_rate": 0.1,
        "feed_forward_proj": "gated-gelu",
    }


def hidden_size(config: Any) -> int:
    for key in ("hidden_size", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot tell the hidden width of a {type(config).__name__} (no hidden_size / d_model)")


def load_encoder(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained BERT-style encoder and its own tokenizer, from 'minilm', a hub name or a folder."""
    path = resolve_pretrained(name, "encoder")
    try:
        # float32 explicitly: transformers 5 otherwise keeps the checkpoint's dtype (fp16 copies)
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"encoder: cannot load '{name}' as a transformers AutoModel + tokenizer: {err}"
        ) from err
    if getattr(encoder.config, "is_encoder_decoder", False):
        raise ConfigError(
            f"encoder: '{name}' is an encoder-decoder model; set decoder_name_or_path to it and encoder: decoder"
        )
    return encoder, tokenizer


def scratch_encoder(
    settings: dict[str, Any], tokenizer: PreTrainedTokenizerBase, lm: PreTrainedModel, max_tokens: int
) -> PreTrainedModel:
    """A bidirectional BERT encoder (``encoder: scratch``) over the decoder tokenizer's tokens, new.

    ``settings`` are ``BertConfig`` keys; by default it is as wide as the decoder LM with 64-wide heads,
    2 layers (on the CPU a small ROC autoencoder learned faster with 2 than with 4: BLEU 4.55 against
    3.29 after 300 steps, ``docs/results.md``) and a 4x FFN. When its width and vocabulary match the
    LM's, its token embeddings start as a copy of the LM's input embeddings (a pretrained LM's token
    identities, cased, in the decoder's own tokenization), then train with the rest of it.
    """
    width = hidden_size(lm.config)
    defaults = BertConfig()
    for key in settings:
        if not hasattr(defaults, key):
            raise ConfigError(f"encoder_config.{key}: not a setting of BertConfig")
    merged = dict(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=max(1, width // 64),
        intermediate_size=4 * width,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    merged.update(settings)
    merged.update(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, max_position_embeddings=max_tokens
    )
    try:
        encoder = BertModel(BertConfig(**merged))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"encoder_config: {err}") from err
    source = lm.get_input_embeddings().weight
    target = encoder.get_input_embeddings().weight
    if source.shape == target.shape:
        with torch.no_grad():
            target.copy_(source)
        logger.info("scratch encoder: token embeddings copied from the decoder LM %s", tuple(source.shape))
    else:
        logger.info(
            "scratch encoder: token embeddings %s start random (the decoder LM's are %s)",
            tuple(target.shape),
            tuple(source.shape),
        )
    return encoder


def decoder_lm_config(
    decoder_config: dict[str, Any], tokenizer: PreTrainedTokenizerBase, uses_own_encoder: bool
) -> Any:
    """HF config of a from-scratch seq2seq LM: ``decoder_config`` (``model_type`` + settings) plus the
    tokenizer's ids. Unless ``uses_own_encoder``, the LM's encoder stack is built with 0 layers."""
    settings = dict(decoder_config)
    model_type = settings.pop("model_type", "t5")
    try:
        defaults = AutoConfig.for_model(model_type)
    except ValueError as err:
        raise ConfigError(f"decoder_config.model_type: unknown model type '{model_type}'") from err
    for key in settings:
        if key not in _GENERIC_CONFIG_KEYS and not hasattr(defaults, key):
            raise ConfigError(f"decoder_config.{key}: not a setting of {type(defaults).__name__}")
    if model_type == "t5":
        settings.setdefault("num_decoder_layers", settings.get("num_layers", 6))
    encoder_layers_key = _ENCODER_LAYERS_KEY.get(model_type)
    if encoder_layers_key is not None:
        if not uses_own_encoder:
            # The LM's own encoder never runs: build it empty. (T5 with num_layers != num_decoder_layers
            # breaks generate()'s default cache; SegmentAutoencoder always passes an explicit one.)
            settings[encoder_layers_key] = 0
        elif model_type == "t5":
            settings.setdefault("num_layers", settings["num_decoder_layers"])
    settings.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # Decoding starts from <s>; the pad id is never a real input.
        decoder_start_token_id=tokenizer.bos_token_id,
        is_encoder_decoder=True,
    )
    try:
        return AutoConfig.for_model(model_type, **settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"decoder_config: {err}") from err


def check_decoder_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ConfigError(f"{where}: the decoder tokenizer needs a pad and an eos token")


def build_model_parts(
    encoder: str,
    decoder_name_or_path: str | None,
    decoder_config: dict[str, Any],
    decoder_vocab_size: int,
    corpus_texts: Sequence[str] | None = None,
    decoder_tokenizer: PreTrainedTokenizerBase | None = None,
    owner: str = "the model",
    decoder_gguf_file: str | None = None,
    encoder_config: dict[str, Any] | None = None,
    max_segment_tokens: int = 512,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreTrainedModel | None, PreTrainedTokenizerBase | None]:
    """New parts: ``(lm, decoder_tokenizer, encoder, encoder_tokenizer)``, pretrained ones loaded.

    The LM is ``decoder_name_or_path`` loaded with ``from_pretrained`` (with its tokenizer unless
    ``decoder_tokenizer`` is given): a seq2seq LM, or a causal LM (also ``"smollm2"`` or a GGUF file,
    ``decoder_gguf_file`` naming the file inside a folder); or it is a seq2seq LM built from
    ``decoder_config`` with ``decoder_tokenizer`` or a tokenizer trained on ``corpus_texts``.
    ``encoder`` is ``"minilm"``, a hub name or folder of a BERT-style model, ``"decoder"`` (the LM's
    own encoder: encoder and its tokenizer are None), or ``"scratch"`` (``scratch_encoder`` with
    ``encoder_config``, positions for ``max_segment_tokens``; its tokenizer is the decoder's).
    ``owner`` names the caller in errors.
    """
    uses_own_encoder = encoder == DECODER_ENCODER
    if decoder_name_or_path is not None:
        lm, tokenizer = load_pretrained_lm(decoder_name_or_path, decoder_gguf_file)
        if decoder_tokenizer is not None:
            tokenizer = decoder_tokenizer
        check_decoder_tokenizer(tokenizer, f"decoder_name_or_path '{decoder_name_or_path}'")
    else:
        if decoder_tokenizer is not None:
            tokenizer = decoder_tokenizer
        elif corpus_texts is not None:
            tokenizer = train_decoder_tokenizer(corpus_texts, decoder_vocab_size)
        else:
            raise ConfigError(
                "decoder_name_or_path is null, so a decoder tokenizer is trained on the corpus: "
                f"pass corpus_texts (or a decoder_tokenizer) to {owner}"
            )
        lm = AutoModelForSeq2SeqLM.from_config(decoder_lm_config(decoder_config, tokenizer, uses_own_encoder))
    maybe_fuse_t5_elementwise(lm)  # T5's feed-forward and norm kernels (sld.models.t5_fast); others unchanged
    sync_generation_ids(lm, tokenizer)
    if uses_own_encoder:
        text_encoder, encoder_tokenizer = None, None
    elif encoder == SCRATCH_ENCODER:
        text_encoder = scratch_encoder(encoder_config or {}, tokenizer, lm, max_segment_tokens)
        encoder_tokenizer = tokenizer
    else:
        text_encoder, encoder_tokenizer = load_encoder(encoder)
    return lm, tokenizer, text_encoder, encoder_tokenizer


def load_pretrained_lm(
    name_or_path: str, gguf_file: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained decoder LM and its tokenizer: causal (``sld.models.causal_lm``) or seq2seq."""
    location = resolve_language_model(name_or_path, gguf_file)
    kwargs = location.from_pretrained_kwargs()
    try:
        config = AutoConfig.from_pretrained(location.path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"decoder_name_or_path: cannot load '{name_or_path}': {err}") from err
    if is_causal_config(config):
        return load_causal_lm(location)
    try:
        lm = AutoModelForSeq2SeqLM.from_pretrained(location.path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location.path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"decoder_name_or_path: cannot load '{name_or_path}' as a seq2seq LM: {err}"
        ) from err
    return lm, tokenizer


def split_output_head(lm: PreTrainedModel) -> tuple[nn.Linear, float] | None:
    """``(head, scale)`` with the LM's logits = ``head(scale * its last hidden states)``, or None.

    A causal LM's plain head (``sld.models.causal_lm.plain_output_head``, scale 1) or T5's
    (``sld.models.t5_fast.t5_output_head``): a loss can then project only the target positions
    (``sld.losses.chunked_token_nll``). None: the logits must come from the LM's own forward.
    """
    if is_causal_config(lm.config):
        head = plain_output_head(lm)
        return None if head is None else (head, 1.0)
    return t5_output_head(lm)


def freeze_unused_parameters(
    lm: PreTrainedModel, text_encoder: torch.nn.Module | None, uses_lm_encoder: bool, freeze_encoder: bool
) -> None:
    """Freeze every parameter that no forward pass uses, and the encoder when it is frozen.

    Unused weights (the bypassed LM encoder, a BERT pooler) would otherwise sit in the optimizer
    without ever getting a gradient, and hide a broken loss from the gradient tests. A tied embedding
    shared by a frozen encoder and the decoder keeps training through the decoder.
    """
    used = {id(p) for p in lm.get_decoder().parameters()}
    used |= {id(p) for p in lm.get_output_embeddings().parameters()}
    decoder_owned = set(used)
    if uses_lm_encoder:
        used |= {id(p) for p in lm.get_encoder().parameters()}
    for p in lm.parameters():
        if id(p) not in used:
            p.requires_grad_(False)
    if text_encoder is not None and getattr(text_encoder, "pooler", None) is not None:
        text_encoder.pooler.requires_grad_(False)
    if freeze_encoder:
        encoder = text_encoder if text_encoder is not None else lm.get_encoder()
        for p in encoder.parameters():
            if id(p) not in decoder_owned:
                p.requires_grad_(False)


def load_model_parts(folder: Path, uses_own_encoder: bool) -> tuple[Any, Any, Any, Any]:
    """The un-initialised parts of a saved encoder + seq2seq-decoder model folder.

    Returns ``(lm, decoder_tokenizer, encoder, encoder_tokenizer)`` built from ``decoder/`` and
    ``encoder/`` alone (``encoder`` is None when the LM's own encoder is used); the caller loads
    ``model.safetensors`` into the assembled model strictly.
    """
    decoder_dir, encoder_dir = folder / DECODER_DIR, folder / ENCODER_DIR
    lm_config = AutoConfig.from_pretrained(decoder_dir)
    causal = is_causal_config(lm_config)
    lm = (AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM).from_config(lm_config)
    maybe_fuse_t5_elementwise(lm)
    if (decoder_dir / "generation_config.json").is_file():
        lm.generation_config = GenerationConfig.from_pretrained(decoder_dir)
    decoder_tokenizer = AutoTokenizer.from_pretrained(decoder_dir)
    if causal:
        prepare_tokenizer(decoder_tokenizer, str(decoder_dir))
    encoder_tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoder = None if uses_own_encoder else AutoModel.from_config(AutoConfig.from_pretrained(encoder_dir))
    return lm, decoder_tokenizer, encoder, encoder_tokenizer


def config_from_dict(cls: type[C], data: dict[str, Any], source: str) -> C:
    """``cls(**data)`` for a model-config dataclass; an unknown key or a bad value is a
    ``ConfigError`` naming ``source`` (and, for unknown keys, every known one)."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from err


def read_config_json(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object of a saved model config file; a missing file is a ``UserError`` that asks
    whether the folder is ``what`` ("a SegmentAutoencoder"), invalid JSON a ``ConfigError``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError(f"{path}: not found (not {what} folder?)") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from err


def load_saved_weights(
    model: nn.Module,
    folder: Path,
    what: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Load ``folder/model.safetensors`` into the model assembled from ``load_model_parts``, move it
    to ``device`` / ``dtype`` and set eval mode.

    Strict: a missing or unexpected tensor is an error, never silently skipped (tied copies are stored
    once and restored through the tie); a mismatch is a ``UserError`` naming ``what`` ("the AR baseline").
    """
    try:
        safetensors.torch.load_model(model, folder / WEIGHTS_NAME, strict=True)
    except (RuntimeError, FileNotFoundError) as err:  # missing/extra/reshaped tensors: another version
        raise UserError(
            f"{folder}: its {WEIGHTS_NAME} does not match {what} described by its config "
            f"(another sld version or a damaged folder?): {str(err).splitlines()[0]}"
        ) from err
    model.to(device=device, dtype=dtype)
    model.eval()


def save_model_parts(model: Any, folder: Path, config: dict[str, Any], config_name: str) -> None:
    """Write ``config_name``, ``model.safetensors``, ``encoder/`` and ``decoder/`` (configs and tokenizers)
    into ``folder`` (created if missing).

    ``model`` has ``lm``, ``decoder_tokenizer``, ``text_encoder`` (or None) and ``encoder_tokenizer``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_name).write_text(json.dumps(config, indent=2) + "\n")
    safetensors.torch.save_model(
        model, str(folder / WEIGHTS_NAME), metadata={"format": "pt"}, force_contiguous=True
    )
    encoder_dir, decoder_dir = folder / ENCODER_DIR, folder / DECODER_DIR
    encoder_dir.mkdir(exist_ok=True)
    decoder_dir.mkdir(exist_ok=True)
    if model.text_encoder is not None:
        model.text_encoder.config.save_pretrained(encoder_dir)
    model.encoder_tokenizer.save_pretrained(str(encoder_dir))
    model.lm.config.save_pretrained(decoder_dir)
    model.lm.generation_config.save_pretrained(decoder_dir)
    model.decoder_tokenizer.save_pretrained(str(decoder_dir))


def shift_labels_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: (B', L) labels -> (B', L) ids ``[start, y_1, ..., y_{L-1}]``.

    -100 (ignored label) becomes the pad id; those positions only feed later padding positions.
    """
    inputs = labels.new_full(labels.shape, pad_token_id)
    inputs[:, 0] = decoder_start_token_id
    inputs[:, 1:] = labels[:, :-1]
    return inputs.masked_fill(inputs == IGNORE_INDEX, pad_token_id)


def sync_generation_ids(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the generation config agree with the tokenizer on pad/eos and with the LM on the start id."""
    gen = lm.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.decoder_start_token_id is None and not is_causal_config(lm.config):
        gen.decoder_start_token_id = lm.config.decoder_start_token_id


__all__ = [
    "DECODER_DIR",
    "DECODER_ENCODER",
    "SCRATCH_ENCODER",
    "ENCODER_DIR",
    "WEIGHTS_NAME",
    "build_model_parts",
    "config_from_dict",
    "read_config_json",
    "load_saved_weights",
    "check_decoder_tokenizer",
    "decoder_lm_config",
    "default_decoder_config",
    "freeze_unused_parameters",
    "hidden_size",
    "load_encoder",
    "load_pretrained_lm",
    "load_model_parts",
    "save_model_parts",
    "shift_labels_right",
    "split_output_head",
    "sync_generation_ids",
]

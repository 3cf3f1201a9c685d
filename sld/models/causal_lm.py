"""Decoder-only (causal) language models as SLD's text writers: loading, latent conditioning, teacher forcing.

Every system of the SLD family decodes with a pretrained LM (Optimus: GPT-2, LD4LG: BART, the SLD
paper: Flan-T5). This module lets any ``AutoModelForCausalLM`` (a hub name, a folder, a GGUF file, or
the offline default ``"smollm2"``) be the segment decoder of ``SegmentAutoencoder``.

A decoder-only LM has no cross-attention, so the segment's decoder memory (B', N, d_lm), the
reconstructor's output, must enter it some other way. ``LatentConditioning`` offers two, alone or
together (``docs/design.md`` says which one the profiles use and the measurements behind it):

* ``"kv"``, latent-as-memory (Optimus, Li et al. 2020; prefix-tuning, Li & Liang 2021): one linear map
  turns each of the N memory vectors into a key and a value for every attention layer of the LM. Every
  layer then attends to the latent directly, which is much harder to ignore than an input prefix. The
  keys carry no rotary position: to a query at position p they sit at distance p, like a first token.
* ``"prefix"``: the N memory vectors, scaled to the LM's embedding norm by a learned gain, are N input
  embeddings before the text (positions 0..N-1; the text starts at N).

The conditioned LM reads the text after a start token (the tokenizer's bos, else its eos) and is
trained to write the segment followed by eos. For decoding (``sld.models.causal_decoding``) the
conditioning is a prefilled KV cache; teacher forcing (``teacher_forced_logits``) goes through
``LatentConditioning.teacher_forcing``, which gives ``"kv"`` memory to the attention layers directly
(``sld.models.memory_attention``) and the other modes the same prefilled cache.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache

from sld.config import ConfigError
from sld.models.memory_attention import attention_layers, memory_attention
from sld.pretrained import ModelLocation

logger = logging.getLogger(__name__)

Conditioning = Literal["kv", "prefix", "kv+prefix"]
CONDITIONINGS: tuple[str, ...] = ("kv", "prefix", "kv+prefix")


# ----------------------------------------------------------------------------------------- loading


def load_causal_lm(
    location: ModelLocation, option: str = "model.decoder_name_or_path"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained causal LM in float32 and its tokenizer (pad and start tokens set, right padding).

    GGUF files are de-quantised on load; the quantisation record is dropped from the config so that
    the model saves and rebuilds like any float model.
    """
    kwargs = location.from_pretrained_kwargs()
    try:
        lm = AutoModelForCausalLM.from_pretrained(location.path, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location.path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{option}: cannot load '{location.path}' as a causal LM + tokenizer: {err}"
        ) from err
    if getattr(lm.config, "is_encoder_decoder", False):
        raise ConfigError(f"{option}: '{location.path}' is an encoder-decoder model, not a causal LM")
    drop_quantization_record(lm)
    prepare_tokenizer(tokenizer, option)
    sync_generation_config(lm, tokenizer)
    return lm, tokenizer


def drop_quantization_record(lm: PreTrainedModel) -> None:
    """Forget that the weights came from a quantised file (they are float now); saving then works."""
    if getattr(lm.config, "quantization_config", None) is not None:
        del lm.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(lm, attr, None) is not None:
            setattr(lm, attr, None)
    if getattr(lm, "is_quantized", False):
        lm.is_quantized = False


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Pad with eos when the tokenizer has no pad token; right padding (labels assume it)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{where}: the causal LM's tokenizer has no eos token (a segment must end)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token every segment (and every AR target) is written after: bos, else eos."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def sync_generation_config(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = lm.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = start_token_id(tokenizer)


def is_causal_config(config: Any) -> bool:
    return not getattr(config, "is_encoder_decoder", False)


# ------------------------------------------------------------------------------------ cache plumbing


def cache_argument(lm: nn.Module) -> str:
    """The forward keyword that takes a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def lm_forward(lm: nn.Module, cache: DynamicCache | None, **kwargs: Any) -> Any:
    """``lm(...)`` with ``cache`` passed under the keyword this transformers version uses (None: no
    cache at all, as inside ``memory_attention``)."""
    if cache is None:
        return lm(use_cache=False, **kwargs)
    return lm(**{cache_argument(lm): cache}, use_cache=True, **kwargs)


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def attention_geometry(config: Any) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` of a causal LM's attention layers, from its config."""
    text = _text_config(config)
    try:
        layers = int(text.num_hidden_layers)
        heads = int(text.num_attention_heads)
    except AttributeError as err:
        raise ConfigError(f"cannot read the attention layout of a {type(text).__name__}: {err}") from err
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return layers, int(kv_heads), int(head_dim)


def embedding_rms(lm: PreTrainedModel) -> float:
    """Root-mean-square entry of the LM's input embeddings: the scale a prefix should start at."""
    weight = lm.get_input_embeddings().weight.detach().float()
    return float(weight.pow(2).mean().sqrt())


# ------------------------------------------------------------------------------------ conditioning


class LatentConditioning(nn.Module):
    """Decoder memory (B', N, d_lm) -> a KV cache that conditions a causal LM on the segment latent.

    Args:
        mode: ``"kv"``, ``"prefix"`` or ``"kv+prefix"`` (module docstring).
        model_dim: d_lm, the width of the memory (the LM's hidden size).
        num_layers, num_kv_heads, head_dim: the LM's attention layout (``attention_geometry``).
        prefix_scale: initial gain of the prefix embeddings (``embedding_rms`` of the LM; the memory
            comes out of a LayerNorm, so its entries start near unit scale).
    """

    def __init__(
        self,
        mode: Conditioning,
        model_dim: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        prefix_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in CONDITIONINGS:
            raise ConfigError(f"latent_conditioning must be one of {', '.join(CONDITIONINGS)}, got {mode!r}")
        self.mode = mode
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.to_kv = None
        if "kv" in mode:
            self.to_kv = nn.Linear(model_dim, num_layers * 2 * num_kv_heads * head_dim)
            # Values start at zero (keys at the default init): at step 0 the memory is attended to but
            # adds nothing, so the LM starts as the unconditional LM (measured on SmolLM2 and four ROC
            # sentences: teacher-forced loss 6.06 without memory, 8.44 with default-init values).
            with torch.no_grad():
                weight = self.to_kv.weight.view(num_layers, 2, num_kv_heads * head_dim, model_dim)
                bias = self.to_kv.bias.view(num_layers, 2, num_kv_heads * head_dim)
                weight[:, 1].zero_()
                bias[:, 1].zero_()
        self.prefix_gain = nn.Parameter(torch.tensor(float(prefix_scale))) if "prefix" in mode else None

    @classmethod
    def for_lm(cls, mode: Conditioning, lm: PreTrainedModel) -> LatentConditioning:
        layers, kv_heads, head_dim = attention_geometry(lm.config)
        width = _text_config(lm.config).hidden_size
        return cls(mode, width, layers, kv_heads, head_dim, prefix_scale=embedding_rms(lm))

    def memory_keys_values(self, memory: torch.Tensor) -> torch.Tensor:
        """Memory (B', N, d) -> keys/values (layers, 2, B', kv_heads, N, head_dim)."""
        b, n, _ = memory.shape
        kv = self.to_kv(memory).view(b, n, self.num_layers, 2, self.num_kv_heads, self.head_dim)
        return kv.permute(2, 3, 0, 4, 1, 5)

    @contextmanager
    def teacher_forcing(
        self, lm: PreTrainedModel, memory: torch.Tensor
    ) -> Iterator[tuple[DynamicCache | None, int]]:
        """The LM conditioned on memory (B', N, d) for one teacher-forced forward inside the block:
        yields ``(cache, offset)`` for ``teacher_forced_logits`` / ``teacher_forced_hidden``.

        ``"kv"`` alone: no cache; each attention layer reads its memory directly
        (``sld.models.memory_attention``: the same attention, and one compiled graph for all
        layers). Otherwise, or for an LM that is not a plain-attention architecture with one attention
        module per ``layer_idx`` (``attention_layers``), the prefilled cache of ``prefill``.
        """
        layers = attention_layers(lm, self.num_layers) if self.mode == "kv" else None
        if layers is None:
            yield self.prefill(lm, memory)
            return
        with memory_attention(layers, self.memory_keys_values(memory)):
            yield None, 0

    def prefill(self, lm: PreTrainedModel, memory: torch.Tensor) -> tuple[DynamicCache, int]:
        """The conditioned cache for memory (B', N, d) and the position the text starts at (0 or N).

        Differentiable: gradients reach the memory (and through it the latents) in training.
        """
        cache = DynamicCache()
        if self.to_kv is not None:
            for layer, (keys, values) in enumerate(self.memory_keys_values(memory)):
                cache.update(keys.contiguous(), values.contiguous(), layer)
        if self.prefix_gain is None:
            return cache, 0
        b, n, _ = memory.shape
        embeds = (self.prefix_gain * memory).to(lm.get_input_embeddings().weight.dtype)
        positions = torch.arange(n, device=memory.device).expand(b, n)
        lm_forward(lm, cache, inputs_embeds=embeds, position_ids=positions, logits_to_keep=1)
        return cache, n


def teacher_forced_logits(
    lm: PreTrainedModel, cache: DynamicCache | None, offset: int, input_ids: torch.Tensor
) -> torch.Tensor:
    """Logits (B', L, V) of the LM reading ``input_ids`` (B', L) at positions offset.. after ``cache``
    (None inside ``LatentConditioning.teacher_forcing``'s memory attention).

    ``input_ids`` are right-padded; a pad sits after every real token of its row, so causal attention
    keeps pads out of the real positions' logits (their own logits are ignored by the -100 labels).
    """
    b, length = input_ids.shape
    positions = offset + torch.arange(length, device=input_ids.device).expand(b, length)
    return lm_forward(lm, cache, input_ids=input_ids, position_ids=positions).logits


def plain_output_head(lm: PreTrainedModel) -> nn.Linear | None:
    """The LM's output projection when logits are exactly ``head(last hidden state)``, else None.

    None for models that scale or soft-cap their logits after the projection (e.g. Gemma 2's
    ``final_logit_softcapping``, Cohere's ``logit_scale``), whose logits must come from the LM itself.
    """
    head = lm.get_output_embeddings()
    text = _text_config(lm.config)
    if not isinstance(head, nn.Linear) or getattr(lm, "base_model", lm) is lm:
        return None
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(text, attr, None) not in (None, 1, 1.0):
            return None
    return head


def teacher_forced_hidden(
    lm: PreTrainedModel, cache: DynamicCache | None, offset: int, input_ids: torch.Tensor
) -> torch.Tensor:
    """Last hidden states (B', L, d) of the LM body reading ``input_ids`` (B', L) after ``cache``.

    ``plain_output_head(lm)`` of them are ``teacher_forced_logits``; the loss can then project only the
    target positions, a chunk at a time (``sld.losses.chunked_token_nll``).
    """
    body = lm.base_model
    b, length = input_ids.shape
    positions = offset + torch.arange(length, device=input_ids.device).expand(b, length)
    return lm_forward(body, cache, input_ids=input_ids, position_ids=positions).last_hidden_state


def shift_in_start(
    labels: torch.Tensor, start_id: int, pad_id: int, ignore_index: int = -100
) -> torch.Tensor:
    """Teacher-forcing inputs (B', L) for targets ``labels`` (B', L): ``[start, y_1, ..., y_{L-1}]``."""
    inputs = labels.new_full(labels.shape, pad_id)
    inputs[:, 0] = start_id
    inputs[:, 1:] = labels[:, :-1]
    return inputs.masked_fill(inputs == ignore_index, pad_id)


def word_dropout(
    input_ids: torch.Tensor, rate: float, replacement_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each teacher-forced input token after the first (B', L) with ``replacement_id`` at ``rate``.

    Bowman et al. (2016): the next token can then not always be guessed from the text so far, so the
    decoder must read the latent (a remedy against a strong LM ignoring its conditioning).
    """
    if rate <= 0:
        return input_ids
    drop = torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < rate
    drop[:, 0] = False
    return input_ids.masked_fill(drop, replacement_id)


__all__ = [
    "CONDITIONINGS",
    "Conditioning",
    "LatentConditioning",
    "attention_geometry",
    "cache_argument",
    "drop_quantization_record",
    "embedding_rms",
    "is_causal_config",
    "lm_forward",
    "load_causal_lm",
    "plain_output_head",
    "prepare_tokenizer",
    "shift_in_start",
    "start_token_id",
    "sync_generation_config",
    "teacher_forced_hidden",
    "teacher_forced_logits",
    "word_dropout",
]

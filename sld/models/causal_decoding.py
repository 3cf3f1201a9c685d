"""Batched greedy / sampled decoding of a causal LM from a prefilled KV cache, rows leaving as they finish.

One loop serves both systems that write with a causal LM, so a speed comparison between them measures
the method and not the decoding code:

* SLD's segment decoder: the cache holds each segment's latent conditioning (``LatentConditioning``);
  all B' segments of all documents are decoded together.
* the AR baseline: the cache holds the left-padded source (a prefix LM); each document is one row.

Why not ``generate``: HF ``generate`` keeps every row of a batch running until the slowest one stops
(one looping row holds up all others), and it cannot start from a cache that holds conditioning
without tokens. Here finished rows are dropped from the batch (and from the cache) every
``check_every`` steps, which is also the only time the loop synchronises with the device. Repetition
control (``no_repeat_ngram_size``) runs on the device over the tokens generated so far.

Shapes: B rows, P prefilled cache length, T <= max_new_tokens generated tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from sld.models.causal_lm import lm_forward
from sld.models.packed_gqa import packed_gqa


@dataclass
class DecodeSettings:
    """How to pick tokens and when to stop.

    Attributes:
        max_new_tokens: at most this many tokens per row (eos included).
        min_new_tokens: eos is banned before this many tokens.
        no_repeat_ngram_size: n > 0 bans any token that would repeat an n-gram of the row's own output.
        do_sample: sample from softmax(logits / temperature) (top-k if ``top_k`` > 0) instead of argmax.
        check_every: drop finished rows every this many steps (the loop's only host synchronisation).
        static_cache: decode from a preallocated static KV cache, the one-token step compiled into a
            CUDA graph on a GPU (``sld.models.static_decoding``); rows stay in the batch until all stop.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    no_repeat_ngram_size: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    check_every: int = 8
    static_cache: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")


def banned_by_ngrams(generated: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(B, V) bool: tokens that would complete an n-gram already present in ``generated`` (B, t).

    The last n-1 tokens of each row are compared with every earlier window on the device; the token
    that followed each matching window is banned.
    """
    b, t = generated.shape
    banned = torch.zeros(b, vocab_size, dtype=torch.bool, device=generated.device)
    if n < 1 or t < n:
        return banned
    if n == 1:
        return banned.scatter_(1, generated, True)
    windows = generated.unfold(1, n, 1)  # (B, t-n+1, n)
    tail = generated[:, t - n + 1 :]  # (B, n-1)
    match = (windows[:, :, :-1] == tail[:, None, :]).all(dim=-1)  # (B, t-n+1)
    counts = torch.zeros(b, vocab_size, dtype=torch.int32, device=generated.device)
    counts.scatter_add_(1, windows[:, :, -1], match.to(torch.int32))
    return counts > 0


def _pick(logits: torch.Tensor, settings: DecodeSettings, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) scores -> (B,) token ids."""
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / settings.temperature
    if settings.top_k > 0:
        kth = scores.topk(min(settings.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def next_tokens(
    logits: torch.Tensor,
    generated: torch.Tensor | None,
    step: int,
    eos_id: int,
    settings: DecodeSettings,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Logits (B, V) of step ``step`` and the tokens generated so far (B, step; needed only with
    ``no_repeat_ngram_size``) -> the next tokens (B,): n-gram bans, no eos before ``min_new_tokens``,
    then argmax or sampling."""
    if settings.no_repeat_ngram_size > 0 and step > 0 and generated is not None:
        banned = banned_by_ngrams(generated, settings.no_repeat_ngram_size, logits.shape[-1])
        logits = logits.masked_fill(banned, float("-inf"))
    if step < settings.min_new_tokens:
        logits[:, eos_id] = float("-inf")
    return _pick(logits, settings, generator)


@torch.no_grad()
def decode(
    lm: torch.nn.Module,
    cache: DynamicCache,
    first_ids: torch.Tensor,
    positions: torch.Tensor,
    eos_id: int,
    pad_id: int,
    settings: DecodeSettings,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode B rows after ``cache``; returns generated ids (B, T), pad after each row's eos.

    Args:
        lm: the causal LM.
        cache: the prefilled KV cache (B rows, P positions); it is consumed (rows are dropped from it).
        first_ids: (B,) the token each row reads first (the start token, or the source's last token).
        positions: (B,) the position id of ``first_ids`` in each row.
        eos_id, pad_id: the end token, and the filler written after it.
        settings: token choice and stopping (``DecodeSettings``).
        attention_mask: (B, P) 1 for real cache entries, 0 for left padding; None = all real.
        generator: for sampling.
    """
    if settings.static_cache:
        from sld.models.static_decoding import decode_static

        return decode_static(
            lm, cache, first_ids, positions, eos_id, pad_id, settings, attention_mask, generator
        )
    device = first_ids.device
    batch = first_ids.shape[0]
    steps = settings.max_new_tokens
    out = torch.full((batch, steps), pad_id, dtype=torch.long, device=device)
    if batch == 0:
        return out
    rows = torch.arange(batch, device=device)  # original row of each live row
    current = first_ids.clone()
    position = positions.clone()
    mask = None
    if attention_mask is not None:
        # real cache entries, then one column per token this loop feeds (all real)
        mask = torch.cat([attention_mask, attention_mask.new_ones(batch, steps)], dim=1)
    prefix_len = 0 if attention_mask is None else attention_mask.shape[1]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    written = 0
    with packed_gqa(lm):  # grouped-head attention packed unless SLD_PACKED_GQA=0 (sld.models.packed_gqa)
        for step in range(steps):
            kwargs = {}
            if mask is not None:
                kwargs["attention_mask"] = mask[:, : prefix_len + step + 1]
            logits = lm_forward(
                lm,
                cache,
                input_ids=current[:, None],
                position_ids=position[:, None],
                logits_to_keep=1,
                **kwargs,
            ).logits[:, -1, :]
            generated = out[rows, :step] if settings.no_repeat_ngram_size > 0 else None
            token = next_tokens(logits, generated, step, eos_id, settings, generator)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            out[rows, step] = token
            written = step + 1
            finished = finished | (token == eos_id)
            current, position = token, position + 1
            if (step + 1) % settings.check_every == 0 or step + 1 == steps:
                alive = (~finished).nonzero().squeeze(1)  # the loop's only host sync
                if alive.numel() == 0:
                    break
                if alive.numel() < finished.numel():
                    cache.batch_select_indices(alive)
                    rows, current, position, finished = (
                        rows[alive],
                        current[alive],
                        position[alive],
                        finished[alive],
                    )
                    if mask is not None:
                        mask = mask[alive]
    return out[:, :written]


__all__ = ["DecodeSettings", "banned_by_ngrams", "decode", "next_tokens"]

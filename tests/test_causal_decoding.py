"""The shared causal-LM decode loop: n-gram bans, stopping rows, compaction, agreement with a naive loop."""

import pytest
import torch
from torch import nn
from transformers import NoRepeatNGramLogitsProcessor
from transformers.cache_utils import DynamicCache

from sld.models.causal_decoding import DecodeSettings, banned_by_ngrams, decode

EOS, PAD, VOCAB = 1, 0, 12


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_bans_match_transformers(n):
    gen = torch.Generator().manual_seed(n)
    for _ in range(20):
        seq = torch.randint(2, 6, (3, 9), generator=gen)  # few distinct tokens: many repeats
        scores = torch.zeros(3, VOCAB)
        reference = NoRepeatNGramLogitsProcessor(n)(seq, scores.clone()) == float("-inf")
        assert torch.equal(banned_by_ngrams(seq, n, VOCAB), reference)


class CountingLM(nn.Module):
    """A stand-in causal LM: next token = (token + 1) wrapped into 2..VOCAB-1, except that row r says
    eos once its position reaches ``stop[r]``. The cache holds each row's id, so a row whose cache
    entry was mixed up with another's (wrong compaction) writes the wrong length."""

    def __init__(self, stop: list[int]) -> None:
        super().__init__()
        self.stop = torch.tensor(stop)
        self.calls = 0

    def forward(self, input_ids, position_ids, cache, use_cache=True, logits_to_keep=1, attention_mask=None):
        self.calls += 1
        row_ids = cache.layers[0].keys[:, 0, 0, 0].long()  # (B,) the original row of each live row
        nxt = (input_ids[:, -1] - 2 + 1) % (VOCAB - 2) + 2
        nxt = torch.where(position_ids[:, -1] + 1 >= self.stop[row_ids], torch.full_like(nxt, EOS), nxt)
        logits = torch.full((input_ids.shape[0], 1, VOCAB), -5.0)
        logits.scatter_(2, nxt[:, None, None], 5.0)
        return type("Out", (), {"logits": logits})()


def row_cache(batch: int) -> DynamicCache:
    cache = DynamicCache()
    ids = torch.arange(batch, dtype=torch.float)[:, None, None, None].expand(batch, 1, 1, 1)
    cache.update(ids.clone(), ids.clone(), 0)
    return cache


@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_rows_stop_at_their_own_eos_and_leave_the_batch(check_every):
    stop = [2, 9, 5, 30]
    lm = CountingLM(stop)
    settings = DecodeSettings(max_new_tokens=12, check_every=check_every)
    first = torch.tensor([2, 3, 4, 5])
    out = decode(lm, row_cache(4), first, torch.zeros(4, dtype=torch.long), EOS, PAD, settings)
    for r, s in enumerate(stop):
        row = out[r].tolist()
        n = min(s, 12)  # tokens written: s - 1 counted ones, then eos (or the budget ends first)
        expected = [(first[r].item() - 2 + k) % (VOCAB - 2) + 2 for k in range(1, n)]
        expected += [EOS] if s <= 12 else [(first[r].item() - 2 + 12) % (VOCAB - 2) + 2]
        assert row[:n] == expected
        assert all(t == PAD for t in row[n:])
    assert lm.calls == 12  # the long row runs to the budget; nothing after


def test_loop_ends_when_every_row_has_stopped():
    lm = CountingLM([3, 2])
    out = decode(
        lm,
        row_cache(2),
        torch.tensor([2, 2]),
        torch.zeros(2, dtype=torch.long),
        EOS,
        PAD,
        DecodeSettings(max_new_tokens=50, check_every=4),
    )
    assert out.shape[1] == 4 and lm.calls == 4  # first check after 4 steps finds both done


def test_min_new_tokens_bans_eos():
    lm = CountingLM([1])
    out = decode(
        lm,
        row_cache(1),
        torch.tensor([2]),
        torch.zeros(1, dtype=torch.long),
        EOS,
        PAD,
        DecodeSettings(max_new_tokens=5, min_new_tokens=3),
    )
    assert EOS not in out[0, :3].tolist() and out[0, 3].item() == EOS


def test_sampling_is_seeded_and_settings_are_checked():
    lm = CountingLM([50, 50])

    def run(seed):
        return decode(
            lm,
            row_cache(2),
            torch.tensor([2, 3]),
            torch.zeros(2, dtype=torch.long),
            EOS,
            PAD,
            DecodeSettings(max_new_tokens=6, do_sample=True, temperature=5.0),
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(0), run(0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodeSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        DecodeSettings(do_sample=True, temperature=0.0)

"""A shuffling sampler whose batches hold items of similar length (less padding, faster steps).

Batches are padded to their longest item. When short and long items are mixed (story titles of 5
tokens next to dialogues of 150 in one multi-task run), most of every batch is padding. The
sampler draws a random permutation, cuts it into mega-batches of ``batch_size * megabatch_batches``
items, sorts each mega-batch by length, cuts it into batches and shuffles the order of all full
batches, then moves the full batch holding the longest item to the front (as transformers'
LengthGroupedSampler does): a run that does not fit in memory fails at its first step, and the
first logged peak memory is the run's peak, instead of an out-of-memory error minutes in. Each run of ``batch_size`` consecutive indices is one batch, so it plugs into a plain
``DataLoader(sampler=..., batch_size=...)`` (and accelerate's per-process sharding of batches).
The order depends only on ``seed`` and the epoch (``set_epoch``), so resuming mid-epoch replays it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Random order of ``range(len(lengths))``, batch-aligned, grouped by length.

    Args:
        lengths: one length per item (any unit: tokens, characters).
        batch_size: items per batch; the sampler's order is aligned to it.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        megabatch_batches: batches per sorted mega-batch (larger: less padding, less randomness).
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 0, megabatch_batches: int = 50
    ) -> None:
        if batch_size < 1 or megabatch_batches < 1:
            raise ValueError(
                f"batch_size and megabatch_batches must be >= 1, got {batch_size}, {megabatch_batches}"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.megabatch_size = batch_size * megabatch_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches: full ones in random order, then the one partial batch (if any)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        full, partial = [], []
        for start in range(0, len(order), self.megabatch_size):
            mega = sorted(order[start : start + self.megabatch_size], key=self.lengths.__getitem__)
            for first in range(0, len(mega), self.batch_size):
                batch = mega[first : first + self.batch_size]
                (full if len(batch) == self.batch_size else partial).append(batch)
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if shuffled:
            longest = max(range(len(shuffled)), key=lambda k: max(self.lengths[i] for i in shuffled[k]))
            shuffled[0], shuffled[longest] = shuffled[longest], shuffled[0]
        # megabatch_size is a multiple of batch_size, so only the last mega-batch can leave a
        # partial batch; it goes last, where DataLoader(drop_last=True) drops it
        return shuffled + partial

    def __iter__(self) -> Iterator[int]:
        return (index for batch in self.batches() for index in batch)


def batches_by_length(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``texts`` ordered by character length (ties in their order), cut into batches of
    ``batch_size``: for one pass of a frozen encoder over texts, each batch padded to texts of
    like length. Deterministic, unlike ``LengthGroupedSampler``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

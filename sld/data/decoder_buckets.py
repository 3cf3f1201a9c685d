"""Decoder length buckets: a batch's rows split by target length, each group padded to its own longest.

A batch of B' segments is padded to its longest target (``SegmentCollator``), and a decoder pass
computes every padded position. ROC's segments are short with a long tail: in 20 random batches of
1,024 rows of ``configs/autoencoder_roc.yaml`` 35.9% of the decoder's positions were real tokens, 70.1%
with two buckets and 81.6% with three (``examples/decoder_padding.py``; docs/results.md).
The rows of a segment decoder do not see each other (each reads its own latents), so the pass can run
on a few groups of rows of similar length, each cut to its own longest target, and give the same
per-token losses with fewer positions computed.

``plan_buckets(lengths, max_buckets)`` chooses the groups: the rows sorted by length are cut into at
most ``max_buckets`` runs so that the padded positions (the rows of a run times its longest length,
summed over the runs) are as few as possible; an exact dynamic programme over the distinct lengths
(at most the segment budget, 64), cheap on the host. ``decoder_buckets(labels, max_buckets)`` builds the
tensors a loss needs for each group, on the host (the collator calls it): no size on the device
depends on data.

Each bucket is a dict::

    rows          (n,)     the batch rows of the bucket, in batch order (batches are shuffled: a
                           bucket's first rows are a random subset of it)
    labels        (n, L_b) their targets cut to the bucket's longest, -100 at padding
    target_index  (T_b,)   flat positions of the targets in ``labels`` (``sld.losses.target_positions``)

More buckets mean more (smaller) decoder calls: on a GPU each is a new round of kernel launches
(a decoder pass of the ROC profile is about 1,160 aten operations forward, whatever its rows:
``examples/cast_census.py``), so a few is the useful range. The configs keep one bucket: buckets are not measured on a GPU yet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from sld.losses import adversarial_row_count, target_positions
from sld.tokenization import IGNORE_INDEX

Bucket = dict[str, torch.Tensor]

__all__ = [
    "Bucket",
    "adversarial_buckets",
    "bucket_positions",
    "bucket_target_count",
    "decoder_buckets",
    "plan_buckets",
    "rest_buckets",
]


def plan_buckets(lengths: Sequence[int], max_buckets: int) -> list[list[int]]:
    """Rows (indices into ``lengths``) grouped into at most ``max_buckets`` buckets of similar length.

    Minimises sum over buckets of (rows x longest length); each bucket holds every row of a range of
    lengths, its rows in increasing index order; buckets in increasing length. A split that saves no
    padded position is not made, so all-equal lengths give one bucket. Raises ValueError on
    ``max_buckets`` < 1, an empty ``lengths`` or a negative length.
    """
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    if not lengths:
        raise ValueError("cannot bucket an empty batch")
    if min(lengths) < 0:
        raise ValueError(f"lengths must be >= 0, got {min(lengths)}")
    counts = Counter(lengths)
    values = sorted(counts)  # distinct lengths v_0 < ... < v_{m-1}
    m = len(values)
    below = [0]  # below[i]: rows of length < values[i]
    for v in values:
        below.append(below[-1] + counts[v])

    def cost(first: int, last: int) -> int:  # one bucket over values[first..last]
        return (below[last + 1] - below[first]) * values[last]

    # best[k][j]: fewest padded positions for values[0..j] in at most k + 1 buckets; cut[k][j]: the
    # first value of its last bucket (0: a single bucket)
    best = [[cost(0, j) for j in range(m)]]
    cut = [[0] * m]
    for k in range(1, min(max_buckets, m)):
        row, where = list(best[k - 1]), list(cut[k - 1])  # k + 1 buckets never worse than k
        for j in range(m):
            for first in range(1, j + 1):
                candidate = best[k - 1][first - 1] + cost(first, j)
                if candidate < row[j]:
                    row[j], where[j] = candidate, first
        best.append(row)
        cut.append(where)

    ranges: list[tuple[int, int]] = []  # (first value, last value) of each bucket, longest first
    k, j = len(best) - 1, m - 1
    while j >= 0:
        first = cut[k][j] if k > 0 else 0  # 0: one bucket holds all that is left
        ranges.append((first, j))
        j, k = first - 1, k - 1
    bucket_of = {}
    for index, (first, last) in enumerate(reversed(ranges)):
        for value in values[first : last + 1]:
            bucket_of[value] = index
    buckets: list[list[int]] = [[] for _ in ranges]
    for row, length in enumerate(lengths):
        buckets[bucket_of[length]].append(row)
    return buckets


def _bucket(labels: torch.Tensor, rows: Sequence[int], lengths: Sequence[int]) -> Bucket:
    longest = max(1, max(lengths[r] for r in rows))
    cut = labels[list(rows), :longest]
    return {
        "rows": torch.tensor(rows, dtype=torch.long),
        "labels": cut,
        "target_index": target_positions(cut),
    }


def _target_lengths(labels: torch.Tensor) -> list[int]:
    """Each row's length up to its last target (right padding: the positions a decoder must compute)."""
    real = labels != IGNORE_INDEX  # (B', L')
    positions = torch.arange(1, labels.shape[1] + 1).expand_as(real)
    return (positions * real).amax(dim=1).tolist()


def decoder_buckets(labels: torch.Tensor, max_buckets: int) -> list[Bucket]:
    """The buckets (module docstring) of a batch's decoder ``labels`` (B', L'), on the host."""
    lengths = _target_lengths(labels)
    return [_bucket(labels, rows, lengths) for rows in plan_buckets(lengths, max_buckets)]


def adversarial_buckets(buckets: Sequence[Bucket], fraction: float) -> list[Bucket]:
    """The adversarial term's rows at ``losses.adversarial_fraction``: each bucket's first
    ``sld.losses.adversarial_row_count(n, fraction)`` rows (a random subset: rows keep batch order)."""
    kept = []
    for bucket in buckets:
        rows = adversarial_row_count(len(bucket["rows"]), fraction)
        labels = bucket["labels"][:rows]
        kept.append(
            {"rows": bucket["rows"][:rows], "labels": labels, "target_index": target_positions(labels)}
        )
    return kept


def rest_buckets(buckets: Sequence[Bucket], fraction: float) -> list[Bucket]:
    """The rows of each bucket that ``adversarial_buckets`` leaves out, each group cut to its own
    longest target; a bucket with none left gives none. ``adversarial_buckets`` and these hold every
    row once (``losses.adversarial_rows_apart``: the conversion pass decodes the two apart)."""
    rest = []
    for bucket in buckets:
        first = adversarial_row_count(len(bucket["rows"]), fraction)
        if first == len(bucket["rows"]):
            continue
        cut = _bucket(bucket["labels"], range(first, len(bucket["rows"])), _target_lengths(bucket["labels"]))
        rest.append({**cut, "rows": bucket["rows"][first:]})  # _bucket's rows index the bucket's own labels
    return rest


def bucket_target_count(buckets: Sequence[Bucket]) -> torch.Tensor:
    """The buckets' target tokens, a tensor on their labels' device (no host sync)."""
    return torch.stack([(b["labels"] != IGNORE_INDEX).sum() for b in buckets]).sum()


def bucket_positions(buckets: Sequence[Bucket]) -> tuple[int, int]:
    """(real target positions, positions computed) of a decoder pass over ``buckets``."""
    real = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in buckets)
    return real, sum(b["labels"].numel() for b in buckets)

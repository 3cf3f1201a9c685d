"""Decoder length buckets: the planner's cuts are the fewest padded positions, and the buckets carry
every row once with its own targets."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from sld.data.decoder_buckets import (
    adversarial_buckets,
    bucket_positions,
    bucket_target_count,
    decoder_buckets,
    plan_buckets,
    rest_buckets,
)
from sld.losses import target_positions
from sld.tokenization import IGNORE_INDEX


def padded(lengths, buckets):
    return sum(len(rows) * max(lengths[r] for r in rows) for rows in buckets)


def brute_force(lengths, max_buckets):
    """The fewest padded positions over every cut of the sorted distinct lengths into <= max_buckets runs."""
    values = sorted(set(lengths))
    best = len(lengths) * values[-1]
    for k in range(1, min(max_buckets, len(values))):
        for cuts in itertools.combinations(range(1, len(values)), k):
            edges = [0, *cuts, len(values)]
            groups = [values[a:b] for a, b in itertools.pairwise(edges)]
            best = min(best, sum(sum(lengths.count(v) for v in g) * g[-1] for g in groups))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_buckets", [1, 2, 3, 4])
def test_the_plan_pads_least_and_holds_every_row_once(seed, max_buckets):
    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 3, 5, 8, 9, 13, 21, 30]) for _ in range(rng.randint(1, 40))]
    buckets = plan_buckets(lengths, max_buckets)
    assert sorted(r for rows in buckets for r in rows) == list(range(len(lengths)))
    assert all(rows == sorted(rows) for rows in buckets)  # batch order kept inside a bucket
    assert 1 <= len(buckets) <= max_buckets
    assert padded(lengths, buckets) == brute_force(lengths, max_buckets)
    longest = [max(lengths[r] for r in rows) for rows in buckets]
    assert longest == sorted(longest)


def test_no_cut_that_saves_nothing_and_bad_arguments():
    assert plan_buckets([4, 4, 4], 3) == [[0, 1, 2]]
    assert plan_buckets([2, 9, 2, 2], 4) == [[0, 2, 3], [1]]
    with pytest.raises(ValueError, match="max_buckets"):
        plan_buckets([1], 0)
    with pytest.raises(ValueError, match="empty"):
        plan_buckets([], 2)


def labels_of(lengths, width):
    labels = torch.full((len(lengths), width), IGNORE_INDEX)
    for row, length in enumerate(lengths):
        labels[row, :length] = torch.arange(1, length + 1)
    return labels


def test_buckets_cut_each_group_to_its_longest_target():
    lengths = [3, 12, 4, 2, 12, 3]
    labels = labels_of(lengths, 14)
    buckets = decoder_buckets(labels, 2)
    assert [b["rows"].tolist() for b in buckets] == [[0, 2, 3, 5], [1, 4]]
    assert [tuple(b["labels"].shape) for b in buckets] == [(4, 4), (2, 12)]
    for bucket in buckets:
        torch.testing.assert_close(bucket["labels"], labels[bucket["rows"], : bucket["labels"].shape[1]])
        torch.testing.assert_close(bucket["target_index"], target_positions(bucket["labels"]))
    assert bucket_positions(buckets) == (sum(lengths), 4 * 4 + 2 * 12)


def test_the_adversarial_rows_are_each_buckets_first_rows():
    labels = labels_of([3, 12, 4, 2, 12, 3], 12)
    kept = adversarial_buckets(decoder_buckets(labels, 2), 0.5)
    assert [b["rows"].tolist() for b in kept] == [[0, 2], [1]]
    assert [tuple(b["labels"].shape) for b in kept] == [(2, 4), (1, 12)]
    torch.testing.assert_close(kept[0]["target_index"], target_positions(labels[[0, 2], :4]))


def test_the_rest_of_each_bucket_is_cut_to_its_own_longest_and_with_the_adversarial_rows_holds_every_row():
    lengths = [3, 12, 4, 2, 12, 3]
    labels = labels_of(lengths, 12)
    buckets = decoder_buckets(labels, 2)  # rows [0, 2, 3, 5] (longest 4) and [1, 4] (12)
    rest = rest_buckets(buckets, 0.5)
    assert [b["rows"].tolist() for b in rest] == [[3, 5], [4]]
    assert [tuple(b["labels"].shape) for b in rest] == [(2, 3), (1, 12)]  # [3, 5]: lengths 2 and 3
    torch.testing.assert_close(rest[0]["target_index"], target_positions(labels[[3, 5], :3]))
    heads = adversarial_buckets(buckets, 0.5)
    assert sorted(torch.cat([b["rows"] for b in heads + rest]).tolist()) == list(range(len(lengths)))
    assert int(bucket_target_count(heads + rest)) == sum(lengths)
    assert rest_buckets(buckets, 1.0) == []  # the adversarial rows are all of them

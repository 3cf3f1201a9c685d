"""LengthGroupedSampler: a batch-aligned random order whose batches hold items of similar length."""

import pytest

from sld.data.length_grouping import LengthGroupedSampler, batches_by_length


def test_every_item_once_and_batches_are_length_homogeneous():
    lengths = [5] * 40 + [150] * 20 + [30] * 3  # 63 items: two tasks and a few odd ones
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=1, megabatch_batches=100)
    order = list(sampler)
    assert sorted(order) == list(range(63)) and len(sampler) == 63
    batches = sampler.batches()
    assert [len(b) for b in batches] == [4] * 15 + [3]  # the partial batch comes last
    mixed = [b for b in batches[:-1] if len({lengths[i] for i in b}) > 1]
    assert len(mixed) <= 2  # only at the two boundaries between length groups
    assert order == [i for b in batches for i in b]


def test_order_depends_on_seed_and_epoch_only():
    lengths = list(range(50))
    a, b = LengthGroupedSampler(lengths, 5, seed=3), LengthGroupedSampler(lengths, 5, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(LengthGroupedSampler(lengths, 5, seed=4)) != first


def test_batch_order_is_shuffled_not_sorted():
    lengths = list(range(200))
    batches = LengthGroupedSampler(lengths, 10, seed=0, megabatch_batches=20).batches()
    means = [sum(b) / len(b) for b in batches]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_the_batch_with_the_longest_item_comes_first():
    lengths = [3] * 50 + [90] + [4] * 49  # the longest item sits in the middle of the data
    for seed in range(5):
        batches = LengthGroupedSampler(lengths, 10, seed=seed, megabatch_batches=2).batches()
        assert 50 in batches[0]
        assert sorted(i for b in batches for i in b) == list(range(100))


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedSampler([1, 2], batch_size=0)


def test_batches_by_length_sorts_by_characters_keeping_ties_in_order():
    texts = ["a long text", "ab", "xyz", "cd", "a longer text still", ""]
    assert batches_by_length(texts, 2) == [[5, 1], [3, 2], [0, 4]]
    assert batches_by_length([], 3) == []
    with pytest.raises(ValueError, match="batch_size"):
        batches_by_length(texts, 0)

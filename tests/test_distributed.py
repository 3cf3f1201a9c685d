"""sld.distributed and the global metric rows, on one process (the two-process runs are in
tests/test_multiprocess_stages.py)."""

from __future__ import annotations

import pytest
import torch

from sld.distributed import MicroBatch, global_mean, in_micro_batch, map_shards, micro_batch, randn_like
from sld.losses import conversion_loss
from sld.run_log import MetricLogger


def test_each_process_draws_its_rows_of_the_global_batch():
    whole = MicroBatch(7, 0, 1)
    parts = [MicroBatch(7, rank, 2) for rank in (0, 1)]
    expected_t = whole.draw(torch.randint, "cpu", 0, 1000, (6,))
    expected_noise = whole.draw(torch.randn, "cpu", (6, 2, 3))
    expected_coin = whole.draw(torch.rand, "cpu", ())
    got_t = torch.cat([p.draw(torch.randint, "cpu", 0, 1000, (3,)) for p in parts])
    got_noise = torch.cat([p.draw(torch.randn, "cpu", (3, 2, 3)) for p in parts])
    coins = [p.draw(torch.rand, "cpu", ()) for p in parts]
    assert torch.equal(got_t, expected_t) and torch.equal(got_noise, expected_noise)
    assert torch.equal(coins[0], expected_coin) and torch.equal(coins[1], expected_coin)


def test_micro_batch_seeds_differ_by_step_and_micro_batch():
    draws = {
        (step, micro): MicroBatch.for_micro_batch(0, step, micro).draw(torch.rand, "cpu", (4,))
        for step in (0, 1)
        for micro in (0, 1)
    }
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])
    assert torch.equal(draws[(1, 0)], MicroBatch.for_micro_batch(0, 1, 0).draw(torch.rand, "cpu", (4,)))


def test_outside_fit_the_torch_rng_and_a_local_mean_are_used():
    assert micro_batch() is None
    torch.manual_seed(0)
    a = randn_like(torch.zeros(3))
    torch.manual_seed(0)
    assert torch.equal(a, torch.randn(3))
    assert global_mean(torch.tensor(6.0), torch.tensor(4)).item() == 1.5
    assert global_mean(torch.tensor(0.0), torch.tensor(0)).item() == 0.0
    with in_micro_batch(MicroBatch(1)) as current:
        assert micro_batch() is current
        assert global_mean(torch.tensor(6.0), torch.tensor(4)).item() == 1.5  # one process: the same
    assert micro_batch() is None


def test_conversion_loss_is_the_token_mean_and_zero_without_tokens():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.tensor([[1, 2, -100], [4, -100, -100]])
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(conversion_loss(logits, labels), expected)
    empty = conversion_loss(logits, torch.full((2, 3), -100))
    assert empty.item() == 0.0 and empty.requires_grad


def test_map_shards_keeps_the_order_and_passes_the_chunk_index():
    calls = []

    def fn(chunk, index):
        calls.append(index)
        return [f"{x}@{index}" for x in chunk]

    assert map_shards(fn, list("abcde"), 2) == ["a@0", "b@0", "c@1", "d@1", "e@2"]
    assert calls == [0, 1, 2]
    assert map_shards(fn, [], 2) == []
    with pytest.raises(ValueError):
        map_shards(lambda chunk, index: [], list("ab"), 1)


def test_metric_rows_are_global_over_the_gathered_processes(tmp_path):
    # the other process's numbers, as gather_object would hand them back
    other = {
        "sums": {"loss": 3.0},
        "counts": {"loss": 2},
        "items": 8,
        "micro_batches": 2,
        "tokens": 100.0,
        "seconds": 1e6,  # the slowest process sets the interval
    }
    logger = MetricLogger(tmp_path / "m.jsonl", True, gather=lambda parts: parts + [other])
    for loss in (1.0, 2.0):
        logger.add(("loss",), torch.tensor([loss]))
        logger.add_batch(4, 25)
    row, rates = logger.flush(step=2)
    assert row["train/loss"] == pytest.approx((1.0 + 2.0 + 3.0) / 4)
    assert rates["items"] == pytest.approx(16 / 1e6)
    assert rates["tokens"] == pytest.approx(150 / 1e6)
    assert rates["micro_batches"] == pytest.approx(4 / 1e6)

"""FLOP counting against an analytic count, the MFU formula, the peak table, and MFU in fit's rows."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import IndexDataset, collate, loop_config

import sld.throughput as throughput
from sld.throughput import count_flops, device_peak_tflops, mfu, real_position_fraction
from sld.training import OptimConfig, fit

IN, HIDDEN, OUT = 12, 32, 8


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_counted_flops_match_the_analytic_count_of_a_two_layer_mlp():
    torch.manual_seed(0)
    model, tokens = MLP(), 40
    x = torch.randn(tokens, IN)  # an input that needs no gradient
    counted = count_flops(lambda: model(x).square().mean().backward())
    first, second = IN * HIDDEN, HIDDEN * OUT  # weight-matrix parameters (biases are not matmul FLOPs)
    # forward 2*P*T; backward: weight gradients 2*P*T, input gradient of the second layer 2*P2*T (the
    # first layer's input needs none). With an input that needs a gradient it is the usual 6*P*T.
    assert counted == 2 * (first + second) * tokens + 2 * (first + second) * tokens + 2 * second * tokens
    x.requires_grad_(True)
    assert count_flops(lambda: model(x).square().mean().backward()) == 6 * (first + second) * tokens


def test_mfu_formula():
    # 1e9 FLOPs per token at 2e5 tokens/s = 2e14 FLOP/s = 20% of a 1000 TFLOP/s device
    assert mfu(1e9, 2e5, 1000.0) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_table_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak_tflops("cuda:0") == peak
    assert device_peak_tflops("cpu") is None


def mlp_loss(model, batch):
    x = torch.nn.functional.one_hot(batch % IN, IN).float()
    return {"loss": model(x).square().mean()}


def fit_mlp(folder, loop, **kwargs):
    """``fit`` of a seeded MLP on 40 index items, throughput in items."""
    torch.manual_seed(0)
    return fit(
        MLP(),
        IndexDataset(40),
        collate,
        mlp_loss,
        folder,
        OptimConfig(warmup_steps=0),
        loop,
        items_in_batch=len,
        **kwargs,
    )


def test_fit_logs_throughput_flops_and_mfu(tmp_path, monkeypatch):
    counted = []
    real = throughput.FlopCount.__exit__

    def recording_exit(self, *exc):
        real(self, *exc)
        counted.append(self.total)

    monkeypatch.setattr(throughput.FlopCount, "__exit__", recording_exit)

    def train(folder, max_steps, **loop):
        return fit_mlp(
            folder,
            loop_config(max_steps=max_steps, batch_size=4, save_every=2, **loop),
            tokens_in_batch=lambda batch: torch.tensor(3 * len(batch)),  # say 3 tokens per item
        )

    train(tmp_path, 2, peak_tflops=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    per_batch = 6 * (IN * HIDDEN + HIDDEN * OUT) * 4 - 2 * IN * HIDDEN * 4  # 4 items, input needs no grad
    assert counted == [per_batch]  # one counted micro-batch
    for row in rows:
        assert row["train/tokens_per_second"] == pytest.approx(3 * row["train/items_per_second"])
        tflops = per_batch / 12 * row["train/tokens_per_second"] / 1e12
        assert row["train/tflops_per_second"] == pytest.approx(tflops)
        assert row["train/mfu"] == pytest.approx(tflops / 1e-6)
    # a resumed run does not count again (counting changes rounding) and takes the count from the checkpoint
    train(tmp_path, 4, peak_tflops=1e-6)
    assert counted == [per_batch]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "train/mfu" in rows[-1]
    # no peak on a CPU: the achieved TFLOP/s only
    train(tmp_path / "cpu", 1)
    row = json.loads((tmp_path / "cpu" / "metrics.jsonl").read_text().splitlines()[0])
    assert "train/tflops_per_second" in row and "train/mfu" not in row


def test_real_position_fraction_over_several_masks():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # 6 of 8 real
    labels_real = torch.tensor([[True, False], [False, False]])  # 1 of 4 real
    assert real_position_fraction(mask).item() == pytest.approx(6 / 8)
    assert real_position_fraction(mask, labels_real).item() == pytest.approx(7 / 12)
    with pytest.raises(ValueError):
        real_position_fraction()


def test_the_mfu_counts_the_flops_of_real_tokens_only(tmp_path):
    """A batch that is a quarter padding: its counted FLOPs are scaled to the three quarters that are
    real tokens, so the TFLOP/s and MFU are 0.75x those of the same run that claims no padding."""

    def train(folder, **kwargs):
        fit_mlp(folder, loop_config(max_steps=1, batch_size=4, peak_tflops=1e-6), **kwargs)
        row = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
        assert row["train/mfu"] == pytest.approx(row["train/tflops_per_second"] / 1e-6)
        return row["train/tflops_per_second"] / row["train/items_per_second"]  # 1e-12 x FLOPs per item

    whole = train(tmp_path / "whole")
    padded = train(tmp_path / "padded", real_fraction_in_batch=lambda batch: torch.tensor(0.75))
    assert padded == pytest.approx(0.75 * whole)


def test_a_flop_counter_failure_costs_the_mfu_not_the_run(tmp_path, monkeypatch, caplog):
    """The counter raised inside a real step on an H200 (grouped-query attention of a causal LM);
    the step runs again uncounted and training goes on, with the same weights as without counting."""
    from torch.utils import flop_counter

    def broken(*args, **kwargs):
        raise AssertionError("sdpa_flop_count: query/key/value shapes are incompatible")

    monkeypatch.setitem(flop_counter.flop_registry, torch.ops.aten.mm, broken)
    monkeypatch.setitem(flop_counter.flop_registry, torch.ops.aten.addmm, broken)

    def train(folder, **loop):
        return fit_mlp(folder, loop_config(max_steps=3, batch_size=4, **loop))

    with caplog.at_level("WARNING"):
        result = train(tmp_path / "broken", peak_tflops=1e-6)
    assert "FLOP counting failed" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any("train/mfu" in r or "train/tflops_per_second" in r for r in rows)
    monkeypatch.undo()
    reference = train(tmp_path / "reference", peak_tflops=1e-6)
    for a, b in zip(result.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # counting changes rounding only


def test_attention_with_grouped_key_value_heads_is_counted_per_query_head():
    """SmolLM2's shapes (9 query heads over 3 key/value heads) under the flash kernel's op: torch
    2.11's own formula raised on them and the AR baseline's run lost its MFU; counted here as every
    query head attending over its shared key/value head (4 B H S_q S_k D forward)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    batch, heads, kv_heads, length, dim = 2, 9, 3, 16, 64
    with FakeTensorMode():
        q = torch.empty(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16)
        kv = torch.empty(batch, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16)
        with throughput.flop_counter_mode() as mode:
            torch.ops.aten._scaled_dot_product_flash_attention(q, kv, kv, is_causal=True)
    assert mode.get_total_flops() == 4 * batch * heads * length * length * dim


def test_grouped_attention_backward_counts_as_with_the_heads_repeated():
    from torch.utils.flop_counter import sdpa_backward_flop_count

    q = torch.empty(2, 9, 16, 64, device="meta")
    kv = torch.empty(2, 3, 16, 64, device="meta")
    backward = throughput.GQA_ATTENTION_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_backward]
    repeated = tuple(q.shape)
    assert backward(q.shape, q.shape, kv.shape, kv.shape) == sdpa_backward_flop_count(
        q.shape, q.shape, repeated, repeated
    )
    # heads that do not divide the query's are left for torch's check to reject
    odd = torch.empty(2, 4, 16, 64, device="meta")
    with pytest.raises(AssertionError):
        backward(q.shape, q.shape, odd.shape, odd.shape)

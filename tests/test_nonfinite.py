"""NaN/inf loss terms and gradients: the run stops naming the step and the term, or skips and counts;
a non-finite value never reaches the weights. Both paths: host check (plain AdamW) and on-device skip
(fused AdamW ``found_inf``, the default on CUDA and CPU)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from test_training import IndexDataset, Tiny, collate, loop_config

from sld.checkpointing import list_checkpoints
from sld.nonfinite import NonFiniteLossError
from sld.training import OptimConfig, fit


class InfGradient(torch.autograd.Function):
    """Identity forward, inf backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def faulty_loss(bad_calls: set[int], kind: str = "nan"):
    """Loss terms of the tiny model; on the listed calls (0-based micro-batches) the fault appears."""
    calls = {"n": 0}

    def loss_fn(model, batch):
        x = batch.float().unsqueeze(-1) / 10
        out = model.linear(x)
        fault = calls["n"] in bad_calls
        calls["n"] += 1
        if fault and kind == "grad":
            out = InfGradient.apply(out)
        mse = ((out - x) ** 2).mean()
        extra = mse * float("nan") if fault and kind == "nan" else mse.detach() * 0
        return {"loss": mse + extra, "mse": mse, "extra": extra}

    return loss_fn


def train(folder, loss_fn, fused: bool, **loop):
    torch.manual_seed(0)
    settings = dict(max_steps=6, save_every=2, log_every=1)
    settings.update(loop)
    return fit(
        Tiny(),
        IndexDataset(24),
        collate,
        loss_fn,
        folder,
        OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", fused=fused),
        loop_config(**settings),
    )


def weights(folder, name):
    from safetensors.torch import load_file

    return load_file(folder / "checkpoints" / name / "model.safetensors")


@pytest.mark.parametrize("fused", [False, True], ids=["host-check", "on-device"])
def test_nan_term_stops_the_run_naming_step_and_term(tmp_path, fused):
    # call 2 is the only micro-batch of step 3; with log_every=5 the on-device path finds it at the
    # checkpoint of step 4 and must not write that checkpoint
    with pytest.raises(NonFiniteLossError, match=r"step 3: NaN or inf in 'loss' .*'extra' \(1 micro-batch\)"):
        train(tmp_path, faulty_loss({2}), fused, log_every=5)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]
    assert all(torch.isfinite(t).all() for t in weights(tmp_path, "step_2").values())
    message = str(pytest.raises(NonFiniteLossError, train, tmp_path / "b", faulty_loss({2}), fused).value)
    assert "'mse'" not in message  # only the non-finite terms are named


@pytest.mark.parametrize("fused", [False, True], ids=["host-check", "on-device"])
def test_nan_never_reaches_the_weights(tmp_path, fused):
    """The skipped update leaves weights and AdamW state exactly as after the previous step."""
    result = train(
        tmp_path, faulty_loss({2}), fused, skip_nonfinite_steps=True, save_every=1, keep_checkpoints=10
    )
    before, after = weights(tmp_path, "step_2"), weights(tmp_path, "step_3")
    assert all(torch.equal(before[k], after[k]) for k in before)
    optimizer_steps = {int(s["step"]) for s in result.accelerator._optimizers[0].optimizer.state.values()}
    assert optimizer_steps == {5}  # 6 steps, one skipped
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize("fused", [False, True], ids=["host-check", "on-device"])
@pytest.mark.parametrize("kind", ["nan", "grad"])
def test_skipped_steps_are_counted_and_logged(tmp_path, fused, kind, caplog):
    caplog.set_level(logging.INFO, logger="sld")
    result = train(tmp_path, faulty_loss({1, 4}, kind), fused, skip_nonfinite_steps=True, log_every=3)
    assert result.state.step == 6 and result.state.skipped_steps == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_steps"] for r in rows if "train/loss" in r] == [1, 1]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows if "train/loss" in r)
    term = "'extra'" if kind == "nan" else "'grad_norm'"
    # warnings come at every check (logging and checkpoint steps): steps 1-2 up to checkpoint 2, ...
    assert "skipped 1 of steps 1-2 (first: step 2): NaN or inf in" in caplog.text and term in caplog.text
    assert "(first: step 5)" in caplog.text and "; 2 skipped in total" in caplog.text
    assert "2 steps skipped (non-finite)" in caplog.text
    assert (
        json.loads((list_checkpoints(tmp_path)[-1] / "loop_state.json").read_text())["loop"]["skipped_steps"]
        == 2
    )


def test_inf_gradient_with_a_finite_loss_stops_naming_the_gradient(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 2: NaN or inf in 'grad_norm'"):
        train(tmp_path, faulty_loss({1}, "grad"), fused=False)
    # without clipping the guard computes the gradient norm itself
    with pytest.raises(NonFiniteLossError, match=r"step 2: NaN or inf in 'grad_norm'"):
        fit(
            Tiny(),
            IndexDataset(24),
            collate,
            faulty_loss({1}, "grad"),
            tmp_path / "b",
            OptimConfig(warmup_steps=0, max_grad_norm=0.0),
            loop_config(max_steps=4),
        )

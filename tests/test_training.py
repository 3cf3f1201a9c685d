"""The shared training loop: one optimizer step per accumulated batch, LR schedule, resume."""

import json
import os

import pytest
import torch
from torch.utils.data import Dataset

import sld.training as training
from sld.training import (
    LoopConfig,
    OptimConfig,
    fit,
    list_checkpoints,
    lr_lambda,
    make_accelerator,
    training_loader,
    warn_if_schedule_undecayed,
)


class IndexDataset(Dataset):
    def __init__(self, n: int = 12) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def collate(items):
    return torch.tensor(items)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)


def make_loss(seen: list[int]):
    def loss_fn(model, batch):
        seen.extend(batch.tolist())
        x = batch.float().unsqueeze(-1) / 10
        loss = ((model.linear(x) - x) ** 2).mean()
        return {"loss": loss, "mse": loss}

    return loss_fn


def loop_config(**kw) -> LoopConfig:
    base = dict(max_steps=3, batch_size=2, log_every=1, eval_every=100, save_every=100, progress=False)
    base.update(kw)
    return LoopConfig(**base)


def test_accumulation_takes_one_optimizer_step_per_accumulated_batch(tmp_path, monkeypatch):
    steps = []
    real_build = training.build_optimizer

    def counting_build(params, optim, *args, **kwargs):
        opt = real_build(params, optim, *args, **kwargs)
        opt.register_step_post_hook(lambda *a: steps.append(1))
        return opt

    monkeypatch.setattr(training, "build_optimizer", counting_build)
    seen: list[int] = []
    result = fit(
        Tiny(),
        IndexDataset(24),
        collate,
        make_loss(seen),
        tmp_path,
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=2, grad_accum_steps=4),
    )
    assert result.state.step == 2
    assert len(steps) == 2  # 8 micro-batches, 2 optimizer steps
    assert len(seen) == 2 * 4 * 2


def test_lr_schedule_advances_once_per_step(tmp_path):
    optim = OptimConfig(lr=1.0, warmup_steps=2, schedule="cosine")
    fit(
        Tiny(),
        IndexDataset(24),
        collate,
        make_loss([]),
        tmp_path,
        optim,
        loop_config(max_steps=4, grad_accum_steps=3),
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs == pytest.approx([lr_lambda(s, optim, 4) for s in range(1, 5)])
    assert {"train/loss", "train/mse", "train/grad_norm"} <= set(rows[0])


@pytest.mark.parametrize(("fused", "expected"), [(None, True), (False, False)])
def test_adamw_is_fused_on_a_cpu_unless_asked_not_to(tmp_path, fused, expected):
    optim = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", fused=fused)
    result = fit(Tiny(), IndexDataset(8), collate, make_loss([]), tmp_path, optim, loop_config(max_steps=2))
    assert bool(result.accelerator._optimizers[0].param_groups[0]["fused"]) is expected


def test_warmup_then_cosine_shape():
    optim = OptimConfig(warmup_steps=10, schedule="cosine")
    assert lr_lambda(0, optim, 110) == pytest.approx(0.1)
    assert lr_lambda(9, optim, 110) == pytest.approx(1.0)
    assert lr_lambda(60, optim, 110) == pytest.approx(0.5)
    assert lr_lambda(110, optim, 110) == pytest.approx(0.0)


def test_resume_continues_step_count_and_data_order(tmp_path):
    # constant LR: the cosine horizon depends on max_steps, which the interrupted run changes
    constant = OptimConfig(warmup_steps=0, schedule="constant")
    straight: list[int] = []
    fit(
        Tiny(),
        IndexDataset(10),
        collate,
        make_loss(straight),
        tmp_path / "a",
        constant,
        loop_config(max_steps=7),
    )

    resumed: list[int] = []
    first = fit(
        Tiny(),
        IndexDataset(10),
        collate,
        make_loss(resumed),
        tmp_path / "b",
        constant,
        loop_config(max_steps=3),
    )
    assert first.state.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_3"]
    second = fit(
        Tiny(),
        IndexDataset(10),
        collate,
        make_loss(resumed),
        tmp_path / "b",
        constant,
        loop_config(max_steps=7),
    )
    assert second.state.step == 7
    assert resumed == straight  # same batches in the same order across the interruption
    a = fit(
        Tiny(), IndexDataset(10), collate, make_loss([]), tmp_path / "a", constant, loop_config(max_steps=7)
    )
    assert a.state.step == 7  # already finished: loads the final checkpoint, trains nothing
    for pa, pb in zip(a.model.parameters(), second.model.parameters()):
        torch.testing.assert_close(pa, pb)


def test_evaluate_fn_is_called_and_logged(tmp_path):
    calls = []

    def evaluate(model, step):
        calls.append(step)
        assert not model.training
        return {"score": float(step)}

    fit(
        Tiny(),
        IndexDataset(8),
        collate,
        make_loss([]),
        tmp_path,
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=5, eval_every=2),
        evaluate_fn=evaluate,
    )
    assert calls == [2, 4, 5]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/score"] for r in rows if "eval/score" in r] == [2.0, 4.0, 5.0]


def test_ema_weights_are_tracked(tmp_path):
    result = fit(
        Tiny(),
        IndexDataset(8),
        collate,
        make_loss([]),
        tmp_path,
        OptimConfig(lr=0.1, warmup_steps=0),
        loop_config(max_steps=3),
        ema_decay=0.5,
    )
    assert result.ema is not None
    raw = [p.detach().clone() for p in result.model.parameters()]
    result.ema.copy_to(list(result.model.parameters()))
    assert any(not torch.equal(r, p) for r, p in zip(raw, result.model.parameters()))


def test_invalid_loop_config_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        LoopConfig(batch_size=0)


def test_length_grouped_batches_and_resume(tmp_path):
    lengths = [1 if i % 2 else 100 for i in range(12)]

    def run(folder, max_steps):
        seen: list[int] = []
        fit(
            Tiny(),
            IndexDataset(12),
            collate,
            make_loss(seen),
            folder,
            OptimConfig(warmup_steps=0, schedule="constant"),
            loop_config(max_steps=max_steps, batch_size=3),
            lengths=lengths,
        )
        return seen

    straight = run(tmp_path / "a", 9)
    batches = [straight[i : i + 3] for i in range(0, len(straight), 3)]
    assert all(len({lengths[i] for i in batch}) == 1 for batch in batches)
    assert sorted(straight[:12]) == list(range(12))  # one epoch covers every item once
    assert run(tmp_path / "b", 5) + run(tmp_path / "b", 9) == straight
    with pytest.raises(ValueError, match="1 lengths for a dataset of 12"):
        fit(
            Tiny(),
            IndexDataset(12),
            collate,
            make_loss([]),
            tmp_path / "c",
            OptimConfig(),
            loop_config(),
            lengths=[1],
        )


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def net_loss(model, batch):
    x = torch.stack(
        [batch.float() / 10, torch.sin(batch.float()), batch.float() ** 0.5, torch.ones(len(batch))], 1
    )
    return {"loss": (model(x).squeeze(-1) - x[:, 0]).pow(2).mean()}


@pytest.mark.slow
def test_compiled_and_eager_training_give_the_same_losses(tmp_path):
    """``loop.compile`` on a CPU (inductor): the same losses as eager within 1e-5 relative (measured:
    at most 1.1e-7, float32 rounding of fused kernels)."""
    from torch._dynamo.utils import counters

    from sld.compilation import losses_compiled

    counters.clear()
    losses = {}
    compiled_loss_calls = []

    def recording_loss(model, batch):
        compiled_loss_calls.append(losses_compiled())
        return net_loss(model, batch)

    for compiled in (False, True):
        torch.manual_seed(0)
        compiled_loss_calls.clear()
        result = fit(
            SmallNet(),
            IndexDataset(24),
            collate,
            recording_loss,
            tmp_path / str(compiled),
            OptimConfig(lr=1e-2, warmup_steps=0),
            loop_config(max_steps=4, batch_size=6, compile=compiled),
        )
        rows = (tmp_path / str(compiled) / "metrics.jsonl").read_text().splitlines()
        losses[compiled] = [json.loads(r)["train/loss"] for r in rows]
        assert json.loads(rows[-1])["train/tflops_per_second"] > 0  # FLOPs counted in both modes
        # a compiled run's rows count the graphs compiled so far (recompilations show as a rising
        # count); step 1 runs eagerly while its FLOPs are counted, so its row says 0
        graphs = [json.loads(r).get("compile/graphs") for r in rows]
        if compiled:
            assert graphs[0] == 0 and graphs[-1] >= 1 and graphs == sorted(graphs)
        else:
            assert graphs == [None] * len(rows)
        assert type(result.model) is SmallNet  # unwrapped from torch.compile
        assert set(compiled_loss_calls) == {compiled}  # the loss's compiled forms with loop.compile only
    assert counters["frames"]["ok"] >= 1  # compiled for real (not silently run eagerly)
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert len(set(losses[False])) == 4  # the weights moved: four different losses


def test_new_loop_settings_are_validated():
    for bad in (
        dict(profile_steps=-1),
        dict(peak_tflops=0.0),
        dict(max_minutes=0),
        dict(keep_checkpoints=0),
        dict(compile=True, compile_cuda_graphs=True, compile_dynamic=True),
    ):
        with pytest.raises(ValueError, match=next(reversed(bad))):
            LoopConfig(**bad)


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 16)

    def forward(self, h):
        return h + torch.nn.functional.gelu(self.linear(h))


class TwoBlocks(torch.nn.Module):
    """SmallNet with its hidden layers as repeated blocks (what ``loop.compile`` compiles)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(4, 16)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(2))
        self.out = torch.nn.Linear(16, 1)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def test_compiled_blocks_run_compiled_on_every_step_after_the_flop_count(tmp_path, monkeypatch):
    """The FLOP count of a compiled run once ran its micro-batch under FlopCounterMode after the first
    compile, and dynamo then ran every block eagerly for the rest of the run (H200 runs labelled
    'compiled' were eager). A backend that counts its graph calls shows every step is compiled."""
    import sld.training as training
    from sld.compilation import compile_model

    calls = {"graphs": 0}

    def counting_backend(graph_module, example_inputs):
        def run(*args):
            calls["graphs"] += 1
            return graph_module.forward(*args)

        return run

    monkeypatch.setattr(
        training,
        "compile_model",
        lambda model, **settings: compile_model(model, backend=counting_backend, **settings),
    )
    torch._dynamo.reset()
    steps = 5
    fit(
        TwoBlocks(),
        IndexDataset(30),
        collate,
        net_loss,
        tmp_path / "run",
        OptimConfig(lr=1e-2, warmup_steps=0),
        loop_config(max_steps=steps, batch_size=6, compile=True),
    )
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["train/tflops_per_second"] > 0  # the FLOPs are still counted
    assert calls["graphs"] >= 2 * (steps - 1)  # both blocks, compiled, on every step but the counted one


def test_a_run_with_cuda_graphs_marks_every_optimizer_step_as_a_new_graph_step(tmp_path, monkeypatch):
    """``loop.compile_cuda_graphs``: the blocks go to Inductor with its CUDA graphs, and each optimizer
    step's first micro-batch starts a new step of its graph trees: the previous step's replayed outputs may then be overwritten, but not the
    gradients that the step's micro-batches accumulate."""
    import sld.training as training

    settings, marks = [], []
    monkeypatch.setattr(training, "compile_model", lambda model, **kw: settings.append(kw) or model)
    monkeypatch.setattr(training, "cuda_graph_step", marks.append)
    loop = loop_config(max_steps=3, batch_size=6, grad_accum_steps=2, compile=True, compile_cuda_graphs=True)
    fit(TwoBlocks(), IndexDataset(36), collate, net_loss, tmp_path / "run", OptimConfig(lr=1e-2), loop)
    assert [s["cuda_graphs"] for s in settings] == [True]
    assert marks == [True, False] * 3  # 3 steps of 2 micro-batches


def test_cuda_graphs_without_compile_train_eagerly_and_say_so(tmp_path, monkeypatch, caplog):
    """A config that turns ``compile`` and ``compile_cuda_graphs`` on (the SmolLM2 autoencoder's), run
    with ``loop.compile=false``: nothing compiled, no graph step marked, one log line saying so."""
    import sld.training as training

    compiled, marks = [], []
    monkeypatch.setattr(training, "compile_model", lambda model, **kw: compiled.append(kw) or model)
    monkeypatch.setattr(training, "cuda_graph_step", marks.append)
    loop = loop_config(max_steps=2, batch_size=6, compile_cuda_graphs=True)
    with caplog.at_level("INFO", logger="sld.training"):
        fit(TwoBlocks(), IndexDataset(36), collate, net_loss, tmp_path / "run", OptimConfig(lr=1e-2), loop)
    assert compiled == [] and not any(marks)
    assert "loop.compile_cuda_graphs=true does nothing with loop.compile=false" in caplog.text


def test_a_time_budget_that_ends_before_the_decay_is_reported(caplog):
    """Cosine over 20,000 steps, stopped by the clock at 1,500: the rate never left its peak."""
    optim = OptimConfig(lr=1e-3, warmup_steps=100, schedule="cosine")
    with caplog.at_level("WARNING", logger="sld.training"):
        assert warn_if_schedule_undecayed(1500, optim, 20000)
    assert "a loop.max_steps of about 1500 would end it" in caplog.text and "99% of its peak" in caplog.text
    assert not warn_if_schedule_undecayed(1500, optim, 2000)  # decayed to 7%: fine
    assert not warn_if_schedule_undecayed(1500, OptimConfig(schedule="constant"), 20000)


def test_batches_reach_the_device_without_the_host_waiting(tmp_path):
    """accelerate copies each batch with non_blocking (fit pins the DataLoader's memory on a GPU):
    a copy from pageable memory would wait for the GPU's queue to drain at every step."""
    accelerator = make_accelerator(tmp_path, LoopConfig(tracker="none"))
    assert accelerator.dataloader_config.non_blocking


class WorkerPidDataset(Dataset):
    """Items are (index, pid of the process that built them)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, os.getpid()


def test_loader_workers_persist_across_epochs():
    """With workers, every epoch reuses the same worker processes: a fresh fork per epoch made the
    GPU wait for the first batch of every epoch."""

    def worker_pids(num_workers: int) -> set[int]:
        loop = loop_config(batch_size=4, num_workers=num_workers)
        loader = training_loader(WorkerPidDataset(), lambda items: items, loop, torch.device("cpu"))
        return {pid for _ in range(3) for batch in loader for _, pid in batch}

    assert worker_pids(0) == {os.getpid()}
    pids = worker_pids(1)
    assert len(pids) == 1 and os.getpid() not in pids  # one worker for all three epochs


def test_persistent_workers_keep_the_data_order_and_resume(tmp_path):
    """fit with a worker draws the batches of fit without one, across epochs and across a resume
    (the order is seeded per epoch, not by the loader's iterator history)."""
    constant = OptimConfig(warmup_steps=0, schedule="constant")

    def run(folder: str, max_steps: int, num_workers: int, seen: list[int]) -> None:
        fit(
            Tiny(),
            IndexDataset(10),
            collate,
            make_loss(seen),
            tmp_path / folder,
            constant,
            loop_config(max_steps=max_steps, num_workers=num_workers),
        )

    in_process: list[int] = []
    run("a", 12, 0, in_process)  # 5 steps an epoch: three epochs
    with_worker: list[int] = []
    run("b", 12, 1, with_worker)
    assert with_worker == in_process
    resumed: list[int] = []
    run("c", 7, 1, resumed)
    run("c", 12, 1, resumed)
    assert resumed == in_process


def test_loader_groups_by_length_and_checks_the_lengths():
    loop = loop_config(batch_size=2)
    with pytest.raises(ValueError, match="3 lengths for a dataset of 8"):
        training_loader(WorkerPidDataset(), lambda items: items, loop, torch.device("cpu"), lengths=[1, 2, 3])
    loader = training_loader(
        WorkerPidDataset(), lambda items: items, loop, torch.device("cpu"), lengths=[1, 9, 1, 9, 1, 9, 1, 9]
    )
    for batch in loader:
        assert len({i % 2 for i, _ in batch}) == 1  # odd items are long, even ones short

"""Checkpoints: atomic writes, temporary folders never taken as the newest, disk errors, no pickle."""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import pickle

import pytest
import torch
from safetensors import SafetensorError
from test_training import IndexDataset, Tiny, collate, loop_config, make_loss

import sld.checkpointing as checkpointing
import sld.training as training
from sld.checkpointing import (
    CheckpointError,
    list_checkpoints,
    read_loop_state,
    remove_stale_temporaries,
    resumable_init_dir,
)
from sld.config import ConfigError, save_config
from sld.run_summary import training_summary
from sld.training import LoopConfig, OptimConfig, fit, make_accelerator

CONSTANT = OptimConfig(warmup_steps=0, schedule="constant")


def run(folder, max_steps, seen=None, **loop):
    return fit(
        Tiny(),
        IndexDataset(10),
        collate,
        make_loss([] if seen is None else seen),
        folder,
        CONSTANT,
        loop_config(max_steps=max_steps, save_every=2, **loop),
    )


def test_temporary_folders_are_not_listed_and_are_removed_by_the_next_run(tmp_path):
    run(tmp_path, 2)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_4").mkdir()
    (root / ".tmp-step_4" / "model.safetensors").write_bytes(b"half")
    (root / "step_x").mkdir()  # not a checkpoint name either
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]
    result = run(tmp_path, 4)
    assert result.state.step == 4
    assert not (root / ".tmp-step_4").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_4"]
    assert remove_stale_temporaries(tmp_path) == []


def test_another_process_removing_stale_temporaries_does_not_fail_the_write_probe(tmp_path, monkeypatch):
    """Under torchrun every process probes the checkpoint folder while the main process removes the
    stale temporaries of an interrupted run: the main process may delete another's probe file between
    its write and its unlink, and the probing process then stopped with "cannot write checkpoints" (the
    likely cause of a two-process CI failure: the second process exited with code 1 while the first
    waited at the barrier after this step). Writing the probe is the test; its removal must not fail."""
    real_write = checkpointing.Path.write_bytes

    def write_then_race(path, data):
        written = real_write(path, data)
        remove_stale_temporaries(tmp_path)  # the main process, in between
        return written

    monkeypatch.setattr(checkpointing.Path, "write_bytes", write_then_race)
    checkpointing.check_writable(tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_old_checkpoints_are_pruned_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    run(tmp_path, 4, keep_checkpoints=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4"]
    seen_during_write = []
    real = checkpointing.safetensors.torch.save_file

    def watching_save(tensors, path, metadata=None):
        seen_during_write.append([p.name for p in list_checkpoints(tmp_path)])
        return real(tensors, path, metadata)

    monkeypatch.setattr(checkpointing.safetensors.torch, "save_file", watching_save)
    run(tmp_path, 6, keep_checkpoints=1)
    assert seen_during_write and all(names == ["step_4"] for names in seen_during_write)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_6"]


def test_full_disk_during_a_checkpoint_fails_at_once_and_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save = checkpointing.safetensors.torch.save_file

    def full_disk(tensors, path, metadata=None):  # the optimizer state of checkpoint 4 hits a full disk
        if ".tmp-step_4" in str(path) and "optimizer" in str(path):
            # what safetensors raises (not an OSError)
            raise SafetensorError(
                f"Error while serializing: I/O error: No space left on device (os error 28) at path {path}"
            )
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(checkpointing.safetensors.torch, "save_file", full_disk)
    seen: list[int] = []
    with pytest.raises(
        CheckpointError, match=r"step_4: No space left on device \(errno 28\).*step_2 is intact"
    ):
        run(tmp_path, 6, seen)
    assert len(seen) == 4 * 2  # stopped at the failing checkpoint, not at the end of the run
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert read_loop_state(tmp_path / "checkpoints" / "step_2")["loop"]["step"] == 2
    monkeypatch.setattr(checkpointing.safetensors.torch, "save_file", real_save)
    assert run(tmp_path, 6).state.step == 6  # the disk has room again: resumes from step 2


def test_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch):
    # Tests run as root here, where chmod does not stop writes: the probe write is made to fail.
    def refuse(self, data):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(checkpointing.Path, "write_bytes", refuse)
    seen: list[int] = []
    with pytest.raises(
        CheckpointError, match=r"cannot write checkpoints to .*checkpoints: Permission denied"
    ):
        run(tmp_path / "run", 4, seen)
    assert seen == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_folder_fails_before_training(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="Permission denied"):
            run(tmp_path / "run", 4)
    finally:
        (tmp_path / "run").chmod(0o700)


def test_save_config_names_the_unwritable_path(tmp_path, monkeypatch):
    def refuse(self, text, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(type(tmp_path), "write_text", refuse)
    with pytest.raises(ConfigError, match=r"cannot write .*config.yaml: Read-only file system"):
        save_config(LoopConfig(), tmp_path / "config.yaml")


def test_checkpoints_hold_no_pickle_files(tmp_path):
    run(tmp_path, 2)
    for last in list_checkpoints(tmp_path):
        names = sorted(p.name for p in last.iterdir())
        assert names == [
            "loop_state.json",
            "model.safetensors",
            "optimizer.json",
            "optimizer.safetensors",
            "rng_state_0.safetensors",
        ]
        assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt", ".pth"))]


def test_resume_never_unpickles(tmp_path, monkeypatch):
    seen: list[int] = []
    straight = run(tmp_path / "a", 4, seen)
    run(tmp_path / "b", 2)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    resumed_seen: list[int] = []
    resumed = run(tmp_path / "b", 4, resumed_seen)
    assert resumed.state.step == 4 and resumed_seen == seen[4:]  # resumed at step 2, not started over
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_of_an_older_format_is_a_clear_error(tmp_path):
    old = tmp_path / "checkpoints" / "step_3"
    old.mkdir(parents=True)
    (old / "custom_checkpoint_0.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="older sld .*loop.resume=false"):
        run(tmp_path, 4)
    (old / "custom_checkpoint_0.pkl").unlink()
    (old / "loop_state.json").write_text(json.dumps({"format": "sld.checkpoint", "version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        run(tmp_path, 4)
    # version 1: the optimizer and accelerate's RNG copy were pickles (optimizer.bin, random_states_0.pkl)
    (old / "loop_state.json").write_text(json.dumps({"format": "sld.checkpoint", "version": 1}))
    (old / "optimizer.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match=r"step_3 was written by an older sld .*loop.resume=false"):
        run(tmp_path, 4)
    assert run(tmp_path / "fresh", 2, resume=False).state.step == 2


def test_ema_and_rng_survive_a_resume_exactly(tmp_path):
    def noisy_loss(model, batch):
        x = batch.float().unsqueeze(-1) / 10 + 0.1 * torch.randn(len(batch), 1)  # global RNG
        loss = ((model.linear(x) - x) ** 2).mean()
        return {"loss": loss}

    def train(folder, max_steps):
        torch.manual_seed(0)  # the same initial weights for both runs
        return fit(
            Tiny(),
            IndexDataset(10),
            collate,
            noisy_loss,
            folder,
            CONSTANT,
            loop_config(max_steps=max_steps, save_every=2),
            ema_decay=0.9,
        )

    straight = train(tmp_path / "a", 6)
    train(tmp_path / "b", 3)
    resumed = train(tmp_path / "b", 6)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(straight.ema.shadow_params, resumed.ema.shadow_params):
        assert torch.equal(p, q)


def assert_same_state(a, b, where="state"):
    """Equal values of equal types: tensors of the same dtype, shape and values, tuples stay tuples."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b and str(a) == str(b), f"{where}: {a!r} != {b!r}"  # str: -0.0 stays -0.0


def test_flattened_state_survives_json_and_safetensors_exactly():
    state = {
        "state": {3: {"step": torch.tensor(7.0), "buf": torch.arange(6, dtype=torch.int64).reshape(2, 3)}},
        "param_groups": [
            {"betas": (0.9, 0.999), "lr": torch.tensor(0.5, dtype=torch.float64), "params": [3]}
        ],
        "numbers": [float("nan"), float("inf"), -0.0, 1e-300, 2**70, True, None, "text"],
        "$odd": {"a.b": torch.ones(0), "c": (torch.zeros(2, dtype=torch.bfloat16), ())},
        (1, 2): "tuple key",
    }
    structure, tensors = checkpointing.flatten_state(state)
    assert sorted(tensors) == ["$odd.a.b", "$odd.c.0", "param_groups.0.lr", "state.3.buf", "state.3.step"]
    text = json.dumps(structure)
    assert "state.3.step" in text
    back = checkpointing.unflatten_state(json.loads(text), tensors)
    assert_same_state(back, state)


def test_state_of_an_unknown_type_is_a_clear_error():
    with pytest.raises(CheckpointError, match=r"cannot store a set \(param_groups.0.extra\)"):
        checkpointing.flatten_state({"param_groups": [{"extra": {1, 2}}]})


def _train(model, optimizer, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, generator=generator).to(next(model.parameters()).dtype)
        loss = model(x).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "options, dtype",
    [
        ({}, torch.float32),
        ({"foreach": False}, torch.float32),
        ({"fused": True}, torch.float32),
        ({"fused": True}, torch.bfloat16),
        ({"amsgrad": True, "maximize": True}, torch.float64),
    ],
)
def test_adamw_state_roundtrips_exactly_and_training_continues_identically(tmp_path, options, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1, "pretrained": False},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0, "pretrained": True},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.8, 0.99), **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)
    _train(model, optimizer, 3)
    scheduler.step()
    saved = optimizer.state_dict()
    checkpointing.save_optimizer_state(saved, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    loaded = checkpointing.read_optimizer_state(tmp_path)
    assert_same_state(loaded, saved)
    assert all(torch.is_tensor(s["step"]) for s in loaded["state"].values())

    clone = copy.deepcopy(model)
    clone_optimizer = torch.optim.AdamW(
        [
            {**g, "params": [p for p in clone.parameters() if p.dim() >= 2]}
            if i == 0
            else {**g, "params": [p for p in clone.parameters() if p.dim() < 2]}
            for i, g in enumerate(groups)
        ],
        lr=1e-3,  # overwritten by the loaded state
        **options,
    )
    clone_optimizer.load_state_dict(loaded)
    assert_same_state(clone_optimizer.state_dict(), saved)
    _train(model, optimizer, 3, seed=1)
    _train(clone, clone_optimizer, 3, seed=1)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert p.dtype == q.dtype == dtype and torch.equal(p, q)
    assert_same_state(clone_optimizer.state_dict(), optimizer.state_dict())


def test_optimizer_state_files_are_checked(tmp_path):
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors is missing"):
        checkpointing.read_optimizer_state(tmp_path)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    _train(model, optimizer, 1)
    checkpointing.save_optimizer_state(optimizer.state_dict(), tmp_path)
    structure = json.loads((tmp_path / "optimizer.json").read_text())
    structure["state_dict"]["state"]["$int_keys"]["0"]["exp_avg"]["$tensor"] = "state.9.exp_avg"
    (tmp_path / "optimizer.json").write_text(json.dumps(structure))
    with pytest.raises(CheckpointError, match=r"optimizer.json: tensor 'state.9.exp_avg' is missing"):
        checkpointing.read_optimizer_state(tmp_path)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


def net_loss(model, batch):
    x = batch.float().unsqueeze(-1).to(next(model.parameters()).device) / 10
    return {"loss": (model(x).float() - x).pow(2).mean()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mixed_precision", ["no", "fp16", "bf16"])
def test_fused_adamw_and_grad_scaler_on_cuda_resume_exactly(tmp_path, mixed_precision):
    from accelerate.state import AcceleratorState

    def train(folder, max_steps):
        AcceleratorState._reset_state(True)  # a new mixed-precision setting for this process
        torch.manual_seed(0)
        return fit(
            Net(),
            IndexDataset(10),
            collate,
            net_loss,
            folder,
            OptimConfig(lr=1e-2, warmup_steps=2, schedule="constant"),  # the same schedule in the 3-step run
            loop_config(max_steps=max_steps, save_every=2, mixed_precision=mixed_precision),
        )

    try:
        straight = train(tmp_path / "a", 6)
        train(tmp_path / "b", 3)
        resumed = train(tmp_path / "b", 6)
    finally:
        AcceleratorState._reset_state(True)
    optimizer = resumed.accelerator._optimizers[0]
    assert optimizer.param_groups[0]["fused"] is True
    assert all(s["step"].device.type == "cuda" for s in optimizer.state.values())
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    a, b = list_checkpoints(tmp_path / "a")[-1], list_checkpoints(tmp_path / "b")[-1]
    assert_same_state(checkpointing.read_optimizer_state(b), checkpointing.read_optimizer_state(a))
    state_a, state_b = read_loop_state(a), read_loop_state(b)
    assert state_b["scheduler"] == state_a["scheduler"]
    assert state_b.get("grad_scaler") == state_a.get("grad_scaler")
    assert ("grad_scaler" in state_b) == (mixed_precision == "fp16")
    assert not [p for p in b.iterdir() if p.suffix in (".bin", ".pkl", ".pt", ".pth")]


def test_grad_scaler_state_survives_a_resume_exactly(tmp_path):
    # accelerate makes a GradScaler for fp16 on CUDA only: here one is given to the accelerator by hand
    def train(folder, max_steps):
        torch.manual_seed(0)
        loop = loop_config(max_steps=max_steps, save_every=2)
        accelerator = make_accelerator(folder, loop)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=2)
        result = fit(
            Net(), IndexDataset(10), collate, net_loss, folder, CONSTANT, loop, accelerator=accelerator
        )
        return result, read_loop_state(list_checkpoints(folder)[-1])

    straight, straight_state = train(tmp_path / "a", 6)
    _, early_state = train(tmp_path / "b", 3)
    resumed, resumed_state = train(tmp_path / "b", 6)
    assert early_state["grad_scaler"]["_growth_tracker"] == 1  # mid-interval: the tracker must be restored
    assert resumed_state["grad_scaler"] == straight_state["grad_scaler"]
    assert straight_state["grad_scaler"]["scale"] == 2.0**7  # grew every 2 steps
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_optimizer_state_that_cannot_be_stored_fails_the_checkpoint_cleanly(tmp_path, monkeypatch):
    real_build = training.build_optimizer

    def build_with_a_set(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        optimizer.param_groups[0]["tags"] = {"a"}  # JSON has no sets
        return optimizer

    monkeypatch.setattr(training, "build_optimizer", build_with_a_set)
    with pytest.raises(CheckpointError, match=r"step_2: cannot store a set \(param_groups.0.tags\)"):
        run(tmp_path, 4)
    assert not (tmp_path / "checkpoints" / ".tmp-step_2").exists()
    assert list_checkpoints(tmp_path) == []


def test_resumable_init_dir_only_when_resuming_a_checkpointed_run_that_saved_one(tmp_path):
    assert resumable_init_dir(tmp_path, resume=True) is None  # nothing yet
    (tmp_path / "init").mkdir()
    assert resumable_init_dir(tmp_path, resume=True) is None  # no checkpoint: a fresh start
    (tmp_path / "checkpoints" / "step_2").mkdir(parents=True)
    assert resumable_init_dir(tmp_path, resume=True) == tmp_path / "init"
    assert resumable_init_dir(tmp_path, resume=False) is None


def test_a_run_resumed_with_nothing_left_keeps_its_history_and_seconds(tmp_path):
    """Resumed at max_steps, or with its time budget spent, a run takes no step and still returns
    the whole run's history (its evaluations) and training seconds, which its summary.json shows."""

    def scores(model, step):
        return {"score": float(step)}

    def resume(max_steps, seen, **loop):
        config = loop_config(max_steps=max_steps, save_every=2, eval_every=3, **loop)
        return fit(
            Tiny(), IndexDataset(10), collate, make_loss(seen), tmp_path, CONSTANT, config, evaluate_fn=scores
        )

    resume(4, [])
    state_file = list_checkpoints(tmp_path)[-1] / "loop_state.json"
    saved = json.loads(state_file.read_text())
    saved["loop"]["elapsed_seconds"] = 500.0  # as if the first run had trained for 500 s
    state_file.write_text(json.dumps(saved))

    seen = []
    done = resume(4, seen)
    assert (done.state.step, done.stopped_by, seen) == (4, "max_steps", [])
    assert [row["step"] for row in done.history if "eval/score" in row] == [3, 4]  # not evaluated again
    summary = training_summary(done)
    assert summary["train_seconds"] >= 500.0

    spent = resume(8, seen, max_minutes=5.0)  # 300 s of budget, 500 s already trained
    assert (spent.state.step, spent.stopped_by, seen) == (4, "max_minutes", [])
    assert [row["step"] for row in spent.history if "eval/score" in row] == [3, 4]

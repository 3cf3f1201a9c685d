"""Checkpoints: atomic writes, temporary folders never taken as the newest, disk errors, no pickle."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from test_training import IndexDataset, Tiny, collate, loop_config, make_loss

import sld.checkpointing as checkpointing
from sld.checkpointing import (
    CheckpointError,
    list_checkpoints,
    read_loop_state,
    remove_stale_temporaries,
    resumable_init_dir,
)
from sld.config import ConfigError, save_config
from sld.training import LoopConfig, OptimConfig, fit

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
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):  # the optimizer state of checkpoint 4 hits a full disk
        if ".tmp-step_4" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    seen: list[int] = []
    with pytest.raises(CheckpointError, match=r"step_4: No space left on device.*step_2 is intact"):
        run(tmp_path, 6, seen)
    assert len(seen) == 4 * 2  # stopped at the failing checkpoint, not at the end of the run
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert read_loop_state(tmp_path / "checkpoints" / "step_2")["loop"]["step"] == 2
    monkeypatch.setattr(torch, "save", real_save)
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


def test_checkpoints_hold_no_pickle_and_resume_loads_with_weights_only(tmp_path, monkeypatch):
    run(tmp_path, 2)
    last = list_checkpoints(tmp_path)[-1]
    assert not list(last.glob("custom_checkpoint_*"))
    assert (last / "model.safetensors").is_file() and (last / "rng_state_0.safetensors").is_file()
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert run(tmp_path, 4).state.step == 4
    assert calls and all(flag is True for flag in calls)  # optimizer.bin and accelerate's RNG copy


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


def test_resumable_init_dir_only_when_resuming_a_checkpointed_run_that_saved_one(tmp_path):
    assert resumable_init_dir(tmp_path, resume=True) is None  # nothing yet
    (tmp_path / "init").mkdir()
    assert resumable_init_dir(tmp_path, resume=True) is None  # no checkpoint: a fresh start
    (tmp_path / "checkpoints" / "step_2").mkdir(parents=True)
    assert resumable_init_dir(tmp_path, resume=True) == tmp_path / "init"
    assert resumable_init_dir(tmp_path, resume=False) is None

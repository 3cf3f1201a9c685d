"""Crash-safe training checkpoints: atomic writes, listing, pruning, and loading without pickle.

A checkpoint is the folder ``<output_dir>/checkpoints/step_<n>``. It is written under a temporary
name in the same folder (``.tmp-step_<n>``) and renamed into place only when every file in it is
complete and flushed to disk, so a training process killed at any moment (SIGKILL, power loss) never
leaves a half-written ``step_<n>``: the newest ``step_<n>`` is always a complete checkpoint, and a
re-run resumes from it. Temporary folders are ignored by :func:`list_checkpoints` and removed when
the next run starts. Old checkpoints are pruned only after the new one is in place.

Contents of one checkpoint:

======================================  ====================================================
``model.safetensors``                    the model's weights (accelerate ``save_state``, safetensors)
``optimizer.bin``                        optimizer state (accelerate; read back with ``torch.load(weights_only=True)``)
``loop_state.json``                      loop position, LR-schedule state, EMA settings, format version
``ema.safetensors``                      EMA weights (when an EMA is tracked)
``rng_state_<process>.safetensors``      torch (CPU and CUDA), Python and NumPy RNG states of each process
``random_states_<process>.pkl``          accelerate's own copy of the RNG states (read with ``weights_only=True``)
======================================  ====================================================

Nothing is unpickled from a checkpoint: the loop state and EMA are no longer handed to accelerate's
``register_for_checkpointing`` (whose ``custom_checkpoint_*.pkl`` files are read with
``weights_only=False``), and the RNG states are restored from their safetensors file.

Disk errors (no space left, no permission) raise :class:`CheckpointError` naming the folder; the
temporary folder is removed and the previous checkpoint stays intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator

from sld.errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TEMP_PREFIX = ".tmp-"
LOOP_STATE_FILE = "loop_state.json"
EMA_FILE = "ema.safetensors"
RNG_FILE = "rng_state_{}.safetensors"
FORMAT = "sld.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint cannot be written (disk full, no permission) or read; names the folder."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders ``output_dir/checkpoints/step_<n>``, oldest first.

    Temporary folders of an interrupted write (``.tmp-step_<n>``) are never listed.
    """
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def check_writable(output_dir: str | Path) -> None:
    """Fail at once, with the folder named, when checkpoints cannot be written under ``output_dir``."""
    root = checkpoint_root(output_dir)
    probe = root / f"{TEMP_PREFIX}probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoints to {root}: {err.strerror or err}") from err


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete temporary folders left by an interrupted checkpoint write; return what was removed."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
    for path in stale:
        logger.warning("removing %s, an incomplete checkpoint of an interrupted run", path)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints."""
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk (before it is renamed into place)."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ RNG


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states as (tensors, string metadata) for one safetensors file."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
    }
    return tensors, metadata


def set_rng_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in tensors.items() if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda])
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------------------ save / load


def _ema_tensors(ema: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    return {str(i): t.detach().contiguous() for i, t in enumerate(shadow)}, state


def _failed_anywhere(accelerator: Accelerator, failed: bool) -> bool:
    """Whether any process failed (a collective, so that no process waits for one that raised)."""
    flag = torch.tensor(float(failed), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item() > 0)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    loop_state: dict[str, Any],
    ema: Any | None = None,
    keep: int = 2,
    pause: Any = None,
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically (every process must call this); return its path.

    ``loop_state`` must be JSON-serialisable. ``pause(where, step)`` is the crash tests' hook,
    called once the temporary folder is partly written. Raises :class:`CheckpointError` on every
    process when a write fails on any (disk full, no permission), after removing the temporary
    folder; the previous checkpoints are left as they were.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    temp = root / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process and temp.exists():
        shutil.rmtree(temp)
    accelerator.wait_for_everyone()
    error: OSError | None = None
    try:
        accelerator.save_state(str(temp), safe_serialization=True)
        if pause is not None:
            pause("checkpoint", step)
        tensors, metadata = rng_state()
        safetensors.torch.save_file(tensors, temp / RNG_FILE.format(accelerator.process_index), metadata)
        if accelerator.is_main_process:
            payload: dict[str, Any] = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "num_processes": accelerator.num_processes,
                **loop_state,
            }
            if ema is not None:
                ema_tensors, payload["ema"] = _ema_tensors(ema)
                safetensors.torch.save_file(ema_tensors, temp / EMA_FILE)
            (temp / LOOP_STATE_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    except OSError as err:
        error = err
    if not _failed_anywhere(accelerator, error is not None) and accelerator.is_main_process:
        try:  # every file is complete: flush them, then rename the folder into place
            _fsync_tree(temp)
            if final.exists():  # left by an earlier run with loop.resume=false: replace it
                shutil.rmtree(final)
            os.replace(temp, final)
            _fsync_dir(root)
        except OSError as err:
            error = err
    if _failed_anywhere(accelerator, error is not None):
        if accelerator.is_main_process:
            shutil.rmtree(temp, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        kept = f"; the previous checkpoint {previous[-1]} is intact" if previous else ""
        cause = (
            f"{error.strerror or error} (errno {error.errno})"
            if error
            else "a write failed on another process"
        )
        raise CheckpointError(f"cannot write checkpoint {final}: {cause}{kept}") from error
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def read_loop_state(path: str | Path) -> dict[str, Any]:
    """The ``loop_state.json`` of a checkpoint folder; :class:`CheckpointError` if it is missing or foreign."""
    path = Path(path)
    file = path / LOOP_STATE_FILE
    if not file.is_file():
        if any(path.glob("custom_checkpoint_*.pkl")):
            raise CheckpointError(
                f"{path} was written by an older sld (pickled loop state, which is not loaded any more): "
                "delete that run's checkpoints/ folder or set loop.resume=false"
            )
        raise CheckpointError(f"{path} is not an sld checkpoint: {LOOP_STATE_FILE} is missing")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not an sld checkpoint state (format {FORMAT!r} expected)")
    if data.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: checkpoint format version {data.get('version')!r}; this sld reads version {FORMAT_VERSION}"
        )
    return data


def load_checkpoint(accelerator: Accelerator, path: str | Path, ema: Any | None = None) -> dict[str, Any]:
    """Restore model, optimizer, EMA and RNG states from ``path``; return its loop state.

    Weights come from safetensors; the optimizer state through ``torch.load(weights_only=True)``
    (accelerate's default); loop state, schedule and EMA settings from JSON.
    """
    path = Path(path)
    state = read_loop_state(path)
    other_count = state.get("num_processes") not in (None, accelerator.num_processes)
    if other_count:
        logger.warning(
            "%s was written by %s processes, resuming with %d: the run goes on from the same place "
            "in the data (global items seen); dropout draws differ from an uninterrupted run",
            path,
            state["num_processes"],
            accelerator.num_processes,
        )
    accelerator.load_state(str(path))
    if ema is not None:
        if "ema" not in state or not (path / EMA_FILE).is_file():
            raise CheckpointError(f"{path} holds no EMA weights, but this run tracks an EMA")
        tensors = safetensors.torch.load_file(path / EMA_FILE)
        shadow = [tensors[str(i)] for i in range(len(tensors))]
        ema.load_state_dict({**state["ema"], "shadow_params": shadow})
        ema.to(accelerator.device)
    rng_file = path / RNG_FILE.format(accelerator.process_index)
    if not rng_file.is_file() and other_count:
        # a process the writing run did not have: it keeps the RNG state fit seeded it with
        logger.info("%s: no RNG state for process %d", path, accelerator.process_index)
        return state
    if not rng_file.is_file():
        raise CheckpointError(f"{rng_file} is missing: the checkpoint is incomplete")
    with safetensors.safe_open(str(rng_file), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    set_rng_state(tensors, metadata)
    return state


__all__: Sequence[str] = [
    "CHECKPOINT_PATTERN",
    "CheckpointError",
    "check_writable",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_loop_state",
    "remove_stale_temporaries",
    "save_checkpoint",
]

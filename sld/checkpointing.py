"""Crash-safe training checkpoints: atomic writes, listing, pruning, and loading without pickle.

A checkpoint is the folder ``<output_dir>/checkpoints/step_<n>``. It is written under a temporary
name in the same folder (``.tmp-step_<n>``) and renamed into place only when every file in it is
complete and flushed to disk, so a training process killed at any moment (SIGKILL, power loss) never
leaves a half-written ``step_<n>``: the newest ``step_<n>`` is always a complete checkpoint, and a
re-run resumes from it. Temporary folders are ignored by :func:`list_checkpoints` and removed when
the next run starts. Old checkpoints are pruned only after the new one is in place.

Contents of one checkpoint (format ``sld.checkpoint`` version 2):

======================================  ====================================================
``model.safetensors``                    the model's weights (of the plain module: no DDP or compile prefixes)
``optimizer.safetensors``                the optimizer's tensors, named ``state.<param_idx>.<key>``
``optimizer.json``                       the rest of the optimizer state dict (param groups, tuples,
                                         numbers) with references to those tensors
``loop_state.json``                      loop position, LR-schedule state, EMA settings, grad-scaler
                                         state, accelerate's step counter, format version
``ema.safetensors``                      EMA weights (when an EMA is tracked)
``rng_state_<process>.safetensors``      torch (CPU and CUDA), Python and NumPy RNG states of each process
======================================  ====================================================

(A second model or optimizer prepared with the same accelerator goes to ``model_1.safetensors``,
``optimizer_1.safetensors`` and ``optimizer_1.json``.)

Weights and tensors are only ever written as safetensors and everything else as JSON; nothing is
written or read with pickle (``torch.save``/``torch.load``): accelerate's ``save_state`` and
``load_state`` are not used, since they write ``optimizer.bin``, ``scaler.pt`` and
``random_states_<process>.pkl`` with ``torch.save``. A checkpoint folder holds no ``.bin``, ``.pkl``
or ``.pt`` file. The loop position (epoch, micro-batches consumed) replaces accelerate's dataloader
state; accelerate's FSDP, DeepSpeed, Megatron-LM and XLA checkpoints are not supported
(:class:`CheckpointError`).

Checkpoints written by an older sld (format version 1, with a pickled ``optimizer.bin`` and
``random_states_<process>.pkl``, or older still with ``custom_checkpoint_*.pkl``) are refused with a
:class:`CheckpointError` naming the folder and saying so, not loaded: delete that run's
``checkpoints/`` folder or set ``loop.resume=false`` to start over.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from sld.errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
INIT_DIR = "init"  # the initial model a trainer saves before its first step (same tokenizer on resume)
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TEMP_PREFIX = ".tmp-"
LOOP_STATE_FILE = "loop_state.json"
EMA_FILE = "ema.safetensors"
RNG_FILE = "rng_state_{}.safetensors"
MODEL_FILE = "model{}.safetensors"
OPTIMIZER_FILE = "optimizer{}.safetensors"
OPTIMIZER_JSON = "optimizer{}.json"
FORMAT = "sld.checkpoint"
FORMAT_VERSION = 2
UNSUPPORTED = (
    DistributedType.FSDP,
    DistributedType.DEEPSPEED,
    DistributedType.MEGATRON_LM,
    DistributedType.XLA,
)


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


def resumable_init_dir(output_dir: str | Path, resume: bool) -> Path | None:
    """``output_dir/init`` when a resumed run should start from it: ``resume`` is on, the folder
    holds a checkpoint and the interrupted run saved its initial model there; else None."""
    init_dir = Path(output_dir) / INIT_DIR
    if resume and list_checkpoints(output_dir) and init_dir.is_dir():
        return init_dir
    return None


def check_writable(output_dir: str | Path) -> None:
    """Fail at once, with the folder named, when checkpoints cannot be written under ``output_dir``."""
    root = checkpoint_root(output_dir)
    probe = root / f"{TEMP_PREFIX}probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        # missing_ok: under torchrun the main process removes stale temporaries (this probe among
        # them) while the other processes probe; the write was the test of writability
        probe.unlink(missing_ok=True)
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


# ------------------------------------------------------------------------------------------ state dicts


# Markers of the JSON encoding of a state dict: a tensor kept in the safetensors file, a tuple, a dict
# with int keys (an optimizer's ``state``), and any other dict whose keys JSON cannot hold as they are.
TENSOR, TUPLE, INT_KEYS, ITEMS = "$tensor", "$tuple", "$int_keys", "$items"


def flatten_state(value: Any, name: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a state dict into a JSON-serialisable structure and the tensors it references.

    Tensors are replaced by ``{"$tensor": "<path>"}`` where the path joins the keys with dots
    (``state.0.exp_avg``, ``param_groups.1.lr``); tuples become ``{"$tuple": [...]}`` and dicts
    with int keys ``{"$int_keys": {...}}``, so that :func:`unflatten_state` gives back the same
    types. Python floats (nan and inf included) survive JSON exactly. Any other type is a
    :class:`CheckpointError` naming where it sits.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(item: Any, path: str) -> Any:
        if isinstance(item, torch.Tensor):
            key = path if path not in tensors else f"{path}#{len(tensors)}"
            tensors[key] = item.detach().cpu().contiguous()
            return {TENSOR: key}
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        if isinstance(item, tuple):
            return {TUPLE: [encode(v, f"{path}.{i}".lstrip(".")) for i, v in enumerate(item)]}
        if isinstance(item, list):
            return [encode(v, f"{path}.{i}".lstrip(".")) for i, v in enumerate(item)]
        if isinstance(item, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in item):
                return {k: encode(v, f"{path}.{k}".lstrip(".")) for k, v in item.items()}
            if all(type(k) is int for k in item):
                return {INT_KEYS: {str(k): encode(v, f"{path}.{k}".lstrip(".")) for k, v in item.items()}}
            return {ITEMS: [[encode(k, path), encode(v, f"{path}.{k}".lstrip("."))] for k, v in item.items()]}
        raise CheckpointError(
            f"cannot store a {type(item).__name__} ({path or 'the state'}) in a checkpoint: "
            "only tensors, numbers, strings, None, lists, tuples and dicts are"
        )

    return encode(value, name), tensors


def unflatten_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The state dict that :func:`flatten_state` split into ``value`` and ``tensors``."""
    if isinstance(value, list):
        return [unflatten_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {TENSOR}:
        if value[TENSOR] not in tensors:
            raise CheckpointError(f"tensor {value[TENSOR]!r} is missing")
        return tensors[value[TENSOR]]
    if set(value) == {TUPLE}:
        return tuple(unflatten_state(v, tensors) for v in value[TUPLE])
    if set(value) == {INT_KEYS}:
        return {int(k): unflatten_state(v, tensors) for k, v in value[INT_KEYS].items()}
    if set(value) == {ITEMS}:
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in value[ITEMS]}
    return {k: unflatten_state(v, tensors) for k, v in value.items()}


def _save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, with its I/O errors raised as :class:`OSError` (errno kept)."""
    with _io_errors(path):
        safetensors.torch.save_file(tensors, path, metadata)


@contextmanager
def _io_errors(path: Path) -> Iterator[None]:
    """Raise a ``SafetensorError`` of a failed write (``... (os error 28) ...``) as an ``OSError``."""
    try:
        yield
    except safetensors.SafetensorError as err:
        found = re.search(r"os error (\d+)", str(err))
        if not found:
            raise OSError(f"{path}: {err}") from err
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err


def save_optimizer_state(state: dict[str, Any], folder: Path, index: int = 0) -> None:
    """Write an optimizer state dict as ``optimizer[_<index>].safetensors`` and ``.json``."""
    suffix = f"_{index}" if index else ""
    structure, tensors = flatten_state(state)
    _save_tensors(tensors, folder / OPTIMIZER_FILE.format(suffix), {"format": "pt"})
    (folder / OPTIMIZER_JSON.format(suffix)).write_text(
        json.dumps({"state_dict": structure}, indent=1) + "\n"
    )


def read_optimizer_state(folder: str | Path, index: int = 0) -> dict[str, Any]:
    """The optimizer state dict written by :func:`save_optimizer_state` (tensors on the CPU)."""
    folder = Path(folder)
    suffix = f"_{index}" if index else ""
    tensor_file, json_file = folder / OPTIMIZER_FILE.format(suffix), folder / OPTIMIZER_JSON.format(suffix)
    for file in (tensor_file, json_file):
        if not file.is_file():
            raise CheckpointError(f"{file} is missing: the checkpoint is incomplete")
    try:
        structure = json.loads(json_file.read_text())["state_dict"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{json_file}: not an sld optimizer state ({err})") from err
    try:
        return unflatten_state(structure, safetensors.torch.load_file(tensor_file))
    except CheckpointError as err:
        raise CheckpointError(f"{json_file}: {err} from {tensor_file.name}") from err


def _plain_module(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP and ``torch.compile`` wrappers (its state-dict keys carry no prefixes)."""
    module = accelerator.unwrap_model(model)
    return getattr(module, "_orig_mod", module)


def _check_supported(accelerator: Accelerator) -> None:
    if accelerator.distributed_type in UNSUPPORTED:
        raise CheckpointError(
            f"sld checkpoints support one device or DDP, not {accelerator.distributed_type.value}"
        )
    if accelerator._schedulers or accelerator._custom_objects:
        raise CheckpointError(
            "sld checkpoints hold the LR schedule in loop_state.json: prepare no scheduler with accelerate "
            "and register nothing with register_for_checkpointing"
        )


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
    _check_supported(accelerator)
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    temp = root / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process and temp.exists():
        shutil.rmtree(temp)
    accelerator.wait_for_everyone()
    error: OSError | CheckpointError | None = None
    try:
        temp.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            for i, model in enumerate(accelerator._models):
                path = temp / MODEL_FILE.format(f"_{i}" if i else "")
                with _io_errors(path):
                    safetensors.torch.save_model(
                        _plain_module(accelerator, model), str(path), {"format": "pt"}
                    )
            for i, optimizer in enumerate(accelerator._optimizers):
                save_optimizer_state(optimizer.state_dict(), temp, i)
        if pause is not None:
            pause("checkpoint", step)
        tensors, metadata = rng_state()
        _save_tensors(tensors, temp / RNG_FILE.format(accelerator.process_index), metadata)
        if accelerator.is_main_process:
            payload: dict[str, Any] = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "num_processes": accelerator.num_processes,
                "accelerator_step": accelerator.step,
                **loop_state,
            }
            if accelerator.scaler is not None:
                payload["grad_scaler"] = accelerator.scaler.state_dict()
            if ema is not None:
                ema_tensors, payload["ema"] = _ema_tensors(ema)
                _save_tensors(ema_tensors, temp / EMA_FILE)
            (temp / LOOP_STATE_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    except (OSError, CheckpointError) as err:  # a state that cannot be stored fails on every process too
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
        if isinstance(error, OSError):
            cause = f"{error.strerror or error} (errno {error.errno})"
        else:
            cause = str(error) if error else "a write failed on another process"
        raise CheckpointError(f"cannot write checkpoint {final}: {cause}{kept}") from error
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _older_sld(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} was written by an older sld ({what}, which is not loaded any more): "
        "delete that run's checkpoints/ folder or set loop.resume=false"
    )


def read_loop_state(path: str | Path) -> dict[str, Any]:
    """The ``loop_state.json`` of a checkpoint folder; :class:`CheckpointError` if it is missing or foreign,
    or was written by an older sld (format version 1: pickled optimizer and RNG states)."""
    path = Path(path)
    file = path / LOOP_STATE_FILE
    if not file.is_file():
        if any(path.glob("custom_checkpoint_*.pkl")):
            raise _older_sld(path, "pickled loop state")
        raise CheckpointError(f"{path} is not an sld checkpoint: {LOOP_STATE_FILE} is missing")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not an sld checkpoint state (format {FORMAT!r} expected)")
    if data.get("version") == 1:
        raise _older_sld(path, "format version 1: optimizer.bin and random_states_*.pkl are pickles")
    if data.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: checkpoint format version {data.get('version')!r}; this sld reads version {FORMAT_VERSION}"
        )
    return data


def _load_model(module: torch.nn.Module, file: Path) -> None:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete")
    try:
        safetensors.torch.load_model(module, file, strict=True)
    except (RuntimeError, safetensors.SafetensorError) as err:
        raise CheckpointError(f"{file} does not fit this run's model: {err}") from err


def load_checkpoint(accelerator: Accelerator, path: str | Path, ema: Any | None = None) -> dict[str, Any]:
    """Restore model, optimizer, grad scaler, EMA and RNG states from ``path``; return its loop state.

    Tensors come from safetensors files, everything else (loop position, LR schedule, optimizer
    param groups, EMA settings, RNG states of Python and NumPy) from JSON: nothing is unpickled.
    Checkpoints of an older sld (format version 1) are refused with a :class:`CheckpointError`
    naming the folder, not loaded.
    """
    _check_supported(accelerator)
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
    for i, model in enumerate(accelerator._models):
        _load_model(_plain_module(accelerator, model), path / MODEL_FILE.format(f"_{i}" if i else ""))
    for i, optimizer in enumerate(accelerator._optimizers):
        optimizer.load_state_dict(read_optimizer_state(path, i))
    if accelerator.scaler is not None:
        if "grad_scaler" in state:
            accelerator.scaler.load_state_dict(state["grad_scaler"])
        else:
            logger.warning(
                "%s holds no grad-scaler state (written without fp16): the scaler starts afresh", path
            )
    accelerator.step = int(state.get("accelerator_step", 0))
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
    "INIT_DIR",
    "check_writable",
    "flatten_state",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_loop_state",
    "read_optimizer_state",
    "remove_stale_temporaries",
    "resumable_init_dir",
    "save_checkpoint",
    "save_optimizer_state",
    "unflatten_state",
]

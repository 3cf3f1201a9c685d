"""Kill a real training process with SIGKILL (mid-step, then mid-checkpoint-write), re-run the same
command, and check that it ends bit-identical to an uninterrupted run, for each of the three trainers.

Each trainer runs four times as a subprocess (about 10 s of imports each on 2 cores):
the uninterrupted reference, a run killed inside step 3 (the newest checkpoint is step 2), a re-run
killed inside the write of checkpoint 4 (``.tmp-step_4`` is half written; step 2 stays the newest),
and a last re-run that resumes from step 2 and finishes at step 6. The reference runs beside the
other three (each process has one thread), in its own folder. Final weights, the last
checkpoint (model, optimizer, EMA, loop state, schedule) and the logged losses must equal the
reference's exactly (CPU, one thread). The pauses come from ``SLD_PAUSE_AT`` (see sld.training).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tiny_models import write_stage_inputs

from sld.checkpointing import list_checkpoints, read_optimizer_state
from sld.training import PAUSE_ENV, PAUSE_MARKER_ENV

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TIMEOUT = 300
LOOP = ["loop.max_steps=6", "loop.save_every=2", "loop.log_every=1", "loop.eval_every=100", "loop.seed=3"]
# per-interval timings differ between runs; everything else in a training row must match
TIMING_KEYS = {
    "train/items_per_second",
    "train/tokens_per_second",
    "train/tflops_per_second",
    "train/mfu",
    "time/seconds",
}

# The stages build their models before `fit` seeds the RNGs, from the process's random initial
# torch seed; like a user's script, the launcher seeds first so that two runs start from the same
# model (the stages should seed their model init from loop.seed themselves).
LAUNCHER = (
    "import importlib, sys, torch; torch.manual_seed(0); "
    "sys.exit(importlib.import_module(f'stages.{sys.argv[1]}').main(sys.argv[2:]))"
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_stage_inputs(tmp_path_factory.mktemp("crash"))


def stage_args(trainer: str, inputs: dict, output_dir: Path) -> list[str]:
    bert, seg = inputs["bert"], inputs["segmented"]
    if trainer == "train_autoencoder":
        args = ["-c", str(CONFIGS / "autoencoder_tiny.yaml"), f"model.encoder={bert}"]
        args += ["data.num_valid_segments=2"]
    elif trainer == "train_diffusion":
        args = ["-c", str(CONFIGS / "diffusion_tiny.yaml"), f"autoencoder={inputs['autoencoder']}"]
        args += [f"context_encoder={bert}", "data.num_valid_documents=2", "sample_every=0"]
        args += ["sampling.num_inference_steps=2"]
    else:
        args = ["match_autoencoder=null", f"model.encoder={bert}", "model.decoder_vocab_size=300"]
        args += [
            "model.decoder_config={d_model: 32, num_decoder_layers: 1, num_heads: 2, d_ff: 64, d_kv: 16}"
        ]
        args += ["model.max_source_tokens=16", "model.max_target_tokens=32", "data.num_valid_documents=2"]
        args += ["eval.max_new_tokens=4", "loop.batch_size=4", "optim.warmup_steps=2", "optim.lr=1e-3"]
    return [*args, f"data.segmented_dir={seg}", f"output_dir={output_dir}", "loop.progress=false", *LOOP]


def launch(
    trainer: str,
    args: list[str],
    pause: str | None = None,
    marker: Path | None = None,
    log: Path | None = None,
):
    """Start the stage; its output to a pipe, or to ``log`` (a run nobody reads while it goes, whose
    output must not fill a pipe and stop it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop(PAUSE_ENV, None)
    if pause:
        env.update({PAUSE_ENV: pause, PAUSE_MARKER_ENV: str(marker)})
    with open(log, "w") if log else contextlib.nullcontext(subprocess.PIPE) as output:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, trainer, *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )


def finish(process: subprocess.Popen, log: Path | None = None) -> str:
    """Wait for a launched stage to end; its output (from ``log`` when it wrote there), after
    checking that it succeeded."""
    output, _ = process.communicate(timeout=TIMEOUT)
    if log is not None:
        output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def run_to_end(trainer: str, args: list[str]) -> str:
    return finish(launch(trainer, args))


def run_and_kill(trainer: str, args: list[str], pause: str, marker: Path) -> None:
    """Start the stage, wait until it pauses at ``pause``, and SIGKILL it there."""
    marker.unlink(missing_ok=True)
    process = launch(trainer, args, pause, marker)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.communicate()[0]
            pytest.fail(f"{trainer} never reached {pause} (exit {process.returncode}):\n{output[-3000:]}")
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=TIMEOUT)
    assert process.returncode == -signal.SIGKILL


def final_weights(trainer: str, output_dir: Path) -> dict[str, torch.Tensor]:
    if trainer == "train_diffusion":
        return safetensors.torch.load_file(output_dir / "denoiser" / "diffusion_pytorch_model.safetensors")
    return safetensors.torch.load_file(output_dir / "model.safetensors")


def checkpoint_state(output_dir: Path) -> dict:
    last = list_checkpoints(output_dir)[-1]
    loop_state = json.loads((last / "loop_state.json").read_text())
    loop_state["loop"].pop("elapsed_seconds")
    state = {
        "name": last.name,
        "loop_state": loop_state,
        "model": safetensors.torch.load_file(last / "model.safetensors"),
        "optimizer": read_optimizer_state(last),
    }
    if (last / "ema.safetensors").is_file():
        state["ema"] = safetensors.torch.load_file(last / "ema.safetensors")
    return state


def train_rows(output_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("trainer", ["train_autoencoder", "train_diffusion", "train_baseline"])
def test_killed_run_resumes_to_the_uninterrupted_result(trainer, inputs, tmp_path, request):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    reference_log = tmp_path / "reference.log"
    reference_run = launch(
        trainer, stage_args(trainer, inputs, reference), log=reference_log
    )  # beside the runs below
    request.addfinalizer(reference_run.kill)  # a no-op once it has finished; stops it if the test fails first

    args = stage_args(trainer, inputs, crashed)
    marker = tmp_path / "paused"
    run_and_kill(trainer, args, "step:3", marker)
    assert [p.name for p in list_checkpoints(crashed)] == ["step_2"]

    run_and_kill(trainer, args, "checkpoint:4", marker)
    assert [p.name for p in list_checkpoints(crashed)] == ["step_2"]  # the half-written one is not listed
    assert (crashed / "checkpoints" / ".tmp-step_4").is_dir()
    assert (crashed / "checkpoints" / ".tmp-step_4" / "model.safetensors").is_file()
    assert not (crashed / "checkpoints" / ".tmp-step_4" / "loop_state.json").exists()

    output = run_to_end(trainer, args)
    assert "resumed from" in output and "step_2" in output
    assert not (crashed / "checkpoints" / ".tmp-step_4").exists()
    assert [p.name for p in list_checkpoints(crashed)] == ["step_4", "step_6"]

    finish(reference_run, reference_log)
    assert_identical(final_weights(trainer, crashed), final_weights(trainer, reference), "weights")
    assert_identical(checkpoint_state(crashed), checkpoint_state(reference), "checkpoint")
    assert_identical(train_rows(crashed), train_rows(reference), "metrics")

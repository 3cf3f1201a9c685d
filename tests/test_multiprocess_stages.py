"""Each trainer on two CPU processes (torchrun, gloo) against one process on the same global batch.

One process with ``loop.batch_size=8`` and two with ``loop.batch_size=4`` read the same items per
step (one shuffled order, split between the processes) and draw the same noise per item
(``sld.distributed.MicroBatch``); token and segment means are taken over the global batch
(``global_mean``). With dropout off (the tiny BERT, the decoders, the denoiser) and the in-batch
contrastive loss off, they must log the same loss curve and end with the same weights up to float
rounding: every logged loss term and evaluation score within ``LOSS_RTOL`` (relative), the
gradient norm within ``GRAD_NORM_RTOL``, every final weight within ``WEIGHT_ATOL`` (absolute).
Measured on a 2-core CPU: loss terms agree to about 1e-6 relative, gradient norms to 1.2e-4;
weights to 3e-7 (diffusion) and 6e-5 (autoencoder: Adam's first steps magnify the rounding of
gradients that are near 0). The diffusion trainer also resumes across process counts: a
checkpoint written by two processes continued on one (and the reverse: a copy of the one-process
reference run continued on two) ends where an uninterrupted one-process run ends.

Each run is a subprocess (about 10-25 s of imports and training on 2 cores), hence slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tiny_models import write_stage_inputs

from sld.checkpointing import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TIMEOUT = 300
LOSS_RTOL = 1e-4
GRAD_NORM_RTOL = 1e-3
WEIGHT_ATOL = 1e-3
GLOBAL_BATCH = 8
LOOP = ["loop.max_steps=6", "loop.save_every=2", "loop.log_every=1", "loop.eval_every=3", "loop.seed=3"]
LOOP += ["loop.progress=false", "loop.tracker=none"]
NOT_COMPARED = ("per_second", "tflops", "mfu", "time/", "peak_memory")  # timings differ between runs
NO_DROPOUT_T5 = "{d_model: 32, num_decoder_layers: 1, num_heads: 2, d_ff: 64, d_kv: 16, dropout_rate: 0.0}"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_stage_inputs(tmp_path_factory.mktemp("multi"), bert_dropout=False)  # dropout is per process


def stage_args(trainer: str, inputs: dict, output_dir: Path, processes: int) -> list[str]:
    bert, seg = inputs["bert"], inputs["segmented"]
    if trainer == "train_autoencoder":
        args = ["-c", str(CONFIGS / "autoencoder_tiny.yaml"), f"model.encoder={bert}"]
        # the in-batch contrastive loss sees each process's negatives only: left out here
        args += ["data.num_valid_segments=3", "losses.variant=noise_robust", "model.dropout=0"]
        args += ["model.decoder_config.dropout_rate=0.0"]
    elif trainer == "train_diffusion":
        args = ["-c", str(CONFIGS / "diffusion_tiny.yaml"), f"autoencoder={inputs['autoencoder']}"]
        args += [f"context_encoder={bert}", "data.num_valid_documents=3", "sampling.num_inference_steps=2"]
    else:
        args = ["match_autoencoder=null", f"model.encoder={bert}", "model.decoder_vocab_size=300"]
        args += [f"model.decoder_config={NO_DROPOUT_T5}", "model.max_source_tokens=16"]
        args += ["model.max_target_tokens=32", "data.num_valid_documents=3", "eval.max_new_tokens=4"]
        args += ["optim.warmup_steps=2", "optim.lr=1e-3"]
    args += [f"data.segmented_dir={seg}", f"output_dir={output_dir}", *LOOP]
    return [*args, f"loop.batch_size={GLOBAL_BATCH // processes}"]


def start_stage(trainer: str, inputs: dict, output_dir: Path, processes: int) -> subprocess.Popen:
    """Launch one run of the stage on ``processes`` processes (one thread each), its output to
    ``output_dir``.log (not a pipe, which a run nobody reads while it goes could fill and stop on);
    ``finish`` waits for it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
    launcher = [sys.executable]
    if processes > 1:
        # --standalone: a free rendezvous port, so that runs of other tests may go at the same time
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, "-m", f"stages.{trainer}", *stage_args(trainer, inputs, output_dir, processes)]
    with open(run_log(output_dir), "w") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def run_log(output_dir: Path) -> Path:
    """Where ``start_stage`` writes the output of the run into ``output_dir``: beside that folder."""
    return output_dir.with_name(output_dir.name + ".log")


def finish(process: subprocess.Popen, output_dir: Path) -> str:
    """Wait for the run ``start_stage`` started into ``output_dir``; its output, after checking that
    it succeeded."""
    process.wait(timeout=TIMEOUT)
    output = run_log(output_dir).read_text()
    assert process.returncode == 0, output[-4000:]
    return output


def run_stage(trainer: str, inputs: dict, output_dir: Path, processes: int) -> str:
    return finish(start_stage(trainer, inputs, output_dir, processes), output_dir)


def metric_rows(output_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(part in k for part in NOT_COMPARED)} for row in rows]


def final_weights(trainer: str, output_dir: Path) -> dict[str, torch.Tensor]:
    if trainer == "train_diffusion":
        return safetensors.torch.load_file(output_dir / "denoiser" / "diffusion_pytorch_model.safetensors")
    return safetensors.torch.load_file(output_dir / "model.safetensors")


def compare(trainer: str, one: Path, other: Path) -> tuple[float, float]:
    """Assert the runs agree; return the largest relative loss gap and absolute weight gap."""
    rows_one, rows_other = metric_rows(one), metric_rows(other)
    assert [set(r) for r in rows_one] == [set(r) for r in rows_other]
    loss_gap = 0.0
    for a, b in zip(rows_one, rows_other):
        assert a["step"] == b["step"]
        for key, value in a.items():
            if isinstance(value, float) and (key.startswith("train/") or key.startswith("eval/")):
                gap = abs(value - b[key]) / max(1.0, abs(value))
                tolerance = GRAD_NORM_RTOL if key == "train/grad_norm" else LOSS_RTOL
                assert gap <= tolerance, f"step {a['step']} {key}: {value} vs {b[key]}"
                if key != "train/grad_norm":
                    loss_gap = max(loss_gap, gap)
    weights_one, weights_other = final_weights(trainer, one), final_weights(trainer, other)
    assert weights_one.keys() == weights_other.keys()
    weight_gap = max(
        (weights_one[k].float() - weights_other[k].float()).abs().max().item() for k in weights_one
    )
    assert weight_gap <= WEIGHT_ATOL, f"weights differ by {weight_gap}"
    return loss_gap, weight_gap


def trainers_selected(session: pytest.Session) -> set[str]:
    """The trainers whose one-process run this module's selected tests compare against."""
    here = Path(__file__).resolve()
    items = [item for item in session.items if Path(item.path).resolve() == here]
    return {
        item.callspec.params.get("trainer", "train_diffusion") for item in items if hasattr(item, "callspec")
    }


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory, request):
    """The one-process run of each trainer: those the selected tests need all start together at first
    use (one thread each, so they share the cores with the runs of the tests), each waited for when needed."""
    started: dict[str, tuple[Path, subprocess.Popen]] = {}

    def get(trainer: str) -> Path:
        wanted = {trainer} | (set() if started else trainers_selected(request.session))
        for name in sorted(wanted - started.keys()):
            folder = tmp_path_factory.mktemp("one") / name
            started[name] = folder, start_stage(name, inputs, folder, 1)
            request.addfinalizer(started[name][1].kill)  # a no-op once finished
        folder, process = started[trainer]
        finish(process, folder)  # at once when it has already ended
        return folder

    return get


@pytest.mark.parametrize("trainer", ["train_diffusion", "train_autoencoder", "train_baseline"])
def test_two_processes_match_one_on_the_same_global_batch(trainer, inputs, one_process, tmp_path, request):
    two = tmp_path / "two"
    two_processes = start_stage(trainer, inputs, two, 2)
    request.addfinalizer(two_processes.kill)  # a no-op once finished
    one = one_process(trainer)  # the one-process runs go beside it
    finish(two_processes, two)
    loss_gap, weight_gap = compare(trainer, one, two)
    print(f"{trainer}: largest loss gap {loss_gap:.2e} (relative), weight gap {weight_gap:.2e}")
    rows = metric_rows(two)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]  # written once
    assert any("eval/" in "".join(r) for r in rows)
    state = json.loads((list_checkpoints(two)[-1] / "loop_state.json").read_text())
    assert state["num_processes"] == 2
    loop = state["loop"]
    assert loop["samples_in_epoch"] == loop["batches_in_epoch"] * GLOBAL_BATCH  # global items, 4 per process
    if trainer == "train_diffusion":  # 40 documents, 8 per global step: step 6 is the first of epoch 1
        assert loop["epoch"] == 1 and loop["samples_in_epoch"] == GLOBAL_BATCH


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_diffusion_resumes_on_another_process_count(first, then, inputs, one_process, tmp_path):
    resumed = tmp_path / "resumed"
    if first == 1:  # the one-process reference is that run: continue a copy of it
        reference = one_process("train_diffusion")
        shutil.copytree(reference, resumed)
    else:
        run_stage("train_diffusion", inputs, resumed, first)
        reference = one_process("train_diffusion")
    # back to the checkpoint at step 4 (32 of the epoch's 40 items read), as after a crash
    shutil.rmtree(list_checkpoints(resumed)[-1])
    assert list_checkpoints(resumed)[-1].name == "step_4"
    log = run_stage("train_diffusion", inputs, resumed, then)
    assert f"written by {first} processes, resuming with {then}" in log
    compare("train_diffusion", reference, resumed)

"""``fit`` under torchrun with two CPU processes (gloo): the NaN guard, the time budget and the
checkpoints are collective, so a NaN on one process skips the step on both, nothing hangs, and a
resumed run continues with the same weights on every process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sld.checkpointing import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def rank_logs(log_dir: Path) -> str:
    """The tail of every process's stderr that torchrun wrote under ``log_dir`` (``--redirects``):
    a failing run then shows the error of the process that failed first, not only rank 0's."""
    parts = []
    for path in sorted(log_dir.glob("*/attempt_*/*/stderr.log")):
        parts.append(f"--- rank {path.parent.name} stderr (tail) ---\n{path.read_text()[-2500:]}")
    return "\n".join(parts)


def torchrun(output_dir: Path, max_steps: int) -> list[dict]:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    log_dir = output_dir.with_name(f"{output_dir.name}_logs_{max_steps}")  # beside the run, not in it
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--log-dir", str(log_dir), "--redirects", "3"]  # each process's output in its own file
    command += [str(ROOT / "tests" / "multiprocess_fit.py"), str(output_dir), str(max_steps)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:] + "\n" + rank_logs(log_dir)
    return [json.loads((output_dir / f"result_{rank}_{max_steps}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_two_processes_skip_together_and_resume(tmp_path):
    first = torchrun(tmp_path, 4)
    assert [r["rank"] for r in first] == [0, 1] and all(r["processes"] == 2 for r in first)
    assert all(r["step"] == 4 and r["skipped"] == 1 for r in first)  # the NaN was on process 1 only
    assert first[0]["weights"] == first[1]["weights"]
    second = torchrun(tmp_path, 8)
    assert all(r["step"] == 8 and r["skipped"] == 1 for r in second)
    assert second[0]["weights"] == second[1]["weights"] != first[0]["weights"]
    last = list_checkpoints(tmp_path)[-1]
    assert {p.name for p in last.glob("rng_state_*")} == {
        "rng_state_0.safetensors",
        "rng_state_1.safetensors",
    }
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 4, 6, 8, 8]  # written once (main process), no rows repeated after the resume

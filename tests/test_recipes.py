"""The GPU recipes' shell: every recipe parses, and fit_or_halve (recipes/common.sh) retries a run
that ran out of GPU memory at half the micro-batch with twice the accumulation, and nothing else;
lent_gpu.sh runs a recipe once per group of VAR=value arguments."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# A stand-in for a training command: prints its arguments, dies of "GPU memory" above batch 8,
# and fails otherwise when told to.
FAKE = """
fake() {
    local b=0
    for a in "$@"; do case $a in loop.batch_size=*) b=${a#*=};; esac; done
    echo "args: $*"
    [ "$1" = broken ] && { echo "ValueError: bad config"; return 1; }
    if [ "$b" -gt 8 ]; then echo "torch.OutOfMemoryError: CUDA out of memory."; return 1; fi
}
"""


def run_fit_or_halve(tmp_path: Path, batch: int, accum: int, *command: str) -> tuple[int, str, Path]:
    log = tmp_path / "run.log"
    script = f"""
    RUNS={tmp_path}/runs OUT={tmp_path}/out
    . {RECIPES}/common.sh
    set +e
    {FAKE}
    fit_or_halve {log} {batch} {accum} fake {" ".join(command)}
    echo "rc=$?"
    """
    out = subprocess.run([BASH, "-c", script], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].removeprefix("rc=")), out.stdout, log


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.sh")), ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    subprocess.run([BASH, "-n", str(recipe)], check=True)


def test_a_run_that_fits_runs_once_with_the_given_batch(tmp_path):
    rc, stdout, log = run_fit_or_halve(tmp_path, 8, 1, "x=1")
    assert rc == 0 and "out of GPU memory" not in stdout
    assert log.read_text().strip() == "args: x=1 loop.batch_size=8 loop.grad_accum_steps=1"
    assert not (tmp_path / "run.log.oom").exists()


def test_out_of_memory_is_retried_at_half_the_batch_and_twice_the_accumulation(tmp_path):
    rc, stdout, log = run_fit_or_halve(tmp_path, 16, 2, "x=1")
    assert rc == 0
    assert "out of GPU memory at micro-batch 16; again at 8 x 4" in stdout
    lines = log.read_text().splitlines()
    assert lines[0].startswith("RETRY: out of GPU memory at micro-batch 16")
    assert lines[1] == "args: x=1 loop.batch_size=8 loop.grad_accum_steps=4"
    assert "OutOfMemoryError" in (tmp_path / "run.log.oom").read_text()


def test_only_one_retry_and_other_failures_are_not_retried(tmp_path):
    rc, _, log = run_fit_or_halve(tmp_path, 64, 1, "x=1")  # 32 still does not fit
    assert rc == 1 and "loop.batch_size=32 loop.grad_accum_steps=2" in log.read_text()
    rc, stdout, log = run_fit_or_halve(tmp_path, 4, 1, "broken")
    assert rc == 1 and "again at" not in stdout and "ValueError" in log.read_text()


@pytest.mark.parametrize(
    "args, expected",
    [
        ((), ["ran: -"]),  # no VAR=value at all (2026-12-04: the job ran `env ''` and nothing else)
        (("A=1",), ["ran: 1"]),
        (("A=1", "then", "A=two words"), ["ran: 1", "ran: two words"]),
        (("A=1", "then", "recipes/other.sh", "A=2", "then", "A=3"), ["ran: 1", "other: 2", "ran: 3"]),
    ],
    ids=["no-vars", "one-var", "two-runs", "other-recipe-in-a-group"],
)
def test_lent_gpu_start_runs_the_recipe_once_per_group(tmp_path, args, expected):
    """`lent_gpu.sh start RECIPE [VAR=value ...] [then ...]` runs RECIPE once per group, with its vars."""
    tree = tmp_path / "tree"
    (tree / "recipes").mkdir(parents=True)
    for name in ("lent_gpu.sh", "carry_parts.sh"):
        shutil.copy(RECIPES / name, tree / "recipes" / name)
    (tree / "recipes" / "fake.sh").write_text('echo "ran: ${A:--}"\n')
    (tree / "recipes" / "other.sh").write_text('echo "other: ${A:--}"\n')
    root = tmp_path / "root"
    env = {"PATH": "/usr/bin:/bin", "LENT_ROOT": str(root), "LENT_FORCE": "1", "HOME": str(tmp_path)}
    lent = [BASH, "recipes/lent_gpu.sh"]
    subprocess.run(
        [*lent, "start", "recipes/fake.sh", *args], cwd=tree, env=env, check=True, capture_output=True
    )
    time.sleep(1)  # the job runs detached; `wait` checks every 10 s after its first look
    out = subprocess.run([*lent, "wait", "30"], cwd=tree, env=env, check=True, capture_output=True, text=True)
    assert "FINISHED" in out.stdout
    log = (root / "results" / "recipe.log").read_text().splitlines()
    assert [line for line in log if line.startswith(("ran:", "other:"))] == expected
    assert log[-1] == "[lent_gpu] job done"


def test_lent_gpu_setup_replaces_a_timing_only_lm_once_the_real_parts_are_there(tmp_path):
    """A call that brings the GGUF's last part joins it even where an earlier call built SmolLM2's shapes
    with random weights (their folder stayed, and would otherwise have stood in for the real LM)."""
    tree = tmp_path / "tree"
    (tree / "recipes").mkdir(parents=True)
    for name in ("lent_gpu.sh", "carry_parts.sh"):
        shutil.copy(RECIPES / name, tree / "recipes" / name)
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(bytes(range(256)) * 6000)  # 1.5 MB: two parts of 1 MB
    env = {
        "PATH": "/usr/bin:/bin",
        "LENT_ROOT": str(tmp_path / "root"),
        "HOME": str(tmp_path),
        "PART_MB": "1",
    }
    subprocess.run([BASH, "recipes/carry_parts.sh", "split", str(gguf)], cwd=tree, env=env, check=True)
    timing_only = tmp_path / "root" / "models" / "smollm2"
    timing_only.mkdir(parents=True)
    (timing_only / "TIMING_ONLY_RANDOM_WEIGHTS").write_text("random\n")
    out = subprocess.run(
        [BASH, "recipes/lent_gpu.sh", "setup"], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    assert "replacing the timing-only LM" in out.stdout
    assert (tmp_path / "root" / "models" / gguf.name).read_bytes() == gguf.read_bytes()
    assert not (timing_only / "TIMING_ONLY_RANDOM_WEIGHTS").exists()

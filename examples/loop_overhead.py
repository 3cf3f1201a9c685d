"""Measure what the training loop itself costs per step on a tiny model (CPU by default).

    OMP_NUM_THREADS=1 python examples/loop_overhead.py [--steps 300] [--old path/to/old_training.py]

Prints, per variant, the median seconds per optimizer step over a few repeats, and the number of
device-to-host reads (``Tensor.item``, ``tolist``, ``bool``, ``float``, ``int``) the loop makes: each
is a host sync on a GPU, where it stalls the queue of launched kernels (only reads made by sld's
own code are counted, not those inside torch, e.g. the unfused CPU AdamW's). Variants: the loop with
plain AdamW (the NaN guard reads one flag per step); the loop with the NaN guard replaced
by a no-op (the guard's cost); the loop with fused AdamW (the default on CUDA and CPU: no read per step); one step under
``FlopCounterMode`` (the FLOP count's one-off cost); and, with ``--old``, an older ``sld/training.py``
loaded from a file (e.g. ``git show <commit>:sld/training.py > old_training.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Dataset

import sld.training as training
from sld.throughput import count_flops


class Vectors(Dataset):
    def __init__(self, n: int = 4096, dim: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def collate(rows):
    return torch.stack(rows)


class Net(torch.nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 128), torch.nn.GELU(), torch.nn.Linear(128, dim))

    def forward(self, x):
        return self.net(x)


def loss_fn(model, x):
    out = model(x)
    mse = (out - x).pow(2).mean()
    l1 = (out - x).abs().mean()
    norm = out.norm(dim=-1).mean()
    return {
        "loss": mse + 0.1 * l1,
        "mse": mse,
        "l1": l1,
        "norm": norm,
        "cos": torch.cosine_similarity(out, x).mean(),
    }


@contextmanager
def counting_host_reads():
    counts = {"n": 0}
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def wrap(original):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("sld.") or caller == "old_training":  # the loop's reads, not torch's own
                counts["n"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


class NoGuard:
    """The NaN guard replaced by nothing (for measuring the guard's cost only)."""

    def __init__(self, *args, skipped: int = 0, **kwargs) -> None:
        self.total_skipped = skipped
        self.check_gradients = False

    def observe(self, names, values):
        pass

    def before_step(self, grad_norm, optimizer):
        return True

    def check(self):
        return 0


def run(module, steps: int, folder: Path, fused: bool = False) -> tuple[float, int]:
    loop = module.LoopConfig(
        max_steps=steps,
        batch_size=32,
        log_every=50,
        eval_every=10**6,
        save_every=10**6,
        progress=False,
        max_minutes=60,
    )
    torch.manual_seed(0)
    model = Net()
    with counting_host_reads() as reads:
        started = time.perf_counter()
        # plain AdamW unless asked (an older training.py may not know the switch)
        has_switch = "fused" in module.OptimConfig.__dataclass_fields__
        optim = module.OptimConfig(warmup_steps=0, **({"fused": fused} if has_switch else {}))
        module.fit(model, Vectors(), collate, loss_fn, folder, optim, loop)
        seconds = time.perf_counter() - started
    return seconds / steps, reads["n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old", help="an older sld/training.py to compare with")
    args = parser.parse_args()
    variants = {"loop": training}
    if args.old:
        spec = importlib.util.spec_from_file_location("old_training", args.old)
        old = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = old  # dataclasses look their module up there
        spec.loader.exec_module(old)
        variants["old loop"] = old
    extra = ["loop without NaN guard", "loop, fused AdamW"]
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in [*variants, *extra]}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so that machine load hits all variants alike
            for name, module in variants.items():
                results[name].append(run(module, args.steps, Path(tmp) / f"{name}-{repeat}"))
            real_guard = training.NonFiniteGuard
            training.NonFiniteGuard = NoGuard
            try:
                results["loop without NaN guard"].append(
                    run(training, args.steps, Path(tmp) / f"noguard-{repeat}")
                )
            finally:
                training.NonFiniteGuard = real_guard
            # the default: the guard skips bad steps inside the fused kernel, no host read per step
            results["loop, fused AdamW"].append(
                run(training, args.steps, Path(tmp) / f"fused-{repeat}", fused=True)
            )
    for name, rows in results.items():
        per_step = statistics.median(r[0] for r in rows)
        print(
            f"{name:<24} {per_step * 1e3:8.3f} ms/step   host reads per run of {args.steps} steps: {rows[0][1]}"
        )
    model, x = Net(), Vectors()[0:32]
    plain = []
    counted = []
    for _ in range(20):
        started = time.perf_counter()
        loss_fn(model, x)["loss"].backward()
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        count_flops(lambda: loss_fn(model, x)["loss"].backward())
        counted.append(time.perf_counter() - started)
    print(
        f"one step under FlopCounterMode: {statistics.median(counted) * 1e3:.3f} ms "
        f"(without: {statistics.median(plain) * 1e3:.3f} ms); done once per run"
    )


if __name__ == "__main__":
    main()

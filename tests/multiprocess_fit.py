"""Run by tests/test_multiprocess.py under torchrun: one tiny fit, a NaN on process 1 only at step 3."""

import json
import os
import sys
from pathlib import Path

import torch
from test_training import IndexDataset, collate

from sld.training import LoopConfig, OptimConfig, fit

output_dir, max_steps = sys.argv[1], int(sys.argv[2])
rank = int(os.environ["RANK"])
calls = {"n": 0}


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)


def loss_fn(model, batch):
    x = batch.float().unsqueeze(-1) / 10
    mse = ((model(x) - x) ** 2).mean()
    calls["n"] += 1
    fault = rank == 1 and calls["n"] == 3 and max_steps == 4  # first run only
    extra = mse * float("nan") if fault else mse.detach() * 0
    return {"loss": mse + extra, "mse": mse, "extra": extra}


torch.manual_seed(0)
result = fit(
    Net(),
    IndexDataset(40),
    collate,
    loss_fn,
    output_dir,
    OptimConfig(lr=0.1, warmup_steps=0, schedule="constant"),
    LoopConfig(
        max_steps=max_steps,
        batch_size=2,
        log_every=2,
        save_every=3,
        eval_every=100,
        progress=False,
        skip_nonfinite_steps=True,
        max_minutes=10,
    ),
    evaluate_fn=lambda model, step: {"weight": float(model.linear.weight)},
)
# one file per process (printing would interleave the processes' lines)
result_file = Path(output_dir) / f"result_{result.accelerator.process_index}_{max_steps}.json"
result_file.write_text(
    json.dumps(
        {
            "rank": result.accelerator.process_index,
            "processes": result.accelerator.num_processes,
            "step": result.state.step,
            "skipped": result.state.skipped_steps,
            "weights": [p.tolist() for p in result.model.parameters()],
        }
    )
)

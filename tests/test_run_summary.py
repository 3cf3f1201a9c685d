"""sld.run_summary: summary.json of a training run and its evaluation lines."""

import json
from types import SimpleNamespace

from sld.run_summary import (
    evaluation_rows,
    format_evaluation,
    throughput_summary,
    training_summary,
    write_summary,
)

HISTORY = [
    {"step": 2, "train/loss": 1.0},
    {"step": 2, "eval/diffusion_mse": 0.51234},
    {"step": 4, "eval/diffusion_mse": 0.4, "eval/rougeL": 12.345, "eval/count_accuracy": 0.5},
]


def test_evaluation_rows_are_copies_of_the_eval_rows():
    rows = evaluation_rows(HISTORY)
    assert [r["step"] for r in rows] == [2, 4]
    rows[0]["eval/x"] = 1.0
    assert "eval/x" not in HISTORY[1]


def test_summary_and_lines(tmp_path):
    state = SimpleNamespace(step=4, elapsed_seconds=12.345)
    result = SimpleNamespace(state=state, stopped_by="max_minutes", history=HISTORY)
    summary = training_summary(result, validation=evaluation_rows(HISTORY))
    assert list(summary) == ["steps", "stopped_by", "train_seconds", "validation"]
    assert summary["steps"] == 4 and summary["train_seconds"] == 12.3
    assert json.loads(write_summary(tmp_path, summary).read_text()) == summary
    fields = [
        ("diffusion_mse", "diffusion_mse", ".4f"),
        ("rougeL", "rougeL", ".2f"),
        ("count_accuracy", "count_acc", ".2f"),
    ]
    lines = [format_evaluation(row, fields) for row in summary["validation"]]
    assert lines == [
        "step 2: valid diffusion_mse=0.5123",
        "step 4: valid diffusion_mse=0.4000 rougeL=12.35 count_acc=0.50",
    ]


def test_throughput_is_the_mean_of_the_last_rows_and_the_largest_peak():
    history = [
        {"step": 10 * i, "train/items_per_second": float(i), "train/peak_memory_gib": 3.0 - i / 10}
        for i in range(1, 8)
    ]
    history.insert(3, {"step": 35, "eval/bleu": 1.0})  # rows without rates are skipped
    summary = throughput_summary(history)
    assert summary == {"train/items_per_second": (3 + 4 + 5 + 6 + 7) / 5, "train/peak_memory_gib": 2.9}
    assert throughput_summary([{"step": 1, "train/loss": 2.0}]) == {}  # nothing logged: nothing claimed
    result = SimpleNamespace(
        state=SimpleNamespace(step=70, elapsed_seconds=1.0), stopped_by="max_steps", history=history
    )
    assert training_summary(result)["train/items_per_second"] == 5.0


def test_throughput_leaves_out_the_first_row_of_a_short_run():
    """The first logged interval holds the warm-up (a compiled run's compilation): left out when
    there is another row, used when it is all there is."""
    two = [{"step": 20, "train/items_per_second": 829.0}, {"step": 40, "train/items_per_second": 6088.0}]
    assert throughput_summary(two) == {"train/items_per_second": 6088.0}
    assert throughput_summary(two[:1]) == {"train/items_per_second": 829.0}

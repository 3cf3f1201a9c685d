"""metrics.jsonl rows and their repair on resume; metrics to a tracker through Accelerate."""

import json

import pytest
from test_training import IndexDataset, Tiny, collate, loop_config, make_loss

from sld.run_log import tracker_names, truncate_metrics
from sld.training import OptimConfig, fit


def test_metrics_go_to_a_tracker_through_accelerate(tmp_path):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class RecordingTracker(GeneralTracker):
        name = "recording"
        requires_logging_directory = False

        def __init__(self):
            super().__init__()
            self.rows, self.config, self.finished = [], None, False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, values))

        def finish(self):
            self.finished = True

    tracker = RecordingTracker()
    fit(
        Tiny(),
        IndexDataset(8),
        collate,
        make_loss([]),
        tmp_path,
        OptimConfig(warmup_steps=0),
        loop_config(max_steps=2),
        evaluate_fn=lambda model, step: {"score": 1.0},
        accelerator=Accelerator(log_with=[tracker]),
    )
    assert [step for step, _ in tracker.rows] == [1, 2, 2]
    assert "train/loss" in tracker.rows[0][1]
    eval_row = tracker.rows[-1][1]
    assert eval_row.pop("time/seconds") >= 0 and eval_row == {"eval/score": 1.0}
    assert tracker.config["optim.lr"] == 1e-4 and tracker.config["loop.max_steps"] == 2
    assert tracker.finished


def test_tracker_choice(monkeypatch):
    import sld.run_log as run_log
    from sld.config import ConfigError

    monkeypatch.setattr(run_log, "is_tensorboard_available", lambda: False)
    assert tracker_names("none") is None and tracker_names("auto") is None
    with pytest.raises(ConfigError, match="loop.tracker=tensorboard.*not installed"):
        tracker_names("tensorboard")
    monkeypatch.setattr(run_log, "is_tensorboard_available", lambda: True)
    assert tracker_names("auto") == ["tensorboard"] == tracker_names("tensorboard")
    assert tracker_names("none") is None


def test_truncate_metrics_drops_rows_after_the_step_and_cut_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 2, "eval/x": 1}\n{"step": 3, "a": 3}\n{"step": 4, "a"'
    )
    assert truncate_metrics(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 2]
    assert truncate_metrics(path, 2) == 0
    assert truncate_metrics(tmp_path / "missing.jsonl", 2) == 0

"""sld.diffusion.trainer: what a finished stage-3 run reports (the training itself: test_end_to_end)."""

from __future__ import annotations

from sld.diffusion.trainer import DiffusionTrainingConfig, TrainedPipeline


def test_summary_lines_show_the_folder_and_every_validation(tmp_path):
    rows = [
        {"step": 2, "eval/diffusion_mse": 0.51234},
        {
            "step": 4,
            "eval/diffusion_mse": 0.4,
            "eval/rougeL": 12.3,
            "eval/distinct2": 0.5,
            "eval/count_accuracy": 1.0,
        },
    ]
    trained = TrainedPipeline(tmp_path, {"steps": 4, "validation": rows})
    assert trained.summary_lines() == [
        f"pipeline saved to {tmp_path}",
        "  step 2: valid diffusion_mse=0.5123",
        "  step 4: valid diffusion_mse=0.4000 rougeL=12.30 distinct2=0.500 count_acc=1.00",
    ]
    assert TrainedPipeline(tmp_path, None).summary_lines() == []  # not the main process


def test_samples_at_follows_sample_every():
    assert DiffusionTrainingConfig().samples_at(7)
    assert not DiffusionTrainingConfig(sample_every=0).samples_at(100)
    cfg = DiffusionTrainingConfig(sample_every=50)
    assert cfg.samples_at(100) and not cfg.samples_at(75)

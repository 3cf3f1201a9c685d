"""Every shipped config loads into its stage's settings: a key renamed in the code, or a combination a
trainer refuses (an encoder-state cache over a trainable encoder), fails here, not minutes into a run."""

from pathlib import Path

import pytest

from sld.autoencoder_trainer import AutoencoderTrainingConfig
from sld.baseline_trainer import BaselineTrainingConfig
from sld.config import load_config
from sld.diffusion.trainer import DiffusionTrainingConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = {
    "autoencoder_": AutoencoderTrainingConfig,
    "ablation_": AutoencoderTrainingConfig,
    "diffusion_": DiffusionTrainingConfig,
    "baseline_": BaselineTrainingConfig,
}


def shipped(prefix: str) -> list[Path]:
    return sorted(CONFIGS.glob(f"{prefix}*.yaml"))


@pytest.mark.parametrize(
    "path, cls",
    [(path, cls) for prefix, cls in STAGES.items() for path in shipped(prefix)],
    ids=lambda value: value.name if isinstance(value, Path) else "",
)
def test_a_shipped_config_loads(path, cls):
    assert isinstance(load_config(cls, path), cls)


def test_every_stage_has_shipped_configs():
    assert all(shipped(prefix) for prefix in STAGES)

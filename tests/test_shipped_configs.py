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


@pytest.mark.parametrize("name", ["autoencoder_roc_smollm2.yaml", "autoencoder_dialogsum_smollm2.yaml"])
def test_the_smollm2_autoencoders_compile_with_cuda_graphs_unless_told_not_to(name):
    """Their step waits on the host eagerly (docs/results.md, thirty-second session): compiled, the
    blocks replayed as CUDA graphs on one decoder shape; ``loop.compile=false`` alone gives the eager,
    unpadded run."""
    compiled = load_config(AutoencoderTrainingConfig, CONFIGS / name)
    assert compiled.loop.compile and compiled.loop.compile_cuda_graphs
    assert compiled.data.fixed_decoder_length is True
    eager = load_config(AutoencoderTrainingConfig, CONFIGS / name, ["loop.compile=false"])
    assert eager.data.fixed_decoder_length is False
    # the from-scratch ROC profile stays eager (its cold-cache compile costs most of a short run)
    assert not load_config(AutoencoderTrainingConfig, CONFIGS / "autoencoder_roc.yaml").loop.compile

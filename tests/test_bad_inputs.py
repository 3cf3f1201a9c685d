"""Bad inputs across stages: model folders of another stage or version, a pipeline folder without its
autoencoder, ``sld generate`` with nothing to generate. Each error is one clear line naming the
folder, file or key (the CLI prints it and exits with status 2)."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
from conftest import write_jsonl_lines
from tiny_models import CORPUS, WIDTH, save_tiny_bert, tiny_autoencoder, tiny_dit

from sld import cli
from sld.config import ConfigError
from sld.errors import UserError
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.baseline import BaselineConfig, BaselineModel
from sld.models.context_encoder import ContextEncoder
from sld.pipeline import PipelineConfig, SLDPipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    bert = save_tiny_bert(root / "bert")
    autoencoder = tiny_autoencoder(bert, seed=0)
    autoencoder.save_pretrained(root / "autoencoder")
    baseline = BaselineModel.from_config(
        BaselineConfig(
            encoder=bert,
            decoder_config=dict(d_model=32, num_decoder_layers=1, num_heads=2, d_ff=64, d_kv=16),
            decoder_vocab_size=300,
            max_source_tokens=16,
            max_target_tokens=16,
        ),
        corpus_texts=CORPUS,
    )
    baseline.save_pretrained(root / "baseline")
    denoiser = tiny_dit(latent_dim=WIDTH, context_dim=24)
    SLDPipeline(
        denoiser, autoencoder, ContextEncoder.from_pretrained(bert), PipelineConfig()
    ).save_pretrained(root / "pipeline")
    return root


def cli_error(argv, capsys) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err  # one line, no traceback
    return err


def test_model_folder_of_another_stage(folders, tmp_path, capsys):
    with pytest.raises(
        UserError, match=r"baseline: not a SegmentAutoencoder folder \(no autoencoder_config.json\)"
    ):
        SegmentAutoencoder.from_pretrained(folders / "baseline")
    with pytest.raises(
        UserError, match=r"autoencoder: not an AR baseline folder \(no baseline_config.json\)"
    ):
        BaselineModel.from_pretrained(folders / "autoencoder")
    with pytest.raises(UserError, match=r"autoencoder is not an SLD pipeline folder: pipeline_config.json"):
        SLDPipeline.from_pretrained(folders / "autoencoder")
    err = cli_error(["generate", f"model={folders / 'autoencoder'}", "texts=[a]"], capsys)
    assert (
        "is a segment autoencoder folder (autoencoder_config.json); this needs an SLD pipeline folder" in err
    )
    err = cli_error(
        ["train-diffusion", f"autoencoder={folders / 'baseline'}", f"output_dir={tmp_path / 'dm'}"], capsys
    )
    assert (
        "baseline' is an AR baseline folder (baseline_config.json); this needs a segment autoencoder" in err
    )


def test_model_folder_of_another_version(folders, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(folders / "autoencoder", newer)
    config = json.loads((newer / "autoencoder_config.json").read_text())
    (newer / "autoencoder_config.json").write_text(json.dumps({**config, "latent_norm": "rms"}))
    with pytest.raises(ConfigError, match=r"newer/autoencoder_config.json: unknown key\(s\) latent_norm"):
        SegmentAutoencoder.from_pretrained(newer)
    pipeline = tmp_path / "pipeline"
    shutil.copytree(folders / "pipeline", pipeline)
    config = json.loads((pipeline / "pipeline_config.json").read_text())
    (pipeline / "pipeline_config.json").write_text(json.dumps({**config, "sampler": "heun"}))
    with pytest.raises(UserError, match=r"pipeline_config.json: .*'sampler'"):
        SLDPipeline.from_pretrained(pipeline)


def test_weights_of_an_older_architecture_are_a_clear_error(folders, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(folders / "autoencoder", older)
    weights = safetensors.torch.load_file(older / "model.safetensors")
    weights.pop(next(k for k in weights if k.startswith("reconstructor.")))
    safetensors.torch.save_file(weights, older / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"older.*model.safetensors"):
        SegmentAutoencoder.from_pretrained(older)


def test_pipeline_folder_without_its_autoencoder(folders, tmp_path, capsys):
    broken = tmp_path / "pipeline"
    shutil.copytree(folders / "pipeline", broken)
    shutil.rmtree(broken / "autoencoder")
    with pytest.raises(UserError, match=r"pipeline folder .*pipeline has no autoencoder/"):
        SLDPipeline.from_pretrained(broken, device="cpu")
    err = cli_error(["generate", f"model={broken}", "texts=[a]"], capsys)
    assert "has no autoencoder/" in err


def test_generate_with_nothing_to_generate(folders, tmp_path, capsys):
    err = cli_error(["generate", f"model={folders / 'pipeline'}", "texts=[]"], capsys)
    assert "nothing to generate" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = cli_error(["generate", f"model={folders / 'pipeline'}", f"input={empty}"], capsys)
    assert "empty.jsonl: no input records" in err
    sources = write_jsonl_lines(tmp_path / "in.jsonl", [{"title": "x"}])
    err = cli_error(["generate", f"model={folders / 'pipeline'}", f"input={sources}"], capsys)
    assert "in.jsonl, line 1: no 'source' field" in err


def test_pipeline_whose_denoiser_weights_miss_a_tensor(folders, tmp_path):
    """diffusers would fill the missing tensor with random values and only warn."""
    broken = tmp_path / "pipeline"
    shutil.copytree(folders / "pipeline", broken)
    weights_file = broken / "denoiser" / "diffusion_pytorch_model.safetensors"
    weights = safetensors.torch.load_file(weights_file)
    missing = next(iter(weights))
    weights.pop(missing)
    safetensors.torch.save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(UserError, match=rf"denoiser: the weights do not fit this SegmentDiT .*{missing}"):
        SLDPipeline.from_pretrained(broken, device="cpu")
    assert SLDPipeline.from_pretrained(folders / "pipeline", device="cpu").denoiser is not None

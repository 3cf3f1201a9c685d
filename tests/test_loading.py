"""sld.loading: every saved folder opens through load_model, told apart by its config file."""

from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_bert, tiny_autoencoder, tiny_baseline, tiny_pipeline

from sld.errors import UserError
from sld.loading import default_device, folder_kind, load_model, resolve_dtype
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.baseline import BaselineModel
from sld.pipeline import SLDPipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loading")
    bert = save_tiny_bert(root / "bert")
    autoencoder = tiny_autoencoder(bert, seed=0)
    return {
        "autoencoder": autoencoder.save_pretrained(root / "autoencoder"),
        "pipeline": tiny_pipeline(bert, autoencoder).save_pretrained(root / "pipeline"),
        "baseline": tiny_baseline(bert).save_pretrained(root / "baseline"),
    }


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("autoencoder", SegmentAutoencoder), ("pipeline", SLDPipeline), ("baseline", BaselineModel)],
)
def test_each_kind_opens_as_its_class_with_the_saved_weights(folders, kind, cls):
    assert folder_kind(folders[kind]) == kind
    model = load_model(folders[kind], device="cpu")
    assert isinstance(model, cls)
    direct = cls.from_pretrained(folders[kind], device="cpu")
    if kind == "pipeline":
        model, direct = model.denoiser, direct.denoiser
    assert not model.training
    for (name, a), (_, b) in zip(model.state_dict().items(), direct.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_dtype_names_cast_and_float32_is_no_cast(folders):
    assert resolve_dtype(None) is None and resolve_dtype("float32") is None
    assert resolve_dtype(torch.float32) is None and resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(UserError, match="not a torch dtype"):
        resolve_dtype("float33")
    model = load_model(folders["autoencoder"], device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert default_device("cpu") == "cpu" and default_device() in ("cpu", "cuda")


def test_a_kind_the_caller_cannot_use_is_named(folders):
    with pytest.raises(
        UserError, match=r"model='.*autoencoder' is a segment autoencoder folder.*needs an SLD"
    ):
        load_model(folders["autoencoder"], kinds=("pipeline", "baseline"), what="model")


def test_a_folder_without_a_model_config_lists_what_it_found(folders, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match=r"not a saved model folder.*found checkpoints/, notes.txt"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(UserError, match="is a file"):
        load_model(tmp_path / "notes.txt")
    both = tmp_path / "both"
    both.mkdir()
    for name in ("pipeline_config.json", "baseline_config.json"):
        (both / name).write_text("{}")
    with pytest.raises(UserError, match="several model configs"):
        folder_kind(both)

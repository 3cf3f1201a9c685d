"""sld.viz and `sld visualize`: PCA, smoothness ratios, latent maps, denoising trajectories, curves.

Tiny models only: a random BERT saved to a temp folder (autoencoder encoder and context encoder), a
from-config T5 decoder, a tiny SegmentDiT with random values in its zero-initialised tensors.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_models import PAIRS, save_tiny_bert, tiny_autoencoder, tiny_pipeline

from sld.errors import UserError
from sld.models.autoencoder import SegmentAutoencoder
from sld.pipeline import SLDPipeline
from sld.viz import (
    CurvesResult,
    PairLatents,
    collect_series,
    curves_figure,
    denoising_trajectory,
    fit_pca,
    latent_map,
    load_pair_texts,
    plot_curves,
    plot_trajectory,
    read_metrics,
    run_labels,
    smoothness,
)
from sld.viz.figures import finite_numbers, save_numbers
from sld.viz.render import FigureConfig, render_figure
from stages import visualize


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Two saved autoencoders (one with a train-autoencoder style config.yaml) and a tiny pipeline."""
    root = tmp_path_factory.mktemp("viz_models")
    bert = save_tiny_bert(root / "bert")
    first = tiny_autoencoder(bert, seed=0)
    first.save_pretrained(root / "ae_vanilla")
    (root / "ae_vanilla" / "config.yaml").write_text(yaml.safe_dump({"losses": {"variant": "vanilla"}}))
    tiny_autoencoder(bert, seed=1).save_pretrained(root / "ae_other")

    tiny_pipeline(bert, first).save_pretrained(root / "pipeline")

    pairs = root / "pairs.jsonl"
    rows = [{"sentence": s, "paraphrase": p, "negative": n} for s, p, n in PAIRS]
    rows.insert(2, {"sentence": "No negative here.", "paraphrase": "There is no negative."})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    segmented = root / "valid.jsonl"
    doc = {
        "id": "d0",
        "source": "The Dog",
        "segments": ["Anna walked her dog.", "It rained."],
        "num_segments": 2,
    }
    segmented.write_text(json.dumps(doc) + "\n")
    return {
        "vanilla": str(root / "ae_vanilla"),
        "other": str(root / "ae_other"),
        "pipeline": str(root / "pipeline"),
        "pairs": str(pairs),
        "segmented": str(segmented),
    }


def scatter_points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections)


# ------------------------------------------------------------------------------ PCA and ratios


def test_pca_matches_the_covariance_eigenvectors_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen) * torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2, 0.1]) + 3.0
    pca = fit_pca(x, 2)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x.numpy().T))
    top = eigenvectors[:, ::-1][:, :2].T
    assert np.allclose(np.abs(pca.components.numpy() @ top.T), np.eye(2), atol=1e-6)
    assert np.allclose(pca.explained_variance.numpy(), eigenvalues[::-1][:2], rtol=1e-6)
    assert np.isclose(
        float(pca.explained_variance_ratio.sum()), eigenvalues[::-1][:2].sum() / eigenvalues.sum()
    )
    coords = pca.transform(x)
    assert coords.shape == (200, 2) and np.allclose(coords.mean(axis=0), 0.0, atol=1e-9)
    assert torch.allclose(fit_pca(x.flip(0), 2).components, pca.components, atol=1e-9)  # signs fixed
    assert "% of variance" in pca.axis_label(0)
    # Fewer features than components: padded with zero components.
    assert fit_pca(torch.randn(5, 1), 2).components.shape == (2, 1)
    with pytest.raises(UserError):
        fit_pca(torch.randn(1, 4))


def test_smoothness_ratio_pooled_and_flattened():
    gen = torch.Generator().manual_seed(0)
    sentence = torch.randn(10, 3, 8, generator=gen)
    latents = PairLatents(
        sentence=sentence,
        paraphrase=sentence + 0.1 * torch.randn(10, 3, 8, generator=gen),
        negative=torch.randn(10, 3, 8, generator=gen) + 2.0,
    )
    s = smoothness(latents)
    assert 0 < s.ratio < 0.2 and 0 < s.flattened.ratio < 0.2
    assert s.ratio == s.pooled.ratio
    expected = float((sentence - latents.paraphrase).mean(1).norm(dim=-1).mean())
    assert s.pooled.paraphrase_distance == pytest.approx(expected)
    assert s.to_dict()["reported"] == "pooled"


# ------------------------------------------------------------------------------ latent map


def test_latent_map_panels_points_and_labels(models):
    pairs = load_pair_texts(models["pairs"], limit=4)
    assert len(pairs) == 4 and "No negative here." not in pairs.sentences  # row without negative skipped
    model = SegmentAutoencoder.from_pretrained(models["other"])
    result = latent_map([models["vanilla"], models["other"], model], pairs)
    assert len(result.figure.axes) == 3
    for ax, panel in zip(result.figure.axes, result.panels):
        assert scatter_points(ax) == 12 == panel.num_points
        assert len(ax.collections) == 3  # sentence, paraphrase, negative
        assert "variance" in ax.get_xlabel() and "variance" in ax.get_ylabel()
    assert [p.name for p in result.panels] == ["vanilla", "ae_other", "autoencoder 3"]
    # The same model gives the same numbers whether passed as a folder or as an object.
    assert result.panels[1].smoothness.ratio == pytest.approx(result.panels[2].smoothness.ratio)
    assert result.to_dict()["num_pairs"] == 4


def test_visualize_latent_map_stage(models, tmp_path, capsys):
    out = tmp_path / "figs"
    status = visualize.main(
        [
            "latent-map",
            f"pairs={models['pairs']}",
            f"latent_map.autoencoders=[{models['vanilla']},{models['other']}]",
            f"output_dir={out}",
            "device=cpu",
            "max_pairs=3",
        ]
    )
    assert status == 0
    assert (out / "latent_map.png").stat().st_size > 1000
    assert (out / "latent_map.svg").read_text().lstrip().startswith("<?xml")
    numbers = json.loads((out / "latent_map.json").read_text())
    assert numbers["num_pairs"] == 3 and len(numbers["panels"]) == 2
    panel = numbers["panels"][0]
    assert panel["num_points"] == {"sentence": 3, "paraphrase": 3, "negative": 3}
    assert {"pooled", "flattened", "ratio"} <= set(panel["smoothness"])
    assert (out / "latent_map_config.yaml").is_file()
    printed = capsys.readouterr().out
    assert "2 panel(s)" in printed and "vanilla" in printed and "smoothest" in printed


def test_visualize_reports_user_errors(tmp_path, capsys):
    assert (
        visualize.main(["latent-map", f"pairs={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path}"]) == 2
    )
    assert "missing.jsonl" in capsys.readouterr().err
    assert visualize.main(["kind=bogus"]) == 2


# ------------------------------------------------------------------------------ trajectory


def test_denoising_trajectory_paths_and_decoded_points(models):
    pipeline = SLDPipeline.from_pretrained(models["pipeline"], device="cpu")
    trajectory = denoising_trajectory(
        pipeline, "Anna walked her dog.", source="The Dog", num_inference_steps=6, decode_at=(1.0, 0.5, 0.0)
    )
    forward = [p.noise_ratio for p in trajectory.forward]
    reverse = [p.noise_ratio for p in trajectory.reverse]
    assert len(forward) == len(reverse) == 7
    assert forward[0] == 0.0 and forward[-1] > 0.99 and forward == sorted(forward)
    assert reverse == sorted(reverse, reverse=True) and reverse[-1] == 0.0
    assert torch.allclose(
        trajectory.reverse[0].latent, trajectory.forward[-1].latent
    )  # starts where noising ended
    assert [round(d.noise_ratio, 1) for d in trajectory.decoded][0] == 1.0 and trajectory.decoded[
        -1
    ].noise_ratio == 0.0
    assert len(trajectory.decoded) == 3
    assert all(isinstance(d.text, str) and isinstance(d.x0_text, str) for d in trajectory.decoded)
    assert trajectory.guidance_scale == 2.0  # the pipeline default, since a source is given

    unconditional = denoising_trajectory(
        pipeline, "Anna walked her dog.", num_inference_steps=3, decode_at=(0.0,)
    )
    assert unconditional.guidance_scale == 1.0 and unconditional.source is None
    result = plot_trajectory(unconditional, background=None)
    assert result.num_background_points == 0 and result.figure.axes  # path only
    with pytest.raises(UserError):
        denoising_trajectory(pipeline, "x", decode_at=(1.5,))


def test_visualize_trajectory_stage(models, tmp_path, capsys):
    out = tmp_path / "traj"
    status = visualize.main(
        [
            "trajectory",
            f"trajectory.pipeline={models['pipeline']}",
            f"trajectory.segmented_file={models['segmented']}",
            "trajectory.num_inference_steps=5",
            "trajectory.decode_at=[1.0,0.5,0.0]",
            f"pairs={models['pairs']}",
            f"output_dir={out}",
            "device=cpu",
        ]
    )
    assert status == 0
    assert (out / "trajectory.png").stat().st_size > 1000 and (out / "trajectory.svg").is_file()
    numbers = json.loads((out / "trajectory.json").read_text())
    assert numbers["text"] == "Anna walked her dog." and numbers["source"] == "The Dog"
    assert [d["noise_ratio"] for d in numbers["decoded"]][-1] == 0.0 and len(numbers["decoded"]) == 3
    assert numbers["num_background_points"] == 15  # 5 complete pairs x 3
    printed = capsys.readouterr().out
    assert "x0_hat" in printed and "reconstruction" in printed


# ------------------------------------------------------------------------------ curves


def write_metrics(folder: Path, scale: float) -> Path:
    folder.mkdir(parents=True)
    rows = [
        {"step": 10, "train/loss": 3.0 * scale, "train/conversion": 2.5 * scale, "lr": 1e-4},
        {"step": 20, "train/loss": 2.0 * scale, "train/conversion": 1.5 * scale, "lr": 9e-5},
        {"step": 20, "eval/bleu": 10.0 / scale},
        {"step": 30, "train/loss": 1.0 * scale, "train/conversion": 0.5 * scale, "lr": 8e-5},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_curves_one_panel_per_metric(tmp_path):
    a = write_metrics(tmp_path / "a" / "run", 1.0)
    b = write_metrics(tmp_path / "b" / "run", 2.0)
    labels = run_labels([a, b])
    assert labels == ["a/run", "b/run"]
    series = collect_series({labels[0]: read_metrics(a), labels[1]: read_metrics(b / "metrics.jsonl")})
    assert list(series) == ["train/loss", "train/conversion", "eval/bleu"]  # lr not included by default
    assert series["eval/bleu"][1].values == [5.0]
    figure = plot_curves(series, labels, columns=2)
    assert len(figure.axes) == 3
    assert all(len(ax.get_lines()) == 2 for ax in figure.axes)  # both runs overlaid
    assert len(figure.legends) == 1
    with_lr = collect_series(
        {"a": read_metrics(a)}, prefixes=("train/", "eval/", "lr"), exclude=("train/loss",)
    )
    assert list(with_lr) == ["train/conversion", "lr", "eval/bleu"]


def test_visualize_curves_stage(tmp_path, capsys):
    a = write_metrics(tmp_path / "vanilla", 1.0)
    b = write_metrics(tmp_path / "contrastive", 2.0)
    config = tmp_path / "curves.yaml"
    config.write_text(yaml.safe_dump({"kind": "latent-map", "curves": {"runs": [str(a), str(b)]}}))
    out = tmp_path / "figs"
    # Options and overrides intermixed; the kind word overrides the file's kind.
    assert visualize.main([f"output_dir={out}", "-c", str(config), "curves", "curves.log_scale=true"]) == 0
    assert (out / "curves.png").stat().st_size > 1000 and (out / "curves.svg").is_file()
    numbers = json.loads((out / "curves.json").read_text())
    assert set(numbers["metrics"]) == {"train/loss", "train/conversion", "eval/bleu"}
    assert numbers["metrics"]["train/loss"]["contrastive"]["last"] == 2.0
    assert "3 panel(s) from 2 run(s)" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert visualize.main(["curves", f"curves.runs=[{tmp_path / 'bad'}]", f"output_dir={out}"]) == 2
    assert "metrics.jsonl:2" in capsys.readouterr().err


def test_render_figure_is_the_library_call_behind_the_stage(tmp_path):
    runs = [str(write_metrics(tmp_path / name, 1.0)) for name in ("a", "b")]
    cfg = FigureConfig(kind="curves", output_dir=str(tmp_path / "figs"), name="mine", formats=["png"])
    cfg.curves.runs, cfg.curves.labels = runs, ["first", "second"]
    rendered = render_figure(cfg)
    assert isinstance(rendered.result, CurvesResult) and list(rendered.result.rows) == ["first", "second"]
    assert [p.name for p in rendered.files] == ["mine.png", "mine.json"]
    assert (
        rendered.numbers == rendered.result.to_dict() and (tmp_path / "figs" / "mine_config.yaml").is_file()
    )
    assert rendered.numbers["metrics"]["eval/bleu"]["second"] == {
        "points": 1,
        "last_step": 20.0,
        "last": 10.0,
        "min": 10.0,
    }
    with pytest.raises(UserError, match="1 labels for 2 runs"):
        curves_figure(runs, ["one"])


def test_numbers_are_strict_json(tmp_path):
    numbers = {"ratio": float("nan"), "rows": [1.0, float("inf"), (2.0, float("-inf"))], "name": "x"}
    assert finite_numbers(numbers) == {"ratio": None, "rows": [1.0, None, [2.0, None]], "name": "x"}
    path = save_numbers(numbers, tmp_path / "out", "fig")
    assert path.name == "fig.json" and "NaN" not in path.read_text()
    assert json.loads(path.read_text())["ratio"] is None


# ------------------------------------------------------------------------------ examples


def load_example(name: str):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_run_on_tiny_models(models, tmp_path, capsys):
    out = str(tmp_path / "figs")
    load_example("plot_latent_space").main([models["vanilla"], "--pairs", models["pairs"], "--out", out])
    load_example("plot_denoising_trajectory").main(
        ["--pipeline", models["pipeline"], "--segmented", models["segmented"], "--pairs", models["pairs"]]
        + ["--steps", "3", "--device", "cpu", "--out", out]
    )
    runs = [str(write_metrics(tmp_path / name, 1.0)) for name in ("a", "b")]
    load_example("plot_training_curves").main([*runs, "--out", out])
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == [
        f"{stem}.{ext}" for stem in ("curves", "latent_map", "trajectory") for ext in ("png", "svg")
    ]
    printed = capsys.readouterr().out
    assert "ratio" in printed and "x0_hat" in printed and "3 panels" in printed


def test_curves_against_wall_minutes():
    from sld.viz.curves import collect_series

    rows = {
        "a": [
            {"step": 10, "time/seconds": 30.0, "train/loss": 2.0},
            {"step": 20, "time/seconds": 90.0, "train/loss": 1.0, "eval/bleu": 5.0},
            {"step": 30, "train/loss": 0.5},  # written before time/seconds existed: skipped
        ]
    }
    by_minutes = collect_series(rows, x="minutes")
    assert by_minutes["train/loss"][0].steps == [0.5, 1.5] and by_minutes["eval/bleu"][0].values == [5.0]
    assert "time/seconds" not in collect_series(rows)
    assert collect_series(rows)["train/loss"][0].steps == [10.0, 20.0, 30.0]
    with pytest.raises(UserError, match="curves.x"):
        collect_series(rows, x="hours")

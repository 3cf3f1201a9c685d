"""The whole system on a pretrained causal-LM decoder (a tiny random Llama folder standing in for SmolLM2).

Segment -> autoencoder (kv conditioning, contrastive + adversarial, length-grouped batches) ->
diffusion (post-diffusion losses through the causal decoder) -> generation from the saved pipeline;
the AR baseline as a prefix LM on the same LM; the autoencoder report and the latent map; resume.
"""

import json
from pathlib import Path

import pytest
import tiny_models

from sld.config import load_config
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.baseline import BaselineModel
from sld.pipeline import SLDPipeline
from stages import autoencoder_report, generate, train_autoencoder, train_baseline, train_diffusion

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal_e2e")
    lm = tiny_models.save_tiny_causal_lm(root / "lm")
    files, seg = tiny_models.segmented_synthetic_stories(
        root,
        seed=5,
        stories_train=30,
        stories_valid=4,
        dialogues_train=2,
        dialogues_valid=1,
        pairs_train=12,
        pairs_valid=6,
    )
    ae_overrides = [
        f"output_dir={root / 'ae'}",
        f"data.segmented_dir={seg}",
        f"data.pairs_train={files['pairs_train']}",
        "data.group_by_length=true",
        "losses.contrastive_positives=pairs",
        "losses.word_dropout=0.1",
        f"model.decoder_name_or_path={lm}",
        "model.latent_conditioning=kv",
        "optim.pretrained_lr_scale=0.1",
    ]
    train_autoencoder.run(
        load_config(train_autoencoder.Config, CONFIGS / "autoencoder_tiny.yaml", ae_overrides)
    )
    dm_overrides = [
        f"output_dir={root / 'dm'}",
        f"autoencoder={root / 'ae'}",
        f"data.segmented_dir={seg}",
        "diffusion.post_diffusion_weight_mse=0.5",
        "diffusion.post_diffusion_weight_ce=0.5",
    ]
    train_diffusion.run(load_config(train_diffusion.Config, CONFIGS / "diffusion_tiny.yaml", dm_overrides))
    return root, seg, files


def test_autoencoder_folder_is_causal_with_a_measured_budget(trained):
    root, _, _ = trained
    config = json.loads((root / "ae" / "autoencoder_config.json").read_text())
    assert config["latent_conditioning"] == "kv" and 1 <= config["decode_max_tokens"] <= 24
    model = SegmentAutoencoder.from_pretrained(root / "ae")
    assert model.is_causal
    rows = [json.loads(line) for line in (root / "ae" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/adversarial" in r]
    assert train and all(r["train/adversarial"] > 0 and r["train/contrastive"] > 0 for r in train)
    assert any("eval/bleu" in r for r in rows)


def test_diffusion_trains_through_the_causal_decoder(trained):
    root, _, _ = trained
    rows = [json.loads(line) for line in (root / "dm" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("train/post_ce", 0) > 0 for r in rows)


def test_pipeline_and_generate_stage(trained, tmp_path):
    root, seg, _ = trained
    pipe = SLDPipeline.from_pretrained(root / "dm", device="cpu")
    out = pipe(["The Lost Dog", None], num_inference_steps=2, seed=0, no_repeat_ngram_size=2)
    assert len(out.texts) == 2 and [len(s) for s in out.segments] == out.num_segments
    output = tmp_path / "pred.jsonl"
    assert (
        generate.main([f"model={root / 'dm'}", f"input={seg / 'valid.jsonl'}", f"output={output}", "limit=2"])
        == 0
    )
    assert len(output.read_text().splitlines()) == 2
    static = tmp_path / "static.jsonl"
    args = [f"model={root / 'dm'}", f"input={seg / 'valid.jsonl'}", f"output={static}", "limit=2"]
    assert generate.main([*args, "static_cache=true"]) == 0
    assert static.read_text() == output.read_text()  # the same texts from the static KV cache


def test_baseline_is_a_prefix_lm_on_the_same_lm_and_resumes(trained, tmp_path):
    root, seg, _ = trained
    out = tmp_path / "ar"
    args = [
        f"output_dir={out}",
        f"match_autoencoder={root / 'ae'}",
        f"data.segmented_dir={seg}",
        "max_segments=3",
    ]
    args += [
        "loop.max_steps=2",
        "loop.save_every=2",
        "loop.eval_every=2",
        "loop.batch_size=4",
        "loop.progress=false",
    ]
    args += ["data.num_valid_documents=2", "optim.warmup_steps=1"]
    assert train_baseline.main(args) == 0
    config = json.loads((out / "baseline_config.json").read_text())
    assert config["encoder"] == "decoder" and config["decoder_name_or_path"] == str(root / "lm")
    assert config["decode_max_tokens"] is not None and config["decode_max_tokens"] <= 3 * 24
    model = BaselineModel.from_pretrained(out)
    assert model.is_causal and len(model.generate_texts(["The Lost Dog", None], max_new_tokens=4)) == 2
    assert train_baseline.main([*args, "loop.max_steps=4"]) == 0  # resumes from step 2
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    predictions = tmp_path / "ar.jsonl"
    assert (
        generate.main([f"model={out}", f"input={seg / 'valid.jsonl'}", f"output={predictions}", "limit=2"])
        == 0
    )


def test_autoencoder_report_on_the_causal_autoencoder(trained, tmp_path):
    root, seg, files = trained
    args = [f"autoencoders=[{root / 'ae'}]", f"segments={seg / 'valid.jsonl'}", "num_segments=6"]
    args += [f"pairs={files['pairs_valid']}", "noise_levels=[0.5]", f"output_dir={tmp_path}", "formats=[png]"]
    assert autoencoder_report.main(args) == 0
    (report,) = json.loads((tmp_path / "report.json").read_text())["reports"]
    assert 0.0 <= report["bleu"] <= 100.0 and [p["noise_std"] for p in report["robustness"]] == [0.0, 0.5]
    assert report["smoothness"] is not None

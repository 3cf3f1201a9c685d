"""The three stages end to end on a tiny config into a temp dir, then generation from the saved pipeline."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from sld.config import ConfigError, load_config
from sld.data.synthetic import write_synthetic_corpus
from sld.diffusion import trainer as diffusion_trainer
from sld.diffusion.data import read_documents
from sld.loading import load_model
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.encoder_cache import EncoderStateCache
from sld.pipeline import SLDPipeline
from stages import generate, segment, train_autoencoder, train_diffusion

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_diffusion(output_dir: Path, root: Path, segmented: Path, *overrides: str) -> train_diffusion.Config:
    """configs/diffusion_tiny.yaml on the fixture's autoencoder and ``segmented`` stage-1 folder."""
    return load_config(
        train_diffusion.Config,
        CONFIGS / "diffusion_tiny.yaml",
        [
            f"output_dir={output_dir}",
            f"autoencoder={root / 'ae'}",
            f"data.segmented_dir={segmented}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    files = write_synthetic_corpus(
        root / "data",
        seed=3,
        stories_train=40,
        stories_valid=6,
        dialogues_train=4,
        dialogues_valid=2,
        pairs_train=20,
        pairs_valid=4,
    )
    seg = root / "segmented"
    assert (
        segment.main(
            [
                f"splits.train={files['stories_train']}",
                f"splits.valid={files['stories_valid']}",
                f"output_dir={seg}",
                "records.task=title_to_story",
                "segmenter.max_segments=3",
            ]
        )
        == 0
    )
    ae_cfg = load_config(
        train_autoencoder.Config,
        CONFIGS / "autoencoder_tiny.yaml",
        [
            f"output_dir={root / 'ae'}",
            f"data.segmented_dir={seg}",
            f"data.pairs_train={files['pairs_train']}",
            "losses.contrastive_positives=pairs",
        ],
    )
    train_autoencoder.run(ae_cfg)
    dm_cfg = tiny_diffusion(root / "dm", root, seg)
    train_diffusion.run(dm_cfg)
    return root, seg


def test_stages_write_their_folders(trained):
    root, _ = trained
    assert (root / "ae" / "autoencoder_config.json").is_file()
    assert (root / "dm" / "pipeline_config.json").is_file()
    rows = [json.loads(line) for line in (root / "dm" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/diffusion_mse" in r for r in rows) and any("train/diffusion_mse" in r for r in rows)
    samples = sorted((root / "dm" / "samples").glob("step_*.jsonl"))
    assert samples, "validation samples are written"


def test_pipeline_generates_text_for_each_input(trained):
    root, _ = trained
    pipe = SLDPipeline.from_pretrained(root / "dm", device="cpu")
    out = pipe(["The Lost Dog", "A Rainy Day", None], num_inference_steps=3, seed=0, num_candidates=2)
    assert len(out.texts) == 3
    assert all(1 <= k <= 3 for k in out.num_segments)
    assert [len(s) for s in out.segments] == out.num_segments
    for text, segments in zip(out.texts, out.segments):
        assert "empty sentence" not in text
        assert text == " ".join(s for s in segments if s)


def test_generate_stage_writes_predictions(trained, tmp_path):
    root, seg = trained
    output = tmp_path / "pred.jsonl"
    assert (
        generate.main(
            [
                f"model={root / 'dm'}",
                f"input={seg / 'valid.jsonl'}",
                f"output={output}",
                "num_inference_steps=2",
                "limit=3",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3
    assert all({"id", "source", "prediction", "segments", "reference"} <= set(r) for r in rows)


def test_resume_continues_step_count(trained, tmp_path):
    root, seg = trained
    cfg = tiny_diffusion(root / "dm", root, seg, "loop.max_steps=6")
    train_diffusion.run(cfg)
    summary = json.loads((root / "dm" / "summary.json").read_text())
    assert summary["steps"] == 6
    rows = [json.loads(line) for line in (root / "dm" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [2, 4, 6]  # steps 1-4 from the first run, 5-6 after resuming at 4


def test_cached_context_and_samples_only_at_the_end(trained, tmp_path):
    root, seg = trained
    cfg = tiny_diffusion(
        tmp_path / "dm",
        root,
        seg,
        "cache_context=true",
        "sample_every=0",
        "loop.eval_every=2",
        "loop.max_steps=5",
    )
    train_diffusion.run(cfg)
    assert [p.name for p in (tmp_path / "dm" / "samples").glob("*.jsonl")] == ["step_5.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "dm" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/diffusion_mse" in r]
    assert [r["step"] for r in evals] == [2, 4, 5] and not any("eval/rougeL" in r for r in evals)
    validation = json.loads((tmp_path / "dm" / "summary.json").read_text())["validation"]
    assert "eval/rougeL" in validation[-1] and "eval/rougeL" not in validation[0]
    with pytest.raises(ConfigError, match="sample_every"):
        train_diffusion.run(load_config(train_diffusion.Config, None, ["sample_every=-1"]))
    # final_samples=false: no samples at all, the final validation without ROUGE; the denoiser's
    # low_precision_residual (on by default) reaches the saved model's config either way; a denoiser
    # trained without self-conditioning has no self-conditioning input (its sampler then feeds none)
    cfg.output_dir, cfg.final_samples = str(tmp_path / "dm_none"), False
    cfg.denoiser.low_precision_residual = False
    cfg.diffusion.self_conditioning_prob = 0.0
    train_diffusion.run(cfg)
    saved = {
        run: json.loads((tmp_path / run / "denoiser" / "config.json").read_text())
        for run in ("dm", "dm_none")
    }
    assert saved["dm"]["low_precision_residual"] and not saved["dm_none"]["low_precision_residual"]
    assert saved["dm"]["self_conditioning"] and not saved["dm_none"]["self_conditioning"]
    assert not (tmp_path / "dm_none" / "samples").exists()
    validation = json.loads((tmp_path / "dm_none" / "summary.json").read_text())["validation"]
    assert [r["step"] for r in validation] == [2, 4, 5] and not any("eval/rougeL" in r for r in validation)


def test_latents_on_the_device_train_as_latents_in_the_batches(trained, tmp_path):
    root, seg = trained
    losses = {}
    for on_device in ("true", "false"):
        out = tmp_path / f"dm_{on_device}"
        cfg = tiny_diffusion(
            out,
            root,
            seg,
            f"latents_on_device={on_device}",
            "loop.max_steps=3",
            "loop.log_every=1",
            "sample_every=0",
        )
        train_diffusion.run(cfg)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[on_device] = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses["true"]) == 3 and losses["true"] == losses["false"]


def test_length_grouped_batches_with_a_sourceless_document(trained, tmp_path):
    root, seg = trained
    docs = [json.loads(line) for line in (seg / "train.jsonl").read_text().splitlines()]
    docs[0]["source"] = None  # unconditional documents have no source
    grouped = tmp_path / "segmented"
    grouped.mkdir()
    (grouped / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (grouped / "valid.jsonl").write_text((seg / "valid.jsonl").read_text())
    cfg = tiny_diffusion(
        tmp_path / "dm",
        root,
        grouped,
        "data.group_by_source_length=true",
        "data.group_by_segment_count=true",
        "loop.max_steps=3",
    )
    train_diffusion.run(cfg)
    assert json.loads((tmp_path / "dm" / "summary.json").read_text())["steps"] == 3


def test_quickstart_runs_on_a_tiny_budget_and_scores_topics(tmp_path, capsys):
    from stages import quickstart

    tiny = [
        f"output_dir={tmp_path}",
        "num_examples=2",
        "num_scored.stories=3",
        "num_scored.dialogues=3",
        "corpus.stories_train=30",
        "corpus.stories_valid=3",
        "corpus.dialogues_train=30",
        "corpus.dialogues_valid=3",
        "corpus.pairs_train=10",
        "corpus.pairs_valid=2",
        "autoencoder.model.decoder_config.d_model=32",
        "autoencoder.model.decoder_config.num_decoder_layers=1",
        "autoencoder.model.decoder_config.num_heads=2",
        "autoencoder.model.decoder_config.d_ff=64",
        "autoencoder.model.decoder_config.d_kv=16",
        "autoencoder.model.decoder_vocab_size=300",
        "autoencoder.loop.max_steps=2",
        "autoencoder.loop.batch_size=8",
        "autoencoder.data.num_valid_segments=8",
        "diffusion.denoiser.width=32",
        "diffusion.denoiser.depth=2",
        "diffusion.denoiser.heads=2",
        "diffusion.loop.max_steps=2",
        "diffusion.loop.batch_size=4",
        "diffusion.data.num_valid_documents=2",
        "diffusion.sampling.num_inference_steps=2",
        "autoencoder.loop.progress=false",
        "diffusion.loop.progress=false",
    ]
    assert quickstart.main(tiny) == 0
    printed = capsys.readouterr().out
    assert printed.count("[stories input]") == 2 and printed.count("[dialogues input]") == 2
    summary = json.loads((tmp_path / "quickstart_summary.json").read_text())
    for task in ("stories", "dialogues"):
        scores = summary["topic_agreement"][task]
        assert scores["num_documents"] == 3
        # 30 training documents over 16 topics: references find their topic well above chance
        assert scores["references"]["agreement"] > 5 * scores["references"]["chance"] > 0
        assert 0.0 <= scores["generated"]["agreement"] <= 1.0 and scores["generated"]["num_segments"] >= 3
        assert 0.0 <= scores["repeated_segments"] <= 1.0
    assert "topic agreement" in printed


def test_the_autoencoder_stages_encoder_states_give_the_diffusion_stage_its_latents(
    trained, tmp_path, monkeypatch
):
    """``train_diffusion(cfg, encoder_states=...)`` (the quickstart hands it the autoencoder stage's
    cache): the training latents come from the cached states, equal to those the fixture's diffusion
    stage encoded with the encoder (the same autoencoder, documents and ``max_segments``: the same
    latent-cache file name)."""
    root, seg = trained
    autoencoder = load_model(str(root / "ae"), kinds=("autoencoder",))
    states = EncoderStateCache.build(
        autoencoder, [s for doc in read_documents([seg], "train") for s in doc.segments]
    )
    encoded_rows = []
    run_encoder = SegmentAutoencoder.encoder_hidden_states
    monkeypatch.setattr(
        SegmentAutoencoder,
        "encoder_hidden_states",
        lambda self, ids, mask: encoded_rows.append(ids.shape[0]) or run_encoder(self, ids, mask),
    )
    cfg = tiny_diffusion(tmp_path / "dm", root, seg, "loop.max_steps=1", "final_samples=false")
    diffusion_trainer.train_diffusion(cfg, encoder_states=states)
    (train_file,) = (tmp_path / "dm" / "latent_cache").glob("train-*.safetensors")
    torch.testing.assert_close(
        safetensors.torch.load_file(train_file)["latents"],
        safetensors.torch.load_file(root / "dm" / "latent_cache" / train_file.name)["latents"],
        rtol=1e-3,
        atol=1e-3,
    )
    segments = {
        split: sum(min(len(d.segments), cfg.max_segments) for d in read_documents([seg], split))
        for split in ("train", "valid")
    }
    # the encoder ran over the check's 4 texts and the validation segments only, not the training ones
    assert sum(encoded_rows) <= 4 + segments["valid"] < segments["train"]
    stale = EncoderStateCache(states.states + 1.0, states.index)
    with pytest.raises(ValueError, match="not this model's encoder's"):
        diffusion_trainer.train_diffusion(cfg, encoder_states=stale)

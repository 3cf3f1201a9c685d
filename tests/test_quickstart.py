"""sld.quickstart: the quickstart's defaults, and run_quickstart from Python with its own ``echo``."""

from __future__ import annotations

import json

import pytest
from test_examples import load_example

from sld import quickstart
from sld.config import ConfigError, load_config, save_config
from sld.quickstart import QuickstartConfig, run_quickstart

TINY = [
    "num_examples=1",
    "num_scored.stories=2",
    "num_scored.dialogues=2",
    "corpus.stories_train=20",
    "corpus.stories_valid=2",
    "corpus.dialogues_train=20",
    "corpus.dialogues_valid=2",
    "corpus.pairs_train=8",
    "corpus.pairs_valid=2",
    "autoencoder.model.decoder_config.d_model=32",
    "autoencoder.model.decoder_config.num_decoder_layers=1",
    "autoencoder.model.decoder_config.num_heads=2",
    "autoencoder.model.decoder_config.d_ff=64",
    "autoencoder.model.decoder_config.d_kv=16",
    "autoencoder.model.decoder_vocab_size=300",
    "autoencoder.loop.max_steps=1",
    "autoencoder.loop.batch_size=8",
    "autoencoder.loop.progress=false",
    "autoencoder.data.num_valid_segments=4",
    "diffusion.denoiser.width=32",
    "diffusion.denoiser.depth=1",
    "diffusion.denoiser.heads=2",
    "diffusion.loop.max_steps=1",
    "diffusion.loop.batch_size=4",
    "diffusion.loop.progress=false",
    "diffusion.data.num_valid_documents=2",
    "diffusion.sampling.num_inference_steps=2",
]


def test_defaults_are_the_cpu_budgets_and_round_trip_through_yaml(tmp_path):
    cfg = QuickstartConfig()
    assert (cfg.autoencoder.loop.max_minutes, cfg.diffusion.loop.max_minutes) == (7.0, 4.75)
    # the autoencoder's decay spans its budget; the denoiser's stays near its peak (quick_diffusion says why)
    assert (cfg.autoencoder.optim.decay_over, cfg.diffusion.optim.decay_over) == ("budget", "max_steps")
    assert (
        cfg.corpus.stories_train == 2000 and cfg.diffusion.cache_context and cfg.diffusion.sample_every == 0
    )
    assert not cfg.diffusion.final_samples  # step 5 generates and scores validation inputs itself
    assert cfg.diffusion.sampling.num_inference_steps == 10
    assert cfg.diffusion.diffusion.self_conditioning_prob == 0.0  # quick_diffusion says why
    assert QuickstartConfig().autoencoder is not cfg.autoencoder  # every config gets its own sections
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(QuickstartConfig, tmp_path / "config.yaml") == cfg
    small = load_config(QuickstartConfig, None, ["autoencoder.loop.max_minutes=2", "corpus.seed=4"])
    assert small.autoencoder.loop.max_minutes == 2 and small.autoencoder.loop.batch_size == 32


def test_a_key_set_into_the_decoder_config_keeps_the_quickstarts_small_decoder():
    cfg = load_config(QuickstartConfig, None, ["autoencoder.model.decoder_config.dropout_rate=0.1"])
    decoder = cfg.autoencoder.model.decoder_config
    assert decoder == {**QuickstartConfig().autoencoder.model.decoder_config, "dropout_rate": 0.1}
    assert (decoder["d_model"], decoder["num_decoder_layers"]) == (256, 3)


def test_scored_inputs_per_task():
    assert (QuickstartConfig().num_scored.stories, QuickstartConfig().num_scored.dialogues) == (256, 64)
    cfg = load_config(QuickstartConfig, None, ["num_scored.stories=32"])
    assert (cfg.num_scored.stories, cfg.num_scored.dialogues) == (32, 64)
    with pytest.raises(ConfigError, match="unknown key 'num_scored.storys'.*dialogues, stories"):
        load_config(QuickstartConfig, None, ["num_scored.storys=32"])


@pytest.mark.slow
def test_run_quickstart_reports_through_echo(tmp_path, capsys, monkeypatch):
    cfg = load_config(QuickstartConfig, None, [f"output_dir={tmp_path}", *TINY])
    handed = []  # the autoencoder stage's encoder states, handed on to the diffusion stage
    train = quickstart.train_diffusion
    monkeypatch.setattr(
        quickstart,
        "train_diffusion",
        lambda dm, encoder_states: handed.append(encoder_states) or train(dm, encoder_states),
    )
    lines: list[str] = []
    result = run_quickstart(cfg, echo=lines.append)
    assert len(handed) == 1 and len(handed[0]) > 0
    headers = [line for line in lines if line.startswith("== ")]
    assert headers == [
        "== 1/5 synthetic corpus",
        "== 2/5 segmentation",
        "== 3/5 autoencoder",
        "== 4/5 diffusion",
        "== 5/5 generation",
    ]
    assert any(line.startswith(f"autoencoder saved to {tmp_path}") for line in lines)
    assert any(line.startswith(f"pipeline saved to {tmp_path}") for line in lines)
    assert "== 1/5" not in capsys.readouterr().out  # echo, not print
    assert {name: len(rows) for name, rows in result.shown.items()} == {"stories": 1, "dialogues": 1}
    assert result.summary == json.loads((tmp_path / "quickstart_summary.json").read_text())
    assert (
        set(result.topic_agreement) == {"stories", "dialogues"}
        and (tmp_path / "predictions_stories.jsonl").is_file()
    )
    # examples/quickstart_topic_variants.py scores the finished folder again, with more seeds
    example = load_example("quickstart_topic_variants")
    monkeypatch.setattr(
        "sys.argv",
        ["x", str(tmp_path), str(tmp_path), "--saved-only", "--num-inputs", "2", "--seeds", "0", "1"],
    )
    capsys.readouterr()
    example.main()
    printed = capsys.readouterr().out.splitlines()
    assert sum("seed 0, saved settings: generated" in line for line in printed) == 2
    means = [line for line in printed if "mean generated agreement" in line]
    assert len(means) == 2 and all(line.endswith("over 2 seeds") for line in means)
    # ... and compares sampler step counts on the dialogues
    example.main(
        [str(tmp_path), "--steps", "3", "2", "--task", "dialogues", "--num-inputs", "2", "--seeds", "0"]
    )
    printed = capsys.readouterr().out.splitlines()
    for steps in (3, 2):
        assert sum(f"seed 0, num_inference_steps={steps}: generated" in line for line in printed) == 1
    assert all("(2 inputs;" in line for line in printed if "seed 0" in line)
    # ... and the decoder's n-gram blocks
    example.main([str(tmp_path), "--no-repeat-ngram", "0", "3", "--num-inputs", "1", "--seeds", "0"])
    printed = capsys.readouterr().out.splitlines()
    for size in (0, 3):
        assert sum(f"seed 0, no_repeat_ngram_size={size}: generated" in line for line in printed) == 1

"""sld.autoencoder_trainer: stage 2 from Python (train_autoencoder and its parts), on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models
import torch

from sld.autoencoder_objective import AutoencoderLossConfig
from sld.autoencoder_trainer import (
    AutoencoderDataConfig,
    AutoencoderTrainingConfig,
    TrainedAutoencoder,
    load_segments,
    sample_training_batch,
    train_autoencoder,
    training_eval_segments,
    training_loop,
    training_rows,
    validation_segments,
)
from sld.config import ConfigError, load_config
from sld.data.collate import PairMixDataset, SegmentDataset
from sld.data.segmented import SegmentedDocument, write_segmented
from sld.errors import DataError
from sld.models.autoencoder import SegmentAutoencoder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STORIES = [
    ["Tom lost his dog.", "He looked everywhere.", "He found it at the park."],
    ["Anna baked a cake.", "It burned.", "She tried again."],
    ["It snowed all night.", "School was closed."],
]


def write_stage1(folder: Path, docs: list[list[str]] = STORIES, valid: list[list[str]] | None = None) -> Path:
    rows = [SegmentedDocument(f"d{i}", f"title {i}", segs, len(segs)) for i, segs in enumerate(docs)]
    write_segmented(folder / "train.jsonl", rows)
    write_segmented(folder / "valid.jsonl", rows[:2] if valid is None else valid)
    return folder


def test_segments_come_from_every_folder_and_validation_is_a_fixed_sample(tmp_path):
    main = write_stage1(tmp_path / "a")
    extra = write_stage1(tmp_path / "b", docs=[["One more.", " "]])
    cfg = AutoencoderDataConfig(
        segmented_dir=str(main), extra_segmented_dirs=[str(extra)], num_valid_segments=4
    )
    assert load_segments(cfg, "train") == [*STORIES, ["One more.", " "]]
    picked = validation_segments(cfg)
    assert len(picked) == 4 and picked == validation_segments(cfg)  # same seed, same sample
    assert all(s.strip() for s in picked)  # blank segments are never validation targets
    with pytest.raises(DataError, match="test.jsonl not found: run `sld segment` first"):
        load_segments(cfg, "test")


def test_the_training_sample_scored_is_fixed_and_made_of_training_segments():
    picked = training_eval_segments([*STORIES, [" "]], 4)
    assert len(picked) == 4 and picked == training_eval_segments([*STORIES, [" "]], 4)
    assert set(picked) <= {s for doc in STORIES for s in doc}  # blank segments are never scored
    assert training_eval_segments(STORIES, 0) == []


def test_training_rows_mix_pairs_in_or_ask_for_them(tmp_path, caplog):
    cfg = AutoencoderTrainingConfig(data=AutoencoderDataConfig(segmented_dir=str(write_stage1(tmp_path))))
    cfg.losses.contrastive_positives = "dropout"
    assert isinstance(training_rows(cfg, STORIES), SegmentDataset)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"sentence": "A dog ran.", "paraphrase": "A dog was running."}) + "\n")
    cfg.data.pairs_train, cfg.data.pair_fraction = str(pairs), 0.5
    mixed = training_rows(cfg, STORIES)
    assert isinstance(mixed, PairMixDataset) and mixed[0] == {
        "sentence": "A dog ran.",
        "paraphrase": "A dog was running.",
    }
    cfg.data.group_by_length = True  # one pair for 8 pair rows: grouped batches would gather the copies
    with caplog.at_level("WARNING", logger="sld.train_autoencoder"):
        training_rows(cfg, STORIES)
    assert "each pair comes 8 times" in caplog.text and "data.group_by_length=false" in caplog.text
    cfg.data.pairs_train, cfg.losses.contrastive_positives = None, "pairs"
    assert cfg.losses.uses_contrastive  # the default weight is 0.2
    with pytest.raises(DataError, match="contrastive_positives=pairs needs data.pairs_train"):
        training_rows(cfg, STORIES)


def tiny_training_config(tmp_path: Path, *overrides: str) -> AutoencoderTrainingConfig:
    """``autoencoder_tiny.yaml`` on a tiny BERT and 12 stories in ``tmp_path``, with ``overrides``."""
    bert = tiny_models.save_tiny_bert(tmp_path / "bert", num_layers=1, max_positions=64)
    return load_config(
        AutoencoderTrainingConfig,
        CONFIGS / "autoencoder_tiny.yaml",
        [
            f"output_dir={tmp_path / 'ae'}",
            f"data.segmented_dir={write_stage1(tmp_path / 'seg', STORIES * 4)}",
            f"model.encoder={bert}",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_train_autoencoder_returns_the_folder_and_summary(tmp_path, capsys):
    cfg = tiny_training_config(
        tmp_path, "loop.max_steps=2", "loop.eval_every=2", "data.num_train_eval_segments=3"
    )
    trained = train_autoencoder(cfg)
    assert isinstance(trained, TrainedAutoencoder) and trained.output_dir == tmp_path / "ae"
    assert "saved to" not in capsys.readouterr().out  # the stage prints the summary, not the library
    summary = json.loads((trained.output_dir / "summary.json").read_text())
    assert summary == trained.summary and summary["steps"] == 2 and "eval/bleu" in summary
    assert "eval/train_bleu" in summary and "eval/train_exact_match" in summary
    assert list(summary)[:3] == ["steps", "stopped_by", "train_seconds"]
    lines = trained.summary_lines()
    assert lines[0] == f"autoencoder saved to {trained.output_dir}" and lines[1].startswith("  steps=2, ")
    assert (trained.output_dir / "reconstructions.jsonl").is_file() and (trained.output_dir / "init").is_dir()
    assert isinstance(SegmentAutoencoder.from_pretrained(trained.output_dir), SegmentAutoencoder)
    assert TrainedAutoencoder(trained.output_dir, None).summary_lines() == []


@pytest.mark.parametrize("variant", ["noise_robust", "vanilla"])
def test_a_compiled_run_with_the_adversarial_term_trains_inside_retained_graphs(
    tmp_path, monkeypatch, variant
):
    """The adversarial term differentiates the conversion loss's graph twice, which compiled backward
    functions allow only without donated buffers (``sld.compilation.retained_graphs``)."""
    import contextlib

    import sld.autoencoder_trainer as trainer
    import sld.training as training

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(trainer, "retained_graphs", recording)
    monkeypatch.setattr(
        training, "compile_model", lambda model, **settings: model
    )  # the wiring, not inductor's time
    cfg = tiny_training_config(
        tmp_path, f"losses.variant={variant}", "loop.compile=true", "loop.max_steps=1", "loop.eval_every=1"
    )
    train_autoencoder(cfg)
    assert entered == ([True] if variant == "noise_robust" else [])


def test_a_sampled_training_batch_is_collated_as_the_trainer_collates(tmp_path):
    """``sample_training_batch``: ``rows`` of the first ``documents`` documents' training rows, through
    the trainer's collator (targets of one length here), reproducible from its seed."""
    cfg = tiny_training_config(tmp_path, "data.fixed_decoder_length=true")
    model, batch = sample_training_batch(cfg, documents=4, rows=5, work_dir=tmp_path / "w")
    assert model.training and (tmp_path / "w" / "init").is_dir()
    assert batch["input_ids"].shape[0] == 5
    assert not cfg.data.targets_within_budget  # the tiny config's targets: padded to the longest allowed
    assert batch["labels"].shape[1] == model.config.max_segment_tokens
    again = sample_training_batch(cfg, documents=4, rows=5, work_dir=tmp_path / "w2")[1]
    assert torch.equal(again["input_ids"], batch["input_ids"])


def test_the_compiled_autoencoder_compiles_shape_generic_blocks_unless_told_otherwise():
    def loop(*overrides):
        return training_loop(
            load_config(AutoencoderTrainingConfig, CONFIGS / "autoencoder_roc.yaml", list(overrides))
        )

    cuda_graphs = ("loop.compile=true", "loop.compile_cuda_graphs=true")

    assert loop("loop.compile=true", "data.decoder_buckets=3").compile_dynamic is True
    assert (
        loop("loop.compile=true", "data.decoder_buckets=3", "loop.compile_dynamic=false").compile_dynamic
        is False
    )
    assert loop("loop.compile=true").compile_dynamic is True  # one bucket: still a new length every step
    assert loop("loop.compile=true", "loop.compile_dynamic=false").compile_dynamic is False
    assert loop("data.decoder_buckets=3").compile_dynamic is None  # not compiled
    # targets of one length: graphs for the shapes met (torch's default), unless told otherwise
    assert loop("loop.compile=true", "data.fixed_decoder_length=true").compile_dynamic is None
    # CUDA graphs replay one shape: the decoder's targets have one length by default then, and set
    # otherwise the error names the key
    assert loop(*cuda_graphs, "data.fixed_decoder_length=true").compile_dynamic is None
    assert loop(*cuda_graphs).compile_dynamic is None
    with pytest.raises(ConfigError, match="data.fixed_decoder_length .*set false here"):
        loop(*cuda_graphs, "data.fixed_decoder_length=false")
    assert loop(
        "loop.compile=true", "data.fixed_decoder_length=true", "loop.compile_dynamic=true"
    ).compile_dynamic


def test_cuda_graphs_with_a_share_of_adversarial_rows_warn_that_the_decoder_runs_without_them(caplog):
    def warned(*overrides):
        caplog.clear()
        cfg = load_config(AutoencoderTrainingConfig, CONFIGS / "autoencoder_roc.yaml", list(overrides))
        with caplog.at_level("WARNING", logger="sld.train_autoencoder"):
            training_loop(cfg)
        return "run without CUDA graphs" in caplog.text

    cuda_graphs = ("loop.compile=true", "loop.compile_cuda_graphs=true")
    assert warned(*cuda_graphs, "losses.adversarial_fraction=0.25")
    assert not warned(*cuda_graphs)
    assert not warned("loop.compile=true", "losses.adversarial_fraction=0.25")  # no graphs to lose
    assert not warned(*cuda_graphs, "losses.adversarial_fraction=0.25", "losses.variant=vanilla")  # no term


@pytest.mark.parametrize("fixed", [False, True])
def test_fixed_decoder_length_trains_on_targets_of_one_length(tmp_path, monkeypatch, fixed):
    """``data.fixed_decoder_length``: every training batch the trainer collates has labels as wide as
    the decoding budget; without it they follow the batches' segments."""
    import sld.data.collate as collate

    widths: list[int] = []  # the labels' width of every collated batch
    real_call = collate.SegmentCollator.__call__

    def recording(self, rows):
        batch = real_call(self, rows)
        widths.append(batch["labels"].shape[1])
        return batch

    monkeypatch.setattr(collate.SegmentCollator, "__call__", recording)
    stories = [*STORIES, ["A very long sentence that goes on and on about nothing much at all today."]]
    cfg = tiny_training_config(
        tmp_path,
        f"data.segmented_dir={write_stage1(tmp_path / 'long', stories * 4)}",
        f"data.fixed_decoder_length={str(fixed).lower()}",
        "data.targets_within_budget=true",
        "data.decode_budget_percentile=90",
        "loop.batch_size=4",
        "loop.max_steps=6",
        "loop.eval_every=100",
    )
    trained = train_autoencoder(cfg)
    budget = SegmentAutoencoder.from_pretrained(trained.output_dir).config.decode_max_tokens
    assert len(widths) >= 6
    if fixed:
        assert set(widths) == {budget}
    else:
        assert len(set(widths)) > 1 and max(widths) <= budget


@pytest.mark.parametrize(
    "overrides, fixed",
    [
        ((), False),
        (("loop.compile=true",), False),
        (("loop.compile_cuda_graphs=true",), False),  # not compiled: no graphs, no padding
        (("loop.compile=true", "loop.compile_cuda_graphs=true"), True),
        (("loop.compile=true", "loop.compile_cuda_graphs=true", "data.fixed_decoder_length=false"), False),
        (("data.fixed_decoder_length=true",), True),
    ],
)
def test_the_decoder_length_is_fixed_by_default_where_cuda_graphs_need_it(tmp_path, overrides, fixed):
    assert tiny_training_config(tmp_path, *overrides).data.fixed_decoder_length is fixed


def test_a_fixed_decoder_length_with_buckets_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="loop.compile_cuda_graphs .* data.decoder_buckets > 1"):
        tiny_training_config(
            tmp_path, "loop.compile=true", "loop.compile_cuda_graphs=true", "data.decoder_buckets=2"
        )
    with pytest.raises(ValueError, match="data.fixed_decoder_length"):
        tiny_training_config(tmp_path, "data.fixed_decoder_length=true", "data.decoder_buckets=2")
    with pytest.raises(ValueError, match="losses.adversarial_rows_apart"):
        tiny_training_config(
            tmp_path,
            "data.fixed_decoder_length=true",
            "losses.adversarial_fraction=0.5",
            "losses.adversarial_rows_apart=true",
        )


def test_the_conversion_backward_once_under_fp16_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="losses.conversion_backward_once .* loop.mixed_precision=bf16"):
        tiny_training_config(tmp_path, "losses.conversion_backward_once=true", "loop.mixed_precision=fp16")
    cfg = tiny_training_config(tmp_path, "losses.conversion_backward_once=true", "loop.mixed_precision=bf16")
    assert cfg.losses.conversion_backward_once


@pytest.mark.parametrize("precision, setting", [("bf16", None), ("no", None), ("fp16", False)])
def test_the_conversion_backward_once_is_left_to_its_default_except_under_fp16(tmp_path, precision, setting):
    cfg = tiny_training_config(tmp_path, f"loop.mixed_precision={precision}")
    assert cfg.losses.conversion_backward_once is setting


@pytest.mark.parametrize("setting, runs", [(None, True), (True, True), (False, False)])
def test_the_conversion_backward_once_is_on_by_default(setting, runs):
    assert AutoencoderLossConfig(conversion_backward_once=setting).runs_conversion_backward_once is runs
    # nothing to run once without the adversarial term, or with its rows decoded apart
    for other in ({"variant": "vanilla"}, {"adversarial_fraction": 0.5, "adversarial_rows_apart": True}):
        assert not AutoencoderLossConfig(conversion_backward_once=True, **other).runs_conversion_backward_once


def test_a_run_with_the_conversion_backward_once_trains_and_counts_its_flops(tmp_path, monkeypatch, caplog):
    """``losses.conversion_backward_once`` through ``fit``: its counted first micro-batch runs the
    two-backward path (counted as one backward: FLOPs logged); the second step runs the switch's
    path and logs the loss and gradient norm of the run without it (the same weights after an
    identical first step; the gradients equal to float rounding)."""
    import sld.autoencoder_objective as objective

    calls = []
    original = objective.conversion_backward_once
    monkeypatch.setattr(
        objective, "conversion_backward_once", lambda *args: calls.append(1) or original(*args)
    )
    logged = []
    for once in ("false", "true"):
        cfg = tiny_training_config(
            tmp_path / once,
            f"losses.conversion_backward_once={once}",
            "loop.max_steps=2",
            "loop.log_every=1",
            "loop.eval_every=100",
        )
        caplog.clear()
        with caplog.at_level("INFO", logger="sld.train_autoencoder"):
            run = train_autoencoder(cfg)
        said = "once" if once == "true" else "twice"
        assert f"the conversion pass backpropagated {said} a step" in caplog.text
        assert run.summary["steps"] == 2 and run.summary["train/tflops_per_second"] > 0
        metrics = (tmp_path / once / "ae" / "metrics.jsonl").read_text().splitlines()
        (second,) = [row for row in map(json.loads, metrics) if row.get("step") == 2 and "train/loss" in row]
        logged.append((second["train/loss"], second["train/grad_norm"]))
    assert calls == [1]  # the second step of the run with the switch; the counted first one does not
    assert logged[1][0] == pytest.approx(logged[0][0], rel=1e-6)
    assert logged[1][1] == pytest.approx(logged[0][1], rel=1e-4)


def test_an_encoder_cache_over_a_trainable_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="data.cache_encoder_states needs a frozen encoder"):
        load_config(
            AutoencoderTrainingConfig,
            CONFIGS / "autoencoder_roc.yaml",
            ["model.freeze_encoder=false"],
        )
    cfg = load_config(
        AutoencoderTrainingConfig,
        CONFIGS / "autoencoder_roc.yaml",
        ["model.freeze_encoder=false", "data.cache_encoder_states=false"],
    )
    assert not cfg.model.encoder_frozen


@pytest.fixture
def collators(monkeypatch) -> list[tuple[float, int, bool]]:
    """The (adversarial fraction, decoder buckets, adversarial rows apart) of every collator the
    trainer builds."""
    import sld.autoencoder_trainer as trainer

    built: list[tuple[float, int, bool]] = []
    real = trainer.SegmentCollator.from_autoencoder

    def recording(
        model,
        adversarial_fraction=1.0,
        decoder_buckets=1,
        adversarial_apart=False,
        targets_within_budget=False,
        fixed_decoder_length=False,
    ):
        built.append((adversarial_fraction, decoder_buckets, adversarial_apart))
        return real(
            model,
            adversarial_fraction,
            decoder_buckets,
            adversarial_apart,
            targets_within_budget,
            fixed_decoder_length,
        )

    monkeypatch.setattr(trainer.SegmentCollator, "from_autoencoder", recording)
    return built


@pytest.mark.parametrize(
    ("variant", "apart", "expected"),
    [
        ("noise_robust", "false", (0.5, 1, False)),
        ("noise_robust", "true", (0.5, 1, True)),
        ("vanilla", "true", (1.0, 1, False)),
    ],
)
def test_the_adversarial_fraction_reaches_the_collator_when_the_term_runs(
    tmp_path, collators, variant, apart, expected
):
    """``losses.adversarial_fraction`` sizes the collator's ``adversarial_target_index`` (and with
    ``losses.adversarial_rows_apart`` its buckets); a run without the term builds none."""
    cfg = tiny_training_config(
        tmp_path,
        f"losses.variant={variant}",
        "losses.adversarial_fraction=0.5",
        f"losses.adversarial_rows_apart={apart}",
        "loop.max_steps=2",
        "loop.eval_every=100",
    )
    assert train_autoencoder(cfg).summary["steps"] == 2
    assert collators == [expected]


def test_decoder_buckets_train_and_count_the_positions_they_compute(tmp_path, collators, caplog):
    """``data.decoder_buckets`` reaches the collator; the run trains, and the logged share of real
    positions (the MFU's) is over the bucketed decoder positions, above the one-pass share."""
    import logging

    shares = []
    for buckets in (1, 3):
        caplog.clear()
        cfg = tiny_training_config(
            tmp_path / str(buckets),
            f"data.decoder_buckets={buckets}",
            "loop.max_steps=2",
            "loop.eval_every=100",
        )
        with caplog.at_level(logging.INFO, logger="sld.training"):
            assert train_autoencoder(cfg).summary["steps"] == 2
        (line,) = [r.getMessage() for r in caplog.records if "of the positions" in r.getMessage()]
        shares.append(float(line.split("on real tokens (")[1].split("%")[0]))
    assert [buckets for _, buckets, _ in collators] == [1, 3]
    assert shares[1] > shares[0]
    with pytest.raises(ValueError, match="decoder_buckets"):
        tiny_training_config(tmp_path / "bad", "data.decoder_buckets=0")

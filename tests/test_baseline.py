"""AR baseline: shapes, gradients, save/load, generation, matching an SLD autoencoder, and the
`sld train-baseline` stage end to end (then `sld generate` on its folder, then a resume).

Tiny models only: a random 1-layer BERT saved to a temp folder as the encoder, a from-config T5
decoder with a tokenizer trained on a toy corpus.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import baseline_loss_and_grads
from transformers import BertConfig, BertModel, BertTokenizer

from sld.data.segmented import SegmentedDocument, write_segmented
from sld.errors import UserError
from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
from sld.models.baseline import BaselineConfig, BaselineModel

TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=2, num_heads=4, dropout_rate=0.0
)
STORIES = [
    ("The Lost Dog", ["Rex ran away.", "Tom looked everywhere.", "He found him in the park."]),
    ("Snow", ["It snowed all night.", "School was closed."]),
    ("Cake", ["Anna baked a cake.", "It burned.", "She tried again and it worked."]),
    (None, ["A cat sat on the mat.", "It was happy."]),
]
CORPUS = [" ".join(segments) for _, segments in STORIES] * 3
SOURCES = ["The Lost Dog", None, "Snow"]


def save_tiny_bert(folder: Path, hidden: int = 24) -> str:
    """A random 1-layer BERT with a character WordPiece vocabulary, saved as a loadable folder."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'#"]
    words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def tiny_config(encoder: str, **overrides) -> BaselineConfig:
    args = dict(
        encoder=encoder,
        decoder_config=dict(TINY_T5),
        decoder_vocab_size=300,
        max_source_tokens=16,
        max_target_tokens=24,
    )
    args.update(overrides)
    return BaselineConfig(**args)


def build(encoder: str, **overrides) -> BaselineModel:
    torch.manual_seed(0)
    return BaselineModel.from_config(tiny_config(encoder, **overrides), CORPUS)


def batch_for(model: BaselineModel) -> dict[str, torch.Tensor]:
    return model.collator()([(source, " ".join(segments)) for source, segments in STORIES])


@pytest.mark.parametrize("encoder", ["bert", "decoder"])
def test_shapes_and_every_trainable_parameter_gets_a_gradient(encoder, bert_dir):
    model = build(bert_dir if encoder == "bert" else "decoder")
    batch = batch_for(model)
    b = len(STORIES)
    assert batch["input_ids"].shape[0] == b and batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].shape[0] == b and batch["labels"].shape[1] <= 24
    logits = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert logits.shape == (*batch["labels"].shape, len(model.decoder_tokenizer))
    # the encoder width (24) differs from the decoder's (32) only for the BERT encoder
    assert isinstance(model.proj, torch.nn.Linear) == (encoder == "bert")
    memory = model.memory(batch["input_ids"], batch["attention_mask"])
    assert memory.shape == (*batch["input_ids"].shape, 32)

    loss = model.loss(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches: {missing}"


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval(bert_dir):
    model = build(bert_dir, freeze_encoder=True)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    model.train()
    assert not model.text_encoder.training and model.lm.training
    model.loss(batch_for(model))["loss"].backward()
    assert model.proj.weight.grad is not None
    # the bypassed LM encoder and the BERT pooler are never trained
    assert not any(p.requires_grad for p in model.text_encoder.pooler.parameters())


def test_minilm_default_is_frozen():
    cfg = BaselineConfig()
    assert cfg.encoder == "minilm" and cfg.encoder_frozen
    assert not BaselineConfig(encoder="some/folder").encoder_frozen


def test_save_load_round_trip_gives_identical_outputs(bert_dir, tmp_path):
    model = build(bert_dir).eval()
    with torch.no_grad():  # random weights would write the same token: make outputs depend on the source
        for p in model.proj.parameters():
            p.mul_(20.0)
    model.save_pretrained(tmp_path / "baseline")
    for name in ("baseline_config.json", "model.safetensors", "encoder", "decoder"):
        assert (tmp_path / "baseline" / name).exists()
    loaded = BaselineModel.from_pretrained(tmp_path / "baseline")
    batch = batch_for(model)
    with torch.no_grad():
        assert torch.equal(
            model(batch["input_ids"], batch["attention_mask"], batch["labels"]),
            loaded(batch["input_ids"], batch["attention_mask"], batch["labels"]),
        )
    for beams in (1, 2):
        kwargs = dict(batch_size=2, num_beams=beams, max_new_tokens=6)
        assert model.generate_texts(SOURCES, **kwargs) == loaded.generate_texts(SOURCES, **kwargs)


def test_generate_texts_one_string_per_source(bert_dir):
    model = build(bert_dir).eval()
    texts = model.generate_texts(SOURCES, batch_size=2, max_new_tokens=5)
    assert len(texts) == len(SOURCES) and all(isinstance(t, str) for t in texts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        beams = model.generate_texts(
            SOURCES, batch_size=8, num_beams=2, no_repeat_ngram_size=2, max_new_tokens=5
        )
    assert len(beams) == len(SOURCES)
    assert not [w for w in caught if "past_key_values" in str(w.message)]  # the cache's keyword
    assert model.generate_texts([None], max_new_tokens=3) == model.generate_texts([""], max_new_tokens=3)
    assert model.generate_texts([]) == []
    # the default length cap is the target length
    ids = model.generate_ids(**model.collator().sources(["x"]))
    assert ids.shape[1] <= 1 + model.config.max_target_tokens
    with pytest.raises(UserError):
        model.generate_texts(SOURCES, batch_size=0)


def test_matching_autoencoder_copies_encoder_and_sizes(bert_dir, tmp_path):
    ae_cfg = AutoencoderConfig(
        encoder=bert_dir,
        decoder_config=dict(TINY_T5, d_model=48, num_heads=6),
        decoder_vocab_size=290,
        num_latents=2,
        latent_dim=8,
        compressor_layers=1,
        compressor_heads=2,
        reconstructor_layers=0,
        max_segment_tokens=12,
    )
    SegmentAutoencoder.from_config(ae_cfg, CORPUS).save_pretrained(tmp_path / "ae")
    cfg = BaselineConfig().matching_autoencoder(tmp_path / "ae", max_segments=3)
    assert cfg.encoder == bert_dir and cfg.decoder_config == ae_cfg.decoder_config
    assert cfg.decoder_vocab_size == 290 and cfg.max_target_tokens == 36
    with pytest.raises(UserError):
        BaselineConfig().matching_autoencoder(tmp_path / "nothing")


def test_not_a_baseline_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="baseline_config.json"):
        BaselineModel.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------ stage end to end


def write_stage1(folder: Path) -> Path:
    docs = [
        SegmentedDocument(f"d{i}", source, list(segments), len(segments))
        for i, (source, segments) in enumerate(STORIES * 2)
    ]
    write_segmented(folder / "train.jsonl", docs)
    write_segmented(folder / "valid.jsonl", docs[:3])
    return folder


@pytest.mark.slow
def test_train_baseline_then_generate_then_resume(bert_dir, tmp_path):
    from stages import generate, train_baseline

    segmented = write_stage1(tmp_path / "segmented")
    out = tmp_path / "baseline"
    config = {
        "output_dir": str(out),
        "data": {"segmented_dir": str(segmented), "num_valid_documents": 3},
        "model": {
            "encoder": bert_dir,
            "decoder_config": TINY_T5,
            "decoder_vocab_size": 300,
            "max_source_tokens": 16,
            "max_target_tokens": 24,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "loop": {
            "max_steps": 3,
            "batch_size": 4,
            "eval_every": 2,
            "save_every": 2,
            "log_every": 1,
            "progress": False,
        },
        "eval": {"batch_size": 2, "max_new_tokens": 8},
    }
    config_file = tmp_path / "baseline.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert train_baseline.main(["-c", str(config_file)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    assert [row["step"] for row in summary["validation"]] == [2, 3]
    assert {"eval/rougeL", "eval/distinct2", "eval/num_distinct"} <= set(summary["validation"][-1])
    assert (out / "baseline_config.json").is_file() and (out / "samples" / "step_3.jsonl").is_file()

    predictions = tmp_path / "predictions.jsonl"
    argv = [f"model={out}", f"input={segmented / 'valid.jsonl'}", f"output={predictions}", "batch_size=2"]
    assert generate.main([*argv, "max_new_tokens=8"]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["prediction"], str) and "reference" in r for r in rows)

    # a second run in the same folder resumes from the step-3 checkpoint and continues to step 4
    assert train_baseline.main(["-c", str(config_file), "loop.max_steps=4"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_length_grouped_baseline_gives_the_sampler_source_plus_target_token_lengths(
    bert_dir, tmp_path, monkeypatch
):
    import sld.baseline_trainer as baseline_trainer
    from stages import train_baseline

    seen = {}
    real_fit = baseline_trainer.fit

    def spying_fit(model, dataset, *args, **kwargs):
        seen["lengths"], seen["rows"] = kwargs["lengths"], [dataset[i] for i in range(len(dataset))]
        return real_fit(model, dataset, *args, **kwargs)

    monkeypatch.setattr(baseline_trainer, "fit", spying_fit)
    segmented = write_stage1(tmp_path / "segmented")
    overrides = [
        f"output_dir={tmp_path / 'baseline'}",
        f"data.segmented_dir={segmented}",
        "data.num_valid_documents=1",
        "data.group_by_length=true",
        f"model.encoder={bert_dir}",
        "model.decoder_vocab_size=300",
        "model.max_source_tokens=16",
        "model.max_target_tokens=24",
        "loop.max_steps=2",
        "loop.batch_size=2",
        "loop.progress=false",
        "eval.batch_size=1",
        "eval.max_new_tokens=4",
    ]
    config_file = tmp_path / "baseline.yaml"
    config_file.write_text(yaml.safe_dump({"model": {"decoder_config": TINY_T5}}))
    assert train_baseline.main(["-c", str(config_file), *overrides]) == 0
    # the rows are tokenized once (Seq2SeqRow): the sampler sorts them by their source + target tokens
    assert seen["lengths"] == [len(row.source) + len(row.labels) for row in seen["rows"]]
    assert json.loads((tmp_path / "baseline" / "summary.json").read_text())["steps"] == 2


def test_train_baseline_missing_data_is_a_user_error(tmp_path, capsys):
    from stages import train_baseline

    assert train_baseline.main([f"output_dir={tmp_path / 'out'}", f"data.segmented_dir={tmp_path}"]) == 2
    assert "train.jsonl" in capsys.readouterr().err


def test_the_loss_on_target_positions_equals_the_loss_on_all_logits(bert_dir):
    """T5 decoder: ``return_loss`` projects only the target positions (``t5_output_head``)."""
    model = build(bert_dir).eval()  # no dropout: both passes see the same network
    batch = batch_for(model)
    assert (batch["labels"] == -100).any()  # padded positions, which the loss skips
    expected, expected_grads = baseline_loss_and_grads(model, batch, from_logits=True)
    got, grads = baseline_loss_and_grads(model, batch, from_logits=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert len(grads) == len(expected_grads) > 0
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


def test_the_seq2seq_training_loss_runs_no_mask_code_that_reads_the_device(bert_dir, monkeypatch):
    """Given 2-D padding masks, transformers asks on the host whether any key is padded (a device sync
    per encoder and per cross-attention, every step); the 4-D masks of sld.models.padding_masks skip it."""
    from tiny_models import record_padding_mask_reads

    model = build(bert_dir)
    assert model.encoder.config._attn_implementation == "sdpa"
    assert model.lm.get_decoder().config._attn_implementation == "sdpa"
    batch = batch_for(model)
    reads = record_padding_mask_reads(monkeypatch)
    model.loss(batch)["loss"].backward()
    assert reads == []


def test_the_4d_padding_masks_give_the_2d_masks_loss_and_gradients(bert_dir, monkeypatch):
    import sld.models.baseline as baseline_module

    model = build(bert_dir)
    batch = batch_for(model)
    assert not batch["attention_mask"].all()  # padded rows: the masks matter

    def loss_and_grads():
        model.zero_grad()
        loss = model.loss(batch)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = loss_and_grads()
    monkeypatch.setattr(baseline_module, "key_padding_mask", lambda mask, module: mask)
    expected_loss, expected_grads = loss_and_grads()
    torch.testing.assert_close(loss, expected_loss)
    assert len(grads) == len(expected_grads) > 0
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_seq2seq_rows_tokenized_once_batch_as_the_text_pairs_do(bert_dir):
    from sld.baseline_trainer import SourceTargetDataset
    from sld.models.baseline import Seq2SeqRow

    model = build(bert_dir)
    collate = model.collator()
    pairs = [(source, " ".join(segments)) for source, segments in STORIES] + [(None, "A lone target.")]
    rows = collate.tokenize(pairs)
    assert all(isinstance(row, Seq2SeqRow) for row in rows)
    from_rows, from_text = collate(rows), collate(pairs)
    assert from_rows.keys() == from_text.keys() == {"input_ids", "attention_mask", "labels", "target_index"}
    for key in from_text:
        assert torch.equal(from_rows[key], from_text[key]), key
    # the old path, tokenizer padding, gives the same encoder inputs
    reference = collate.sources([source for source, _ in pairs])
    assert torch.equal(from_rows["input_ids"], reference["input_ids"])
    assert torch.equal(from_rows["attention_mask"], reference["attention_mask"])
    docs = [
        SegmentedDocument(id=str(i), source=s, segments=seg, num_segments=len(seg))
        for i, (s, seg) in enumerate(STORIES)
    ]
    dataset = SourceTargetDataset(docs, collate.tokenize)
    assert isinstance(dataset[0], Seq2SeqRow)

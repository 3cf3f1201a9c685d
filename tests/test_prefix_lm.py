"""The AR baseline on a causal LM (a prefix LM): batching, the loss, and decoding agree with one row at a time."""

import pytest
import tiny_models
import torch

from sld.models.baseline import BaselineConfig, BaselineModel, baseline_loss

PAIRS = [
    ("Anna walked her dog.", "Tom baked a cake."),
    (None, "Sam fixed the old bike today."),
    ("Lucy", "Hi."),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    lm = tiny_models.save_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm")
    config = BaselineConfig(
        encoder="decoder", decoder_name_or_path=lm, max_source_tokens=12, max_target_tokens=40
    )
    return BaselineModel.from_config(config).eval()


def one_row(model, source, target):
    """Prompt ids, target ids + eos, and the LM's logits for the unpadded row."""
    prompt = model.collator().prompts([source])[0]
    target_ids = model.decoder_tokenizer(target, add_special_tokens=False)["input_ids"]
    labels = target_ids + [model.decoder_tokenizer.eos_token_id]
    logits = model.lm(input_ids=torch.tensor([prompt + target_ids])).logits[0]
    return prompt, labels, logits


def test_batch_is_right_padded_with_each_label_under_the_column_that_predicts_it(model):
    batch = model.collator()(PAIRS)
    eos = model.decoder_tokenizer.eos_token_id
    assert batch["attention_mask"][:, 0].all()  # every row starts at the first column
    assert batch["labels"].shape == batch["input_ids"].shape
    for row, (source, target) in enumerate(PAIRS):
        prompt, labels, _ = one_row(model, source, target)
        kept = batch["labels"][row]
        assert kept[kept != -100].tolist() == labels
        start = len(prompt) - 1  # the start token predicts the first target token
        assert (kept[:start] == -100).all() and kept[start : start + len(labels)].tolist() == labels
        assert batch["input_ids"][row, : len(prompt)].tolist() == prompt
        assert batch["input_ids"][row, start + 1 : start + len(labels)].tolist() == labels[:-1]
        assert kept[start + len(labels) - 1] == eos


def test_training_attention_is_causal_sdpa_without_a_padding_mask(model, monkeypatch):
    """No mask: SDPA may pick its causal flash kernel (a boolean mask forces the memory-efficient one)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    assert model.lm.config._attn_implementation == "sdpa"
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        baseline_loss(model, model.collator()(PAIRS))
    assert calls and all(mask is None and causal for mask, causal in calls)


def test_training_loss_runs_no_mask_code(model, monkeypatch):
    """transformers' check for packed sequences reads the device on the host (a sync every step)."""
    import transformers.masking_utils as masking_utils

    def refuse(*args, **kwargs):
        raise AssertionError("transformers' mask code ran in the training loss")

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", refuse)
    monkeypatch.setattr(masking_utils, "_ignore_causal_mask_sdpa", refuse)
    with torch.no_grad():
        baseline_loss(model, model.collator()(PAIRS))
    assert model.lm.config._attn_implementation == "sdpa"


def test_loss_equals_the_unpadded_rows(model):
    with torch.no_grad():
        loss = baseline_loss(model, model.collator()(PAIRS))["loss"]
        total, count = 0.0, 0
        for source, target in PAIRS:
            prompt, labels, logits = one_row(model, source, target)
            ce = torch.nn.functional.cross_entropy(
                logits[len(prompt) - 1 :], torch.tensor(labels), reduction="sum"
            )
            total, count = total + ce.item(), count + len(labels)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_batched_greedy_decode_equals_one_row_at_a_time(model):
    sources = ["Anna walked her dog in the park.", None, "Tom", "Sam fixed the old bike."]
    batch = model.collator().sources(sources)
    ids = model.generate_ids(**batch, max_new_tokens=10)
    eos = model.decoder_tokenizer.eos_token_id
    for row, source in enumerate(sources):
        sequence = model.collator().prompts([source])[0]
        expected = []
        with torch.no_grad():
            for _ in range(10):
                token = int(model.lm(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
                expected.append(token)
                sequence.append(token)
                if token == eos:
                    break
        assert ids[row, : len(expected)].tolist() == expected
    assert len({tuple(r) for r in ids.tolist()}) > 1


def test_the_loss_on_target_positions_has_the_gradients_of_the_loss_on_all_logits(model):
    """``return_loss`` projects only the target positions through the LM's head (chunked)."""
    batch = model.collator()(PAIRS)
    expected, expected_grads = tiny_models.baseline_loss_and_grads(model, batch, from_logits=True)
    got, got_grads = tiny_models.baseline_loss_and_grads(model, batch, from_logits=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert len(got_grads) == len(expected_grads) > 0
    for grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


def test_rows_tokenized_once_batch_as_the_text_pairs_do(model):
    from sld.models.baseline import PrefixLMRow

    collate = model.collator()
    rows = collate.tokenize(PAIRS)
    assert all(isinstance(row, PrefixLMRow) for row in rows)
    from_rows, from_text = collate(rows), collate(PAIRS)
    assert from_rows.keys() == from_text.keys()
    for key in from_text:
        assert torch.equal(from_rows[key], from_text[key]), key


def test_the_trainer_dataset_holds_token_rows_for_a_causal_baseline(model):
    from sld.baseline_trainer import SourceTargetDataset
    from sld.data.segmented import SegmentedDocument
    from sld.models.baseline import PrefixLMRow

    docs = [
        SegmentedDocument(id="a", source="Anna walked.", segments=["Tom baked.", "It rose."], num_segments=2)
    ]
    dataset = SourceTargetDataset(docs, model.collator().tokenize)
    assert isinstance(dataset[0], PrefixLMRow) and dataset.pairs[0] == ("Anna walked.", "Tom baked. It rose.")
    assert torch.equal(model.collator()([dataset[0]])["labels"], model.collator()(dataset.pairs)["labels"])
    # the length-grouped sampler sorts token rows by their tokens: the row's width in a batch
    batch = model.collator()([dataset[0]])
    assert dataset.lengths() == [len(dataset[0].prompt) + len(dataset[0].target)]
    assert batch["input_ids"].shape[1] == dataset.lengths()[0]
    assert SourceTargetDataset(docs).lengths() == [len("Anna walked.") + len("Tom baked. It rose.")]


def test_compiled_decoder_layers_trace_the_unmasked_attention(tmp_path):
    """Dynamo traces the LM's layers through the registered attention function (no graph break) and
    the training loss is eager's."""
    from torch._dynamo.utils import counters

    from sld.compilation import compile_model, uncompile

    lm = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    model = BaselineModel.from_config(
        BaselineConfig(encoder="decoder", decoder_name_or_path=lm, max_source_tokens=12, max_target_tokens=40)
    ).eval()
    batch = model.collator()(PAIRS)
    with torch.no_grad():
        expected = baseline_loss(model, batch)["loss"]
        torch._dynamo.reset()
        counters.clear()
        compile_model(model, backend="eager")
        got = baseline_loss(model, batch)["loss"]
    uncompile(model)
    assert counters["frames"]["ok"] >= 1 and not counters["graph_break"]
    torch.testing.assert_close(got, expected)

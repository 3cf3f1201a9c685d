"""4-D key padding masks (sld.models.padding_masks): the encoder's outputs of the 2-D mask, no host read."""

import pytest
import tiny_models
import torch
from transformers import AutoModel, AutoTokenizer

from sld.models.padding_masks import key_padding_mask

TEXTS = ["Anna walked her dog in the park.", "Tom baked.", "Hi"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return tiny_models.save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", num_layers=2)


def encoder_and_batch(folder: str, implementation: str):
    encoder = AutoModel.from_pretrained(folder, attn_implementation=implementation).eval()
    batch = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].all()  # padded rows: the mask matters
    return encoder, batch


def test_an_sdpa_encoder_gets_the_4d_boolean_mask_and_others_the_2d_one(bert_folder):
    sdpa, batch = encoder_and_batch(bert_folder, "sdpa")
    mask = key_padding_mask(batch["attention_mask"], sdpa)
    assert mask.dtype == torch.bool and mask.shape == (len(TEXTS), 1, 1, batch["input_ids"].shape[1])
    assert torch.equal(mask[:, 0, 0], batch["attention_mask"].bool())
    eager, _ = encoder_and_batch(bert_folder, "eager")
    assert key_padding_mask(batch["attention_mask"], eager) is batch["attention_mask"]
    assert key_padding_mask(mask, sdpa) is mask  # already 4-D


def test_the_encoder_states_equal_the_2d_masks_and_the_mask_is_not_read(bert_folder, monkeypatch):
    encoder, batch = encoder_and_batch(bert_folder, "sdpa")
    reads = tiny_models.record_padding_mask_reads(monkeypatch)
    with torch.no_grad():
        expected = encoder(**batch).last_hidden_state
        assert reads, "the 2-D mask should be read on the host (else this test proves nothing)"
        reads.clear()
        mask = key_padding_mask(batch["attention_mask"], encoder)
        got = encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
    assert reads == []
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)

"""Causal attention with no mask built (sld.models.unmasked_causal): the same outputs, no mask code."""

import pytest
import tiny_models
import torch
import transformers.masking_utils as masking_utils
from transformers import AutoModelForCausalLM

from sld.models.unmasked_causal import UNMASKED_CAUSAL_ATTENTION, unmasked_causal_attention


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tiny_models.save_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm")
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()


def right_padded_rows(lm):
    torch.manual_seed(0)
    return torch.randint(3, lm.config.vocab_size, (3, 9))


def test_outputs_equal_sdpa_with_no_mask(lm):
    ids = right_padded_rows(lm)
    with torch.no_grad():
        expected = lm(input_ids=ids, use_cache=False).logits
        with unmasked_causal_attention(lm) as switched:
            got = lm(input_ids=ids, use_cache=False).logits
    assert switched
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_no_packed_sequence_check_runs(lm, monkeypatch):
    """transformers reads the position ids on the host (a device sync) when given no mask; not here."""
    calls = []
    original = masking_utils.find_packed_sequence_indices

    def recording(position_ids):
        calls.append(position_ids.shape)
        return original(position_ids)

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", recording)
    ids = right_padded_rows(lm)
    with torch.no_grad():
        lm(input_ids=ids, use_cache=False)
        assert calls, (
            "the plain sdpa forward should run the packed-sequence check (else this test proves nothing)"
        )
        calls.clear()
        with unmasked_causal_attention(lm):
            lm(input_ids=ids, use_cache=False)
    assert calls == []


def test_the_implementation_is_restored_after_an_error(lm):
    with pytest.raises(RuntimeError, match="boom"):
        with unmasked_causal_attention(lm):
            assert lm.config._attn_implementation == UNMASKED_CAUSAL_ATTENTION
            raise RuntimeError("boom")
    assert lm.config._attn_implementation == "sdpa"


def test_other_implementations_are_left_alone(tmp_path):
    folder = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    eager = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with unmasked_causal_attention(eager) as switched:
        assert not switched and eager.config._attn_implementation == "eager"


def test_a_mask_is_refused(lm):
    from sld.models.unmasked_causal import unmasked_causal_attention_forward

    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="without a mask"):
        unmasked_causal_attention_forward(lm.model.layers[0].self_attn, q, q, q, torch.ones(1, 1, 3, 3))

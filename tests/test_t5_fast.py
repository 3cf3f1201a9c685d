"""sld.models.t5_fast: T5's feed-forward blocks and norms with fewer kernels give transformers' outputs
and gradients, skip the autocast cast round trip of the (B', L, d_ff) activations, keep every
state-dict key, and reach the autoencoder's decoder (built and loaded); the autoencoder's T5 loss on
the target positions alone equals the loss on all logits."""

import copy

import pytest
import torch
from tiny_models import save_tiny_bert, save_tiny_causal_lm, tiny_autoencoder
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, T5Config
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm

from sld.errors import UserError
from sld.losses import conversion_loss
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.t5_fast import (
    FUSE_T5_ENV,
    FusedT5DenseGatedActDense,
    FusedT5LayerNorm,
    fuse_t5_elementwise,
    maybe_fuse_t5_elementwise,
    t5_output_head,
)
from sld.tokenization import IGNORE_INDEX

D_FF = 96


def tiny_t5(feed_forward: str = "gated-gelu") -> torch.nn.Module:
    config = T5Config(
        vocab_size=200,
        d_model=32,
        d_kv=8,
        d_ff=D_FF,
        num_layers=0,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj=feed_forward,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(config).eval()


def logits_and_grads(
    lm: torch.nn.Module, autocast: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Teacher-forced logits (3, 7, V) of fixed memory / ids, and every parameter's gradient of their sum."""
    generator = torch.Generator().manual_seed(1)
    memory = torch.randn(3, 5, 32, generator=generator)
    ids = torch.randint(1, 200, (3, 7), generator=generator)
    lm.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory), decoder_input_ids=ids, use_cache=False
        ).logits
    logits.float().pow(2).mean().backward()
    return logits.detach().float(), {
        n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("feed_forward", ["gated-gelu", "relu", "gelu"])
def test_fused_t5_gives_transformers_outputs_and_gradients_in_float32(feed_forward):
    lm = tiny_t5(feed_forward)
    fast = copy.deepcopy(lm)
    assert fuse_t5_elementwise(fast) > 0
    expected, expected_grads = logits_and_grads(lm)
    got, grads = logits_and_grads(fast)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_fused_t5_under_bf16_autocast_agrees_to_bf16_precision():
    lm = tiny_t5()
    fast = copy.deepcopy(lm)
    fuse_t5_elementwise(fast)
    expected, _ = logits_and_grads(lm, autocast=True)
    got, _ = logits_and_grads(fast, autocast=True)
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)


class _Casts(TorchDispatchMode):
    """Counts dtype casts (``_to_copy``) whose result has ``last_dim`` columns."""

    def __init__(self, last_dim: int) -> None:
        super().__init__()
        self.last_dim, self.count = last_dim, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and out.dim() and out.shape[-1] == self.last_dim:
            self.count += 1
        return out


def _feed_forward_casts(lm: torch.nn.Module) -> int:
    with _Casts(D_FF) as casts:
        logits_and_grads(lm, autocast=True)
    return casts.count


def test_the_autocast_round_trip_of_the_feed_forward_activations_is_gone():
    lm = tiny_t5()
    before = _feed_forward_casts(lm)
    # per layer transformers casts the (B', L, d_ff) activations to float32 before wo and autocast
    # casts them back, and the backward pass casts their gradient both ways: 4 casts a layer, 2
    # layers. The fused block hands bf16 to autocast's wo; what is left are the (d_model, d_ff) wo
    # weight's casts, which both keep.
    fuse_t5_elementwise(lm)
    after = _feed_forward_casts(lm)
    assert after == before - 2 * 4
    assert after > 0


def test_a_norm_output_is_cast_to_bf16_once_not_once_per_linear_reading_it():
    lm = tiny_t5()
    with _Casts(32) as before:  # d_model = 32
        logits_and_grads(lm, autocast=True)
    fuse_t5_elementwise(lm)
    with _Casts(32) as after:
        logits_and_grads(lm, autocast=True)
    # per layer the self-attention's norm fed 3 casts (query, key, value) and the feed-forward's 2
    # (wi_0, wi_1): now 1 each; the same again in the backward pass; 2 layers
    assert after.count == before.count - 2 * (2 + 1) * 2


def test_without_autocast_a_float16_model_with_a_float32_wo_still_casts():
    """transformers keeps T5's ``wo`` in float32 for half-precision checkpoints: that path keeps working."""
    lm = tiny_t5()
    fast = copy.deepcopy(lm)
    fuse_t5_elementwise(fast)
    for model in (lm, fast):
        model.to(torch.bfloat16)
        for name, module in model.named_modules():
            if name.endswith("DenseReluDense"):
                module.wo.float()
    with torch.no_grad():
        memory = BaseModelOutput(last_hidden_state=torch.randn(2, 5, 32, dtype=torch.bfloat16))
        ids = torch.randint(1, 200, (2, 4))
        expected = lm(encoder_outputs=memory, decoder_input_ids=ids, use_cache=False).logits
        got = fast(encoder_outputs=memory, decoder_input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05, rtol=0.02)


def test_a_half_precision_norm_falls_back_to_transformers():
    norm = T5LayerNorm(8)
    norm.weight.data = torch.linspace(0.5, 1.5, 8)
    x = torch.randn(3, 8)
    expected = norm.to(torch.bfloat16)(x)
    norm.__class__ = FusedT5LayerNorm
    torch.testing.assert_close(norm(x), expected)


def test_state_dict_keys_are_unchanged_and_a_state_dict_loads_across():
    lm = tiny_t5()
    fast = copy.deepcopy(lm)
    fuse_t5_elementwise(fast)
    assert list(fast.state_dict()) == list(lm.state_dict())
    plain = tiny_t5()
    plain.load_state_dict(fast.state_dict(), strict=True)


def test_other_models_are_left_alone(tmp_path):
    lm = AutoModelForCausalLM.from_pretrained(save_tiny_causal_lm(tmp_path / "llama"))
    assert fuse_t5_elementwise(lm) == 0


def test_the_switch(monkeypatch):
    monkeypatch.setenv(FUSE_T5_ENV, "0")
    assert maybe_fuse_t5_elementwise(tiny_t5()) == 0
    monkeypatch.setenv(FUSE_T5_ENV, "yes")
    with pytest.raises(UserError, match=FUSE_T5_ENV):
        maybe_fuse_t5_elementwise(tiny_t5())
    monkeypatch.setenv(FUSE_T5_ENV, "1")
    # per decoder layer: the feed-forward block, its gelu_new, 3 norms; plus the final norms of the
    # decoder and of the (empty, never run) encoder
    assert maybe_fuse_t5_elementwise(tiny_t5()) == 2 * 5 + 2


def test_the_autoencoder_decoder_is_fused_when_built_and_when_loaded(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert")
    model = tiny_autoencoder(bert, seed=0)
    kinds = {type(m) for m in model.lm.modules()}
    assert FusedT5DenseGatedActDense in kinds and FusedT5LayerNorm in kinds
    model.save_pretrained(tmp_path / "ae")
    loaded = SegmentAutoencoder.from_pretrained(tmp_path / "ae")
    assert FusedT5DenseGatedActDense in {type(m) for m in loaded.lm.modules()}


@pytest.mark.parametrize("scaled", [True, False])
def test_the_t5_loss_on_target_positions_only_equals_the_loss_on_all_logits(tmp_path, scaled):
    model = tiny_autoencoder(save_tiny_bert(tmp_path / "bert"), seed=0).float()
    model.lm.config.scale_decoder_outputs = scaled  # read at every forward, by both paths
    assert t5_output_head(model.lm)[1] == (model.lm.model_dim**-0.5 if scaled else 1.0)
    torch.manual_seed(2)
    z = torch.randn(4, model.config.num_latents, model.config.latent_dim, requires_grad=True)
    labels = torch.randint(3, 50, (4, 6))
    labels[0, 4:] = IGNORE_INDEX  # padded positions: no loss
    labels[2, 1:] = IGNORE_INDEX
    expected = conversion_loss(model.reconstruction_logits(z, labels), labels)
    (expected_grad,) = torch.autograd.grad(expected, z)
    got = model.reconstruction_loss(z, labels)
    (grad,) = torch.autograd.grad(got, z)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)


def test_no_output_head_split_for_other_models_or_older_configs(tmp_path):
    llama = AutoModelForCausalLM.from_pretrained(save_tiny_causal_lm(tmp_path / "llama"))
    assert t5_output_head(llama) is None
    lm = tiny_t5()
    del lm.config.scale_decoder_outputs  # a transformers version without the setting
    assert t5_output_head(lm) is None

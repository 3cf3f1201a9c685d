"""SegmentAutoencoder with a pretrained causal-LM decoder (a tiny random Llama saved to a folder).

The same loading, training objective, parallel decoding and save/load code as the SmolLM2 profiles.
"""

from __future__ import annotations

import pytest
import tiny_models
import torch

from sld.autoencoder_objective import AutoencoderLossConfig, autoencoder_losses
from sld.config import ConfigError
from sld.data.collate import SegmentCollator
from sld.errors import UserError
from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
from sld.training import OptimConfig, build_optimizer

ROWS = [
    "Anna walked her dog in the park.",
    {"sentence": "Tom baked a cake.", "paraphrase": "Tom made a cake.", "negative": "Stocks fell."},
    {"sentence": "Sam fixed the old bike.", "paraphrase": "Sam repaired the bike.", "negative": "Oil rose."},
    "Lucy lost her keys at the mall.",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal_ae")
    return tiny_models.save_tiny_bert(root / "bert"), tiny_models.save_tiny_causal_lm(root / "lm")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("conditioning", ["kv", "prefix", "kv+prefix"])
def test_every_trainable_parameter_gets_a_gradient_from_the_full_loss(folders, conditioning):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning=conditioning).train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    terms = autoencoder_losses(model, batch, AutoencoderLossConfig(word_dropout=0.2), training=True)
    assert all(terms[k] > 0 for k in ("conversion", "contrastive", "adversarial"))
    terms["loss"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("lm.") for n in trainable) and any(
        n.startswith("latent_conditioning.") for n in trainable
    )
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing
    assert not any(n.startswith("text_encoder.") for n in trainable)  # the BERT encoder stays frozen


def test_labels_end_with_one_eos_and_decode_to_the_text(folders):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0)
    labels = model.tokenize_for_decoder(["Tom baked a cake.", "Hi."])["labels"]
    eos = model.decoder_tokenizer.eos_token_id
    for row, text in zip(labels, ["Tom baked a cake.", "Hi."]):
        ids = row[row != -100].tolist()
        assert ids[-1] == eos and ids.count(eos) == 1
        assert model.decoder_tokenizer.decode(ids[:-1]) == text


def test_save_load_round_trip_gives_identical_outputs(folders, tmp_path):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=3, conditioning="kv+prefix")
    model.config.decode_max_tokens = 7
    model.save_pretrained(tmp_path / "ae")
    loaded = SegmentAutoencoder.from_pretrained(tmp_path / "ae")
    assert loaded.is_causal and loaded.config.decode_max_tokens == 7
    z = model.encode_texts(tiny_models.CORPUS[:5])
    labels = model.tokenize_for_decoder(tiny_models.CORPUS[:5])["labels"]
    assert torch.equal(model.reconstruction_logits(z, labels), loaded.reconstruction_logits(z, labels))
    ids = model.generate_ids(z)
    assert ids.shape[1] <= 7  # the saved decoding budget
    assert torch.equal(ids, loaded.generate_ids(z))
    assert model.decode_latents(z, no_repeat_ngram_size=2) == loaded.decode_latents(z, no_repeat_ngram_size=2)


def test_parallel_decode_of_all_segments_equals_one_by_one(folders):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=4)
    z = model.encode_texts(tiny_models.CORPUS[:6])
    together = model.decode_latents(z, max_new_tokens=9)
    alone = [model.decode_latents(z[i : i + 1], max_new_tokens=9)[0] for i in range(6)]
    assert together == alone


def test_decoding_options_and_errors(folders):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0)
    z = model.encode_texts(["Tom baked a cake."])
    with pytest.raises(UserError, match="beam search"):
        model.generate_ids(z, num_beams=2)
    with pytest.raises(UserError, match="length_penalty"):
        model.generate_ids(z, length_penalty=1.0)
    assert model.generate_ids(z, max_new_tokens=5, min_new_tokens=5).shape == (1, 5)
    assert model.decode_latents(z[:0]) == []
    with pytest.raises(ConfigError, match="encoder=decoder"):
        SegmentAutoencoder.from_config(
            AutoencoderConfig(
                encoder="decoder", decoder_name_or_path=folders[1], num_latents=4, latent_dim=16
            )
        )


def test_measured_decoding_budget(folders):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0)
    texts = ["a"] * 99 + ["a much longer segment than all the others here"]
    short = len(model.tokenize_for_decoder(["a"])["labels"][0])
    assert model.measure_decode_budget(texts, percentile=50) == short
    assert model.measure_decode_budget(texts, percentile=100) == model.max_segment_tokens  # truncated at L


def test_pretrained_lm_trains_at_the_scaled_rate_or_not_at_all(folders):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0)
    pretrained = {id(p) for p in model.pretrained_parameters()}
    assert pretrained == {id(p) for p in model.lm.parameters()}
    optimizer = build_optimizer(
        model.parameters(), OptimConfig(lr=1e-3, pretrained_lr_scale=0.1), model.pretrained_parameters()
    )
    for group in optimizer.param_groups:
        scaled = {id(p) in pretrained for p in group["params"]}
        assert len(scaled) == 1 and group["lr"] == pytest.approx(1e-4 if scaled.pop() else 1e-3)
    frozen = tiny_models.tiny_causal_autoencoder(*folders, seed=0)
    build_optimizer(frozen.parameters(), OptimConfig(pretrained_lr_scale=0.0), frozen.pretrained_parameters())
    assert not any(p.requires_grad for p in frozen.lm.parameters())
    assert frozen.latent_conditioning.to_kv.weight.requires_grad


def test_pretrained_lm_can_stay_frozen_for_the_first_steps(folders):
    from sld.training import group_lr_lambdas

    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0)
    optim = OptimConfig(
        lr=1e-3, warmup_steps=0, schedule="constant", pretrained_lr_scale=0.1, freeze_pretrained_steps=3
    )
    optimizer = build_optimizer(model.parameters(), optim, model.pretrained_parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, group_lr_lambdas(optimizer, optim, total_steps=10)
    )
    lm_before = [p.detach().clone() for p in model.lm.parameters()]
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    for step in range(5):
        rates = {g["pretrained"]: g["lr"] for g in optimizer.param_groups}
        assert rates == ({False: 1e-3, True: 0.0} if step < 3 else {False: 1e-3, True: pytest.approx(1e-4)})
        loss = autoencoder_losses(model.train(), batch, AutoencoderLossConfig(variant="vanilla"))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        lm_changed = any(not torch.equal(a, b) for a, b in zip(lm_before, model.lm.parameters()))
        assert lm_changed == (step >= 3)


@pytest.mark.parametrize("conditioning", ["kv", "prefix"])
def test_a_frozen_lm_learns_to_read_the_latent(folders, conditioning):
    """With the LM frozen (LD4LG's setting) only the bridge trains; the loss can then fall only by reading
    the latent, so each segment's own latents must explain it far better than another segment's."""
    torch.manual_seed(0)
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning=conditioning)
    optimizer = build_optimizer(
        model.parameters(), OptimConfig(lr=3e-3, pretrained_lr_scale=0.0), model.pretrained_parameters()
    )
    texts = [row if isinstance(row, str) else row["sentence"] for row in ROWS]
    batch = SegmentCollator.from_autoencoder(model)(texts)
    vanilla = AutoencoderLossConfig(variant="vanilla")
    for _ in range(100):
        optimizer.zero_grad()
        autoencoder_losses(model.train(), batch, vanilla)["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        z = model.encode(batch["input_ids"], batch["attention_mask"])
        own = model.reconstruction_nll(z, batch["labels"]).mean()
        swapped = model.reconstruction_nll(z.roll(1, dims=0), batch["labels"]).mean()
    # measured after 100 steps: kv 3.36 vs 6.59, prefix 3.74 vs 6.34 (a bridge that is not read gives own == swapped)
    assert own < 0.7 * swapped, (own, swapped)


def test_the_chunked_conversion_loss_equals_the_full_logits_loss(folders):
    """A causal LM's conversion loss skips the (B', L, V) logits; value and gradients stay the same."""
    from sld.losses import conversion_loss
    from sld.models.causal_lm import plain_output_head

    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0).eval()
    assert plain_output_head(model.lm) is model.lm.get_output_embeddings()
    batch = SegmentCollator.from_autoencoder(model)(
        [r if isinstance(r, str) else r["sentence"] for r in ROWS]
    )
    z = model.encode(batch["input_ids"], batch["attention_mask"])
    full = conversion_loss(model.reconstruction_logits(z, batch["labels"]), batch["labels"])
    full_grads = torch.autograd.grad(full, [model.latent_conditioning.to_kv.weight, model.lm.lm_head.weight])
    chunked = model.reconstruction_loss(z, batch["labels"])
    grads = torch.autograd.grad(chunked, [model.latent_conditioning.to_kv.weight, model.lm.lm_head.weight])
    assert torch.allclose(chunked, full, atol=1e-5)
    for a, b in zip(grads, full_grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("conditioning", ["kv", "prefix"])
def test_the_decoder_passes_run_no_mask_code_that_reads_the_device(folders, conditioning, monkeypatch):
    """transformers' mask code waits for the device when it checks a padding mask (``.all()``) or, with
    no mask and no cache, the position ids for packed sequences: neither may run in the decoder's
    training passes (a host sync per pass on a GPU; the frozen encoder's states come from the cache)."""
    import transformers.masking_utils as masking_utils

    def refuse(*args, **kwargs):
        raise AssertionError("transformers' mask code read the device in a decoder pass")

    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning=conditioning).train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    z = model.encode(batch["input_ids"], batch["attention_mask"]).detach().requires_grad_(True)
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", refuse)
    monkeypatch.setattr(masking_utils, "fast_all", refuse)
    ids = batch["labels"].clamp(min=0)
    for kwargs in ({"attention_mask": torch.ones_like(ids)}, {}):  # the patches do catch the LM's mask code
        with pytest.raises(AssertionError, match="read the device"):
            model.lm(input_ids=ids, use_cache=False, **kwargs)
    loss = model.reconstruction_loss(z, batch["labels"], model.decoder_inputs(batch["labels"]))
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("conditioning", ["kv", "prefix"])
def test_decoder_buckets_give_a_causal_decoders_one_pass_losses(folders, conditioning):
    """Length buckets on a causal-LM decoder (its latent prefix or key/value conditioning per bucket):
    the terms and the gradients of one padded pass."""
    rows = [*ROWS, "After the long storm the neighbours came out to clear the fallen branches together."]
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning=conditioning).eval()
    cfg = AutoencoderLossConfig(noise_std=0.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for buckets in (1, 2):
        batch = SegmentCollator.from_autoencoder(model, decoder_buckets=buckets)(rows)
        terms = autoencoder_losses(model, batch, cfg, training=True)
        results.append((terms, torch.autograd.grad(terms["loss"], trainable, allow_unused=True)))
    (one, g_one), (two, g_two) = results
    assert len(SegmentCollator.from_autoencoder(model, decoder_buckets=2)(rows)["decoder_buckets"]) == 2
    for name in ("conversion", "adversarial", "loss"):
        torch.testing.assert_close(two[name], one[name])
    assert sum(g is not None for g in g_one) > 10
    for a, b in zip(g_two, g_one):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("conditioning", ["kv", "prefix"])
def test_targets_cut_at_the_budget_keep_a_causal_decoders_earlier_logits(folders, conditioning):
    """``data.targets_within_budget`` on a causal-LM decoder (the SmolLM2 profiles inherit it from the
    ROC config): the logits at a row's first ``keep`` positions are those of its whole targets."""
    from sld.tokenization import IGNORE_INDEX

    rows = [*ROWS, "After the long storm the neighbours came out to clear the fallen branches together."]
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning=conditioning).eval()
    model.config.decode_max_tokens = keep = 5
    whole = SegmentCollator.from_autoencoder(model)(rows)
    cut = SegmentCollator.from_autoencoder(model, targets_within_budget=True)(rows)
    assert whole["labels"].shape[1] > keep == cut["labels"].shape[1]
    kept = cut["labels"] != IGNORE_INDEX
    assert torch.equal(cut["labels"][kept], whole["labels"][:, :keep][kept])
    z = torch.randn(
        len(rows), model.num_latents, model.latent_dim, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits_whole = model.reconstruction_logits(z, whole["labels"])[:, :keep]
        logits_cut = model.reconstruction_logits(z, cut["labels"])
    torch.testing.assert_close(logits_cut[kept], logits_whole[kept])


@pytest.mark.parametrize("conditioning", ["kv", "prefix"])
def test_a_causal_decoders_conversion_backward_once_gives_the_same_terms_and_gradients(folders, conditioning):
    """``losses.conversion_backward_once`` (the default) on the SmolLM2 profiles' decoder: a causal
    LM reading the latent as per-layer keys/values or as a prefix, word dropout and noise drawn the
    same way; every term and every trainable parameter's gradient as with two backwards."""
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning=conditioning).train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for once in (False, True):
        torch.manual_seed(3)
        cfg = AutoencoderLossConfig(word_dropout=0.3, conversion_backward_once=once)
        terms = autoencoder_losses(model, batch, cfg, training=True)
        results.append((terms, torch.autograd.grad(terms["loss"], trainable, allow_unused=True)))
    (twice, g_twice), (once, g_once) = results
    for name in ("conversion", "adversarial", "contrastive", "loss"):
        torch.testing.assert_close(once[name], twice[name])
    assert sum(g is not None and bool(g.any()) for g in g_twice) > 10
    for a, b in zip(g_once, g_twice):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_a_causal_decoder_runs_the_conversion_backward_once_by_default(folders, monkeypatch):
    """The default (``conversion_backward_once`` None) puts a causal-LM decoder on the one-backward
    path, as a seq2seq one (on the SmolLM2 profile compiled with CUDA graphs 1.19x the segments/s of
    the two backwards, docs/results.md, thirty-second session); set to false, on the two-backward path."""
    import sld.autoencoder_objective as objective

    calls = []
    original = objective.conversion_backward_once
    monkeypatch.setattr(
        objective, "conversion_backward_once", lambda *args: calls.append(1) or original(*args)
    )
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=0, conditioning="kv").train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    for setting, expected in ((None, [1]), (False, [])):
        calls.clear()
        autoencoder_losses(
            model, batch, AutoencoderLossConfig(conversion_backward_once=setting), training=True
        )
        assert calls == expected

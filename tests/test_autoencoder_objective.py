"""The stage-2 objective: every term runs, every trainable parameter learns, the adversarial term is real."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import tiny_models
import torch

from sld.autoencoder_objective import AutoencoderLossConfig, autoencoder_losses
from sld.data.collate import SegmentCollator
from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder

CORPUS = [
    "The cat sat on the mat.",
    "A dog ran to the park!",
    "It's raining, isn't it?",
    "Mary bought 3 apples and 2 pears.",
    "Hello World.",
] * 4
ROWS = [
    "The cat sat on the mat.",
    {
        "sentence": "A dog ran to the park!",
        "paraphrase": "The dog ran into the park.",
        "negative": "Stocks fell.",
    },
    {"sentence": "It's raining, isn't it?", "paraphrase": "Is it raining?", "negative": "Taxes rose 3%."},
    {"sentence": "Hello World.", "paraphrase": "Hi world."},
]


def save_tiny_bert(folder: Path) -> str:
    return tiny_models.save_tiny_bert(folder, max_positions=64)


T5 = dict(model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=2, num_heads=4, dropout_rate=0.0)
BART = dict(
    model_type="bart", d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64,
    max_position_embeddings=64, dropout=0.0,
)  # fmt: skip


def build(
    encoder: str = "decoder", dropout: float = 0.0, decoder_config: dict | None = None, **overrides
) -> SegmentAutoencoder:
    config = AutoencoderConfig(
        encoder=encoder,
        decoder_config=decoder_config or T5,
        decoder_vocab_size=300,
        num_latents=4,
        latent_dim=16,
        compressor_layers=1,
        reconstructor_layers=1,
        dropout=dropout,
        max_segment_tokens=24,
        **overrides,
    )
    torch.manual_seed(0)
    return SegmentAutoencoder.from_config(config, CORPUS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: handing work to a second thread costs more than it saves (10x here on 2 shared cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def assert_same_terms_and_gradients(
    model: SegmentAutoencoder,
    terms: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    expected_grads: dict[str, torch.Tensor],
) -> None:
    """Every loss term of ``terms`` equals ``expected``'s, and the gradients of its loss equal
    ``expected_grads`` (``grads`` of the expected loss)."""
    for name in ("conversion", "adversarial", "contrastive", "loss"):
        torch.testing.assert_close(terms[name], expected[name])
    got = grads(model, terms["loss"])
    assert got.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(got[name], expected_grads[name], atol=1e-6, rtol=1e-4)


def grads(model: SegmentAutoencoder, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["vanilla", "noise_robust", "noise_robust_contrastive"])
def test_every_term_is_present(variant):
    model = build().train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    terms = autoencoder_losses(model, batch, AutoencoderLossConfig(variant=variant))
    assert set(terms) == {"loss", "conversion", "contrastive", "adversarial"}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert (terms["adversarial"] > 0) == (variant != "vanilla")
    assert (terms["contrastive"] > 0) == (variant == "noise_robust_contrastive")
    expected = terms["conversion"] + 0.2 * terms["contrastive"] + 0.15 * terms["adversarial"]
    torch.testing.assert_close(terms["loss"], expected)


def test_a_collated_batch_sends_its_target_positions_so_the_loss_does_not_search_them(monkeypatch):
    """The loss selects target tokens with the collator's host-built ``target_index``: searching the
    labels on the device instead (``target_positions``) would be a host sync per loss call."""
    import sld.losses

    model = build().train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    cfg = AutoencoderLossConfig(variant="noise_robust", noise_std=0.0)
    torch.manual_seed(1)
    searched = autoencoder_losses(model, {k: v for k, v in batch.items() if k != "target_index"}, cfg)

    def no_search(labels):
        raise AssertionError("target positions searched on the device")

    monkeypatch.setattr(sld.losses, "target_positions", no_search)
    torch.manual_seed(1)
    given = autoencoder_losses(model, batch, cfg)
    for name in ("conversion", "adversarial", "loss"):
        torch.testing.assert_close(given[name], searched[name])


def test_every_trainable_parameter_gets_a_gradient(bert_dir):
    model = build(encoder=bert_dir, freeze_encoder=False, dropout=0.1).train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    g = grads(model, autoencoder_losses(model, batch, AutoencoderLossConfig())["loss"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(n for n in trainable if n not in g or not g[n].abs().sum() > 0)
    assert not missing, missing
    assert any(n.startswith("text_encoder.encoder.") for n in trainable)  # the encoder does train
    # frozen parameters (bypassed LM encoder, BERT pooler) get nothing
    assert not any(n in g for n, p in model.named_parameters() if not p.requires_grad)


def test_adversarial_term_is_real_and_changes_the_gradient():
    model = build().train()  # no dropout, and no noise below: the only difference is the adversarial term
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    on = AutoencoderLossConfig(variant="noise_robust", noise_std=0.0, adversarial_epsilon=0.5)
    off = AutoencoderLossConfig(variant="noise_robust", noise_std=0.0, adversarial_weight=0.0)
    terms = autoencoder_losses(model, batch, on)
    # r is the steepest-ascent direction: the loss at z + r is above the clean loss
    assert terms["adversarial"] > terms["conversion"] > 0
    g_on = grads(model, terms["loss"])
    terms_off = autoencoder_losses(model, batch, off)
    assert terms_off["adversarial"].item() == 0.0
    torch.testing.assert_close(terms_off["conversion"], terms["conversion"])
    g_off = grads(model, terms_off["loss"])
    for name in (
        "compressor.latents",
        "reconstructor.proj_in.weight",
        "lm.decoder.block.0.layer.0.SelfAttention.q.weight",
    ):
        assert not torch.allclose(g_on[name], g_off[name]), name


def test_an_adversarial_fraction_runs_the_term_on_the_first_rows_only(monkeypatch):
    """At ``adversarial_fraction`` 0.5 the term is the one a batch of the first 2 of the 4 rows gives
    (the direction is normalised per row, so the rest of the batch does not change it); the collator
    sends those rows' target positions, so nothing is searched on the device; evaluation keeps every row."""
    import sld.losses

    model = build().train()
    half = AutoencoderLossConfig(variant="noise_robust", noise_std=0.0, adversarial_fraction=0.5)
    full = AutoencoderLossConfig(variant="noise_robust", noise_std=0.0)
    batch = SegmentCollator.from_autoencoder(model, adversarial_fraction=0.5)(ROWS)
    torch.testing.assert_close(
        batch["adversarial_target_index"], sld.losses.target_positions(batch["labels"][:2])
    )
    first_rows = autoencoder_losses(model, SegmentCollator.from_autoencoder(model)(ROWS[:2]), full)
    every_row = autoencoder_losses(model, batch, full)

    def no_search(labels):
        raise AssertionError("target positions searched on the device")

    monkeypatch.setattr(sld.losses, "target_positions", no_search)
    terms = autoencoder_losses(model, batch, half)
    torch.testing.assert_close(terms["adversarial"], first_rows["adversarial"])
    assert not torch.allclose(terms["adversarial"], every_row["adversarial"])
    torch.testing.assert_close(terms["conversion"], every_row["conversion"])  # every row still
    evaluated = autoencoder_losses(model, batch, half, training=False)
    torch.testing.assert_close(evaluated["adversarial"], every_row["adversarial"])
    assert SegmentCollator.from_autoencoder(model)(ROWS).keys() == batch.keys() - {"adversarial_target_index"}


LONG_ROWS = [*ROWS, "Then the whole family walked slowly home along the river, talking about the long day."]


@pytest.mark.parametrize("decoder", ["t5", "bart"])
def test_decoder_buckets_give_the_losses_and_gradients_of_one_padded_pass(monkeypatch, decoder):
    """Rows grouped by length, each group cut to its longest target: every term and every gradient is
    the one-pass value, with fewer decoder positions; the adversarial fraction keeps each bucket's
    first rows; nothing is searched on the device (a BART decoder, whose logits come from its own
    forward, through the same buckets)."""
    import sld.losses

    # no dropout, no noise below: the passes differ only in their padding
    model = build(decoder_config=T5 if decoder == "t5" else BART).train()
    cfg = AutoencoderLossConfig(noise_std=0.0)
    plain = SegmentCollator.from_autoencoder(model)(LONG_ROWS)
    bucketed = SegmentCollator.from_autoencoder(model, decoder_buckets=2)(LONG_ROWS)
    assert len(bucketed["decoder_buckets"]) == 2
    assert sum(b["labels"].numel() for b in bucketed["decoder_buckets"]) < plain["labels"].numel()
    one_pass = autoencoder_losses(model, plain, cfg)
    g_one = grads(model, one_pass["loss"])

    def no_search(labels):
        raise AssertionError("target positions searched on the device")

    monkeypatch.setattr(sld.losses, "target_positions", no_search)
    assert_same_terms_and_gradients(model, autoencoder_losses(model, bucketed, cfg), one_pass, g_one)

    half = AutoencoderLossConfig(noise_std=0.0, adversarial_fraction=0.5)
    halved = SegmentCollator.from_autoencoder(model, adversarial_fraction=0.5, decoder_buckets=2)(LONG_ROWS)
    assert "adversarial_target_index" not in halved
    kept = torch.cat([b["rows"] for b in halved["adversarial_buckets"]]).tolist()
    monkeypatch.undo()
    subset = SegmentCollator.from_autoencoder(model)([LONG_ROWS[i] for i in kept])
    expected = autoencoder_losses(model, subset, cfg)["adversarial"]
    torch.testing.assert_close(autoencoder_losses(model, halved, half)["adversarial"], expected)
    # a batch without the collator's adversarial rows: the same rows, their targets found on the device
    searched = {key: value for key, value in halved.items() if key != "adversarial_buckets"}
    torch.testing.assert_close(autoencoder_losses(model, searched, half)["adversarial"], expected)


@pytest.mark.parametrize("decoder", ["t5", "bart"])
def test_targets_cut_at_the_budget_keep_the_losses_of_the_positions_before_it(decoder):
    """``data.targets_within_budget``: a causal decoder's logits at a row's first ``keep`` positions
    do not depend on its later targets, so cutting the targets there leaves those positions' losses
    as they were and drops only the later ones (generation never reaches them)."""
    from sld.tokenization import IGNORE_INDEX

    model = build(decoder_config=T5 if decoder == "t5" else BART).eval()
    model.config.decode_max_tokens = keep = 6
    whole = SegmentCollator.from_autoencoder(model)(LONG_ROWS)
    cut = SegmentCollator.from_autoencoder(model, targets_within_budget=True)(LONG_ROWS)
    assert whole["labels"].shape[1] > keep and cut["labels"].shape[1] == keep
    kept = cut["labels"] != IGNORE_INDEX
    assert torch.equal(cut["labels"][kept], whole["labels"][:, :keep][kept])  # no eos put into a cut row
    torch.manual_seed(0)
    z = torch.randn(len(LONG_ROWS), model.num_latents, model.latent_dim)
    with torch.no_grad():
        logits_whole = model.reconstruction_logits(z, whole["labels"])[:, :keep]
        logits_cut = model.reconstruction_logits(z, cut["labels"])
        torch.testing.assert_close(logits_cut[kept], logits_whole[kept])
        # the conversion loss: the mean over the kept positions of the whole rows' token losses
        nll = torch.nn.functional.cross_entropy(
            logits_whole.transpose(1, 2),
            whole["labels"][:, :keep],
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        expected = nll[kept].mean()
        torch.testing.assert_close(
            model.reconstruction_loss(z, cut["labels"], target_index=cut["target_index"]), expected
        )
    model.config.decode_max_tokens = None
    with pytest.raises(ValueError, match="decoding budget"):
        SegmentCollator.from_autoencoder(model, targets_within_budget=True)


@pytest.mark.parametrize("decoder", ["t5", "bart"])
def test_targets_of_one_length_give_the_losses_and_gradients_of_the_longest_padded(bert_dir, decoder):
    """``data.fixed_decoder_length``: every batch's labels are padded to the decoding budget, whatever
    its segments' lengths; every term and gradient is the one of the same rows padded to their
    longest (no dropout, no noise: the batches differ only in padding)."""
    from sld.tokenization import IGNORE_INDEX

    # a frozen encoder (as MiniLM is) runs without dropout
    decoder_config = T5 if decoder == "t5" else BART
    model = build(encoder=bert_dir, decoder_config=decoder_config, freeze_encoder=True).train()
    model.config.decode_max_tokens = budget = 16
    cfg = AutoencoderLossConfig(noise_std=0.0, adversarial_fraction=0.5)
    fixed = SegmentCollator.from_autoencoder(
        model, 0.5, targets_within_budget=True, fixed_decoder_length=True
    )
    longest = SegmentCollator.from_autoencoder(model, 0.5, targets_within_budget=True)
    short_rows = ROWS[:1] + ROWS[3:]  # shorter than the budget
    assert longest(short_rows)["labels"].shape[1] < budget
    for rows in (LONG_ROWS, short_rows):
        one_length, padded = fixed(rows), longest(rows)
        assert one_length["labels"].shape == (len(rows), budget)
        assert torch.equal(one_length["input_ids"], padded["input_ids"])  # the encoder's side as it was
        kept = padded["labels"] != IGNORE_INDEX
        assert torch.equal(one_length["labels"][:, : kept.shape[1]][kept], padded["labels"][kept])
        expected = autoencoder_losses(model, padded, cfg)
        g_expected = grads(model, expected["loss"])
        assert_same_terms_and_gradients(
            model, autoencoder_losses(model, one_length, cfg), expected, g_expected
        )
    with pytest.raises(ValueError, match="fixed_decoder_length"):
        SegmentCollator.from_autoencoder(model, decoder_buckets=2, fixed_decoder_length=True)
    with pytest.raises(ValueError, match="fixed_decoder_length"):
        SegmentCollator.from_autoencoder(model, 0.5, adversarial_apart=True, fixed_decoder_length=True)


@pytest.mark.parametrize(("decoder", "buckets"), [("t5", 1), ("t5", 2), ("bart", 1)])
def test_adversarial_rows_apart_give_the_same_losses_and_gradients(decoder, buckets):
    """``losses.adversarial_rows_apart``: the conversion pass decodes the adversarial rows apart, so the
    latent gradient's backward runs through their decoder calls only; every term and gradient is the
    one-call value (no dropout, no noise: the passes differ only in how the rows are grouped)."""
    model = build(decoder_config=T5 if decoder == "t5" else BART).train()
    together = AutoencoderLossConfig(noise_std=0.0, adversarial_fraction=0.5)
    apart = AutoencoderLossConfig(noise_std=0.0, adversarial_fraction=0.5, adversarial_rows_apart=True)
    assert apart.collated_adversarial_apart and not together.collated_adversarial_apart
    plain = SegmentCollator.from_autoencoder(model, 0.5, buckets)(LONG_ROWS)
    split = SegmentCollator.from_autoencoder(model, 0.5, buckets, adversarial_apart=True)(LONG_ROWS)
    heads = split["adversarial_buckets"]
    assert split["decoder_buckets"][: len(heads)] == heads and len(split["decoder_buckets"]) > len(heads)
    expected = autoencoder_losses(model, plain, together)
    g_expected = grads(model, expected["loss"])

    differentiated = []  # the rows of each backward through the reconstructor, the decoder's memory
    hook = model.reconstructor.register_full_backward_hook(
        lambda module, grad_in, grad_out: differentiated.append(grad_out[0].shape[0])
    )
    terms = autoencoder_losses(model, split, apart)
    for name in ("conversion", "adversarial", "contrastive", "loss"):
        torch.testing.assert_close(terms[name], expected[name])
    # the latent gradient (the only backward inside the loss) went through the adversarial rows alone
    assert differentiated == [sum(len(b["rows"]) for b in heads)] and differentiated[0] < len(LONG_ROWS)
    g_apart = grads(model, terms["loss"])
    hook.remove()
    assert g_apart.keys() == g_expected.keys()
    for name in g_expected:
        torch.testing.assert_close(g_apart[name], g_expected[name], atol=1e-6, rtol=1e-4)
    # without the adversarial share below 1 there is nothing to keep apart: the batch is as before
    assert "decoder_buckets" not in SegmentCollator.from_autoencoder(model, adversarial_apart=True)(LONG_ROWS)


@pytest.mark.parametrize(
    ("encoder", "compiled", "fraction"),
    [("decoder", False, 1.0), ("bert", False, 1.0), ("bert", True, 1.0), ("bert", False, 0.5)],
)
def test_the_conversion_pass_runs_backward_once_with_the_same_losses_and_gradients(
    bert_dir, encoder, compiled, fraction
):
    """``losses.conversion_backward_once``: every term and every gradient as before (noise and
    contrastive term on: the same noise drawn), with the conversion pass's graph backpropagated once
    instead of twice (a backward hook on the reconstructor: the latent gradient's backward, the
    step's backward through the adversarial pass, and without the switch the conversion pass again).
    ``decoder``: the seq2seq LM's own encoder reads the segment (shared embeddings before and after
    the latents); ``compiled``: the blocks compiled (aot_eager), whose backward computes every weight
    gradient; ``fraction``: the adversarial pass on the first half of the rows, its latent gradient
    (and so the kept weight gradients) still from every row's conversion loss."""
    from sld.compilation import compile_model

    model = build(encoder=encoder if encoder == "decoder" else bert_dir).train()
    if compiled:
        compile_model(model, backend="aot_eager")
    batch = SegmentCollator.from_autoencoder(model, adversarial_fraction=fraction)(ROWS)
    twice = AutoencoderLossConfig(conversion_backward_once=False, adversarial_fraction=fraction)
    once = AutoencoderLossConfig(conversion_backward_once=True, adversarial_fraction=fraction)
    torch.manual_seed(1)
    expected = autoencoder_losses(model, batch, twice)
    g_expected = grads(model, expected["loss"])
    backwards = []
    hook = model.reconstructor.register_full_backward_hook(lambda *_: backwards.append(1))
    try:
        torch.manual_seed(1)
        terms = autoencoder_losses(model, batch, once)
        assert_same_terms_and_gradients(model, terms, expected, g_expected)
        calls_once = len(backwards)
        backwards.clear()
        torch.manual_seed(1)
        grads(model, autoencoder_losses(model, batch, twice)["loss"])
        assert (calls_once, len(backwards)) == (2, 3)
    finally:
        hook.remove()
    assert g_expected and all(g.abs().sum() > 0 for g in g_expected.values())


def test_a_compiled_backward_computes_weight_gradients_nobody_asked_for():
    """Why ``conversion_backward_once`` pays when compiled: an ``autograd.grad`` asking only for an
    input's gradient skips the weights' products eagerly, but a compiled graph's backward runs them
    all (torch's AOTAutograd; if this ever fails, the switch saves less there)."""
    from torch.profiler import profile

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
    products = {}
    for name, run in (("eager", mlp), ("compiled", torch.compile(mlp, backend="aot_eager"))):
        x = torch.randn(4, 16, requires_grad=True)
        torch.autograd.grad(run(x).sum(), x)  # traces the compiled graphs
        y = run(x).sum()
        with profile() as prof:
            torch.autograd.grad(y, x)
        products[name] = sum(event.name in ("aten::mm", "aten::addmm") for event in prof.events())
    assert products == {"eager": 2, "compiled": 4}


def test_a_counted_micro_batch_counts_the_conversion_backward_once():
    """Under a FLOP counter (whose module hooks refuse a backward asking for parameters' gradients)
    ``conversion_backward_once`` runs the two-backward path and takes the latent gradient's backward
    off the count: fewer FLOPs than the two-backward count, the same terms."""
    from sld.throughput import FlopCount

    model = build().train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    counted = {}
    for once in (False, True):
        torch.manual_seed(1)
        with FlopCount() as counter:
            terms = autoencoder_losses(model, batch, AutoencoderLossConfig(conversion_backward_once=once))
            terms["loss"].backward()
        counted[once] = (counter.total, terms["loss"].item())
    assert 0 < counted[True][0] < counted[False][0]
    assert counted[True][1] == pytest.approx(counted[False][1])


def test_the_conversion_backward_once_under_torchs_own_flop_counter_runs_the_two_backwards():
    """Code outside sld counting FLOPs with torch's ``FlopCounterMode`` (whose module hooks refuse a
    backward asking for parameters' gradients): the switch's path steps aside, the step runs and
    counts both backwards (more than sld's counter, which takes the latent backward off)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sld.throughput import FlopCount, any_flop_counter_active

    model = build().train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    once = AutoencoderLossConfig(conversion_backward_once=True)
    assert not any_flop_counter_active()
    with FlopCounterMode(display=False) as raw:
        assert any_flop_counter_active()
        autoencoder_losses(model, batch, once)["loss"].backward()
    with FlopCount() as counter:
        autoencoder_losses(model, batch, once)["loss"].backward()
    assert 0 < counter.total < raw.get_total_flops()


@pytest.mark.parametrize("positives", ["pairs", "dropout"])
def test_the_rows_paraphrases_and_negatives_are_encoded_in_one_compressor_call(bert_dir, positives):
    """One compressor call for the batch's rows, its distinct paraphrases (or a second view of every
    row) and its negatives, their lengths padded to the longest: the latents and the contrastive term
    of separate calls (no dropout here, so the two views agree)."""
    from sld.losses import info_nce

    model = build(encoder=bert_dir).eval()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    assert batch["positive_attention_mask"].shape[1] != batch["attention_mask"].shape[1]  # padding is real
    calls = []
    model.compressor.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    cfg = AutoencoderLossConfig(noise_std=0.0, contrastive_positives=positives)
    terms = autoencoder_losses(model, batch, cfg, training=False)
    rows, paraphrases, negatives = (batch[f"{p}input_ids"].shape[0] for p in ("", "positive_", "negative_"))
    assert calls == [rows + (paraphrases if positives == "pairs" else rows) + negatives]

    def alone(prefix=""):
        return model.encode(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"])

    z, negative = alone(), alone("negative_")
    if positives == "pairs":
        expected = info_nce(
            z[batch["positive_index"]], alone("positive_"), negative, targets=batch["positive_target"]
        )
    else:
        expected = info_nce(z, alone(), negative)
    torch.testing.assert_close(terms["contrastive"], expected, rtol=1e-4, atol=1e-5)


def test_noise_only_in_training_and_eval_under_no_grad():
    model = build().eval()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    cfg = AutoencoderLossConfig(noise_std=0.5)
    with torch.no_grad():
        a = autoencoder_losses(model, batch, cfg, training=False)
        b = autoencoder_losses(model, batch, cfg, training=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["adversarial"] > 0 and not a["loss"].requires_grad
    torch.manual_seed(3)
    noisy = autoencoder_losses(model, batch, cfg, training=True)
    assert not torch.equal(noisy["conversion"], a["conversion"])


def test_contrastive_sources():
    model = build(dropout=0.1).train()
    collate = SegmentCollator.from_autoencoder(model)
    plain = collate(["The cat sat on the mat.", "Hello World.", {"sentence": "A dog.", "negative": "Taxes."}])
    # pairs mode without any pair in the batch: nothing to contrast
    assert autoencoder_losses(model, plain, AutoencoderLossConfig())["contrastive"].item() == 0.0
    # dropout mode: a second dropout view is the positive, the out-of-domain text a hard negative
    dropout_cfg = AutoencoderLossConfig(contrastive_positives="dropout")
    terms = autoencoder_losses(model, plain, dropout_cfg)
    assert terms["contrastive"] > 0
    g = grads(model, terms["contrastive"])
    assert g["compressor.latents"].abs().sum() > 0


def test_a_few_steps_reduce_the_loss():
    model = build().train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    cfg = AutoencoderLossConfig()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    first = None
    for _ in range(12):
        loss = autoencoder_losses(model, batch, cfg)["loss"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first


@pytest.mark.parametrize("backward_once", [False, True])
def test_runs_through_a_ddp_wrapper(tmp_path, backward_once):
    """The objective goes through forward, so DDP (no .encode attribute) syncs every gradient; also
    with ``conversion_backward_once`` (its kept gradients reach the parameters in the step's backward)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    ddp = None
    try:
        model = build().train()
        ddp = DistributedDataParallel(model)
        batch = SegmentCollator.from_autoencoder(model)(ROWS)
        terms = autoencoder_losses(ddp, batch, AutoencoderLossConfig(conversion_backward_once=backward_once))
        terms["loss"].backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        # DDP's reducer holds the process group: free it while the group lives. Freed after
        # destroy_process_group (when the test's frame went), the Gloo group's destructor hung in a
        # thread join once in a CI run on 2 busy cores (2026-12-03).
        del ddp
        gc.collect()
        dist.destroy_process_group()


def test_config_validation():
    with pytest.raises(ValueError):
        AutoencoderLossConfig(variant="adv")
    with pytest.raises(ValueError):
        AutoencoderLossConfig(temperature=0)
    with pytest.raises(ValueError):
        AutoencoderLossConfig(contrastive_positives="paraphrase")
    for fraction in (0.0, 1.01):
        with pytest.raises(ValueError, match="adversarial_fraction"):
            AutoencoderLossConfig(adversarial_fraction=fraction)
    assert not AutoencoderLossConfig(variant="vanilla").uses_noise
    assert not AutoencoderLossConfig(variant="noise_robust").uses_contrastive


def test_the_terms_run_in_named_profiler_ranges():
    """profile.txt's digest lists these ranges: where an autoencoder step's forward time goes."""
    model = build().train()
    batch = SegmentCollator.from_autoencoder(model)(ROWS)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        autoencoder_losses(model, batch, AutoencoderLossConfig(variant="noise_robust_contrastive"))
    names = {event.key for event in prof.key_averages()}
    expected = {"encode", "conversion", "latent_gradient", "adversarial", "contrastive"}
    assert {f"sld.ae.{name}" for name in expected} <= names

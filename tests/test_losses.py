"""Loss functions against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from sld.losses import (
    adversarial_direction,
    adversarial_row_count,
    conversion_loss,
    gaussian_latent_noise,
    info_nce,
    mean_pool_latents,
)


def test_conversion_loss_ignores_minus_100():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 0, 1] + logp[0, 1, 4] + logp[1, 0, 0]) / 3
    torch.testing.assert_close(conversion_loss(logits, labels), expected)


def test_conversion_loss_all_ignored_is_zero_with_graph():
    logits = torch.randn(1, 2, 4, requires_grad=True)
    loss = conversion_loss(logits, torch.full((1, 2), -100))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="do not match"):
        conversion_loss(logits, torch.zeros(1, 3, dtype=torch.long))


def test_info_nce_matches_hand_computation():
    # Unit vectors chosen so that cosines are easy: anchors a0, a1; positives p0, p1; one negative n.
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised: (1, 0), (0, 1)
    positive = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # (1, 0), (1, 1)/sqrt2
    negative = torch.tensor([[0.0, -1.0]])
    t = 0.5
    r = 1 / math.sqrt(2)
    # rows: [s(a_i, p_0), s(a_i, p_1), s(a_i, n)]
    sims = torch.tensor([[1.0, r, 0.0], [0.0, r, -1.0]]) / t
    expected = -(sims[0, 0] - sims[0].logsumexp(0) + sims[1, 1] - sims[1].logsumexp(0)) / 2
    torch.testing.assert_close(info_nce(anchor, positive, negative, temperature=t), expected)
    # without the hard negative only the in-batch columns remain
    expected_nn = -(sims[0, 0] - sims[0, :2].logsumexp(0) + sims[1, 1] - sims[1, :2].logsumexp(0)) / 2
    torch.testing.assert_close(info_nce(anchor, positive, temperature=t), expected_nn)


def test_info_nce_with_targets_lets_anchors_share_one_positive():
    """Two anchors with the same paraphrase point at one positive: the loss of the deduplicated batch,
    not one where each is pushed away from a copy of its own positive."""
    torch.manual_seed(0)
    anchor, positive, negative = torch.randn(3, 5), torch.randn(2, 5), torch.randn(2, 5)
    targets = torch.tensor([0, 1, 0])
    got = info_nce(anchor, positive, negative, temperature=0.1, targets=targets)
    a = torch.nn.functional.normalize(anchor, dim=-1)
    candidates = torch.nn.functional.normalize(torch.cat([positive, negative]), dim=-1)
    sims = a @ candidates.T / 0.1
    expected = -(sims[torch.arange(3), targets] - sims.logsumexp(1)).mean()
    torch.testing.assert_close(got, expected)
    duplicated = info_nce(anchor, positive[targets], negative, temperature=0.1)  # a copy per anchor
    assert duplicated > got  # the copy of anchor 0's positive counted as its negative
    with pytest.raises(ValueError, match="one positive per anchor"):
        info_nce(anchor, positive, negative, targets=torch.tensor([0, 1]))


def test_info_nce_pools_latents():
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 4, 6), torch.randn(3, 4, 6), torch.randn(2, 4, 6)
    torch.testing.assert_close(
        info_nce(a, p, n), info_nce(mean_pool_latents(a), mean_pool_latents(p), mean_pool_latents(n))
    )
    # identical anchors and positives far apart from each other: loss near 0
    eye = torch.eye(3) * 5
    assert info_nce(eye, eye, temperature=0.05).item() < 1e-6
    with pytest.raises(ValueError):
        info_nce(torch.randn(2, 3), torch.randn(3, 3))


def test_mean_pool_latents():
    z = torch.arange(12.0).view(1, 3, 4)
    torch.testing.assert_close(mean_pool_latents(z), torch.tensor([[4.0, 5.0, 6.0, 7.0]]))


def test_adversarial_direction_has_norm_epsilon_per_example():
    g = torch.randn(4, 3, 5, requires_grad=True)
    r = adversarial_direction(g * 7, epsilon=0.05)
    assert not r.requires_grad
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((4,), 0.05))
    torch.testing.assert_close(r / 0.05, g.detach() / g.detach().flatten(1).norm(dim=1).view(4, 1, 1))
    assert torch.equal(adversarial_direction(torch.zeros(2, 3), 0.1), torch.zeros(2, 3))


def test_adversarial_row_count_rounds_up_and_keeps_at_least_one_row():
    assert adversarial_row_count(1024, 0.25) == 256
    assert adversarial_row_count(30, 0.1) == 3  # 0.1 x 30 is 3.0000000000000004 in floating point
    assert adversarial_row_count(31, 0.1) == 4
    assert adversarial_row_count(3, 0.1) == 1
    assert adversarial_row_count(5, 1.0) == 5
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="adversarial fraction"):
            adversarial_row_count(8, fraction)


def test_gaussian_latent_noise():
    z = torch.zeros(2000, 8, 4)
    noisy = gaussian_latent_noise(z, 0.05, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == z.shape
    assert abs(noisy.std().item() - 0.05) < 0.002
    assert gaussian_latent_noise(z, 0.0) is z


def test_chunked_token_nll_equals_the_full_cross_entropy_with_the_same_gradients():
    from sld.losses import chunked_token_nll

    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    head = torch.nn.Linear(8, 50)
    targets = torch.randint(0, 50, (37,))
    full = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    full_grads = torch.autograd.grad(full, [hidden, head.weight, head.bias])
    for chunk in (1, 5, 37, 100):
        chunked = chunked_token_nll(hidden, head.weight, head.bias, targets, chunk_tokens=chunk)
        grads = torch.autograd.grad(chunked, [hidden, head.weight, head.bias])
        assert torch.allclose(chunked, full, atol=1e-4)
        for a, b in zip(grads, full_grads):
            assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_token_nll(hidden, head.weight, None, targets, chunk_tokens=0)


def test_target_token_nll_equals_the_loss_on_all_logits_with_or_without_host_indices():
    from sld.losses import target_positions, target_token_nll

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8, requires_grad=True)  # (B, L, d)
    head = torch.nn.Linear(8, 40)
    labels = torch.randint(0, 40, (3, 5))
    labels[0, 3:] = -100
    labels[2, 1] = -100  # a target after a skipped position: the index is flat, not a prefix
    expected = conversion_loss(head(2.0 * hidden), labels)
    expected_grads = torch.autograd.grad(expected, [hidden, head.weight])
    index = target_positions(labels)
    assert index.tolist() == [i for i, label in enumerate(labels.flatten().tolist()) if label != -100]
    for given in (None, index):
        got = target_token_nll(hidden, labels, head, scale=2.0, target_index=given)
        torch.testing.assert_close(got, expected)
        for grad, expected_grad in zip(torch.autograd.grad(got, [hidden, head.weight]), expected_grads):
            torch.testing.assert_close(grad, expected_grad)
    none = torch.full_like(labels, -100)
    zero = target_token_nll(hidden, none, head, target_index=target_positions(none))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="does not match labels"):
        target_token_nll(hidden, labels[:, :4], head)


def test_chunked_token_nll_runs_compiled_inside_compiled_losses_with_the_same_values():
    """``loop.compile`` scores the chunks with the compiled form (inductor on the CPU here)."""
    from torch._dynamo.utils import counters

    from sld.compilation import compiled_losses
    from sld.losses import chunked_token_nll

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    states, targets = torch.randn(23, 16), torch.randint(0, 50, (23,))
    results = []
    for compiled in (False, True):
        counters.clear()
        hidden = states.clone().requires_grad_(True)
        head.zero_grad()
        with compiled_losses(compiled):
            loss = chunked_token_nll(hidden, head.weight, head.bias, targets, chunk_tokens=10)
        loss.backward()
        results.append((loss.detach(), hidden.grad, head.weight.grad.clone()))
        assert (counters["frames"]["ok"] >= 1) == compiled  # compiled for real, and only when asked
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_the_compiled_token_nll_serves_the_adversarial_terms_double_backward():
    """The autoencoder takes d loss / d z with the graph retained, then backpropagates the loss."""
    from sld.compilation import compiled_losses, retained_graphs
    from sld.losses import chunked_token_nll

    torch.manual_seed(0)
    head, proj = torch.nn.Linear(16, 50), torch.nn.Linear(8, 16)
    latents, targets = torch.randn(23, 8), torch.randint(0, 50, (23,))
    results = []
    for compiled in (False, True):
        head.zero_grad()
        proj.zero_grad()
        z = latents.clone().requires_grad_(True)
        with retained_graphs(), compiled_losses(compiled):
            loss = chunked_token_nll(proj(z), head.weight, head.bias, targets, chunk_tokens=10)
            (grad,) = torch.autograd.grad(loss, z, retain_graph=True)
            moved = z + 0.05 * grad / grad.norm()
            adversarial = chunked_token_nll(proj(moved), head.weight, head.bias, targets, chunk_tokens=10)
            (loss + adversarial).backward()
        results.append(
            (loss.detach(), adversarial.detach(), grad, head.weight.grad.clone(), proj.weight.grad)
        )
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)

"""The stage-2 training objective: every loss term of the segment autoencoder on one batch.

SLD (Zhu et al. 2025, section 3.2)::

    loss = conversion + contrastive_weight * contrastive + adversarial_weight * adversarial

* conversion: token cross-entropy of reconstructing the segment from its latents (with Gaussian
  noise on z during training in the noise-robust variants);
* adversarial (Miyato et al. 2017): g = d NLL / d z, r = epsilon * g / ||g|| per segment, and the
  conversion loss again at z + r. The direction is a constant; the loss at z + r trains the decoder,
  the reconstructor, the compressor and a trainable encoder. (The reference code never ran this term.)
* contrastive (supervised SimCSE): mean-pooled, l2-normalised latents; anchor = segment, positive =
  its paraphrase, negatives = the batch's other distinct positives plus every hard negative.

The three variants are the ablations of the paper's robustness figure: ``vanilla`` (conversion
only), ``noise_robust`` (+ Gaussian noise + adversarial), ``noise_robust_contrastive`` (+ contrastive).

Batch keys: see ``sld.data.collate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from sld.data.decoder_buckets import adversarial_buckets, bucket_target_count
from sld.distributed import global_mean
from sld.losses import adversarial_direction, adversarial_row_count, gaussian_latent_noise, info_nce
from sld.throughput import active_flop_count, any_flop_counter_active

if TYPE_CHECKING:  # the model's forward calls compute_autoencoder_losses: no runtime import cycle
    from sld.models.autoencoder import SegmentAutoencoder

Variant = Literal["vanilla", "noise_robust", "noise_robust_contrastive"]


@dataclass
class AutoencoderLossConfig:
    """Weights and settings of the autoencoder loss (run config, not architecture).

    Attributes:
        variant: which terms are on (see the module docstring).
        contrastive_weight: weight of the InfoNCE term (paper: 0.2).
        adversarial_weight: weight of the adversarial term (paper: 0.15).
        adversarial_epsilon: norm of the adversarial perturbation per segment (paper: 0.05).
        temperature: InfoNCE temperature (paper: 0.05).
        noise_std: std of the Gaussian noise added to z in training (noise-robust variants).
        contrastive_positives: where positives come from.
            ``"pairs"``: paraphrases in the batch (``positive_*`` keys from a pairs file); batches
            without pairs contribute 0.
            ``"dropout"``: no pairs file; the positive of every segment is a second encoding of it
            under dropout (unsupervised SimCSE). Needs dropout > 0 in the compressor.
            Either way, negatives are the other in-batch positives plus every hard negative in the
            batch (``negative_*`` keys: pair negatives or an out-of-domain text pool).
        word_dropout: share of teacher-forced decoder input tokens replaced by unk in training (Bowman
            et al. 2016), so that a strong pretrained decoder cannot predict the text from its own
            prefix alone and has to read the latent. The same inputs serve the conversion and the
            adversarial terms.
        adversarial_fraction: share of a batch's rows the adversarial term runs on (its first
            ``sld.losses.adversarial_row_count`` rows; batches are shuffled, so a random subset). 1.0
            (the paper's) runs it on every row. Below 1 its second decoder pass, forward and backward,
            shrinks to that share; its latent gradient comes from the conversion loss's graph, a
            backward over every row unless ``adversarial_rows_apart``. Training only: evaluation runs
            it on every row.
        adversarial_rows_apart: with ``adversarial_fraction`` < 1, the conversion pass decodes the
            adversarial term's rows apart from the rest (the collator makes them buckets of their own,
            ``sld.data.decoder_buckets.rest_buckets``), so that the latent gradient's backward runs
            through their decoder calls only: that share of a decoder backward instead of all of it,
            for one more decoder call per bucket (on a GPU, one more round of kernel launches). The
            same losses and gradients (tested).
        conversion_backward_once: in training with the adversarial term (and not
            ``adversarial_rows_apart``), the conversion pass runs backward once, not twice: the
            latent gradient's backward also takes the decoder's and reconstructor's weight gradients
            (``conversion_backward_once``), which the step's backward then adds instead of running
            that backward again. Compiled blocks compute those weight gradients in the latent
            gradient's backward anyway (a compiled backward computes every gradient of its graph),
            and throw them away without this. The same losses and gradients (tested); bf16 or float32
            (under an fp16 loss scale the kept gradients would be unscaled). None (the default): on
            (``runs_conversion_backward_once``), and the autoencoder trainer turns it off under
            ``loop.mixed_precision=fp16``. Measured on H100s (docs/results.md): the from-scratch ROC
            profile 1.12x the segments/s of the two backwards eager and 1.23x compiled with CUDA
            graphs (thirty-first session); the SmolLM2 profile (timing weights) 1.19x compiled with
            CUDA graphs and 1.05x eager (thirty-second session; 0.89x eager in the thirty-first,
            its rate falling over that run).
    """

    variant: Variant = "noise_robust_contrastive"
    contrastive_weight: float = 0.2
    adversarial_weight: float = 0.15
    adversarial_epsilon: float = 0.05
    temperature: float = 0.05
    noise_std: float = 0.05
    contrastive_positives: Literal["pairs", "dropout"] = "pairs"
    word_dropout: float = 0.0
    adversarial_fraction: float = 1.0
    adversarial_rows_apart: bool = False
    conversion_backward_once: bool | None = None

    @property
    def runs_conversion_backward_once(self) -> bool:
        """Whether a training step runs the conversion backward once: ``conversion_backward_once``
        (None, the default: on), where the adversarial term runs and its rows are not decoded apart."""
        if not self.uses_adversarial or self.collated_adversarial_apart:
            return False
        return self.conversion_backward_once is not False

    def __post_init__(self) -> None:
        if self.variant not in ("vanilla", "noise_robust", "noise_robust_contrastive"):
            raise ValueError(
                f"variant must be vanilla, noise_robust or noise_robust_contrastive, got {self.variant!r}"
            )
        if self.contrastive_positives not in ("pairs", "dropout"):
            raise ValueError(
                f"contrastive_positives must be 'pairs' or 'dropout', got {self.contrastive_positives!r}"
            )
        for name in ("contrastive_weight", "adversarial_weight", "adversarial_epsilon", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.adversarial_fraction <= 1.0:
            raise ValueError(f"adversarial_fraction must be in (0, 1], got {self.adversarial_fraction}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {self.word_dropout}")

    @property
    def uses_noise(self) -> bool:
        return self.variant != "vanilla" and self.noise_std > 0

    @property
    def uses_adversarial(self) -> bool:
        return self.variant != "vanilla" and self.adversarial_weight > 0

    @property
    def uses_contrastive(self) -> bool:
        return self.variant == "noise_robust_contrastive" and self.contrastive_weight > 0

    @property
    def collated_adversarial_apart(self) -> bool:
        """Whether the collator keeps the adversarial rows' decoder buckets apart (training batches)."""
        return self.adversarial_rows_apart and self.uses_adversarial and self.adversarial_fraction < 1.0

    @property
    def collated_adversarial_fraction(self) -> float:
        """The share of rows the collator prepares the adversarial term's targets for: 1.0 (nothing
        extra) when the term does not run."""
        return self.adversarial_fraction if self.uses_adversarial else 1.0


def _latent_gradient(
    model: SegmentAutoencoder, z: torch.Tensor, labels: torch.Tensor, conversion: torch.Tensor
) -> torch.Tensor:
    """d NLL / d z (B', N, D), without a graph.

    In training this reuses the conversion loss's graph (one extra backward through the decoder, no
    extra forward): ``conversion`` is the conversion loss, or with ``adversarial_rows_apart`` the summed
    NLL of the adversarial rows alone (the other rows' gradients are then zero, and unused). A token
    mean or sum scales each segment's gradient by a positive constant, which the per-segment
    normalisation of the direction removes. Without a graph (evaluation under no_grad) the
    NLL is recomputed at a detached copy of z.
    """
    if conversion.requires_grad and z.requires_grad:
        (grad,) = torch.autograd.grad(conversion, z, retain_graph=True, create_graph=False)
        return grad
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        nll = model.reconstruction_nll(leaf, labels, reduction="sum")
        (grad,) = torch.autograd.grad(nll, leaf, create_graph=False)
    return grad


class _KeptGradients(torch.autograd.Function):
    """A scalar whose value is ``value`` and whose backward hands each of ``tensors`` its kept
    gradient times the incoming one: a loss term's gradients computed earlier (``grads``, one per
    tensor, shapes alike) joined into the step's single backward."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, count: int, *tensors_and_grads: torch.Tensor) -> torch.Tensor:
        ctx.count = count
        ctx.save_for_backward(*tensors_and_grads[count:])
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        kept = torch._foreach_mul(list(ctx.saved_tensors), grad_output)
        return (None, None, *kept, *([None] * ctx.count))


def conversion_backward_once(
    model: SegmentAutoencoder,
    z_in: torch.Tensor,
    conversion_of: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conversion loss and its latent gradient d loss / d z_in (B', N, D) from one backward.

    ``conversion_of(z)`` computes the loss from latents z. It runs on a detached copy of ``z_in``,
    whose backward gives the latent gradient and the gradients of every parameter the decoder pass
    used (not those before z_in: they are reached through z_in later). The returned loss has the
    conversion loss's value; the step's backward through it adds those kept gradients to the
    parameters and hands the latent gradient on to z_in, so the pass's graph is backpropagated once
    instead of twice (``AutoencoderLossConfig.conversion_backward_once``).
    """
    leaf = z_in.detach().requires_grad_(True)
    conversion = conversion_of(leaf)
    params = [p for p in model.parameters() if p.requires_grad]
    # the profile's range of the latent gradient's backward (here inside sld.ae.conversion's)
    with record_function("sld.ae.latent_gradient"):
        grad_z, *grads = torch.autograd.grad(conversion, [leaf, *params], allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    tensors = [z_in, *(p for p, _ in used)]
    kept = [grad_z, *(g for _, g in used)]
    return _KeptGradients.apply(conversion.detach(), len(tensors), *tensors, *kept), grad_z


def _adversarial_loss(
    model: SegmentAutoencoder,
    batch: Mapping[str, torch.Tensor],
    cfg: AutoencoderLossConfig,
    z: torch.Tensor,
    grad: torch.Tensor,
    labels: torch.Tensor,
    inputs: torch.Tensor,
    training: bool,
) -> torch.Tensor:
    """The conversion loss at z + r, r = epsilon * g / ||g|| (z, g: (B', N, D)), on every row or, in
    training with ``adversarial_fraction`` < 1, on the first K = ``adversarial_row_count`` rows with the
    collator's ``adversarial_target_index`` (their flat target positions; without it they are found on
    the device, a host sync). With decoder buckets (``decoder_buckets`` in the batch) the rows are the
    first ``adversarial_row_count`` of each bucket (the collator's ``adversarial_buckets``)."""
    subset = training and cfg.adversarial_fraction < 1.0
    if "decoder_buckets" in batch:
        buckets = batch["decoder_buckets"]
        if subset:  # without the collator's, their target positions are found on the device: a host sync
            buckets = batch.get("adversarial_buckets") or adversarial_buckets(
                buckets, cfg.adversarial_fraction
            )
        r = adversarial_direction(grad, cfg.adversarial_epsilon)
        return model.reconstruction_loss(z + r, labels, inputs, buckets=buckets)
    targets = batch.get("target_index")
    if subset:
        rows = adversarial_row_count(labels.shape[0], cfg.adversarial_fraction)
        z, grad, labels, inputs = z[:rows], grad[:rows], labels[:rows], inputs[:rows]
        targets = batch.get("adversarial_target_index")
    r = adversarial_direction(grad, cfg.adversarial_epsilon)
    return model.reconstruction_loss(z + r, labels, inputs, targets)


def _encode(model: SegmentAutoencoder, batch: Mapping[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
    """Latents (B', N, D) of the batch's ``<prefix>input_ids`` rows; from the cached encoder states
    when the collator sent their ``<prefix>encoder_index`` (``sld.models.encoder_cache``)."""
    return model.encode(
        batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch.get(f"{prefix}encoder_index")
    )


def _contrastive_groups(batch: Mapping[str, torch.Tensor], cfg: AutoencoderLossConfig) -> list[str]:
    """The row groups (key prefixes) the contrastive term encodes beside the batch's rows: the distinct
    paraphrases (``pairs``) or every row again (``dropout``: a second view under new dropout masks),
    then the hard negatives; none when the term is off or the batch holds no anchor."""
    if not cfg.uses_contrastive:
        return []
    if cfg.contrastive_positives == "pairs":
        if "positive_index" not in batch:
            return []
        groups = ["positive_"]
    else:
        groups = [""]
    if "negative_input_ids" in batch:
        groups.append("negative_")
    return groups


def _encode_groups(
    model: SegmentAutoencoder, batch: Mapping[str, torch.Tensor], prefixes: list[str]
) -> list[torch.Tensor]:
    """Latents of several row groups (``<prefix>input_ids``) in one encoder/compressor call: one round
    of kernel launches for all of them (three separate calls were 931 aten operations forward on the
    ROC profile, one is 327: ``examples/cast_census.py``). Each group's tokens and mask are
    right-padded to the longest group's length, positions the compressor masks, so each group's
    latents are the ones a call of its own gives (to float rounding; with dropout, other masks).
    Returns one (rows, N, D) per prefix."""
    if len(prefixes) == 1:
        return [_encode(model, batch, prefixes[0])]
    masks = [batch[f"{prefix}attention_mask"] for prefix in prefixes]
    width = max(mask.shape[1] for mask in masks)
    ids = torch.cat(  # the padding id is never read: its positions are masked
        [F.pad(batch[f"{p}input_ids"], (0, width - m.shape[1])) for p, m in zip(prefixes, masks)]
    )
    mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks])
    indices = [batch.get(f"{prefix}encoder_index") for prefix in prefixes]
    index = None if any(i is None for i in indices) else torch.cat(indices)
    return list(model.encode(ids, mask, index).split([m.shape[0] for m in masks]))


def _contrastive(
    batch: Mapping[str, torch.Tensor],
    z: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    cfg: AutoencoderLossConfig,
) -> torch.Tensor:
    """The InfoNCE term: anchors from z (B', N, D), the rows with a paraphrase (``pairs``) or every row
    (``dropout``), against ``positive`` (P', N, D) and ``negative`` (Q, N, D) or None."""
    if cfg.contrastive_positives == "pairs":
        anchor = z[batch["positive_index"]]  # (P, N, D), clean latents of the rows that have a paraphrase
        targets = batch.get("positive_target")  # (P,) each anchor's among the P' distinct paraphrases
    else:
        anchor, targets = z, None
    return info_nce(anchor, positive, negative, temperature=cfg.temperature, targets=targets)


def autoencoder_losses(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    cfg: AutoencoderLossConfig,
    training: bool = True,
) -> dict[str, torch.Tensor]:
    """All loss terms on one batch: ``conversion``, ``contrastive``, ``adversarial`` and the weighted ``loss``.

    Terms that the variant turns off (or that a batch cannot provide) are zero tensors, so every key
    is always present for logging. Gaussian noise on z only when ``training``; dropout follows
    ``model.train()`` / ``model.eval()`` as usual.

    Args:
        model: a ``SegmentAutoencoder``, or a wrapper of one (DDP, accelerate): the computation runs
            through the wrapper's ``forward`` so that gradient sync and autocast apply.
        batch: tensors from ``SegmentCollator`` on the model's device.
        cfg: the loss settings.
        training: add the training-only noise.
    """
    return model(batch, loss_config=cfg, training=training)


def compute_autoencoder_losses(
    model: SegmentAutoencoder,
    batch: Mapping[str, torch.Tensor],
    cfg: AutoencoderLossConfig,
    training: bool = True,
) -> dict[str, torch.Tensor]:
    """The computation behind ``autoencoder_losses`` on the bare model (``SegmentAutoencoder.forward``)."""
    labels = batch["labels"]
    # named ranges in torch.profiler summaries (profile.txt lists their device time): where the
    # forward part of a step goes (the adversarial term's latent gradient is a backward pass)
    groups = _contrastive_groups(batch, cfg)
    with record_function("sld.ae.encode"):  # the batch's rows and the contrastive term's, one call
        z, *extra = _encode_groups(model, batch, ["", *groups])  # z: (B', N, D)
    z_in = gaussian_latent_noise(z, cfg.noise_std) if training and cfg.uses_noise else z
    inputs = model.decoder_inputs(labels, cfg.word_dropout if training else 0.0)
    targets = batch.get("target_index")  # (T,) flat target positions from the collator, or None
    # losses.adversarial_rows_apart: the collator's buckets hold the adversarial rows apart (first)
    apart = training and cfg.collated_adversarial_apart and "adversarial_buckets" in batch
    wants_once = (
        training and cfg.runs_conversion_backward_once and torch.is_grad_enabled() and z_in.requires_grad
    )
    # The FLOP counter's module hooks refuse a backward that asks for parameters' gradients
    # (torch.autograd.graph: "A leaf node was passed to _will_engine_execute_node"): the counted
    # micro-batch runs the conversion backward twice and counts it as once (below).
    counter = active_flop_count()
    once = wants_once and not any_flop_counter_active()  # torch's counter of other code refuses it too
    grad = None
    with record_function("sld.ae.conversion"):
        if once:
            buckets = batch.get("decoder_buckets")
            conversion, grad = conversion_backward_once(
                model, z_in, lambda z: model.reconstruction_loss(z, labels, inputs, targets, buckets)
            )
        elif apart:
            # the same mean as one call over every bucket, but the adversarial rows' NLL is a node of
            # its own: the latent gradient below differentiates it alone
            heads = batch["adversarial_buckets"]
            rests = batch["decoder_buckets"][len(heads) :]
            differentiated = model.bucket_nll_sum(z_in, inputs, heads)
            total = differentiated + model.bucket_nll_sum(z_in, inputs, rests) if rests else differentiated
            conversion = global_mean(total, bucket_target_count(batch["decoder_buckets"]))
        else:
            conversion = model.reconstruction_loss(
                z_in, labels, inputs, targets, batch.get("decoder_buckets")
            )
            differentiated = conversion
    zero = conversion.new_zeros(())

    adversarial = zero
    if cfg.uses_adversarial:
        if grad is None:  # else conversion_backward_once took it
            with record_function("sld.ae.latent_gradient"):
                if wants_once and counter is not None:
                    # this backward (the latents' gradient alone, weights' products pruned in the
                    # counted eager pass) is what running the conversion backward once saves
                    with counter.region() as part:
                        grad = _latent_gradient(model, z_in, labels, differentiated)
                    counter.adjust(-part.get_total_flops())
                else:
                    grad = _latent_gradient(model, z_in, labels, differentiated)
        with record_function("sld.ae.adversarial"):
            adversarial = _adversarial_loss(model, batch, cfg, z_in, grad, labels, inputs, training)

    contrastive = zero
    if groups:
        negative = extra[1] if len(extra) > 1 else None
        with record_function("sld.ae.contrastive"):
            contrastive = _contrastive(batch, z, extra[0], negative, cfg)

    loss = conversion + cfg.contrastive_weight * contrastive + cfg.adversarial_weight * adversarial
    return {"loss": loss, "conversion": conversion, "contrastive": contrastive, "adversarial": adversarial}


__all__ = ["AutoencoderLossConfig", "Variant", "autoencoder_losses", "compute_autoencoder_losses"]

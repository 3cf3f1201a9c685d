"""Tiny seeded models shared by the denoiser, objective and sampling tests (sizes: N=4, D=8, S=3, C=16)."""

import torch

from sld.models.denoiser import SegmentDiT


def tiny_dit(**overrides) -> SegmentDiT:
    """A seeded 3-block, width-32 SegmentDiT; keyword arguments override its config."""
    kwargs = dict(latent_dim=8, num_latents=4, max_segments=3, context_dim=16, width=32, depth=3, heads=4)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return SegmentDiT(**kwargs)


def randomize_zero_init(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give zero-initialised tensors (adaLN-Zero, output projection, biases) random values so outputs are non-trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)

"""Tube masking (VideoMAE, paper 000; SVFAP, paper 002): one random set of spatial patch positions per clip, masked at
every time step.

Masking each temporal slice independently would let a model copy a masked patch from the same place in a
neighbouring slice (consecutive frames are nearly equal), a shortcut that teaches low-level correspondence instead of
structure; sharing the spatial mask along time (a "tube") closes it.
"""
from __future__ import annotations

import math

import torch

__all__ = ["tube_mask"]


def tube_mask(batch: int, spatial: int, ratio: float, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one tube mask per clip.

    Every clip gets exactly ``floor(ratio * spatial)`` masked positions (VideoMAE's ``int(mask_ratio * num_patches)``;
    a fixed count keeps the visible token count equal across the batch, so the visible tokens stack into one tensor).
    The product is taken in floating point, as VideoMAE's is, so a ratio whose product lands a hair below an
    integer (0.29 * 100 = 28.999...) masks one fewer; the platform's ratios (0.75-0.95) on its grids do not.
    The positions are the first of a uniformly random permutation per clip: every subset of that size is equally
    likely, and clips of one batch get independent masks.

    Args:
        batch: clips B.
        spatial: spatial patch positions per temporal slice, (H / p) * (W / p).
        ratio: share of the spatial positions to mask, in [0, 1).
        generator: the source of randomness (a seeded one makes the mask reproducible); None uses torch's global one.
            The mask is drawn on the generator's device.

    Returns:
        keep: (B, K) long, the visible positions of each clip in increasing order, K = spatial - floor(ratio * spatial).
        masked: (B, spatial) bool, True where masked; the same for every temporal slice of the clip.

    Raises:
        ValueError: ``ratio`` outside [0, 1], or a mask that would leave no patch visible or mask none.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}")
    n_masked = math.floor(ratio * spatial)
    if n_masked >= spatial:
        raise ValueError(f"mask ratio {ratio} masks all {spatial} spatial patches: none would stay visible")
    if n_masked <= 0:
        raise ValueError(f"mask ratio {ratio} of {spatial} spatial patches masks none: nothing to reconstruct")
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.rand(batch, spatial, generator=generator, device=device).argsort(dim=1)
    masked = torch.zeros(batch, spatial, dtype=torch.bool, device=device)
    masked.scatter_(1, order[:, :n_masked], True)
    keep = order[:, n_masked:].sort(dim=1).values
    return keep, masked

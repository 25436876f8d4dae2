"""The fixed sine-cosine position table of "Attention is all you need", as VideoMAE and SVFAP build it: the one
formula the video transformers add to their tokens and the checkpoint reader compares a file's table with."""
from __future__ import annotations

import functools

import torch

__all__ = ["position_table", "sinusoid_table"]


def sinusoid_table(n_positions: int, dim: int) -> torch.Tensor:
    """The (n_positions, dim) table, float64.

    Entry (p, j) is ``sin`` (even j) or ``cos`` (odd j) of ``p / 10000 ** (2 * (j // 2) / dim)``: channels 2i and 2i + 1
    share one frequency. VideoMAE indexes it by the token's place in the flattened (t, h, w) order, so one formula
    serves any frame count and resolution. float64, as the authors' numpy original, so large token indices keep their
    precision; callers cast to their tokens' dtype.
    """
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2], table[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return table


@functools.lru_cache(maxsize=32)
def position_table(n_positions: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`sinusoid_table` as (1, n_positions, dim), cast to the tokens' device and dtype, built once per (size,
    device, dtype) rather than at every forward pass (on a GPU each build would be a host-to-device copy). Callers add
    it to their (B, n, dim) tokens, never modify it."""
    return sinusoid_table(n_positions, dim).to(device=device, dtype=dtype)[None]

"""Mask designs for LIME: which segments are kept in each perturbed sample.

All designs return a bool tensor ``(N, P, S)`` whose first sample (row 0) keeps every
segment, as ``lime`` does, and whose other rows have every segment kept with probability 1/2
marginally (so the regression target is the same as ``lime``'s; only the variance differs).

* ``"lime"``: i.i.d. Bernoulli(1/2), exactly ``lime``'s distribution.
* ``"antithetic"``: masks in complementary pairs ``(z, 1 - z)``.
* ``"orthogonal"``: rows of a randomly scrambled Sylvester-Hadamard orthogonal array (columns
  picked at random among the non-constant ones, signs flipped at random, rows shuffled):
  every pair of segments is balanced exactly within each block.
* ``"foldover"``: the orthogonal array plus the complement of each of its rows; main effects
  are then estimated free of two-segment interactions within a block.

Columns ``>= S_n`` of an image with fewer segments are filled with ``True`` (kept); the
regression ignores them.
"""
from __future__ import annotations

import math

import torch

__all__ = ["SAMPLINGS", "draw_masks"]

SAMPLINGS = ("lime", "antithetic", "orthogonal", "foldover")


def _rand_bits(shape, generator, device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.uint8).bool()


def _hadamard(m: int, device) -> torch.Tensor:
    """Sylvester Hadamard matrix of order ``m`` (a power of 2) as a bool tensor (True = +1)."""
    h = torch.ones(1, 1, dtype=torch.int8, device=device)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h > 0


def _orthogonal_block(n: int, s: int, n_rows: int, generator, device, fold: bool) -> torch.Tensor:
    """``(n, n_rows, s)`` rows from scrambled orthogonal arrays (with complements if ``fold``)."""
    m = 1 << max(1, math.ceil(math.log2(s + 1)))  # order > s: s non-constant columns exist
    had = _hadamard(m, device)[:, 1:]  # (m, m-1), balanced columns, pairwise orthogonal
    per_block = 2 * m if fold else m
    n_blocks = math.ceil(n_rows / per_block)
    out = []
    for _ in range(n_blocks):
        cols = torch.argsort(torch.rand(n, m - 1, generator=generator, device=device), dim=1)[:, :s]
        block = had[:, cols].permute(1, 0, 2)  # (n, m, s)
        flip = _rand_bits((n, 1, s), generator, device)
        block = block ^ flip
        if fold:
            block = torch.cat([block, ~block], dim=1)
        order = torch.argsort(torch.rand(n, per_block, generator=generator, device=device), dim=1)
        block = torch.gather(block, 1, order[:, :, None].expand(-1, -1, s))
        out.append(block)
    return torch.cat(out, dim=1)[:, :n_rows]


def draw_masks(
    n_images: int,
    n_samples: int,
    n_segments: int,
    *,
    method: str = "lime",
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Draw LIME perturbation masks.

    Parameters
    ----------
    n_images : int
        Number of images ``N``.
    n_samples : int
        Samples per image ``P`` (>= 2), including the all-ones first sample.
    n_segments : int
        Number of mask columns ``S`` (the largest segment count of the batch).
    method : {"lime", "antithetic", "orthogonal", "foldover"}, default="lime"
    generator : torch.Generator or None
        Source of randomness (on ``device``); ``None`` uses torch's global generator.
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor of shape (N, P, S), bool
        ``True`` = segment kept.  Row 0 is all ``True``.
    """
    if method not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {method!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is not None and generator.device.type != device.type:
        device = generator.device
    rest = n_samples - 1
    s = n_segments
    if method == "lime":
        body = _rand_bits((n_images, rest, s), generator, device)
    elif method == "antithetic":
        half = _rand_bits((n_images, (rest + 1) // 2, s), generator, device)
        body = torch.stack([half, ~half], dim=2).reshape(n_images, -1, s)[:, :rest]
    else:
        body = _orthogonal_block(n_images, s, rest, generator, device, fold=(method == "foldover"))
    first = torch.ones(n_images, 1, s, dtype=torch.bool, device=device)
    return torch.cat([first, body], dim=1)

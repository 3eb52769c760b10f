"""Latent tiling for images larger than one tile (official ``_sliding_windows`` / ``gaussian_weights``)."""
from __future__ import annotations

import math

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, size - tile + 1, stride))
    if (size - tile) % stride != 0:
        starts.append(size - tile)  # last tile flush with the border
    return starts


def sliding_windows(h: int, w: int, tile_size: int, tile_stride: int) -> list[tuple[int, int, int, int]]:
    """(h0, h1, w0, w1) windows of ``tile_size`` (clamped to the latent) every ``tile_stride``.

    [I] The official helper breaks when the latent is smaller than a tile; here the tile shrinks to the
    latent, so an image that fits in one tile gives exactly one window.
    """
    if tile_stride < 1 or tile_size < 1:
        raise ValueError("tile_size and tile_stride must be positive")
    th, tw = min(tile_size, h), min(tile_size, w)
    return [(hi, hi + th, wi, wi + tw) for hi in _starts(h, th, tile_stride) for wi in _starts(w, tw, tile_stride)]


def _gauss(n: int, var: float, mid: float) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float64)
    return torch.exp(-((x - mid) ** 2) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)


#: where the blending Gaussian of an ``n``-long tile side peaks, per ``tiling.weights``: the official
#: ``gaussian_weights`` centres the columns at (n - 1) / 2 and the rows at n / 2 (half a latent pixel low)
CENTRES = {"official": (lambda n: n / 2, lambda n: (n - 1) / 2), "centred": (lambda n: (n - 1) / 2,) * 2}


def gaussian_weights(tile_h: int, tile_w: int, var: float = 0.01, centre: str = "official") -> torch.Tensor:
    """Separable Gaussian blending map (1, 1, tile_h, tile_w), variance 0.01 in tile-normalised units; rows
    and columns centred as ``CENTRES[centre]`` says."""
    row_mid, col_mid = CENTRES[centre]
    return torch.outer(_gauss(tile_h, var, row_mid(tile_h)), _gauss(tile_w, var, col_mid(tile_w))).float()[None, None]

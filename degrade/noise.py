"""Gaussian and Poisson noise (BasicSR ``degradations.py``), per sample, from an explicit numpy Generator.

Both add noise to an HxWx3 float32 RGB image in [0, 1] and clip to [0, 1] without rounding
(``clip=True, rounds=False`` in the reference).

Poisson noise follows ``generate_poisson_noise_pt``: the image (or its gray version,
Y = 0.2989 R + 0.587 G + 0.114 B) is rounded to 8-bit levels l, a count k ~ Poisson(l / 255 * vals)
is drawn per pixel and the noise is (k / vals - l / 255) * scale. The reference sets
vals = 2 ** ceil(log2(number of distinct levels in the crop)); ``levels="fixed"`` uses 256 (what that
rule gives for any crop with more than 128 distinct levels, i.e. the 8-bit intent), ``levels="count"``
reproduces the rule.

Exact Poisson sampling is done by table inversion: the mean can only take 256 values (one per level),
so the CDF of each is tabulated once. A 32-bit uniform picks a bin of a 4096-entry guide table; the
bin holds the answer outright unless the CDF jumps inside it (about 2% of draws), in which case the
CDF is binary-searched. This is exact up to the 2^-32 resolution of the uniform and several times faster than
``Generator.poisson``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale
_GUIDE_BITS = 12


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """img + N(0, (sigma/255)^2), the same draw in R, G, B when ``gray``; clipped to [0, 1]."""
    h, w, c = img.shape
    if gray:
        noise = rng.standard_normal((h, w, 1), dtype=np.float32)
    else:
        noise = rng.standard_normal((h, w, c), dtype=np.float32)
    noise *= np.float32(sigma / 255.0)
    out = img + noise
    np.clip(out, 0.0, 1.0, out=out)
    return out


def gray_image(img: np.ndarray) -> np.ndarray:
    r, g, b = GRAY_WEIGHTS
    return img[..., 0] * np.float32(r) + img[..., 1] * np.float32(g) + img[..., 2] * np.float32(b)


def to_levels(img: np.ndarray) -> np.ndarray:
    """clamp(round(img * 255), 0, 255) as uint8 (round half to even, as torch.round)."""
    x = img * np.float32(255.0)
    np.clip(x, 0.0, 255.0, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def level_count_vals(levels: np.ndarray) -> int:
    """The reference's vals: 2 ** ceil(log2(number of distinct levels))."""
    distinct = int(np.count_nonzero(np.bincount(levels.ravel(), minlength=256)))
    return int(2 ** math.ceil(math.log2(distinct)))


class PoissonTable:
    """Exact sampler of Poisson(l / 255 * vals) for the 256 levels l, by guide-table inversion."""

    def __init__(self, vals: int):
        self.vals = vals
        lam = np.arange(256, dtype=np.float64) / 255.0 * vals
        kmax = int(vals + 12 * math.sqrt(vals) + 24)
        k = np.arange(kmax, dtype=np.float64)
        from scipy.special import gammaln

        with np.errstate(divide="ignore", invalid="ignore"):
            logpmf = k[None, :] * np.log(lam[:, None]) - lam[:, None] - gammaln(k + 1)[None, :]
        pmf = np.exp(logpmf)
        pmf[0, :] = 0.0
        pmf[0, 0] = 1.0  # lambda = 0: always 0
        cdf = np.cumsum(pmf, axis=1)
        cdf[:, -1] = 1.0  # the mass beyond kmax is < 1e-30
        self.kmax = kmax
        # Row l of the flattened table is shifted by l, so one sorted array answers every level:
        # searchsorted(l + u) lands in row l (u is never 0 nor 1, and each row ends at exactly 1).
        self.cdf_shifted = np.ascontiguousarray((cdf + np.arange(256, dtype=np.float64)[:, None]).ravel())
        g = 1 << _GUIDE_BITS
        lo_u = np.arange(g, dtype=np.float64) / g
        hi_u = (np.arange(g, dtype=np.float64) + 1) / g
        table = np.empty((256, g), dtype=np.int16)
        for level in range(256):
            row = cdf[level]
            first = np.searchsorted(row, lo_u, side="left")  # smallest k with F(k) >= u
            exact = row[first] >= hi_u  # every u in the bin maps to `first`
            table[level] = np.where(exact, first, -1)
        self.table = table.ravel()

    def sample(self, levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """k ~ Poisson(levels / 255 * vals) elementwise, as int16, same shape as ``levels`` (uint8)."""
        flat = levels.ravel()
        bits = uniform_bits(rng, flat.size)
        idx = flat.astype(np.uint32)
        idx <<= np.uint32(_GUIDE_BITS)
        idx |= bits >> np.uint32(32 - _GUIDE_BITS)
        k = np.take(self.table, idx)
        todo = np.flatnonzero(k < 0)
        if todo.size:
            level = flat[todo].astype(np.float64)
            u = (bits[todo].astype(np.float64) + 0.5) * (1.0 / 2**32)  # in (0, 1)
            pos = np.searchsorted(self.cdf_shifted, level + u, side="left")
            k[todo] = (pos - flat[todo].astype(np.int64) * self.kmax).astype(np.int16)
        return k.reshape(levels.shape)


def uniform_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent uniform 32-bit words (the raw PCG64 output, twice as fast as ``integers``)."""
    return rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]


@lru_cache(maxsize=16)
def poisson_table(vals: int) -> PoissonTable:
    return PoissonTable(vals)


def add_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator,
                      levels_mode: str = "fixed") -> np.ndarray:
    """img + scale * (Poisson(l * vals / 255) / vals - l / 255), gray or per channel; clipped to [0, 1]."""
    levels = to_levels(gray_image(img) if gray else img)
    vals = 256 if levels_mode == "fixed" else level_count_vals(levels)
    k = poisson_table(vals).sample(levels, rng)
    noise = k.astype(np.float32)
    noise *= np.float32(1.0 / vals)
    noise -= levels.astype(np.float32) * np.float32(1.0 / 255.0)
    noise *= np.float32(scale)
    out = img + (noise[..., None] if gray else noise)
    np.clip(out, 0.0, 1.0, out=out)
    return out

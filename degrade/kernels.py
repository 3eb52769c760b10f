"""Blur kernels of the Real-ESRGAN degradation (BasicSR ``degradations.py``), as closed forms.

Every kernel is a float64 array, normalised to sum 1, on the integer grid centred on 0 (``x`` the column
offset, ``y`` the row offset). With Sigma = sigma^2 I (iso) or R(theta) diag(sx^2, sy^2) R(theta)^T (aniso)
and q = [x y] Sigma^-1 [x y]^T:

* Gaussian:             exp(-q / 2)
* generalized Gaussian: exp(-q^beta / 2)
* plateau:              1 / (1 + q^beta)
* sinc (circular low-pass, cutoff w): w J1(w r) / (2 pi r), centre w^2 / (4 pi)

A kernel is described by a plain dict (``KernelParams``), the form the sampled parameters are logged in.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from supirkit.degrade.config import KERNEL_FAMILIES

KernelParams = dict[str, Any]


def mesh_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets of a size x size kernel, centred on 0."""
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy


def sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Covariance R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """q(x, y) = [x y] Sigma^-1 [x y]^T on the kernel grid."""
    xx, yy = mesh_grid(size)
    inv = np.linalg.inv(sigma_matrix(sigma_x, sigma_y, theta))
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    k = np.exp(-0.5 * quadratic_form(size, sigma_x, sigma_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    k = np.exp(-0.5 * np.power(quadratic_form(size, sigma_x, sigma_y, theta), beta))
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    k = 1.0 / (np.power(quadratic_form(size, sigma_x, sigma_y, theta), beta) + 1.0)
    return k / k.sum()


def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """The 1-D factor of the isotropic Gaussian: iso kernel == outer(g, g) exactly (both normalised)."""
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    g = np.exp(-0.5 * ax * ax / (sigma * sigma))
    return g / g.sum()


def sinc_kernel(cutoff: float, size: int, pad_to: int = 0) -> np.ndarray:
    """Circular low-pass (2-D sinc) kernel, normalised, optionally zero-padded to ``pad_to``."""
    from scipy.special import j1

    if size % 2 != 1:
        raise ValueError(f"sinc kernel size must be odd, got {size}")
    xx, yy = mesh_grid(size)
    r = np.sqrt(xx * xx + yy * yy)
    centre = size // 2
    r[centre, centre] = 1.0  # placeholder, replaced by the limit below
    k = cutoff * j1(cutoff * r) / (2.0 * math.pi * r)
    k[centre, centre] = cutoff**2 / (4.0 * math.pi)
    k = k / k.sum()
    if pad_to > size:
        pad = (pad_to - size) // 2
        k = np.pad(k, ((pad, pad), (pad, pad)))
    return k


def kernel_from_params(p: KernelParams) -> np.ndarray:
    """Build the kernel a sampled parameter dict describes."""
    family, size = p["family"], int(p["size"])
    if family == "sinc":
        return sinc_kernel(p["cutoff"], size)
    sx, sy, theta = p["sigma_x"], p["sigma_y"], p["theta"]
    if family in ("iso", "aniso"):
        return gaussian_kernel(size, sx, sy, theta)
    if family in ("generalized_iso", "generalized_aniso"):
        return generalized_gaussian_kernel(size, sx, sy, theta, p["beta"])
    if family in ("plateau_iso", "plateau_aniso"):
        return plateau_kernel(size, sx, sy, theta, p["beta"])
    raise ValueError(f"unknown kernel family {family!r}")


def separable_factor(p: KernelParams) -> Optional[np.ndarray]:
    """The 1-D factor when the kernel is an outer product g g^T by construction (the iso Gaussian)."""
    if p["family"] == "iso":
        return gaussian_1d(int(p["size"]), p["sigma_x"])
    return None


def weighted_index(rng: np.random.Generator, weights) -> int:
    """Index i with probability weights[i] / sum(weights) (one uniform; zero weights never drawn)."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return min(i, len(cum) - 1)


def _split_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # BasicSR's beta rule: U(lo, 1) or U(1, hi), each with p = 1/2. With lo == 1 the first half is exactly 1.
    if rng.random() < 0.5:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(1.0, hi))


def sample_blur_kernel(rng: np.random.Generator, cfg) -> KernelParams:
    """One draw of the first/second-stage kernel (Real-ESRGAN dataset L128-172). ``cfg``: BlurConfig."""
    size = int(cfg.kernel_sizes[rng.integers(len(cfg.kernel_sizes))])
    if rng.random() < cfg.sinc_prob:
        lo, hi = cfg.sinc_cutoff_large if size >= cfg.sinc_large_from else cfg.sinc_cutoff_small
        return {"family": "sinc", "size": size, "cutoff": float(rng.uniform(lo, hi))}
    family = KERNEL_FAMILIES[weighted_index(rng, cfg.families.weights())]
    sigma_x = float(rng.uniform(*cfg.sigma))
    if family.endswith("_aniso") or family == "aniso":
        sigma_y = float(rng.uniform(*cfg.sigma))
        theta = float(rng.uniform(*cfg.rotation))
    else:
        sigma_y, theta = sigma_x, 0.0
    p: KernelParams = {"family": family, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta}
    if family.startswith("generalized"):
        p["beta"] = _split_uniform(rng, *cfg.betag)
    elif family.startswith("plateau"):
        p["beta"] = _split_uniform(rng, *cfg.betap)
    return p


def sample_sinc(rng: np.random.Generator, sizes, cutoff_range) -> KernelParams:
    """The final sinc kernel draw (Real-ESRGAN dataset L174-181)."""
    size = int(sizes[rng.integers(len(sizes))])
    return {"family": "sinc", "size": size, "cutoff": float(rng.uniform(*cutoff_range))}

"""2-D correlation with a small kernel, reflect-101 border (what BasicSR's ``filter2D`` computes on the GPU:
``F.pad(mode='reflect')`` + ``conv2d``), done the cheapest exact way OpenCV allows.

OpenCV's ``filter2D`` switches to a DFT for float kernels of 130 taps or more (13x13 and up), which costs
about as much as a 21x21 direct filter whatever the kernel. The kernels here are small and often
(nearly) separable, so each kernel is first planned:

* trim: outer rows/columns whose weights together are below 1e-9 are dropped (a 21x21 kernel with
  sigma 0.5 is a 5x5 one);
* separable (the iso Gaussian, or any kernel whose SVD has one term): two 1-D passes;
* otherwise the cheapest of: direct (< 130 taps), a sum of direct filters over horizontal bands of the
  kernel (each < 130 taps, so no DFT), a low-rank sum of separable passes (SVD, dropped terms bounded by
  1e-6 in output units), or OpenCV's DFT path.

Every plan computes the same correlation to float32 precision (max error ~1e-6 for inputs in [0, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

REFLECT = cv2.BORDER_REFLECT_101
DFT_TAPS = 130  # OpenCV's float threshold: kernels with at least this many cells go through a DFT

# Relative costs, in "direct taps" (calibrated on one core at 512x512x3 float32): a separable call costs its
# taps plus a fixed overhead, each extra term an accumulation, a DFT filter as much as ~460 direct taps.
_CALL_OVERHEAD = 13.0
_ACCUMULATE = 8.0
_DFT_COST = 460.0
_TRIM_MASS = 1e-9
_LOWRANK_ERROR = 1e-6


@dataclass
class FilterPlan:
    method: str  # "identity" | "separable" | "direct" | "bands" | "lowrank" | "dft"
    kernel: np.ndarray  # trimmed float32 kernel (for direct/bands/dft)
    terms: list  # [(column vector, row vector)] for separable / lowrank

    def apply(self, img: np.ndarray) -> np.ndarray:
        return _APPLY[self.method](self, img)


def _trim(kernel: np.ndarray) -> np.ndarray:
    """Drop symmetric outer rows/columns whose absolute weight, summed, stays below _TRIM_MASS."""
    k = kernel
    a = np.abs(k)
    h, w = k.shape
    budget = _TRIM_MASS
    top = 0
    while h - 2 * (top + 1) >= 1:
        mass = a[top].sum() + a[h - 1 - top].sum()
        if mass > budget:
            break
        budget -= mass
        top += 1
    left = 0
    rows = slice(top, h - top)
    while w - 2 * (left + 1) >= 1:
        mass = a[rows, left].sum() + a[rows, w - 1 - left].sum()
        if mass > budget:
            break
        budget -= mass
        left += 1
    return k[top:h - top, left:w - left]


def _band_rows(kh: int, kw: int) -> int:
    return max(1, (DFT_TAPS - 1) // kw)


def plan_filter(kernel: np.ndarray, factor: Optional[np.ndarray] = None, method: Optional[str] = None) -> FilterPlan:
    """Choose how to apply ``kernel`` (float64, odd square). ``factor``: its exact 1-D factor, if known.
    ``method`` forces one of "direct", "bands", "lowrank", "dft" (tests compare them; all give one result)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if method is not None:
        return _forced(kernel, method)
    if factor is not None:
        f = np.asarray(factor, dtype=np.float64)
        # The 2-D kernel f f^T loses at most 2 * (dropped 1-D mass) when both factors are trimmed.
        cut, budget = 0, _TRIM_MASS / 2
        while len(f) - 2 * (cut + 1) >= 1 and abs(f[cut]) + abs(f[-1 - cut]) <= budget:
            budget -= abs(f[cut]) + abs(f[-1 - cut])
            cut += 1
        f = f[cut:len(f) - cut] if cut else f
        if len(f) == 1:
            return FilterPlan("identity", np.full((1, 1), f[0] * f[0], np.float32), [])
        v = f.astype(np.float32).reshape(-1, 1)
        return FilterPlan("separable", np.outer(f, f).astype(np.float32), [(v, v)])
    k = _trim(kernel)
    kh, kw = k.shape
    if kh == 1 and kw == 1:
        return FilterPlan("identity", k.astype(np.float32), [])
    k32 = k.astype(np.float32)
    taps = kh * kw
    costs = {}
    if taps < DFT_TAPS:
        costs["direct"] = taps + _CALL_OVERHEAD
    else:
        costs["dft"] = _DFT_COST
        n_bands = math.ceil(kh / _band_rows(kh, kw))
        costs["bands"] = taps + n_bands * (_CALL_OVERHEAD + kw) + (n_bands - 1) * _ACCUMULATE
    u, s, vt = np.linalg.svd(k, full_matrices=False)
    # Output error of dropping term i is at most s_i * |u_i|_1 * |v_i|_1 (inputs in [0, 1]).
    bound = s * np.abs(u).sum(axis=0) * np.abs(vt).sum(axis=1)
    tail = np.concatenate([np.cumsum(bound[::-1])[::-1], [0.0]])
    rank = int(np.argmax(tail <= _LOWRANK_ERROR))
    rank = max(rank, 1)
    costs["lowrank"] = rank * (kh + kw + _CALL_OVERHEAD) + (rank - 1) * _ACCUMULATE
    method = min(costs, key=costs.get)
    terms = []
    if method == "lowrank":
        for i in range(rank):
            col = (u[:, i] * s[i]).astype(np.float32).reshape(-1, 1)
            row = vt[i].astype(np.float32).reshape(-1, 1)
            terms.append((col, row))
        if rank == 1:
            method = "separable"
    return FilterPlan(method, k32, terms)


def _forced(kernel: np.ndarray, method: str) -> FilterPlan:
    k32 = kernel.astype(np.float32)
    if method in ("direct", "bands", "dft"):
        return FilterPlan(method, k32, [])
    if method == "lowrank":
        u, s, vt = np.linalg.svd(kernel, full_matrices=False)
        rank = int(np.sum(s > s[0] * 1e-12))
        terms = [((u[:, i] * s[i]).astype(np.float32).reshape(-1, 1), vt[i].astype(np.float32).reshape(-1, 1))
                 for i in range(rank)]
        return FilterPlan("lowrank", k32, terms)
    raise ValueError(f"unknown filter method {method!r}")


def _identity(plan: FilterPlan, img: np.ndarray) -> np.ndarray:
    return img * plan.kernel[0, 0] if plan.kernel[0, 0] != 1.0 else img.copy()


def _separable(plan: FilterPlan, img: np.ndarray) -> np.ndarray:
    col, row = plan.terms[0]
    return cv2.sepFilter2D(img, -1, row, col, borderType=REFLECT)


def _lowrank(plan: FilterPlan, img: np.ndarray) -> np.ndarray:
    out = None
    for col, row in plan.terms:
        part = cv2.sepFilter2D(img, -1, row, col, borderType=REFLECT)
        if out is None:
            out = part
        else:
            cv2.add(out, part, dst=out)
    return out


def _direct(plan: FilterPlan, img: np.ndarray) -> np.ndarray:
    return cv2.filter2D(img, -1, plan.kernel, borderType=REFLECT)


_dft = _direct  # same call: OpenCV picks its DFT path by itself for kernels of DFT_TAPS cells or more


def _bands(plan: FilterPlan, img: np.ndarray) -> np.ndarray:
    """Sum of direct filters over horizontal bands of the kernel, each small enough to stay off the DFT.

    The image is reflect-padded vertically once; band [a, b) of the kernel is applied with its anchor on
    its first row to the padded rows starting at a, so every output row reads the right source rows,
    borders included. Columns keep OpenCV's own reflect-101 border.
    """
    k = plan.kernel
    kh, kw = k.shape
    cy, cx = kh // 2, kw // 2
    h = img.shape[0]
    padded = cv2.copyMakeBorder(img, cy, cy, 0, 0, REFLECT)
    step = _band_rows(kh, kw)
    out = None
    for a in range(0, kh, step):
        band = k[a:a + step]
        rows = padded[a:a + h + band.shape[0] - 1]
        part = cv2.filter2D(rows, -1, band, anchor=(cx, 0), borderType=REFLECT)[:h]
        if out is None:
            out = np.ascontiguousarray(part)
        else:
            cv2.add(out, part, dst=out)
    return out


_APPLY = {
    "identity": _identity,
    "separable": _separable,
    "lowrank": _lowrank,
    "direct": _direct,
    "dft": _dft,
    "bands": _bands,
}


def apply_kernel(img: np.ndarray, kernel: np.ndarray, factor: Optional[np.ndarray] = None) -> np.ndarray:
    """Correlate an HxWxC float32 image with ``kernel`` (reflect-101 border)."""
    return plan_filter(kernel, factor).apply(img)

"""The classical degradation model of test sets, y = (x * k)↓s + n, as pure functions.

Named families in registries, one of each drawn per sample by weight (``ClassicalConfig``):

* k, the blur kernel: any Real-ESRGAN family (``kernels.py``: iso/aniso Gaussian, generalized, plateau,
  sinc) or none (a delta), reflect-101 border as everywhere in ``degrade``;
* ↓s, the downsampler (``DOWNSAMPLERS``), integer factor s:
  - ``bicubic``: MATLAB ``imresize`` (antialiased Keys cubic, a = -0.5, symmetric border), the
    "bicubic degradation" of SR benchmarks; Pillow's antialiased resampling has the same kernel, and
    padding symmetrically by 2s pixels first makes its borders MATLAB's too (equal to BasicSR's
    ``matlab_functions.imresize`` to float precision, checked in tests);
  - ``bilinear``: the same with the triangle kernel (MATLAB ``imresize(..., 'bilinear')``);
  - ``area``: the mean of each s x s block;
  - ``nearest``: the pixel nearest each output pixel's centre (Pillow's NEAREST);
  - ``direct``: x[0::s, 0::s], the s-fold decimation of the textbook model (KAIR/USRNet's ``downsample``);
* n, the noise (``NOISES``): ``none``, ``gaussian`` (sigma on the 0-255 scale, colour or gray),
  ``poisson`` (as in the Real-ESRGAN pipeline, ``noise.py``); the result is clipped to [0, 1].
"""
from __future__ import annotations

from typing import Any

import numpy as np

from supirkit.degrade.config import CLASSICAL_DOWNSAMPLERS, CLASSICAL_NOISES
from supirkit.degrade.kernels import kernel_from_params, sample_blur_kernel, separable_factor, weighted_index
from supirkit.degrade.noise import add_gaussian_noise, add_poisson_noise

Params = dict[str, Any]


def _pillow_resample(img: np.ndarray, s: int, resample) -> np.ndarray:
    """Antialiased Pillow resampling by 1/s of an HxWxC float32 image, with MATLAB's symmetric border:
    pad 2s pixels (the kernel's reach at this factor; a multiple of s keeps the sampling grid), resample,
    drop the 2 output pixels the padding added on each side."""
    import cv2
    from PIL import Image

    pad = 2 * s
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    h, w = padded.shape[:2]
    size = (w // s, h // s)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(padded[..., c])).resize(size, resample), np.float32)
             for c in range(img.shape[2])]
    return np.ascontiguousarray(np.stack(chans, axis=-1)[2:-2, 2:-2])


def bicubic(img: np.ndarray, s: int) -> np.ndarray:
    from PIL import Image

    return _pillow_resample(img, s, Image.Resampling.BICUBIC)


def bilinear(img: np.ndarray, s: int) -> np.ndarray:
    from PIL import Image

    return _pillow_resample(img, s, Image.Resampling.BILINEAR)


def area(img: np.ndarray, s: int) -> np.ndarray:
    h, w, c = img.shape
    return img.reshape(h // s, s, w // s, s, c).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def nearest(img: np.ndarray, s: int) -> np.ndarray:
    # output pixel i covers input [i s, (i + 1) s); its centre falls on input pixel i s + s // 2
    return np.ascontiguousarray(img[s // 2::s, s // 2::s])


def direct(img: np.ndarray, s: int) -> np.ndarray:
    return np.ascontiguousarray(img[::s, ::s])


DOWNSAMPLERS = {"bicubic": bicubic, "bilinear": bilinear, "area": area, "nearest": nearest, "direct": direct}
NOISES = CLASSICAL_NOISES
assert tuple(DOWNSAMPLERS) == CLASSICAL_DOWNSAMPLERS  # the config validates against the names


def _pick(rng: np.random.Generator, weights: dict[str, float], order) -> str:
    names = [n for n in order if n in weights]
    return names[weighted_index(rng, [weights[n] for n in names])]


def sample_classical(rng: np.random.Generator, cfg) -> Params:
    """Every random choice of one sample. ``cfg``: ClassicalConfig."""
    blur = sample_blur_kernel(rng, cfg.blur) if rng.random() < cfg.blur_prob else None
    down = _pick(rng, cfg.downsamplers, DOWNSAMPLERS)
    n = cfg.noise
    kind = _pick(rng, n.families, NOISES)
    if kind == "gaussian":
        noise = {"kind": kind, "sigma": float(rng.uniform(*n.gaussian_sigma)), "gray": bool(rng.random() < n.gray_prob)}
    elif kind == "poisson":
        noise = {"kind": kind, "scale": float(rng.uniform(*n.poisson_scale)), "gray": bool(rng.random() < n.gray_prob)}
    else:
        noise = {"kind": "none"}
    return {"blur": blur, "downsampler": down, "noise": noise}


def downsample(img: np.ndarray, s: int, name: str) -> np.ndarray:
    """↓s of an HxWxC float32 image whose sides are multiples of s."""
    h, w = img.shape[:2]
    if h % s or w % s:
        raise ValueError(f"the classical model needs HQ sides that are multiples of the scale {s}, got {w}x{h}: "
                         f"crop to a multiple first")
    return img.copy() if s == 1 else DOWNSAMPLERS[name](img, s)


def add_noise(img: np.ndarray, p: Params, rng: np.random.Generator) -> np.ndarray:
    if p["kind"] == "gaussian":
        return add_gaussian_noise(img, p["sigma"], p["gray"], rng)
    if p["kind"] == "poisson":
        return add_poisson_noise(img, p["scale"], p["gray"], rng, "fixed")
    return np.clip(img, 0.0, 1.0)


def run_classical(img: np.ndarray, p: Params, cfg, noise_rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """y = (x * k)↓s + n of a float32 RGB image in [0, 1]."""
    out = img
    if p["blur"] is not None:
        from supirkit.degrade.filters import apply_kernel

        out = apply_kernel(img, kernel_from_params(p["blur"]), separable_factor(p["blur"]))
    out = downsample(out, cfg.scale, p["downsampler"])
    out = add_noise(out, p["noise"], noise_rng)
    return out, {"lq": list(out.shape[:2])}

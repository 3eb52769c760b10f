"""Colour fix of the restored image against the stage-1 image (official ``SUPIR/utils/colorfix.py``).

Images are (B, 3, H, W) tensors in any fixed range (the pipeline uses [-1, 1]).
* wavelet: the result's high frequencies + the reference's low frequencies, from a 5-level a-trous
  decomposition with the 3x3 [1,2,1]x[1,2,1]/16 kernel at dilation 2^i and replicate padding;
* adain: per-channel mean/std of the result matched to the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device) / 16
    c = image.shape[1]
    kernel = k[None, None].repeat(c, 1, 1, 1)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=radius)


def wavelet_decomposition(image: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        low = _blur(image, 2 ** i)
        high = high + (image - low)
        image = low
    return high, low


def wavelet_color_fix(result: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    high, _ = wavelet_decomposition(result, levels)
    _, low = wavelet_decomposition(reference.to(result.dtype), levels)
    return high + low


def _mean_std(x: torch.Tensor, eps: float = 1e-5):
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]


def adain_color_fix(result: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    m_r, s_r = _mean_std(result)
    m_s, s_s = _mean_std(reference.to(result.dtype))
    return (result - m_r) / s_r * s_s + m_s


def color_fix(result: torch.Tensor, reference: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "wavelet":
        return wavelet_color_fix(result, reference)
    if kind == "adain":
        return adain_color_fix(result, reference)
    if kind == "none":
        return result
    raise ValueError(f"unknown colour fix {kind!r} (wavelet, adain, none)")

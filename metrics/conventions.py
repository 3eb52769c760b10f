"""How PSNR and SSIM are measured: the conventions that make published numbers comparable or not.

Papers report PSNR/SSIM "on the Y channel" without saying which Y, whether a border was cropped or
whether the channel was rounded to integers first; a difference in any of these moves PSNR by tenths of
a dB. Every choice is therefore a field here, written into every output next to the number
(``FidelityConvention.describe``), and the common ones have names (``PRESETS``).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from supirkit.datapipe.config import Schema

Channel = Literal["rgb", "y", "luma"]

#: what each channel choice means, for the outputs
CHANNEL_TEXT = {
    "rgb": "RGB",
    "y": "Y of BT.601 YCbCr (16-235, MATLAB rgb2ycbcr)",
    "luma": "luma 0.299R+0.587G+0.114B (YIQ Y)",
}


class FidelityConvention(Schema):
    """One measuring convention of PSNR or SSIM (values on the 0-255 scale, float64)."""

    channel: Channel = Field("y", description="rgb: all three channels; y: Y of BT.601 YCbCr studio range "
                                              "(MATLAB rgb2ycbcr, BasicSR, pyiqa color_space=ycbcr); "
                                              "luma: 0.299R+0.587G+0.114B (pyiqa's default yiq)")
    crop_border: int = Field(0, ge=0, description="pixels removed on every side first (BasicSR: the scale factor)")
    round: bool = Field(False, description="round the converted channel to integers, as MATLAB does on uint8 "
                                           "images (pyiqa rounds for SSIM, not for PSNR)")
    nonnegative_cs: bool = Field(False, description="SSIM only: clamp the contrast-structure term at 0 (pyiqa "
                                                    "does, Wang et al. and scikit-image do not)")

    def describe(self, metric: str = "") -> str:
        parts = [CHANNEL_TEXT[self.channel], f"border {self.crop_border}",
                 "rounded" if self.round else "not rounded"]
        if metric == "ssim":
            parts.append("Gaussian 11x11 sigma 1.5, valid window")
            if self.nonnegative_cs:
                parts.append("cs clamped at 0")
        return ", ".join(parts)


def _conv(**kw) -> FidelityConvention:
    return FidelityConvention(**kw)


#: Named conventions. ``pyiqa_ycbcr`` is ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True,
#: color_space='ycbcr')``, what most diffusion restoration papers' evaluation scripts call; ``basicsr`` is
#: BasicSR's ``calculate_psnr``/``calculate_ssim`` with ``test_y_channel=True`` (set ``crop_border`` to
#: the scale factor, as its options do); ``rgb`` is scikit-image's ``peak_signal_noise_ratio`` /
#: ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` on RGB.
PRESETS: dict[str, dict[str, FidelityConvention]] = {
    "pyiqa_ycbcr": {"psnr": _conv(channel="y", round=False),
                    "ssim": _conv(channel="y", round=True, nonnegative_cs=True)},
    "basicsr": {"psnr": _conv(channel="y", round=False), "ssim": _conv(channel="y", round=False)},
    "rgb": {"psnr": _conv(channel="rgb"), "ssim": _conv(channel="rgb")},
}
DEFAULT_PRESET = "pyiqa_ycbcr"


def preset(name: str, crop_border: int = 0) -> dict[str, FidelityConvention]:
    """The named conventions for PSNR and SSIM, with ``crop_border`` set on both."""
    if name not in PRESETS:
        raise ValueError(f"unknown convention preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return {m: c.model_copy(update={"crop_border": crop_border}) for m, c in PRESETS[name].items()}

"""The degradation profile schema: every parameter of a profile, validated before any image is touched.

A profile is one YAML file under ``configs/degrade/``. Field names follow the reference options
(``options/train_realesrgan_x4plus.yml`` of Real-ESRGAN, DiffBIR's train configs) where one exists, so a
value can be checked against its source line; see ``degrade/README.md`` for the mapping.

Angles may be written as numbers (radians) or as ``pi``, ``-pi``, ``pi/3``, ``2*pi/3``, ``0.5*pi``.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from supirkit.datapipe.config import Schema

PIPELINES = ("realesrgan", "codeformer", "classical")
KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
#: the classical model's named parts; ``degrade.classical`` holds their functions under these names
CLASSICAL_DOWNSAMPLERS = ("bicubic", "bilinear", "area", "nearest", "direct")
CLASSICAL_NOISES = ("none", "gaussian", "poisson")
ResizeMode = Literal["area", "bilinear", "bicubic"]

_PI_EXPR = re.compile(r"^\s*([+-]?)\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?pi\s*(?:/\s*(\d+(?:\.\d*)?))?\s*$")


def _parse_angle(value):
    """``pi/3`` -> 1.0471975511965976; numbers pass through. No eval: a fixed grammar only."""
    if isinstance(value, str):
        m = _PI_EXPR.match(value)
        if not m:
            raise ValueError(f"expected a number or an expression like pi/3, 2*pi/3, -pi; got {value!r}")
        sign, factor, divisor = m.groups()
        angle = math.pi * (float(factor) if factor else 1.0) / (float(divisor) if divisor else 1.0)
        if divisor is not None and float(divisor) == 0:
            raise ValueError("division by zero in angle")
        return -angle if sign == "-" else angle
    return value


def _ordered(pair):
    lo, hi = pair
    if lo > hi:
        raise ValueError(f"range must be [low, high] with low <= high, got [{lo}, {hi}]")
    return pair


def _around_one(pair):
    # Up/down resizing and the beta draws split the range at 1: U(low, 1) or U(1, high).
    lo, hi = pair
    if not lo <= 1.0 <= hi:
        raise ValueError(f"range must contain 1 (it is split at 1 into U(low, 1) and U(1, high)), got [{lo}, {hi}]")
    return pair


def _odd_sizes(sizes):
    if not sizes:
        raise ValueError("at least one kernel size is needed")
    bad = [s for s in sizes if s < 1 or s % 2 == 0]
    if bad:
        raise ValueError(f"kernel sizes must be odd and positive, got {bad}")
    return sizes


def _positive_low(pair):
    if pair[0] <= 0:
        raise ValueError(f"low end must be > 0, got [{pair[0]}, {pair[1]}]")
    return pair


def _non_negative(pair):
    if pair[0] < 0:
        raise ValueError(f"must be >= 0, got [{pair[0]}, {pair[1]}]")
    return pair


def _jpeg_quality(pair):
    if pair[0] < 1 or pair[1] > 100:
        raise ValueError(f"JPEG quality must lie within [1, 100], got [{pair[0]}, {pair[1]}]")
    return pair


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
PositiveRange = Annotated[tuple[float, float], AfterValidator(_ordered), AfterValidator(_positive_low)]
NonNegativeRange = Annotated[tuple[float, float], AfterValidator(_ordered), AfterValidator(_non_negative)]
QualityRange = Annotated[tuple[float, float], AfterValidator(_ordered), AfterValidator(_jpeg_quality)]
SplitRange = Annotated[tuple[float, float], AfterValidator(_ordered), AfterValidator(_around_one)]
Angle = Annotated[float, BeforeValidator(_parse_angle)]
AngleRange = Annotated[tuple[Angle, Angle], AfterValidator(_ordered)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
KernelSizes = Annotated[list[int], AfterValidator(_odd_sizes)]
Modes = Annotated[list[ResizeMode], Field(min_length=1)]


class FamilyWeightsConfig(Schema):
    """Relative weights of the six kernel families (``kernel_list`` / ``kernel_prob``); normalised."""

    iso: float = Field(ge=0)
    aniso: float = Field(ge=0)
    generalized_iso: float = Field(ge=0)
    generalized_aniso: float = Field(ge=0)
    plateau_iso: float = Field(ge=0)
    plateau_aniso: float = Field(ge=0)

    @model_validator(mode="after")
    def _some_weight(self):
        if sum(self.weights()) <= 0:
            raise ValueError("at least one kernel family needs a positive weight")
        return self

    def weights(self) -> list[float]:
        return [getattr(self, name) for name in KERNEL_FAMILIES]


class BlurConfig(Schema):
    """One blur kernel draw (Real-ESRGAN dataset L128-172, BasicSR ``random_mixed_kernels``)."""

    kernel_sizes: KernelSizes = Field(description="kernel size drawn uniformly from this list (reference: 7..21)")
    sinc_prob: Probability = Field(description="probability of a sinc (circular low-pass) kernel instead")
    sinc_cutoff_small: AngleRange = Field(description="sinc cutoff range for sizes < sinc_large_from")
    sinc_cutoff_large: AngleRange = Field(description="sinc cutoff range for sizes >= sinc_large_from")
    sinc_large_from: int = Field(ge=1)
    families: FamilyWeightsConfig
    sigma: PositiveRange = Field(description="sigma (x and y, drawn independently) range, pixels")
    rotation: AngleRange = Field(description="rotation range of anisotropic kernels, radians")
    betag: SplitRange = Field(description="generalized Gaussian beta: U(low, 1) or U(1, high), p = 1/2 each")
    betap: SplitRange = Field(description="plateau beta: U(low, 1) or U(1, high), p = 1/2 each")


class UpDownKeepConfig(Schema):
    """Weights of resizing up, down, or keeping the size (``resize_prob``); normalised."""

    up: float = Field(ge=0)
    down: float = Field(ge=0)
    keep: float = Field(ge=0)

    @model_validator(mode="after")
    def _some_weight(self):
        if self.up + self.down + self.keep <= 0:
            raise ValueError("at least one of up/down/keep needs a positive weight")
        return self


class ResizeConfig(Schema):
    probs: UpDownKeepConfig
    range: Annotated[SplitRange, AfterValidator(_positive_low)] = Field(description="up: U(1, high); down: U(low, 1)")
    modes: Modes = Field(description="interpolation drawn uniformly from this list")


class NoiseConfig(Schema):
    gaussian_prob: Probability = Field(description="Gaussian noise with this probability, else Poisson")
    gaussian_sigma: NonNegativeRange = Field(description="sigma range on the 0-255 scale (noise_range)")
    poisson_scale: NonNegativeRange = Field(description="Poisson noise scale range (poisson_scale_range)")
    gray_prob: Probability = Field(description="probability that the noise is gray (same in R, G, B)")


class JpegConfig(Schema):
    quality: QualityRange = Field(description="quality drawn uniformly (a float, as the reference does)")
    to_int: Literal["round", "floor"] = Field(
        description="libjpeg takes an integer quality: nearest (round) or DiffBIR's int() (floor)")


class StageConfig(Schema):
    """One order of the Real-ESRGAN degradation: blur, resize, noise, JPEG."""

    blur_prob: Probability = Field(description="1.0 in the first stage; second_blur_prob in the second")
    blur: BlurConfig
    resize: ResizeConfig
    noise: NoiseConfig
    jpeg: JpegConfig


class FinalConfig(Schema):
    """The last step: [resize to LQ size + sinc] and JPEG, in random order (model L146-163)."""

    sinc_prob: Probability = Field(description="final_sinc_prob; otherwise a delta kernel (no filtering)")
    sinc_kernel_sizes: KernelSizes
    sinc_cutoff: AngleRange
    resize_modes: Modes
    sinc_first_prob: Probability = Field(description="probability of [resize + sinc] then JPEG (else JPEG first)")
    jpeg: JpegConfig


class RealESRGANConfig(Schema):
    """Real-ESRGAN x4plus second-order degradation (``realesrgan_model.py::feed_data``)."""

    scale: float = Field(gt=0, description="LQ size = HQ size // scale (int(h / scale))")
    first: StageConfig
    second_order_prob: Probability = Field(
        1.0, description="probability that the second stage (blur, resize, noise) runs at all; ResShift: 0.5")
    second: StageConfig
    final: FinalConfig


class CodeFormerConfig(Schema):
    """DiffBIR's CodeFormer-style first-order degradation (``diffbir/dataset/codeformer.py``)."""

    blur: BlurConfig
    downsample: PositiveRange = Field(description="scale s: LQ = resize(blurred, (int(w // s), int(h // s)))")
    downsample_mode: ResizeMode
    noise_sigma: NonNegativeRange = Field(description="Gaussian colour noise sigma range, 0-255 scale")
    noise_gray_prob: Probability
    jpeg: JpegConfig
    resize_back_mode: ResizeMode = Field(description="interpolation back to the HQ size")


class ClassicalNoiseConfig(Schema):
    """The ``n`` of y = (x * k)↓ + n: one family per sample (``CLASSICAL_NOISES``), by weight."""

    families: dict[str, float] = Field(description="weight per noise family: none, gaussian, poisson")
    gaussian_sigma: NonNegativeRange = Field(description="sigma range on the 0-255 scale")
    poisson_scale: NonNegativeRange = Field(description="Poisson noise scale range")
    gray_prob: Probability = Field(description="probability that the noise is the same in R, G, B")

    @model_validator(mode="after")
    def _known_families(self):
        _check_weights(self.families, CLASSICAL_NOISES, "noise family")
        return self


class ClassicalConfig(Schema):
    """The classical test-set model y = (x * k)↓s + n (``degrade/classical.py``): blur with a kernel of
    the Real-ESRGAN families (or none), downsample by an integer factor with a named downsampler, add
    noise of a named family. One family of each is drawn per sample."""

    scale: int = Field(ge=1, description="integer factor s; the HQ sides must be multiples of it")
    blur_prob: Probability = Field(description="probability of a blur kernel (else k is a delta)")
    blur: BlurConfig
    downsamplers: dict[str, float] = Field(
        description="weight per downsampler: bicubic (MATLAB imresize), bilinear, area, nearest, direct")
    noise: ClassicalNoiseConfig

    @model_validator(mode="after")
    def _known_downsamplers(self):
        _check_weights(self.downsamplers, CLASSICAL_DOWNSAMPLERS, "downsampler")
        return self


def _check_weights(weights: dict, registry, what: str) -> None:
    unknown = sorted(set(weights) - set(registry))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(registry)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{what} weights must be >= 0 with at least one positive")


class SharpenConfig(Schema):
    """Unsharp mask (BasicSR ``USMSharp``): out = m*clip(I + w(I - B)) + (1 - m)*I, m = blur(|I - B| > t)."""

    lq_from_sharpened: bool = Field(description="degrade the sharpened HQ (Real-ESRGAN) instead of the HQ")
    target_sharpened: bool = Field(description="return the sharpened HQ as the target (DiffBIR v2.1)")
    kernel_size: int = Field(ge=3, description="Gaussian size (radius 50 -> 51 in the reference); made odd")
    sigma: float = Field(ge=0, description="0: OpenCV's rule from the size (51 -> 8.0)")
    weight: float = Field(ge=0)
    threshold: float = Field(ge=0, description="mask threshold on the 0-255 scale")


class DegradeOutputConfig(Schema):
    size: Union[Literal["lq", "hq"], Annotated[int, Field(ge=1)]] = Field(
        description="'lq': keep HQ/scale; 'hq': back to the HQ size; N: short side N (aspect kept)")
    mode: ResizeMode = Field(description="interpolation of that last resize (before clamp and round)")


class QuirksConfig(Schema):
    """Reproduce accidental behaviours of the reference (off by default; see degrade/README.md)."""

    poisson_levels: Literal["fixed", "count"] = Field(
        description="fixed: 256 levels (8-bit); count: 2**ceil(log2(#distinct levels)) per image, as BasicSR")
    first_resize_coords: Literal["aligned", "scale_factor"] = Field(
        description="aligned: output spans the input exactly; scale_factor: torch's 1/s source mapping "
                    "(content drifts up to ~1 px at the far edge), as the reference's first resize")
    jpeg_codec: Literal["libjpeg", "diffjpeg"] = Field(
        description="libjpeg (OpenCV) at an integer quality; diffjpeg: BasicSR's DiffJPEG as the reference "
                    "Real-ESRGAN pipeline runs it (float quality, unrounded tables, nearest chroma upsampling, "
                    "black padding to 16; degrade/diffjpeg.py). Used by the realesrgan pipeline")


class DegradeConfig(Schema):
    """One degradation profile (``configs/degrade/*.yaml``)."""

    name: str = Field(min_length=1)
    description: str = ""
    pipeline: Literal["realesrgan", "codeformer", "classical"]
    hq_size: Optional[int] = Field(ge=8, description="crop side the data pipeline must deliver; null: any")
    sharpen: SharpenConfig
    realesrgan: Optional[RealESRGANConfig] = None
    codeformer: Optional[CodeFormerConfig] = None
    classical: Optional[ClassicalConfig] = None
    output: DegradeOutputConfig
    quirks: QuirksConfig

    @model_validator(mode="after")
    def _one_pipeline(self):
        chosen = getattr(self, self.pipeline)
        if chosen is None:
            raise ValueError(f"pipeline is {self.pipeline!r} but its section {self.pipeline!r} is missing")
        for other in PIPELINES:
            if other != self.pipeline and getattr(self, other) is not None:
                raise ValueError(f"pipeline is {self.pipeline!r}: remove the {other!r} section (it would be ignored)")
        return self

    @property
    def scale(self) -> Optional[float]:
        """The HQ/LQ size ratio of the pipeline (None: the LQ keeps the HQ size)."""
        if self.pipeline == "codeformer":
            return None
        return getattr(self, self.pipeline).scale

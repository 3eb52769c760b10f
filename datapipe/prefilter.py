"""The header prefilter: what is decided from an image's header alone, before any pixel is decoded.

One set of options and reason codes for every stage that takes raw inputs (``shard``, ``curate``):
``too_many_pixels`` (the decompression-bomb guard, ``decode.max_pixels``), ``too_small`` (short side below
``prefilter.min_side``) and ``extreme_aspect_ratio`` (long side above ``prefilter.max_aspect_ratio`` times
the short one).
"""
from __future__ import annotations

from pydantic import Field

from supirkit.datapipe.config import Schema
from supirkit.datapipe.decode import ImageHeader


class PrefilterConfig(Schema):
    min_side: int = Field(0, ge=0, description="Reject images whose short side is below this (0 = keep all).")
    max_aspect_ratio: float = Field(0.0, ge=0, description="Reject images whose long side is more than this "
                                                           "times the short one (0 = no limit).")


def prefilter_reason(header: ImageHeader, cfg: PrefilterConfig, max_pixels: int) -> str:
    """The reason code that rejects ``header``, or "" when it passes."""
    if header.width * header.height > max_pixels:
        return "too_many_pixels"
    short, long_ = sorted((header.width, header.height))
    if short < cfg.min_side:
        return "too_small"
    if cfg.max_aspect_ratio and long_ > cfg.max_aspect_ratio * max(short, 1):
        return "extreme_aspect_ratio"
    return ""


__all__ = ["PrefilterConfig", "prefilter_reason"]

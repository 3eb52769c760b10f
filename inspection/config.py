"""The ``supirkit inspect`` configuration (``configs/inspect/default.yaml``)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from supirkit.datapipe.config import DecodingConfig, Schema


class SummaryConfig(Schema):
    reservoir: int = Field(10_000, ge=10, description="Values kept per numeric column for its quantiles.")
    max_distinct: int = Field(1000, ge=1, description="Distinct strings counted per column before counting stops.")


class SampleConfig(Schema):
    n: int = Field(16, ge=1, le=10_000, description="Samples in --grid / --html when --n is not given.")
    seed: Optional[int] = Field(None, description="None: the first samples; a number: a uniform random choice.")


class GridConfig(Schema):
    thumb: int = Field(256, ge=16, le=2048)
    columns: int = Field(0, ge=0, description="0: about square.")
    caption_lines: int = Field(2, ge=0, le=10)
    scores: list[str] = Field(default_factory=list, description="Fields shown under each image; [] = the first "
                                                                "numeric quality fields found.")


class HtmlConfig(Schema):
    thumb: int = Field(320, ge=16, le=2048)


class InspectConfig(DecodingConfig):
    summary: SummaryConfig = SummaryConfig()
    samples: SampleConfig = SampleConfig()
    grid: GridConfig = GridConfig()
    html: HtmlConfig = HtmlConfig()

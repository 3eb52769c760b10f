"""The ``supirkit curate`` configuration (every parameter lives in configs/curate/*.yaml)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from supirkit.curation.keep import DEFAULT_RANK_BY
from supirkit.datapipe.config import (
    PREFIX_PATTERN,
    DecodingJobConfig,
    ListingConfig,
    OutputConfig,
    Schema,
    config_hash,
)
from supirkit.datapipe.devices import Device
from supirkit.datapipe.prefilter import PrefilterConfig


class InputConfig(Schema):
    """How the listing is cut into scoring partitions (one scores part each)."""

    inputs_per_partition: int = Field(256, ge=1)
    bytes_per_partition: int = Field(1_000_000_000, ge=1)


class CheapSignalsConfig(Schema):
    enabled: list[Literal["detail", "jpeg", "texture", "colour", "borders", "phash"]] = [
        "detail", "jpeg", "texture", "colour", "borders", "phash"]
    tile_size: int = Field(256, ge=32, le=2048, description="Native-resolution tile side (pixels).")
    detail_tiles: int = Field(4, ge=1, le=32)
    flat_tiles: int = Field(2, ge=0, le=32)
    grid: int = Field(4, ge=1, le=16, description="Candidate tile positions: grid x grid.")
    small_side: int = Field(512, ge=64, le=4096, description="Short side of the downscaled copy.")


class IQAConfig(Schema):
    """Learned IQA metrics through pyiqa, on native-resolution tiles; weights from $TORCH_HOME/hub/pyiqa."""

    metrics: list[str] = Field(default_factory=list, description="pyiqa names: musiq, topiq_nr, clipiqa, maniqa...")
    pretrained: bool = Field(True, description="False builds random weights (tests only).")
    tiles: int = Field(2, ge=1, le=32)
    tile_size: int = Field(384, ge=32, le=4096)
    batch_size: int = Field(8, ge=1)


class AestheticConfig(Schema):
    """LAION-style MLP head on L2-normalised open_clip image embeddings."""

    enabled: bool = False
    clip_model: str = Field("ViT-L-14", description="open_clip model name, a model-config .json, or a folder "
                                                    "holding one config .json and one .safetensors")
    clip_weights: Optional[str] = Field(None, description="weights file, or an open_clip pretrained tag (openai)")
    head_weights: Optional[str] = Field(None, description="MLP head (.safetensors or .pth state dict)")
    batch_size: int = Field(32, ge=1)


class SignalsConfig(Schema):
    cheap: CheapSignalsConfig = CheapSignalsConfig()
    iqa: IQAConfig = IQAConfig()
    aesthetic: AestheticConfig = AestheticConfig()
    device: Device = "auto"


class NearDedupConfig(Schema):
    enabled: bool = True
    max_hamming: int = Field(4, ge=0, le=15, description="Perceptual hashes this close are one group.")


class SemanticDedupConfig(Schema):
    enabled: bool = False
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Cosine similarity of CLIP embeddings.")
    n_clusters: Optional[int] = Field(None, ge=1, description="k-means buckets; None: about sqrt(n)/2.")
    sample_size: int = Field(200_000, ge=100, description="Embeddings used to fit the k-means centroids.")
    iterations: int = Field(15, ge=1, le=200)
    n_buckets: int = Field(64, ge=1, le=4096, description="Spill files: clusters are processed bucket by bucket.")
    seed: int = 0


class DedupConfig(Schema):
    exact: bool = True
    near: NearDedupConfig = NearDedupConfig()
    semantic: SemanticDedupConfig = SemanticDedupConfig()
    rank_by: list[str] = Field(default_factory=lambda: list(DEFAULT_RANK_BY),
                               description="Criteria choosing the member kept in a group, best first: score "
                                           "columns (higher is better; -name: lower is better) or derived ones "
                                           "(reencoded, fidelity); see curation/keep.py")


class RuleCheckConfig(Schema):
    """One rule: ``signal`` with ``min``/``max`` bounds, or a free ``where`` condition."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    signal: Optional[str] = None
    min: Optional[float] = None
    max: Optional[float] = None
    where: Optional[str] = None
    if_missing: Literal["pass", "reject"] = "reject"

    @model_validator(mode="after")
    def _shape(self):
        if self.where is None and (self.signal is None or (self.min is None and self.max is None)):
            raise ValueError(f"rule {self.name!r}: give 'signal' with 'min' and/or 'max', or a 'where' condition")
        if self.where is not None and self.signal is not None:
            raise ValueError(f"rule {self.name!r}: 'signal' and 'where' exclude each other")
        return self


class RulesConfig(Schema):
    combine: Literal["all", "any"] = Field("all", description="all: every check must pass; any: one suffices")
    checks: list[RuleCheckConfig] = Field(default_factory=list)


class CropConfig(Schema):
    mode: Literal["resize_center", "center", "grid"] = Field(
        "resize_center", description="resize_center: short side -> size, centre crop (the paper); center: "
                                     "native-resolution centre crop; grid: up to max_crops non-overlapping crops")
    size: int = Field(1024, ge=16, le=8192)
    max_crops: int = Field(4, ge=1, le=64)


class EncodeConfig(Schema):
    codec: Literal["jpg", "png"] = "jpg"
    quality: int = Field(95, ge=1, le=100, description="JPEG quality (4:4:4); PNG: zlib level = min(quality, 9)")


class CurateOutputConfig(OutputConfig):
    subset: str = Field("general", pattern=r"^[A-Za-z0-9_\-]+$", description="Tag written to every sample's json.")
    prefix: str = Field("curated", pattern=PREFIX_PATTERN)
    samples_per_shard: int = Field(1000, ge=1)
    crop: CropConfig = CropConfig()
    encode: EncodeConfig = EncodeConfig()


class ReportConfig(Schema):
    enabled: bool = True
    grid_samples: int = Field(12, ge=0, le=100)
    thumb_size: int = Field(192, ge=32, le=1024)
    max_rows: int = Field(200_000, ge=100, description="Rows sampled for the histograms.")


class CurateConfig(DecodingJobConfig):
    input: InputConfig = InputConfig()
    listing: ListingConfig = ListingConfig()
    prefilter: PrefilterConfig = PrefilterConfig(min_side=1024, max_aspect_ratio=4.0)
    signals: SignalsConfig = SignalsConfig()
    dedup: DedupConfig = DedupConfig()
    rules: RulesConfig = RulesConfig()
    output: CurateOutputConfig = CurateOutputConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _crop_fits(self):
        c = self.output.crop
        if c.mode == "resize_center" and c.size > self.prefilter.min_side:
            raise ValueError(f"output.crop.size {c.size} exceeds prefilter.min_side {self.prefilter.min_side}: "
                             "images would have to be upscaled")
        return self

    # The job is split in what needs pixels (scoring) and what does not (grouping, selection, writing):
    # the first hash guards the scores, the second says when the shards must be rewritten.
    def scoring_hash(self) -> str:
        return config_hash(self, exclude=("runner", "dedup", "rules", "output", "report"))

    def dedup_hash(self) -> str:
        return config_hash(self.dedup.model_copy(update={"rank_by": []}), exclude=()) + self.scoring_hash()

    def selection_hash(self) -> str:
        return config_hash(self, exclude=("runner", "report"))

    @property
    def needs_models(self) -> bool:
        s = self.signals
        return bool(s.iqa.metrics) or s.aesthetic.enabled or self.dedup.semantic.enabled

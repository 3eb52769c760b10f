"""``supirkit testset``: deterministic paired test sets (HQ crop, LQ, parameters) written as shards.

Each input image gives ``crop.per_image`` HQ crops (random positions or the centre, after an optional
resize of the short side), each degraded by one profile (``configs/degrade``). A pair is a function of
(profile, seed, key) only, its key being ``{content key of the image}_{crop index}``: the same photo gives
the same pair in every run, on every machine, in any order. The job is a ``datapipe`` stage, resumable
like every stage (finished shards are kept, unfinished ones redone, a changed config refused).

A sample: ``{key}.png`` (the HQ crop: the profile's target, e.g. the unsharp-masked crop for ``seesr``),
``{key}.lq.png`` (the LQ) and ``{key}.json`` (source, crop box, every degradation parameter). With
``export.folders`` the pairs are also written as ``__supirkit__/pairs/hq/{key}.png`` and ``.../lq/{key}.png``
(under ``__supirkit__/``: only shards lie at the top of a shard set), the layout the seed papers publish their
test sets in and what ``supirkit restore`` and ``supirkit evaluate`` read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from supirkit.datapipe.config import DecodingJobConfig, Schema, ShardingConfig, config_hash
from supirkit.datapipe.errors import ConfigError
from supirkit.datapipe.files import atomic_write
from supirkit.datapipe.plan import Partition, plan_partitions, planned_inputs
from supirkit.datapipe.runner import Pass, prepare_output, run_stage, write_job_summary
from supirkit.datapipe.shard_format import ShardSetLayout
from supirkit.datapipe.sinks import ShardOutput, ShardSink
from supirkit.datapipe.stage import Stage
from supirkit.datapipe.stats import JobResult, UnitStats

STAGE = "testset"
LQ_FIELD = "lq.png"


class PairOptions(Schema):
    profile: str = Field("supir", description="degradation profile: a name in configs/degrade or a YAML path")
    overrides: list[str] = Field(default_factory=list, description="--set style overrides of the profile")
    seed: int = Field(0, description="one number for the whole set; each pair is seeded from (seed, key)")
    count: Optional[int] = Field(None, ge=1, description="at most this many pairs: the first "
                                 "ceil(count / per_image) inputs in listing order (a tar's members count)")


class CropOptions(Schema):
    size: Optional[int] = Field(None, ge=8, description="HQ crop side; null: the profile's hq_size")
    mode: Literal["random", "center"] = Field("random", description="random positions (seeded per key) or the centre")
    per_image: int = Field(1, ge=1, description="crops per input image (SeeSR: 3000 crops of 100 DIV2K images = 30)")
    resize_short_side: Optional[int] = Field(None, ge=8, description="resize so the short side is this first "
                                             "(ResShift's test set: 256, then a centre crop); null: no resize")
    resize_interpolation: Literal["area", "linear", "cubic"] = Field(
        "area", description="for resize_short_side (albumentations' SmallestMaxSize default is linear)")
    small_images: Literal["enlarge", "skip"] = Field(
        "enlarge", description="an image shorter than the crop: enlarge it (bicubic) or skip it (recorded)")


class ExportOptions(Schema):
    folders: bool = Field(True, description="also write hq/{key}.png and lq/{key}.png next to the shards")


class TestsetConfig(DecodingJobConfig):
    pairs: PairOptions = PairOptions()
    crop: CropOptions = CropOptions()
    export: ExportOptions = ExportOptions()
    sharding: ShardingConfig = ShardingConfig(prefix="testset")

    @model_validator(mode="after")
    def _profile_fits(self):
        degrader = self.degrader()  # an unknown profile or a bad override fails here, before any work
        side = self.crop_side()
        scale = degrader.config.scale
        if degrader.config.pipeline == "classical" and side % scale:
            raise ValueError(f"crop side {side} is not a multiple of the classical model's scale {scale}")
        return self

    def degrader(self):
        """The profile, with ``hq_size`` set to ``crop.size`` when that is given."""
        from supirkit.degrade import Degrader

        sets = list(self.pairs.overrides) + ([f"hq_size={self.crop.size}"] if self.crop.size else [])
        try:
            return Degrader.from_spec(self.pairs.profile, sets)
        except ConfigError as exc:
            raise ValueError(f"pairs.profile {self.pairs.profile!r}: {exc}") from None

    def crop_side(self) -> int:
        side = self.crop.size or self.degrader().config.hq_size
        if side is None:
            raise ValueError(f"profile {self.pairs.profile!r} has no hq_size: set crop.size")
        return side


def _rng(seed: int, key: str) -> np.random.Generator:
    # the crop stream, domain-separated from the degradation's own (seed, epoch, key) streams
    digest = hashlib.blake2b(json.dumps([int(seed), key]).encode(), digest_size=16, person=b"supirkit-testset").digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _resize(rgb: np.ndarray, h: int, w: int, interpolation: str) -> np.ndarray:
    import cv2

    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[interpolation]
    return cv2.resize(rgb, (w, h), interpolation=flag)


class CropError(ValueError):
    pass


def hq_crops(rgb: np.ndarray, keys: list[str], side: int, crop: CropOptions,
             seed: int) -> Iterator[tuple[np.ndarray, dict]]:
    """The HQ crops of one image, one per key, with where each came from."""
    h0, w0 = rgb.shape[:2]
    if crop.resize_short_side:
        s = crop.resize_short_side / min(h0, w0)
        rgb = _resize(rgb, max(1, round(h0 * s)), max(1, round(w0 * s)), crop.resize_interpolation)
    h, w = rgb.shape[:2]
    if min(h, w) < side:
        if crop.small_images == "skip":
            raise CropError(f"{w}x{h} is smaller than the {side} crop")
        s = side / min(h, w)
        rgb = _resize(rgb, max(side, math.ceil(h * s)), max(side, math.ceil(w * s)), "cubic")
        h, w = rgb.shape[:2]
    for key in keys:
        if crop.mode == "center":
            top, left = (h - side) // 2, (w - side) // 2
        else:
            g = _rng(seed, key)
            top, left = int(g.integers(h - side + 1)), int(g.integers(w - side + 1))
        box = {"top": top, "left": left, "size": side, "from": [h, w], "original": [h0, w0]}
        yield np.ascontiguousarray(rgb[top:top + side, left:left + side]), box


class TestsetStage(Stage[Partition]):
    """One partition of inputs -> one shard of pairs."""

    name = "testset"

    def __init__(self, cfg: TestsetConfig) -> None:
        self.cfg = cfg
        self.degrader = None

    def setup(self) -> None:
        self.degrader = self.cfg.degrader()
        self.side = self.cfg.crop_side()

    def process(self, partition: Partition, sink: ShardSink, stats: UnitStats) -> None:
        from supirkit.datapipe.decode import DecodeError, decode_rgb, encode_image
        from supirkit.datapipe.inputs import iter_raw_items
        from supirkit.datapipe.keys import content_key, sub_key

        cfg, dc = self.cfg, self.cfg.decode
        seen: set[str] = set()
        for item in iter_raw_items(partition, stats, dc.max_file_bytes, cfg.runner.io_retries):
            try:
                with stats.timer("decode"):
                    rgb, _ = decode_rgb(item.data, dc.max_pixels)
            except DecodeError as exc:
                stats.reject(item.source, exc.reason, exc.detail)
                continue
            base = content_key(item.data)
            keys = [sub_key(base, j) for j in range(cfg.crop.per_image)]
            if base in seen:  # identical bytes: the same key, hence the same pairs
                stats.reject(item.source, "duplicate", "same bytes as an earlier input of this shard")
                continue
            seen.add(base)
            try:
                crops = list(hq_crops(rgb, keys, self.side, cfg.crop, cfg.pairs.seed))
            except CropError as exc:
                stats.reject(item.source, "too_small", str(exc))
                continue
            for key, (hq, box) in zip(keys, crops):
                with stats.timer("degrade"):
                    target, lq, params = self.degrader(hq, seed=cfg.pairs.seed, epoch=0, key=key)
                with stats.timer("encode"):
                    sample = {"__key__": key, "png": encode_image(target, "png"), LQ_FIELD: encode_image(lq, "png"),
                              "json": {"source": item.source, "profile": self.degrader.config.name,
                                       "seed": cfg.pairs.seed, "crop": box, "width": int(target.shape[1]),
                                       "height": int(target.shape[0]), "lq_width": int(lq.shape[1]),
                                       "lq_height": int(lq.shape[0]), "degradation": params}}
                sink.write(sample)
            stats.count("pairs", len(crops))


def _tar_member_refs(ref) -> Iterator:
    """The image members of a tar as ``tar#key`` inputs (so that ``count`` counts images, not tars)."""
    from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS
    from supirkit.datapipe.inputs import MEMBER_SEP
    from supirkit.datapipe.sources import FILE, InputRef
    from supirkit.datapipe.tario import read_shard, sample_image

    try:
        for sample in read_shard(ref.uri):
            if sample_image(sample)[1] is not None:
                yield InputRef(f"{ref.uri}{MEMBER_SEP}{sample['__key__']}", FILE, -1)
    except CORRUPT_INPUT_ERRORS:
        yield ref  # read whole by the stage, which records what it cannot read


def capped_listing(sources: Iterable[str], max_inputs: Optional[int]) -> Iterator:
    """The listing of ``sources``, cut after ``max_inputs`` image inputs (invalid entries are kept: they
    are recorded as rejections and take no slot)."""
    from supirkit.datapipe.sources import INVALID, TAR, list_inputs

    refs = list_inputs(sources)
    if max_inputs is None:
        yield from refs
        return
    n = 0
    for ref in refs:
        for r in (_tar_member_refs(ref) if ref.kind == TAR else [ref]):
            if n >= max_inputs:
                return
            yield r
            n += r.kind != INVALID


def run_testset_job(sources: Iterable[str], out: str | Path, cfg: TestsetConfig, fresh: bool = False) -> JobResult:
    """The whole ``supirkit testset`` job; returns its statistics (pairs written are ``result.samples``)."""
    sources = [os.fsdecode(s) for s in sources]
    chash = config_hash(cfg)
    layout = prepare_output(out, STAGE, chash, fresh, sources=sources)
    per = cfg.crop.per_image
    max_inputs = math.ceil(cfg.pairs.count / per) if cfg.pairs.count else None
    n = plan_partitions(capped_listing(sources, max_inputs), layout.work, cfg.sharding)
    result = run_stage(Pass(TestsetStage(cfg), ShardOutput(layout.root, cfg.sharding.prefix), n, layout.work, chash,
                            "testset", planned_inputs(layout.work)), cfg.runner)
    extra = {"profile": cfg.pairs.profile, "seed": cfg.pairs.seed, "crop": cfg.crop.model_dump()}
    if result.ok and cfg.pairs.count and result.samples > cfg.pairs.count:
        extra["note"] = f"{result.samples} pairs: the last input's {per} crops are all kept"
    if result.ok and cfg.export.folders:
        extra["folders"] = export_folders(layout, cfg.sharding.prefix)
    extra["pattern"] = layout.pattern(cfg.sharding.prefix, n)
    write_job_summary(layout, STAGE, result, extra)
    return result


def pairs_folder(root: str | Path) -> Path:
    """Where ``export.folders`` writes ``hq/`` and ``lq/`` of a test set."""
    return ShardSetLayout(root).meta / "pairs"


def export_folders(layout: ShardSetLayout, prefix: str) -> dict:
    """``hq/{key}.png`` and ``lq/{key}.png`` from the finished shards (bytes as stored); files already
    there with the same size are kept, so a rerun only writes what is missing."""
    from supirkit.datapipe.tario import list_shards, read_shard

    out_dir = pairs_folder(layout.root)
    counts = {"hq": 0, "lq": 0}
    for url in list_shards(str(layout.root)):
        if not Path(url).name.startswith(f"{prefix}-"):
            continue
        for sample in read_shard(url):
            for folder, field in (("hq", "png"), ("lq", LQ_FIELD)):
                data = sample.get(field)
                if data is None:
                    continue
                path = out_dir / folder / f"{sample['__key__']}.png"
                if not (path.is_file() and path.stat().st_size == len(data)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(path, data)
                counts[folder] += 1
    return counts

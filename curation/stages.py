"""The three partitioned passes of ``supirkit curate`` (see ``curation.job`` for the whole flow).

ScoreStage (CPU tasks): header prefilter, decode, cheap signals -> one table row per input.
ModelStage (GPU actors, when configured): pyiqa metrics, aesthetics and CLIP embeddings, batched.
WriteStage (CPU tasks): re-read only the selected sources, crop, encode once -> curated shards.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from supirkit.curation.config import CurateConfig
from supirkit.datapipe.decode import DecodeError, decode_rgb, encode_image, probe
from supirkit.datapipe.errors import rejection_reason
from supirkit.datapipe.inputs import MEMBER_ORDER_STRIDE, MEMBER_SEP, RawItem, iter_raw_items, read_source
from supirkit.datapipe.keys import content_key, display_source, sub_key
from supirkit.datapipe.plan import Partition
from supirkit.datapipe.prefilter import prefilter_reason
from supirkit.datapipe.shard_format import ShardSetLayout
from supirkit.datapipe.sinks import TableOutput, TableSink
from supirkit.datapipe.sources import TAR, InputRef
from supirkit.datapipe.stage import Stage
from supirkit.datapipe.stats import UnitStats


class CurateFolders:
    """Where curate keeps each pass's output inside the job's work folder (and the scores table)."""

    def __init__(self, layout: ShardSetLayout) -> None:
        self.layout = layout
        self.signals = TableOutput(layout.work / "signals", "signals")
        self.models = TableOutput(layout.work / "models", "models")
        self.dedup = layout.work / "dedup"
        self.select = layout.work / "select"
        self.scores = layout.scores_dir

    def plan_part(self, index: int) -> Path:
        return self.select / f"plan-{index:06d}.parquet"


def _view_options(cfg: CurateConfig):
    from supirkit.curation.signals import ViewOptions

    c = cfg.signals.cheap
    return ViewOptions(tile_size=c.tile_size, detail_tiles=c.detail_tiles, flat_tiles=c.flat_tiles,
                       grid=c.grid, small_side=c.small_side)


def _one_cv2_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # one worker per core: cv2's own threads would only compete


class ScoreStage(Stage[Partition]):
    """One row per input: its provenance, header, the prefilter/decode verdict and the cheap signals."""

    name = "curate:score"

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        from supirkit.curation.signals import build_cheap_scorers

        _one_cv2_thread()
        self.scorers = build_cheap_scorers(self.cfg.signals.cheap.enabled)
        self.view_options = _view_options(self.cfg)

    def process(self, partition: Partition, sink: TableSink, stats: UnitStats) -> None:
        from supirkit.curation.signals import ImageView, decode_for, score_views

        cfg = self.cfg
        first_rejection = len(stats.rejections)
        for item in iter_raw_items(partition, stats, cfg.decode.max_file_bytes, cfg.runner.io_retries):
            row = {"order": item.order, "partition": partition.index, "source": item.source,
                   "source_uri": os.fsencode(item.uri), "bytes": len(item.data)}
            try:
                with stats.timer("probe"):
                    header = probe(item.data)
                row.update(width=header.width, height=header.height, short_side=min(header.width, header.height),
                           format=header.format)
                reason = prefilter_reason(header, cfg.prefilter, cfg.decode.max_pixels)
                if reason:
                    sink.write({**row, "status": "rejected", "stage": "prefilter", "reason": reason})
                    stats.count("prefiltered")
                    continue
                with stats.timer("decode"):
                    rgb, header = decode_for(self.scorers, item.data, cfg.decode.max_pixels, self.view_options)
            except DecodeError as exc:
                sink.write({**row, "status": "rejected", "stage": "decode", "reason": exc.reason,
                            "detail": exc.detail[:300]})
                stats.count("undecodable")
                continue
            with stats.timer("hash"):
                row["key"] = content_key(item.data)
            with stats.timer("signals"):
                view = ImageView(rgb, header, item.data, self.view_options)
                row.update(score_views(self.scorers, [view])[0])
            row["status"] = "scored"
            sink.write(row)
            stats.count("scored")
        # inputs that could not even be read were recorded by iter_raw_items: they get rows too. Their
        # order is the listing position's when the source is a listed one; a tar member or a damaged
        # tar's tail gets a fresh order after the tar's readable members (unique, deterministic).
        orders = {display_source(r.uri): (partition.first_order + i) * MEMBER_ORDER_STRIDE
                  for i, r in enumerate(partition.refs)}
        used = {row["order"] for row in sink.rows}
        extra = max(used, default=partition.first_order * MEMBER_ORDER_STRIDE) + 1
        for rej in stats.rejections[first_rejection:]:
            order = orders.get(rej["source"])
            if order is None or order in used:
                order, extra = extra, extra + 1
            used.add(order)
            sink.write({"order": order, "partition": partition.index, "source": rej["source"],
                        "status": "rejected", "stage": "read", "reason": rej["reason"],
                        "detail": rej.get("detail", "")})


class ModelStage(Stage[Partition]):
    """Learned signals for the inputs the CPU pass scored: pyiqa metrics on native tiles, aesthetics
    and CLIP embeddings; images are batched, models are loaded once per actor."""

    name = "curate:models"
    needs_gpu = True

    def __init__(self, cfg: CurateConfig, signals: TableOutput) -> None:
        self.cfg, self.signals = cfg, signals

    def setup(self) -> None:
        from supirkit.curation.signals.models import build_model_scorers

        _one_cv2_thread()
        self.scorers = build_model_scorers(self.cfg)
        self.view_options = _view_options(self.cfg)

    def process(self, partition: Partition, sink: TableSink, stats: UnitStats) -> None:
        import pyarrow.parquet as pq

        from supirkit.curation.signals import ImageView, decode_for, score_views

        part = self.signals.part(partition.index)
        t = pq.read_table(part, columns=["order", "status"]).to_pydict()
        wanted = {o for o, s in zip(t["order"], t["status"]) if s == "scored"}
        batch_size = max(1, min([s.batch_size for s in self.scorers] or [1]))
        batch: list[tuple[int, object]] = []

        def flush():
            if not batch:
                return
            with stats.timer("models"):
                rows = score_views(self.scorers, [v for _, v in batch])
            for (order, _), row in zip(batch, rows):
                sink.write({"order": order, **row})
            stats.count("scored", len(batch))
            batch.clear()

        scratch = UnitStats()
        for item in iter_raw_items(partition, scratch, self.cfg.decode.max_file_bytes, self.cfg.runner.io_retries):
            if item.order not in wanted:
                continue
            with stats.timer("decode"):
                rgb, header = decode_for(self.scorers, item.data, self.cfg.decode.max_pixels, self.view_options)
            batch.append((item.order, ImageView(rgb, header, item.data, self.view_options)))
            if len(batch) >= batch_size:
                flush()
        flush()


# ------------------------------------------------------------------------------------------------ write

@dataclass
class WritePartition:
    """The selected sources of one output shard (rows of the selection's write plan)."""

    index: int
    rows: list[dict] = field(default_factory=list)


def _tar_of(uri: str) -> str | None:
    if MEMBER_SEP in uri and ".tar" + MEMBER_SEP in uri:
        return uri.rsplit(MEMBER_SEP, 1)[0]
    return None


class WriteStage(Stage[WritePartition]):
    """Selected sources -> training crops, each encoded once, with crop box and scale in the json."""

    name = "curate:write"

    def __init__(self, cfg: CurateConfig, folders: CurateFolders) -> None:
        self.cfg, self.folders = cfg, folders

    def setup(self) -> None:
        _one_cv2_thread()

    def load_partition(self, work_dir: Path, index: int) -> WritePartition:
        import pyarrow.parquet as pq

        return WritePartition(index, pq.read_table(self.folders.plan_part(index)).to_pylist())

    def first_input(self, partition: WritePartition) -> str:
        return partition.rows[0]["source"] if partition.rows else ""

    def _items(self, rows: list[dict], stats: UnitStats):
        """(row, raw item or None) in plan order; a tar is streamed once per run of its members."""
        cfg = self.cfg
        uri_of = lambda r: os.fsdecode(r["source_uri"])  # noqa: E731
        for tar, group in itertools.groupby(rows, key=lambda r: _tar_of(uri_of(r))):
            group = list(group)
            if tar is None:
                for r in group:
                    try:
                        data = read_source(uri_of(r), cfg.decode.max_file_bytes, cfg.runner.io_retries)
                    except OSError as exc:  # gone or broken since scoring
                        reason, detail = rejection_reason(exc)
                        stats.reject(r["source"], "vanished" if reason == "unreadable" else reason, detail)
                        yield r, None
                        continue
                    yield r, RawItem(r["source"], uri_of(r), r["order"], data)
                continue
            by_order = {r["order"]: r for r in group}
            tar_order = min(by_order) // (1 << 24)
            found = set()
            scratch = UnitStats()
            for item in iter_raw_items(Partition(0, [InputRef(tar, TAR)], tar_order), scratch,
                                       cfg.decode.max_file_bytes, cfg.runner.io_retries):
                r = by_order.get(item.order)
                if r is not None:
                    found.add(item.order)
                    yield r, item
            for o in sorted(set(by_order) - found):
                stats.reject(by_order[o]["source"], "vanished", "member no longer in its tar")

    def process(self, partition: WritePartition, sink, stats: UnitStats) -> None:
        from supirkit.curation.crops import apply_crop, plan_crops

        cfg = self.cfg
        out = cfg.output
        enc = out.encode
        quality = enc.quality if enc.codec == "jpg" else min(enc.quality, 9)
        for row, item in self._items(partition.rows, stats):
            stats.count("inputs")
            if item is None:
                continue
            key = content_key(item.data)
            if key != row["key"]:
                stats.reject(row["source"], "changed_during_job", "content differs from the scoring pass")
                continue
            with stats.timer("decode"):
                rgb, header = decode_rgb(item.data, cfg.decode.max_pixels)
            detail = None
            if out.crop.mode == "grid":
                from supirkit.curation.signals import ImageView

                detail = ImageView(rgb, header, b"", _view_options(cfg)).small_detail
            boxes = plan_crops(header.width, header.height, out.crop, detail)
            if not boxes:
                stats.reject(row["source"], "too_small_for_crop", f"{header.width}x{header.height}")
                continue
            scores = json.loads(row["scores_json"]) if row.get("scores_json") else {}
            for i, box in enumerate(boxes):
                with stats.timer("crop"):
                    crop = apply_crop(rgb, box, out.crop.size)
                with stats.timer("encode"):
                    data = encode_image(crop, enc.codec, quality)
                sample_key = key if len(boxes) == 1 and out.crop.mode != "grid" else sub_key(key, i)
                meta = {"key": sample_key, "source": row["source"], "source_key": key, "subset": out.subset,
                        "width": out.crop.size, "height": out.crop.size, "orig_width": header.width,
                        "orig_height": header.height, "orig_format": header.format, "crop_box": box.as_list(),
                        "scale": round(box.scale, 6), "crop_mode": out.crop.mode, "crop_index": i,
                        "n_crops": len(boxes), "codec": enc.codec, "quality": quality, "scores": scores}
                duplicates = json.loads(row["duplicates"]) if row.get("duplicates") else []
                meta["copies"] = 1 + len(duplicates)
                if item.upstream.get("meta"):
                    meta["upstream"] = item.upstream["meta"]
                index = {"source_uri": os.fsencode(item.uri), "duplicates": duplicates}
                sample = {"__key__": sample_key, enc.codec: data, "json": meta, "__index__": index}
                if "txt" in item.upstream:
                    sample["txt"] = item.upstream["txt"]
                with stats.timer("write"):
                    sink.write(sample)
            stats.count("sources_written")

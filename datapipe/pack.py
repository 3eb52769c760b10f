"""``supirkit shard``: pack sources into lossless shards, one image per content key.

Three passes, each resumable on its own:
1. hash: per partition, read each input, hash it, read its header (and optionally decode it fully to
   catch truncation) -> a table part under ``_hashes``;
2. dedup: group equal content hashes globally (bounded memory) -> ``_dedup``;
3. write: per partition, re-read the inputs and write the primaries unchanged into shard i; their
   duplicates are recorded on the primary (``duplicates``) and as rejections ("duplicate").

Identical bytes are one image (one key) by definition, so exact dedup is not optional: it is what
keeps keys globally unique.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from pydantic import Field

from supirkit.datapipe import faults
from supirkit.datapipe.captions import CaptionJoin
from supirkit.datapipe.config import DecodingJobConfig, ListingConfig, Schema, ShardingConfig, config_hash
from supirkit.datapipe.decode import EXT_BY_FORMAT, DecodeError, decode_rgb, probe
from supirkit.datapipe.dedup import duplicates_for_partition, group_exact_duplicates
from supirkit.datapipe.files import read_json
from supirkit.datapipe.inputs import iter_raw_items
from supirkit.datapipe.keys import content_key
from supirkit.datapipe.plan import Partition, plan_partitions, planned_inputs
from supirkit.datapipe.prefilter import PrefilterConfig, prefilter_reason
from supirkit.datapipe.runner import Pass, prepare_output, release_output, run_stage, write_job_summary
from supirkit.datapipe.sinks import ShardOutput, ShardSink, TableOutput, TableSink
from supirkit.datapipe.stage import Stage
from supirkit.datapipe.stats import JobResult, UnitStats

HASH_PASS, DEDUP_PASS = "hash", "dedup"


class PackConfig(Schema):
    verify_decode: bool = Field(True, description="Decode every image fully to reject truncated files.")


class ShardConfig(DecodingJobConfig):
    sharding: ShardingConfig = ShardingConfig()
    listing: ListingConfig = ListingConfig()
    prefilter: PrefilterConfig = PrefilterConfig(max_aspect_ratio=50.0)
    pack: PackConfig = PackConfig()


class HashStage(Stage[Partition]):
    """Pass 1: read, check and hash every input; one table part per partition, rejections recorded."""

    name = "shard:hash"

    def __init__(self, cfg: ShardConfig) -> None:
        self.cfg = cfg

    def check(self, data: bytes, header=None):
        """The header of an acceptable image, or ``DecodeError`` with the reason it is not."""
        header = header or probe(data)
        reason = prefilter_reason(header, self.cfg.prefilter, self.cfg.decode.max_pixels)
        if reason:
            raise DecodeError(reason, f"{header.width}x{header.height}")
        return header

    def process(self, partition: Partition, sink: TableSink, stats: UnitStats) -> None:
        dc = self.cfg.decode
        for item in iter_raw_items(partition, stats, dc.max_file_bytes, self.cfg.runner.io_retries):
            try:
                if self.cfg.pack.verify_decode:
                    # decode_rgb checks the pixel limit from the header before decoding; its header then
                    # serves the other checks (one header parse per image instead of two)
                    with stats.timer("decode"):
                        _, header = decode_rgb(item.data, dc.max_pixels)
                    header = self.check(item.data, header)
                else:
                    with stats.timer("probe"):
                        header = self.check(item.data)
            except DecodeError as exc:
                stats.reject(item.source, exc.reason, exc.detail)
                continue
            with stats.timer("hash"):
                key = content_key(item.data)
            sink.write({"key": key, "order": item.order, "partition": partition.index, "source": item.source,
                        "width": header.width, "height": header.height, "format": header.format,
                        "mode": header.mode, "n_frames": header.n_frames, "orientation": header.orientation,
                        "bytes": len(item.data)})


class WriteStage(Stage[Partition]):
    """Pass 2: re-read the accepted inputs and write each image once, bytes unchanged, under its content
    key; copies are recorded on the kept sample (``copies`` in its json, ``duplicates`` in the index) and
    each as a rejection with reason ``duplicate``."""

    name = "shard:write"

    def __init__(self, cfg: ShardConfig, hashes: TableOutput, dedup_dir: str,
                 captions: Optional[CaptionJoin] = None) -> None:
        self.cfg, self.hashes, self.dedup_dir = cfg, hashes, dedup_dir
        self.captions = captions  # a caption set named as the manifest: its captions go into the new shards

    def process(self, partition: Partition, sink: ShardSink, stats: UnitStats) -> None:
        import pyarrow.parquet as pq

        accepted = {r["order"]: r for r in pq.read_table(self.hashes.part(partition.index)).to_pylist()}
        dups = duplicates_for_partition(self.dedup_dir, partition.index)
        halfway = max(1, len(accepted) // 2)
        seen: set[int] = set()
        scratch = UnitStats()  # pass 1 already recorded the rejections of this partition
        for item in iter_raw_items(partition, scratch, self.cfg.decode.max_file_bytes, self.cfg.runner.io_retries):
            row = accepted.get(item.order)
            if row is None:
                continue
            seen.add(item.order)
            with stats.timer("hash"):
                key = content_key(item.data)
            if key != row["key"]:
                stats.reject(item.source, "changed_during_job", "content differs from the hashing pass")
                continue
            dup = dups.get(item.order)
            if dup is not None and not dup["is_primary"]:
                stats.reject(item.source, "duplicate", f"same content as {dup['primary_source']}")
                continue
            with stats.timer("write"):
                sample = self.sample(item, row, dup)
                if self.captions is not None:
                    self.captions.apply(item.uri, sample)
                sink.write(sample)
            if len(sink) == halfway:
                faults.maybe_fail("mid_shard", partition.index)
        stats.timings["read"] += scratch.timings.get("read", 0.0)
        for order in sorted(set(accepted) - seen):
            # accepted by pass 1, unreadable now (deleted or broken between the passes)
            stats.reject(accepted[order]["source"], "vanished", "gone between the hashing and writing passes")
        # the hashing pass's rejections and timings belong to this shard's statistics too
        hashed = UnitStats.from_dict(read_json(self.hashes.marker(partition.index)))
        for r in hashed.rejections:
            stats.reject(r["source"], r["reason"], r.get("detail", ""), stage="hash")
        for name, secs in hashed.timings.items():
            stats.timings[f"hash_pass.{name}"] += secs
        stats.counts["inputs"] = int(hashed.counts.get("inputs", 0))

    @staticmethod
    def sample(item, row: dict, dup: Optional[dict]) -> dict:
        """The sample of one accepted input. Every sample's json has the same keys with never-null scalar
        values (plus ``upstream`` for members of input shards): readers that infer a schema from the first
        samples (``datasets``' webdataset builder) fail on a field that is null or an empty list there and
        filled later. The other copies' sources (a list) therefore go to the parquet index
        (``duplicates``), and the json keeps their count (``copies``)."""
        ext = EXT_BY_FORMAT.get(row["format"], item.ext or "bin")
        meta = {"key": row["key"], "source": item.source, "orig_width": row["width"], "orig_height": row["height"],
                "format": row["format"], "mode": row["mode"], "n_frames": row["n_frames"],
                "orientation": row.get("orientation", 1), "encoded": "original",
                "copies": int(dup["copies"]) if dup is not None else 1}
        if item.upstream.get("meta"):
            meta["upstream"] = item.upstream["meta"]
        index = {"source_uri": os.fsencode(item.uri),
                 "duplicates": list(dup["duplicates"]) if dup is not None else []}
        sample = {"__key__": row["key"], ext: item.data, "json": meta, "__index__": index}
        if "txt" in item.upstream:
            sample["txt"] = item.upstream["txt"]
        return sample


def run_shard_job(sources: Iterable[str] | None, out: str, cfg: ShardConfig, fresh: bool = False,
                  manifest: Optional[str] = None, where: Optional[str] = None) -> JobResult:
    """The whole ``supirkit shard`` job; returns the write pass's statistics."""
    from supirkit.datapipe.manifest import manifest_inputs
    from supirkit.datapipe.sources import list_inputs, normalize_source

    sources = [normalize_source(os.fsdecode(s)) for s in (sources or [])]
    chash = config_hash(cfg)
    ident = sources + ([f"manifest:{normalize_source(manifest)}", f"where:{where}"] if manifest else [])
    layout = prepare_output(out, "shard", chash, fresh, sources=ident)
    listing = (manifest_inputs(manifest, where) if manifest else
               list_inputs(sources, follow_symlinks_outside=cfg.listing.follow_symlinks_outside))
    work = layout.work
    n = plan_partitions(listing, work, cfg.sharding)
    hashes = TableOutput(work / HASH_PASS, HASH_PASS)
    inputs = planned_inputs(work)
    hashed = run_stage(Pass(HashStage(cfg), hashes, n, work, chash, "shard: hash", inputs), cfg.runner)
    if not hashed.ok:
        release_output(layout)
        return hashed
    group_exact_duplicates(hashes.folder, work / DEDUP_PASS, cfg.runner)
    captions = CaptionJoin.open(manifest) if manifest else None
    write = WriteStage(cfg, hashes, str(work / DEDUP_PASS), captions)
    result = run_stage(Pass(write, ShardOutput(layout.root, cfg.sharding.prefix), n, work, chash, "shard: write",
                            inputs), cfg.runner)
    write_job_summary(layout, "shard", result, {"pattern": layout.pattern(cfg.sharding.prefix, n)})
    release_output(layout)
    return result

"""``supirkit shard``: pack sources into lossless shards, one image per content key.

Three passes, each resumable on its own:
1. hash: per partition, read each input, hash it, read its header (and optionally decode it fully to
   catch truncation) -> a table part under ``_hashes``;
2. dedup: group equal content hashes globally (bounded memory) -> ``_dedup``;
3. write: per partition, re-read the inputs and write the primaries unchanged into shard i; their
   duplicates are recorded on the primary (``duplicates``) and as rejections ("duplicate").
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

from pydantic import Field

from datapipe.config import DecodeConfig, RunnerConfig, Schema, ShardingConfig, config_hash
from datapipe.decode import EXT_BY_FORMAT, DecodeError, decode_rgb, probe
from datapipe.dedup import duplicates_for_partition, group_exact_duplicates
from datapipe.inputs import iter_raw_items
from datapipe.keys import content_key
from datapipe.runner import (JobResult, Partition, PartitionStage, plan_partitions, prepare_output, run_stage,
                             write_job_summary)
from datapipe.shards import ShardSink, ShardStats, TableSink

HASH_DIR = "_hashes"


class PackOptions(Schema):
    verify_decode: bool = Field(True, description="Decode every image fully to reject truncated files.")
    dedup_exact: bool = True
    min_side: int = Field(0, ge=0, description="Reject images whose short side is below this (header only).")


class ShardJobConfig(Schema):
    sharding: ShardingConfig = ShardingConfig()
    decode: DecodeConfig = DecodeConfig()
    pack: PackOptions = PackOptions()
    runner: RunnerConfig = RunnerConfig()


class HashStage(PartitionStage):
    name = "shard:hash"

    def __init__(self, cfg: ShardJobConfig) -> None:
        self.cfg = cfg

    def open_sink(self, out_dir, prefix, index, cfg_hash):
        return TableSink(out_dir, prefix, index, cfg_hash)

    def process(self, partition: Partition, sink: TableSink, stats: ShardStats) -> None:
        dc = self.cfg.decode
        for item in iter_raw_items(partition, stats, dc.max_file_bytes, self.cfg.runner.io_retries):
            try:
                with stats.timer("probe"):
                    header = probe(item.data)
                if header.width * header.height > dc.max_pixels:
                    raise DecodeError("too_many_pixels", f"{header.width}x{header.height}")
                if self.cfg.pack.verify_decode:
                    with stats.timer("decode"):
                        decode_rgb(item.data, dc.max_pixels)
            except DecodeError as exc:
                stats.reject(item.source, exc.reason, exc.detail)
                continue
            if min(header.width, header.height) < self.cfg.pack.min_side:
                stats.reject(item.source, "too_small", f"{header.width}x{header.height}")
                continue
            with stats.timer("hash"):
                key = content_key(item.data)
            sink.write({"key": key, "order": item.order, "partition": partition.index, "source": item.source,
                        "width": header.width, "height": header.height, "format": header.format,
                        "mode": header.mode, "n_frames": header.n_frames, "bytes": len(item.data)})


class WriteStage(PartitionStage):
    name = "shard:write"

    def __init__(self, cfg: ShardJobConfig, out_dir: str) -> None:
        self.cfg, self.out_dir = cfg, out_dir

    def process(self, partition: Partition, sink: ShardSink, stats: ShardStats) -> None:
        import pyarrow.parquet as pq

        hashes_file = Path(self.out_dir) / HASH_DIR / f"hash-{partition.index:06d}.parquet"
        accepted = {r["order"]: r for r in pq.read_table(hashes_file).to_pylist()}
        dups = duplicates_for_partition(self.out_dir, partition.index) if self.cfg.pack.dedup_exact else {}
        scratch = ShardStats()  # pass 1 already recorded the rejections of this partition
        for item in iter_raw_items(partition, scratch, self.cfg.decode.max_file_bytes, self.cfg.runner.io_retries):
            row = accepted.get(item.order)
            if row is None:
                continue
            stats.count("inputs")
            key = content_key(item.data)
            if key != row["key"]:
                stats.reject(item.source, "changed_during_job", "content differs from the hashing pass")
                continue
            dup = dups.get(item.order)
            if dup is not None and not dup["is_primary"]:
                stats.reject(item.source, "duplicate", f"same content as {dup['primary_source']}")
                continue
            ext = EXT_BY_FORMAT.get(row["format"], item.ext or "bin")
            meta = {"key": key, "source": item.source, "orig_width": row["width"], "orig_height": row["height"],
                    "format": row["format"], "n_frames": row["n_frames"], "encoded": "original"}
            if dup is not None:
                meta["duplicates"] = list(dup["duplicates"])
            if item.upstream.get("meta"):
                meta["upstream"] = item.upstream["meta"]
            sample = {"__key__": key, ext: item.data, "json": meta}
            if "txt" in item.upstream:
                sample["txt"] = item.upstream["txt"]
            with stats.timer("write"):
                sink.write(sample)
        # rejections of the hashing pass belong to this shard's statistics too
        hstats = json.loads((hashes_file.with_name(hashes_file.name[:-8] + ".stats.json")).read_text())
        for r in hstats.get("rejections", []):
            stats.reject(r["source"], r["reason"], r.get("detail", ""), stage="hash")
        stats.counts["inputs"] = int(hstats.get("counts", {}).get("inputs", 0))


def run_shard_job(sources: Iterable[str] | None, out: str, cfg: ShardJobConfig, fresh: bool = False,
                  manifest: Optional[str] = None, where: Optional[str] = None) -> JobResult:
    """The whole ``supirkit shard`` job; returns the write pass's statistics."""
    from datapipe.manifest import manifest_inputs
    from datapipe.sources import list_inputs

    sources = [os.fsdecode(s) for s in (sources or [])]
    chash = config_hash(cfg)
    ident = sources + ([f"manifest:{manifest}", f"where:{where}"] if manifest else [])
    out_dir = prepare_output(out, "shard", chash, fresh, sources=ident)
    listing = manifest_inputs(manifest, where) if manifest else list_inputs(sources)
    n = plan_partitions(listing, out_dir, cfg.sharding)
    hashed = run_stage(HashStage(cfg), out_dir, out_dir / HASH_DIR, n, cfg.runner, chash, prefix="hash",
                       desc="shard: hash")
    if not hashed.ok:
        return hashed
    if cfg.pack.dedup_exact:
        group_exact_duplicates(out_dir / HASH_DIR, out_dir)
    result = run_stage(WriteStage(cfg, str(out_dir)), out_dir, out_dir, n, cfg.runner, chash,
                       prefix=cfg.sharding.prefix, desc="shard: write")
    write_job_summary(out_dir, "shard", result)
    return result

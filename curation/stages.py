"""The three partitioned passes of ``supirkit curate`` (see ``curation.job`` for the whole flow).

ScoreStage: header prefilter, one decode, cheap signals (and, when configured, pyiqa metrics, aesthetics
and CLIP embeddings from the same decode, on GPU actors fed by CPU tasks) -> one table row per input.
WriteStage (CPU tasks): re-read only the selected sources, decode once, crop, encode once -> curated shards.
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


@dataclass
class ScoredChunk:
    """Some inputs of a partition, scored: their rows (cheap signals), the learned scorers' prepared inputs
    of each scored row (None for the others), and the statistics of reading them."""

    rows: list[dict]
    inputs: list
    stats: UnitStats


def iter_scored(cfg: CurateConfig, scorers: list, model_scorers: list, options, partition: Partition,
                stats: UnitStats):
    """``(row, model inputs)`` per readable input of ``partition``: header, prefilter, ONE decode, content
    hash, the cheap signals and, from the same decoded image, what each learned scorer reads (its tiles,
    its resized crop). Inputs that cannot be read are recorded in ``stats`` (rows for them come later)."""
    from supirkit.curation.signals import ImageView, decode_for, score_views

    decode_with = scorers + model_scorers  # a full decode when any of them reads native pixels
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
                stats.count("prefiltered")
                yield {**row, "status": "rejected", "stage": "prefilter", "reason": reason}, None
                continue
            with stats.timer("decode"):
                rgb, header = decode_for(decode_with, item.data, cfg.decode.max_pixels, options)
            stats.count("decodes")
        except DecodeError as exc:
            stats.count("undecodable")
            yield {**row, "status": "rejected", "stage": "decode", "reason": exc.reason,
                   "detail": exc.detail[:300]}, None
            continue
        with stats.timer("hash"):
            row["key"] = content_key(item.data)
        with stats.timer("signals"):
            view = ImageView(rgb, header, item.data, options)
            row.update(score_views(scorers, [view])[0])
        inputs = None
        if model_scorers:
            with stats.timer("prepare"):
                inputs = [m.prepare(view) for m in model_scorers]
        row["status"] = "scored"
        stats.count("scored")
        yield row, inputs


def score_chunk(cfg: CurateConfig, scorers: list, model_scorers: list, options, partition: Partition) -> ScoredChunk:
    """``iter_scored`` over a chunk of a partition, as one CPU task (its result goes to the model actor)."""
    _one_cv2_thread()
    stats = UnitStats()
    rows, inputs = [], []
    for row, prepared in iter_scored(cfg, scorers, model_scorers, options, partition, stats):
        rows.append(row)
        inputs.append(prepared)
    return ScoredChunk(rows, inputs, stats)


#: inputs per CPU task when a model actor fans its partition out
CHUNK_INPUTS = 32


class ScoreStage(Stage[Partition]):
    """One row per input: provenance, header, the prefilter/decode verdict and the cheap signals; with
    learned signals configured (pyiqa, aesthetics, CLIP embeddings), those too, from the same decode.

    Without learned signals a unit is a CPU task. With them it runs on an actor holding the models: the
    actor cuts its partition into chunks that CPU tasks read, decode and score (cheap signals and each
    model's prepared input, ``iter_scored``), anywhere in the cluster, a few chunks ahead; it runs the
    models on what comes back, in batches, and writes one row per input. Each input is read and decoded
    once; the write pass decodes only the accepted ones, once more."""

    name = "curate:score"

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.needs_gpu = cfg.needs_models

    def setup(self) -> None:
        from supirkit.curation.signals import build_cheap_scorers

        _one_cv2_thread()
        self.scorers = build_cheap_scorers(self.cfg.signals.cheap.enabled)
        self.model_scorers = []
        if self.cfg.needs_models:
            from supirkit.curation.signals.models import build_model_scorers

            self.model_scorers = build_model_scorers(self.cfg)
        self.view_options = _view_options(self.cfg)

    def _chunks(self, partition: Partition, stats: UnitStats):
        """The partition scored chunk by chunk: by CPU tasks (learned signals on Ray: the actor keeps a few
        chunks in flight), else here (a tar partition is read here too: its members stream from one read)."""
        remote = self.model_scorers and self.cfg.runner.executor == "ray" and len(partition.refs) > 1
        if remote:
            import ray

            remote = ray.is_initialized()
        if not remote:
            rows, inputs = [], []
            for row, prepared in iter_scored(self.cfg, self.scorers, self.model_scorers, self.view_options,
                                             partition, stats):
                rows.append(row)
                inputs.append(prepared)
                if len(rows) >= CHUNK_INPUTS:
                    yield ScoredChunk(rows, inputs, UnitStats())
                    rows, inputs = [], []
            yield ScoredChunk(rows, inputs, UnitStats())
            return
        yield from self._remote_chunks(partition, stats)

    def _remote_chunks(self, partition: Partition, stats: UnitStats):
        from collections import deque

        import ray

        from supirkit.datapipe.progress import report

        task = ray.remote(num_cpus=self.cfg.runner.num_cpus_per_task, max_retries=self.cfg.runner.max_retries)(
            score_chunk)
        shared = [ray.put(x) for x in (self.cfg, self.scorers, self.model_scorers, self.view_options)]
        starts = deque(range(0, len(partition.refs), CHUNK_INPUTS))
        pending: deque = deque()
        while starts or pending:
            while starts and len(pending) < max(2, self.cfg.runner.max_in_flight):
                s = starts.popleft()
                chunk = Partition(partition.index, partition.refs[s:s + CHUNK_INPUTS], partition.first_order + s)
                pending.append(task.remote(*shared, chunk))
            with stats.timer("wait_cpu_tasks"):
                done = ray.get(pending.popleft())
            stats.merge(done.stats)
            report(inputs=int(done.stats.counts.get("inputs", 0)), rejected=sum(done.stats.rejected.values()))
            yield done

    def _score_models(self, chunk: ScoredChunk, stats: UnitStats) -> None:
        """The learned signals of the chunk's scored rows, in batches of the smallest scorer batch size."""
        scored = [(row, prepared) for row, prepared in zip(chunk.rows, chunk.inputs) if prepared is not None]
        size = max(1, min([m.batch_size for m in self.model_scorers] or [1]))
        for s in range(0, len(scored), size):
            batch = scored[s:s + size]
            with stats.timer("models"):
                for k, scorer in enumerate(self.model_scorers):
                    for (row, _), values in zip(batch, scorer.score_prepared([p[k] for _, p in batch])):
                        row.update(values)

    def process(self, partition: Partition, sink: TableSink, stats: UnitStats) -> None:
        first_rejection = len(stats.rejections)
        for chunk in self._chunks(partition, stats):
            if self.model_scorers:
                self._score_models(chunk, stats)
            for row in chunk.rows:
                sink.write(row)
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
                        with stats.timer("read"):
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
            with stats.timer("hash"):
                key = content_key(item.data)
            if key != row["key"]:
                stats.reject(row["source"], "changed_during_job", "content differs from the scoring pass")
                continue
            with stats.timer("decode"):
                rgb, header = decode_rgb(item.data, cfg.decode.max_pixels)
            stats.count("decodes")
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

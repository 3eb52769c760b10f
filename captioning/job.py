"""``supirkit caption``: a shard set in, a caption for every sample out.

Input shard i becomes output unit i (exactly-once and resumable through ``datapipe.runner``: a unit is
done when its stats JSON exists; a rerun redoes only the others). By default the unit is a caption table
keyed by sample key (``datapipe.captions``: a caption set, read with its input shards by the training
loader, ``inspect`` and ``shard --from-manifest``); with ``output.write: shards`` it is a rewritten shard
whose members are copied byte for byte except ``.json`` (gains a ``caption`` object) and ``.txt`` (the
cleaned caption; an earlier ``.txt`` is kept as ``previous_txt``), ``captioning.writers``. A sample that
cannot be captioned is recorded with a reason and dropped (or kept uncaptioned with ``caption.on_failure:
keep``); it never fails the unit.

Inside a worker, one thread reads and decodes the next batches while the model generates the current one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from supirkit.captioning.config import CaptionConfig
from supirkit.captioning.tags import check_tagger
from supirkit.datapipe.captions import INPUTS_FILE, caption_output, finish_caption_inputs, write_caption_inputs
from supirkit.datapipe.config import ShardingConfig
from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS, rejection_reason
from supirkit.datapipe.files import read_json
from supirkit.datapipe.inputs import MEMBER_REJECTIONS
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.plan import Partition, plan_partitions
from supirkit.datapipe.runner import Pass, prepare_output, run_stage, write_job_summary
from supirkit.datapipe.sinks import ShardOutput
from supirkit.datapipe.sources import TAR, InputRef
from supirkit.datapipe.stage import Stage
from supirkit.datapipe.stats import JobResult, UnitStats
from supirkit.datapipe.tario import list_shards, parse_meta, read_shard

log = logging.getLogger("supirkit")

STAGE = "caption"
#: photos per output shard when the inputs are not shard sets (an input shard is a unit of its own)
PHOTOS_PER_SHARD = 1000


@dataclass
class Prepared:
    """One input sample and the image to caption (or why there is none)."""

    sample: dict
    meta: dict
    source: str
    image: object = None  # PIL image
    size: tuple = ()
    generation: object = None  # captioning.backends.Generation
    error: Optional[tuple[str, str]] = None  # (reason, detail)
    tags: Optional[list] = None  # tag prompts (captioning.tags), when a tagger is configured


@dataclass
class Batch:
    items: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    rejections: list = field(default_factory=list)  # inputs that are not samples at all (unsafe names, bad tar)
    error: Optional[BaseException] = None


def batch_seed(seed: int, shard: int, batch: int) -> int:
    """Seed of one batch: stable across runs and resumes, different for every batch."""
    digest = hashlib.sha256(f"{seed}:{shard}:{batch}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class CaptionStage(Stage[Partition]):
    """One input shard -> one captioned shard. The model is loaded once per worker (``setup``)."""

    name = STAGE
    needs_gpu = True

    def __init__(self, cfg: CaptionConfig, backend_factory=None, photos: bool = False) -> None:
        self.cfg = cfg
        self.backend_factory = backend_factory  # tests and benchmarks may pass an already built backend
        self.backend = None
        self.photos = photos  # partitions of loose inputs (captioning.photos), not one input shard each

    def __getstate__(self):  # the loaded model never travels to a worker: each loads its own
        state = dict(self.__dict__)
        for name in ("backend", "cleaner", "counter", "caption_base", "tagger"):
            state.pop(name, None)
        state["backend"] = None
        return state

    def setup(self) -> None:
        from supirkit.captioning.backends import generation_settings, load_backend
        from supirkit.captioning.clean import CaptionCleaner, TokenCounter
        from supirkit.captioning.tags import load_tagger

        cfg = self.cfg
        t = time.perf_counter()
        self.backend = self.backend_factory() if self.backend_factory else load_backend(cfg)
        self.tagger = load_tagger(cfg.tags)
        self.load_s = time.perf_counter() - t
        self._load_reported = False
        self.cleaner = CaptionCleaner(cfg.clean.openings, cfg.clean.strip_openings, cfg.clean.capitalize)
        self.counter = TokenCounter(cfg.tokens.tokenizer, cfg.tokens.limit, cfg.tokens.on_missing)
        info = self.backend.describe()
        self.caption_base = {
            "model": info["model"], "backend": info["backend"], "dtype": info["dtype"],
            "quantization": info["quantization"], "prompt": cfg.prompt.instruction, "system": cfg.prompt.system,
            "chat_prompt": self.backend.prompt_text, "generation": generation_settings(cfg.generation),
            "image": cfg.image.use, "fit": cfg.image.fit, "clip_tokens_method": self.counter.method,
            "clip_token_limit": cfg.tokens.limit,
        }
        if self.tagger is not None:
            self.caption_base["tagger"] = self.tagger.describe()

    # ------------------------------------------------------------------------------------- reading side
    def _prepare(self, sample: dict, source: str) -> Prepared:
        """One sample and its prepared image, or the reason it has none (a corrupt sample is that sample's
        problem; a transient read error is not caught here: it fails the shard, which is retried)."""
        from supirkit.captioning.images import image_bytes_for, prepare_image

        cfg = self.cfg
        item = Prepared(sample, {}, source)
        try:
            item.meta = parse_meta(sample.get("json"))
            data = image_bytes_for(sample, item.meta, cfg.image.use, cfg.decode.max_file_bytes)
            image = prepare_image(data, cfg.image.fit, cfg.image.max_side, self.backend.pad_colour,
                                  cfg.decode.max_pixels)
            item.image, item.size = image, image.size
        except CORRUPT_INPUT_ERRORS as exc:
            item.error = rejection_reason(exc)
        return item

    def _batches(self, partition: Partition) -> Iterator[Batch]:
        """Read the unit's inputs and prepare batches, in order; reading/decoding failures become values."""
        if self.photos:
            yield from self._photo_batches(partition)
            return
        url = partition.refs[0].uri
        tar_source = display_source(url)
        bs = self.cfg.caption.batch_size
        batch = Batch()
        t_read = time.perf_counter()

        def unsafe(name: str) -> None:
            batch.rejections.append((f"{tar_source}#{display_source(name)}", "unsafe_tar_member",
                                     "absolute path or '..' in a tar member name"))

        def skipped(name: str, why: str) -> None:  # links, devices, ...: inputs with a reason (folders are not)
            if why in MEMBER_REJECTIONS:
                batch.rejections.append((f"{tar_source}#{display_source(name)}", MEMBER_REJECTIONS[why],
                                         f"tar member not taken: {why}"))

        try:
            for sample in read_shard(url, on_unsafe=unsafe, on_skip=skipped,
                                     max_member_bytes=self.cfg.decode.max_file_bytes):
                batch.timings["read"] = batch.timings.get("read", 0.0) + time.perf_counter() - t_read
                t = time.perf_counter()
                batch.items.append(self._prepare(sample, f"{tar_source}#{display_source(sample['__key__'])}"))
                batch.timings["decode"] = batch.timings.get("decode", 0.0) + time.perf_counter() - t
                if len(batch.items) >= bs:
                    yield batch
                    batch = Batch()
                t_read = time.perf_counter()
        except CORRUPT_INPUT_ERRORS as exc:  # a truncated or corrupt tar: what was read is captioned, the rest recorded
            batch.rejections.append((tar_source, "corrupt_tar", f"{type(exc).__name__}: {exc}"))
        if batch.items or batch.rejections:
            yield batch

    def _photo_batches(self, partition: Partition) -> Iterator[Batch]:
        from supirkit.captioning.photos import RejectionLog, photo_samples

        scratch = RejectionLog()
        batch = Batch()
        for sample, source in photo_samples(partition, scratch, self.cfg.decode.max_file_bytes,
                                            self.cfg.runner.io_retries):
            t = time.perf_counter()
            batch.items.append(self._prepare(sample, source))
            batch.timings["decode"] = batch.timings.get("decode", 0.0) + time.perf_counter() - t
            if len(batch.items) >= self.cfg.caption.batch_size:
                batch.rejections = scratch.take()
                yield batch
                batch = Batch()
        batch.rejections = scratch.take()
        batch.timings["read"] = scratch.timings.get("read", 0.0)
        if batch.items or batch.rejections:
            yield batch

    def _prefetched(self, partition: Partition) -> Iterator[Batch]:
        ahead = self.cfg.caption.prefetch_batches
        if ahead == 0:
            yield from self._batches(partition)
            return
        q: queue.Queue = queue.Queue(maxsize=ahead)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():  # the consumer may have given up: never block for ever
                try:
                    q.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for b in self._batches(partition):
                    if not put(b):
                        return
            except BaseException as exc:  # surfaced in the consumer: the shard fails and is retried
                put(Batch(error=exc))
                return
            put(done)

        thread = threading.Thread(target=produce, name="caption-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                b = q.get()
                if b is done:
                    break
                if b.error is not None:
                    raise b.error
                yield b
        finally:
            stop.set()
            thread.join(timeout=10)

    # ------------------------------------------------------------------------------------- model side
    def _caption(self, images: list, seed: int, stats: UnitStats) -> list:
        """Generations for ``images``; if the batch fails, each image alone (so one bad image costs one)."""
        try:
            out = self.backend.caption(images, seed, stats.timer)
            if len(out) != len(images):
                raise RuntimeError(f"backend returned {len(out)} captions for {len(images)} images")
            return out
        except Exception as exc:
            _release_cuda_cache(exc)
            if len(images) == 1:
                return [exc]
            log.warning("caption: batch of %d failed (%s); captioning one by one", len(images), exc)
            stats.count("batch_retries")
            results = []
            for i, image in enumerate(images):
                try:
                    results.extend(self.backend.caption([image], seed + i + 1, stats.timer))
                except Exception as one:
                    _release_cuda_cache(one)
                    results.append(one)
            return results

    def process(self, partition: Partition, sink, stats: UnitStats) -> None:
        from supirkit.datapipe import faults

        url = partition.refs[0].uri  # the input shard (the first input, for a partition of photos)
        if not getattr(self, "_load_reported", True):
            stats.timings["load_model"] += self.load_s  # once per worker: on its first shard
            self._load_reported = True
        summary = {"input_shard": display_source(url), "captions": 0, "new_tokens": 0, "unfinished": 0,
                   "clip_tokens_sum": 0, "clip_tokens_over_limit": 0, "clip_tokens_method": self.counter.method}
        uncaptioned: list[dict] = []
        written = 0
        writer = self._writer(sink, url)
        for b_index, batch in enumerate(self._prefetched(partition)):
            for name, seconds in batch.timings.items():
                stats.timings[name] += seconds
            for source, reason, detail in batch.rejections:
                stats.count("inputs")
                stats.reject(source, reason, detail)
            self._generate(batch, batch_seed(self.cfg.generation.seed, partition.index, b_index), stats)
            with stats.timer("write"):
                for item in batch.items:
                    stats.count("inputs")
                    try:
                        if item.error is not None:
                            self._failed(item, writer, stats, uncaptioned)
                            continue
                        self._write(item, item.generation, writer, summary)
                    except (ValueError, TypeError) as exc:  # e.g. a key seen twice in the input shard
                        stats.reject(item.source, "invalid_sample", str(exc))
                        continue
                    written += 1
                    if written == 1:
                        faults.maybe_fail("caption_mid_shard", partition.index)
        summary["clip_tokens_mean"] = (
            round(summary.pop("clip_tokens_sum") / summary["captions"], 2) if summary["captions"] else None
        )
        stats.counts["captioned"] = summary["captions"]
        stats.counts["new_tokens"] = summary["new_tokens"]
        stats.extra["caption"] = summary
        if self.cfg.output.write == "table":
            stats.counts["samples"] = len(sink)  # the caption set's samples: its rows
            stats.extra["caption_settings"] = self.caption_base  # the settings every row shares, once per unit
        if uncaptioned:
            stats.extra["uncaptioned"] = uncaptioned

    def _generate(self, batch: Batch, seed: int, stats: UnitStats) -> None:
        """Caption (and tag) the batch's prepared images; a failed generation becomes that item's error."""
        ok = [item for item in batch.items if item.error is None]
        if not ok:
            return
        gens = self._caption([item.image for item in ok], seed, stats)
        if self.tagger is not None:
            with stats.timer("tag"):
                for item, tags in zip(ok, self.tagger([item.image for item in ok])):
                    item.tags = tags
        for item, gen in zip(ok, gens):
            if isinstance(gen, Exception):
                item.error = ("caption_failed", f"{type(gen).__name__}: {gen}")
            else:
                item.generation, item.image = gen, None

    def _writer(self, sink, url: str):
        from supirkit.captioning.writers import ShardCaptionWriter, TableCaptionWriter

        if self.cfg.output.write == "table":
            return TableCaptionWriter(sink, url, display_source(url))
        return ShardCaptionWriter(sink, self.caption_base)

    def _write(self, item: Prepared, gen, writer, summary: dict) -> None:
        text = self.cleaner(gen.raw)
        count = self.counter.count(text)
        caption = {"text": text, "raw": gen.raw, "new_tokens": gen.new_tokens, "finished": gen.finished,
                   "clip_tokens": count.tokens, "fits_clip_limit": count.fits, "image_size": list(item.size)}
        writer.captioned(item, caption, text, item.tags)  # raises before anything is written for an invalid sample
        summary["captions"] += 1
        summary["new_tokens"] += gen.new_tokens
        summary["unfinished"] += int(not gen.finished)
        summary["clip_tokens_sum"] += count.tokens
        summary["clip_tokens_over_limit"] += int(not count.fits)

    def _failed(self, item: Prepared, writer, stats: UnitStats, uncaptioned: list) -> None:
        reason, detail = item.error
        if self.cfg.caption.on_failure == "drop" or item.sample.get("__key__") is None:
            stats.reject(item.source, reason, detail)
            return
        writer.uncaptioned(item, {"error": reason, "detail": detail[:300], "model": self.caption_base["model"]})
        stats.count("uncaptioned")
        uncaptioned.append({"source": item.source, "reason": reason, "detail": detail[:300]})


def _release_cuda_cache(exc: Exception) -> None:
    """After a CUDA out-of-memory error, free the cached blocks before the one-by-one retry."""
    try:
        import torch
    except ImportError:
        return
    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ the job

@dataclass
class CaptionJobResult:
    result: JobResult
    summary: dict
    out_dir: Path

    @property
    def ok(self) -> bool:
        return self.result.ok


def token_report(markers: Iterable[Path], warn_share: float, limit: int) -> dict:
    """Caption totals over every done unit (``markers``: the units' stats files; those missing are not done),
    and a warning when most captions exceed the CLIP context."""
    captions = over = new_tokens = unfinished = 0
    token_sum = 0.0
    methods = set()
    for sp in markers:
        if not sp.is_file():
            continue
        cap = read_json(sp).get("caption") or {}
        n = int(cap.get("captions", 0))
        captions += n
        over += int(cap.get("clip_tokens_over_limit", 0))
        new_tokens += int(cap.get("new_tokens", 0))
        unfinished += int(cap.get("unfinished", 0))
        token_sum += (cap.get("clip_tokens_mean") or 0) * n
        methods.add(cap.get("clip_tokens_method"))
    methods.discard(None)
    share = over / captions if captions else 0.0
    report = {"captions": captions, "new_tokens": new_tokens, "unfinished": unfinished,
              "clip_token_limit": limit, "clip_tokens_mean": round(token_sum / captions, 2) if captions else None,
              "clip_tokens_over_limit": over, "over_limit_share": round(share, 4),
              "clip_tokens_method": ",".join(sorted(methods)) or None, "warnings": []}
    if captions and share > warn_share:
        report["warnings"].append(
            f"{share:.0%} of captions exceed SDXL's {limit}-token text context "
            f"({report['clip_tokens_method']} count); SUPIR joins caption and quality prompt and truncates at "
            f"{limit} tokens, so the quality prompt (and the caption's tail) is lost for them")
    if captions and unfinished:
        report["warnings"].append(f"{unfinished} caption(s) were cut at generation.max_new_tokens")
    return report


#: Settings that change how fast, not what is written: left out of the config hash, so a resume may change them.
EXECUTION_ONLY = {"runner": True, "caption": {"prefetch_batches"},
                  "model": {"cpu_threads", "gpu_memory_utilization", "enforce_eager"}}


def job_hash(cfg: CaptionConfig) -> str:
    data = cfg.model_dump(mode="json", exclude=EXECUTION_ONLY)
    if not cfg.tags.model:  # no tagger: the hash of a job configured before tags existed stays the same
        data.pop("tags")
    if cfg.output.write == "shards":  # likewise for a job that rewrites shards, the only output there was
        data["output"].pop("write")
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def run_caption_job(shards: Iterable[str], out: str | Path, cfg: CaptionConfig, fresh: bool = False,
                    backend_factory=None) -> CaptionJobResult:
    """The whole ``supirkit caption`` job over ``shards``: shard sets (folders, patterns, tars), or any other
    sources ``shard`` takes (photos: ``captioning.photos``, written as new shards)."""
    from supirkit.datapipe.sources import list_inputs, normalize_source

    # absolute: the caption tables and their provenance name the input shards from any working folder
    sources = [normalize_source(u) for u in shards]
    try:
        urls = list_shards(sources)
    except FileNotFoundError:
        urls = []
    photos = not urls or not all(u.lower().endswith(".tar") for u in urls)
    if photos:
        if cfg.output.write != "shards":
            log.info("caption: the inputs are not shard sets; the photos and their captions go into new shards")
            cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"write": "shards"})})
        inputs = list_inputs(sources)
    else:
        urls = [normalize_source(u) for u in urls]
        inputs = (InputRef(u, TAR, -1) for u in urls)
    if backend_factory is None:
        from supirkit.captioning.preflight import check_backend, check_model

        check_backend(cfg)
        check_model(cfg)
    check_tagger(cfg.tags)
    chash = job_hash(cfg)
    layout = prepare_output(out, STAGE, chash, fresh, sources=sources if photos else urls)
    n = plan_partitions(inputs, layout.work, ShardingConfig(samples_per_shard=PHOTOS_PER_SHARD))
    if n == 0:
        raise FileNotFoundError(f"no images or shards found in {' '.join(sources)}")
    table = cfg.output.write == "table"
    if table:
        output = caption_output(layout)
        if not (layout.meta / INPUTS_FILE).is_file():
            write_caption_inputs(layout, urls)
    else:
        output = ShardOutput(layout.root, cfg.output.prefix)
    stage = CaptionStage(cfg, backend_factory, photos=photos)
    result = run_stage(Pass(stage, output, n, layout.work, chash, "caption"), cfg.runner)
    report = token_report((output.marker(i) for i in range(n)), cfg.tokens.warn_share, cfg.tokens.limit)
    extra = {"model": cfg.model.name, "backend": cfg.model.backend, "config_hash": chash, "caption": report,
             "write": cfg.output.write}
    if table:
        finish_caption_inputs(layout, urls)
        extra["captions"] = str(layout.captions_dir)
    else:
        extra["pattern"] = layout.pattern(cfg.output.prefix, n)
    write_job_summary(layout, STAGE, result, extra=extra)
    return CaptionJobResult(result, report, layout.root)

"""Exactly-once, resumable execution of partitioned stages, on Ray or in-process.

The idea, used by every stage: inputs are cut into partitions as a pure function of the listing;
partition i produces exactly one output unit i (a shard, or a table part); a unit is done when its
stats JSON exists (written last). Re-running a command skips done units and redoes the others, so a
job killed at any moment and run again ends with the same set of samples, nothing lost or doubled.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from supirkit.datapipe import faults
from supirkit.datapipe.config import ConfigError, RunnerConfig, ShardingConfig
from supirkit.datapipe.shards import ShardSink, ShardStats, is_done, shard_name, stats_path
from supirkit.datapipe.sources import FILE, INVALID, TAR, InputRef

log = logging.getLogger("supirkit")

PARTITIONS_DIR = "_partitions"
JOB_FILE = "_job.json"
#: ``s3://b/x``, also as ``pathlib`` leaves it (``s3:/b/x``); a one-letter scheme is a Windows drive
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")


# ------------------------------------------------------------------------------------------ partitions

@dataclass
class Partition:
    index: int
    refs: list[InputRef]
    first_order: int = 0  # position of refs[0] in the whole listing (stable tie-breaker across partitions)


def _partition_file(work_dir: Path, index: int) -> Path:
    return work_dir / PARTITIONS_DIR / f"part-{index:06d}.parquet"


def _write_partition(work_dir: Path, index: int, refs: list[InputRef], first_order: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        # file names may not be valid UTF-8: keep their exact bytes
        "uri": pa.array([os.fsencode(r.uri) for r in refs], pa.binary()),
        "kind": pa.array([r.kind for r in refs], pa.string()),
        "size": pa.array([r.size for r in refs], pa.int64()),
        "reason": pa.array([r.reason for r in refs], pa.string()),
        "order": pa.array(range(first_order, first_order + len(refs)), pa.int64()),
    })
    path = _partition_file(work_dir, index)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def load_partition(work_dir: str | Path, index: int) -> Partition:
    import pyarrow.parquet as pq

    t = pq.read_table(_partition_file(Path(work_dir), index)).to_pydict()
    refs = [InputRef(os.fsdecode(u), k, s, r) for u, k, s, r in zip(t["uri"], t["kind"], t["size"], t["reason"])]
    return Partition(index, refs, t["order"][0] if t["order"] else 0)


def plan_partitions(inputs: Iterable[InputRef], work_dir: str | Path, sharding: ShardingConfig) -> int:
    """Cut the streamed listing into partitions and store them; returns the partition count.

    The plan is kept under ``work_dir/_partitions`` and reused on resume, so a file that appears or
    vanishes between runs cannot shift samples from one shard to another. Only one partition's worth
    of entries is in memory at a time. A tar input is a partition of its own (shard in, shard out).
    """
    work_dir = Path(work_dir)
    done_marker = work_dir / PARTITIONS_DIR / "_DONE.json"
    if done_marker.is_file():
        return int(json.loads(done_marker.read_text())["partitions"])
    (work_dir / PARTITIONS_DIR).mkdir(parents=True, exist_ok=True)
    count = 0
    order = 0
    n_inputs = 0
    current: list[InputRef] = []
    current_bytes = 0
    first = 0

    def flush():
        nonlocal count, current, current_bytes, first
        if current:
            _write_partition(work_dir, count, current, first)
            count += 1
            current, current_bytes = [], 0

    for ref in inputs:
        n_inputs += 1
        if ref.kind == TAR:
            flush()
            first = order
            current = [ref]
            flush()
        else:
            if not current:
                first = order
            current.append(ref)
            current_bytes += max(ref.size, 0)
            if len(current) >= sharding.samples_per_shard or current_bytes >= sharding.target_bytes:
                flush()
        order += 1
    flush()
    tmp = done_marker.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{done_marker.name}")
    tmp.write_text(json.dumps({"partitions": count, "inputs": n_inputs}))
    os.replace(tmp, done_marker)  # the plan exists whole or not at all
    return count


# ------------------------------------------------------------------------------------------ output dirs

def prepare_output(out_dir: str | Path, stage: str, cfg_hash: str, fresh: bool, sources: list[str] | None = None) -> Path:
    """Create (or reuse) an output folder. Resuming with another config is refused: mixing two
    configs' samples in one shard set is the mistake a user would not notice until training.

    The output is written with local file operations (temporary name, fsync, rename), which object
    stores do not offer; a URL is refused here instead of becoming a local folder named ``s3:``. On a
    cluster, ``out_dir`` must be storage every node mounts (NFS, FSx for Lustre, Filestore)."""
    out_dir = str(out_dir)
    if _URL_LIKE.match(out_dir) and not out_dir.startswith("file:"):
        raise ConfigError(f"{out_dir}: --out must be a local path (on a cluster: storage every node mounts, "
                          "e.g. NFS); writing to a URL is not supported, sync the finished folder instead")
    out = Path(re.sub(r"^file:(//)?", "", out_dir))  # file:///x, or file:/x as pathlib leaves it
    job_file = out / JOB_FILE
    if fresh and out.exists():
        if not job_file.exists() and any(out.iterdir()):
            raise ConfigError(f"{out}: --fresh refuses to delete a folder that supirkit did not create")
        shutil.rmtree(out)
    if job_file.exists():
        prev = json.loads(job_file.read_text())
        if prev.get("stage") != stage:
            raise ConfigError(f"{out}: holds the output of '{prev.get('stage')}', not '{stage}'; choose another --out")
        if prev.get("config_hash") != cfg_hash:
            raise ConfigError(
                f"{out}: was made with a different config (hash {prev.get('config_hash')}, now {cfg_hash}); "
                "rerun with --fresh to start over, or choose another --out")
        if sources is not None and prev.get("sources") not in (None, sources):
            raise ConfigError(f"{out}: was made from other sources {prev.get('sources')}; use --fresh or another --out")
        return out
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ConfigError(f"{out}: folder exists and is not a supirkit output; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps({"stage": stage, "config_hash": cfg_hash, "sources": sources,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    return out


def clean_temporaries(out_dir: str | Path) -> int:
    """Remove ``.tmp-*`` files a killed run left behind."""
    n = 0
    for p in Path(out_dir).glob(".tmp-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


# ------------------------------------------------------------------------------------------ stages

class PartitionStage:
    """Base of a stage: subclass and implement ``process``. The runner owns resume and atomic commit.

    ``setup`` runs once per worker process or actor (load models there, not in ``__init__``: the stage
    object is pickled to every worker). ``process`` turns one partition into samples written to the sink
    and must record each input that yields nothing with ``stats.reject(source, reason)``.
    """

    name = "stage"
    needs_gpu = False  # True: run on a pool of actors (one model replica each) instead of tasks

    def setup(self) -> None:
        pass

    def process(self, partition: Partition, sink: ShardSink, stats: ShardStats) -> None:
        raise NotImplementedError

    def open_sink(self, out_dir: Path, prefix: str, index: int, cfg_hash: str):
        return ShardSink(out_dir, prefix, index, cfg_hash)


@dataclass
class UnitOfWork:
    """What a worker needs to produce output unit ``index``."""

    stage: PartitionStage
    work_dir: str
    out_dir: str
    prefix: str
    index: int
    config_hash: str
    partition_loader: Optional[object] = None  # callable(work_dir, index) -> Partition


_READY: dict[str, PartitionStage] = {}


def _ready(stage: PartitionStage) -> PartitionStage:
    """The set-up instance of ``stage`` in this process: ``setup`` runs once per worker process even
    though every task unpickles its own copy (the token is given by the driver in ``run_stage``)."""
    token = getattr(stage, "_setup_token", None) or uuid.uuid4().hex
    cached = _READY.get(token)
    if cached is None:
        stage.setup()
        _READY[token] = cached = stage
    return cached


def run_unit(unit: UnitOfWork) -> dict:
    """Produce one output unit; returns its stats (or a failure record). Never raises for one bad sample."""
    out = Path(unit.out_dir)
    if is_done(out, unit.prefix, unit.index):
        return {"shard": shard_name(unit.prefix, unit.index), "skipped": True, **_read_stats(out, unit)}
    stage = _ready(unit.stage)
    loader = unit.partition_loader or load_partition
    partition = loader(unit.work_dir, unit.index)
    sink = stage.open_sink(out, unit.prefix, unit.index, unit.config_hash)
    stats = ShardStats()
    try:
        stage.process(partition, sink, stats)
        return sink.commit(stats)
    except Exception as exc:  # a bug or a systemic failure: the shard is retried on the next run
        sink.abort()
        return {"shard": shard_name(unit.prefix, unit.index), "failed": True,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}


def _read_stats(out: Path, unit: UnitOfWork) -> dict:
    try:
        return json.loads(stats_path(out, unit.prefix, unit.index).read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------ executors

def ensure_ray(cfg: RunnerConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


class _Progress:
    """A bar with counts and ETA on a terminal; periodic plain log lines otherwise (e.g. under a Ray job)."""

    def __init__(self, desc: str, total: int, cfg: RunnerConfig) -> None:
        mode = cfg.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.desc = mode, total, desc
        self.done = self.samples = self.rejected = self.failed = 0
        self.t0 = self.last_log = time.time()
        self.every = cfg.log_every_s
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="shard", dynamic_ncols=True)

    def update(self, result: dict) -> None:
        self.done += 1
        counts = result.get("counts", {})
        self.samples += int(counts.get("samples", 0))
        self.rejected += sum(result.get("rejected", {}).values())
        self.failed += int(bool(result.get("failed")))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(samples=self.samples, rejected=self.rejected, failed=self.failed)
        elif self.mode == "log" and (time.time() - self.last_log >= self.every or self.done == self.total):
            self.last_log = time.time()
            el = self.last_log - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else 0
            print(f"[{self.desc}] {self.done}/{self.total} shards, {self.samples} samples, "
                  f"{self.rejected} rejected, {self.failed} failed, elapsed {el:.0f}s, ETA {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class JobResult:
    units: int = 0
    skipped: int = 0
    samples: int = 0
    rejected: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _iter_local(units: list[UnitOfWork]) -> Iterator[dict]:
    for unit in units:
        yield run_unit(unit)


def _iter_ray_tasks(units: list[UnitOfWork], cfg: RunnerConfig) -> Iterator[dict]:
    import ray

    ensure_ray(cfg)
    remote = ray.remote(num_cpus=cfg.num_cpus_per_task, max_retries=cfg.max_retries)(run_unit)
    pending: list = []
    queue = deque(units)
    while queue or pending:
        while queue and len(pending) < cfg.max_in_flight:
            pending.append(remote.remote(queue.popleft()))
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            try:
                yield ray.get(ref)
            except Exception as exc:  # the worker died repeatedly (e.g. OOM-killed): report, go on
                yield {"shard": "?", "failed": True, "error": f"{type(exc).__name__}: {exc}"}


def _iter_ray_actors(units: list[UnitOfWork], cfg: RunnerConfig) -> Iterator[dict]:
    import ray
    from ray.util import ActorPool

    ensure_ray(cfg)
    gpus = ray.cluster_resources().get("GPU", 0)
    per_actor = cfg.num_gpus_per_actor if gpus else 0
    if cfg.num_actors:
        n = cfg.num_actors
    elif gpus and per_actor:
        n = max(1, int(gpus / per_actor))
    else:
        n = 1
    n = max(1, min(n, len(units)))

    @ray.remote
    class StageActor:
        def run(self, unit):
            return run_unit(unit)

    actor_cls = StageActor.options(num_gpus=per_actor, num_cpus=min(cfg.num_cpus_per_task, 1.0),
                                   max_restarts=cfg.max_retries, max_task_retries=cfg.max_retries)
    actors = [actor_cls.remote() for _ in range(n)]
    pool = ActorPool(actors)
    results = pool.map_unordered(lambda a, u: a.run.remote(u), units)
    while True:
        try:
            yield next(results)
        except StopIteration:
            break
        except Exception as exc:
            yield {"shard": "?", "failed": True, "error": f"{type(exc).__name__}: {exc}"}
    for a in actors:
        ray.kill(a)


def run_stage(
    stage: PartitionStage,
    work_dir: str | Path,
    out_dir: str | Path,
    n_partitions: int,
    cfg: RunnerConfig,
    config_hash: str = "",
    prefix: str = "shard",
    desc: Optional[str] = None,
    partition_loader=None,
) -> JobResult:
    """Run ``stage`` over partitions 0..n-1, skipping done units; returns aggregated statistics."""
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    todo = [i for i in range(n_partitions) if not is_done(out, prefix, i)]
    result = JobResult(units=n_partitions, skipped=n_partitions - len(todo))
    stage._setup_token = uuid.uuid4().hex
    units = [UnitOfWork(stage, str(work_dir), str(out), prefix, i, config_hash, partition_loader) for i in todo]
    progress = _Progress(desc or stage.name, len(units), cfg)
    if cfg.executor == "local":
        it = _iter_local(units)
    elif stage.needs_gpu:
        it = _iter_ray_actors(units, cfg)
    else:
        it = _iter_ray_tasks(units, cfg)
    completed = 0
    try:
        for res in it:
            progress.update(res)
            if res.get("failed"):
                result.failed.append({"shard": res.get("shard"), "error": res.get("error")})
                log.error("%s: shard %s failed: %s", stage.name, res.get("shard"), res.get("error"))
                if res.get("traceback"):
                    print(res["traceback"], file=sys.stderr)
            else:
                completed += 1
                faults.maybe_fail("after_shards", completed)
    finally:
        progress.close()
    # aggregate from the stats files (the truth on disk, including shards done by earlier runs)
    rejected: dict = {}
    for i in range(n_partitions):
        sp = stats_path(out, prefix, i)
        if sp.is_file():
            st = json.loads(sp.read_text())
            result.samples += int(st.get("counts", {}).get("samples", 0))
            for k, v in st.get("rejected", {}).items():
                rejected[k] = rejected.get(k, 0) + v
    result.rejected = rejected
    result.wall_s = time.time() - t0
    return result


def iter_rejections(out_dir: str | Path, prefix: str) -> Iterator[dict]:
    """Every recorded rejection of a finished job (source, reason, detail)."""
    for sp in sorted(Path(out_dir).glob(f"{prefix}-*.stats.json")):
        for row in json.loads(sp.read_text()).get("rejections", []):
            yield row


def write_job_summary(out_dir: str | Path, name: str, result: JobResult, extra: Optional[dict] = None) -> Path:
    summary = {"stage": name, "shards": result.units, "skipped_done": result.skipped, "samples": result.samples,
               "rejected": result.rejected, "failed": result.failed, "wall_s": round(result.wall_s, 2)}
    if extra:
        summary.update(extra)
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path


__all__ = ["Partition", "PartitionStage", "JobResult", "plan_partitions", "load_partition", "prepare_output",
           "run_stage", "ensure_ray", "iter_rejections", "write_job_summary", "FILE", "TAR", "INVALID"]

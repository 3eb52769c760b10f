"""Exactly-once, resumable execution of a job's passes.

The idea, used by every stage: inputs are cut into partitions as a pure function of the listing
(``plan``); partition i produces exactly one output unit i (a shard, or a table part); a unit is done when
its stats marker exists (written last). Running a command again skips done units and redoes the others,
so a job killed at any moment and run again ends with the same set of samples, nothing lost or doubled.
"""
from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from supirkit.datapipe import faults
from supirkit.datapipe.config import RunnerConfig
from supirkit.datapipe.errors import ConfigError
from supirkit.datapipe.executors import ensure_ray, executor_for
from supirkit.datapipe.files import NO_SPACE, atomic_write_json, disk_full, read_bookkeeping, read_json
from supirkit.datapipe.lock import LOCK_FILE, OutputLock, held_lock, remove_stale_temporaries
from supirkit.datapipe.plan import planned_bytes
from supirkit.datapipe.progress import Progress
from supirkit.datapipe.shard_format import META_DIR, ShardSetLayout
from supirkit.datapipe.shard_table import drop_shard_table, write_shard_table
from supirkit.datapipe.sinks import ShardOutput, UnitOutput
from supirkit.datapipe.sources import normalize_source
from supirkit.datapipe.stage import DISK_FULL, Stage, UnitOfWork, new_setup_token
from supirkit.datapipe.stats import JobResult, UnitResult

log = logging.getLogger("supirkit")

#: ``s3://b/x``, also as ``pathlib`` leaves it (``s3:/b/x``); a one-letter scheme is a Windows drive
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")


# ------------------------------------------------------------------------------------------ output folders

def prepare_output(out_dir: str | Path, stage: str, cfg_hash: str, fresh: bool,
                   sources: list[str] | None = None) -> ShardSetLayout:
    """Create (or reuse) an output folder and take its lock; returns its layout. Resuming with another config
    is refused: mixing two configs' samples in one shard set is the mistake a user would not notice until
    training. A second run into a folder that a live run holds stops with one line naming that run
    (``datapipe.lock``); the lock is released when the job's process ends (``release_output``).

    The output is written with local file operations (temporary name, fsync, rename), which object stores
    do not offer; a URL is refused here instead of becoming a local folder named ``s3:``. On a cluster,
    ``out_dir`` must be storage every node mounts (NFS, FSx for Lustre, Filestore). Sources are compared in
    their normal form (absolute, no trailing slash), so the same job resumes from any working folder."""
    out_dir = str(out_dir)
    if _URL_LIKE.match(out_dir) and not out_dir.startswith("file:"):
        raise ConfigError(f"{out_dir}: --out must be a local path (on a cluster: storage every node mounts, "
                          "e.g. NFS); writing to a URL is not supported, sync the finished folder instead")
    out = Path(re.sub(r"^file:(//)?", "", out_dir)).absolute()
    layout = ShardSetLayout(out)
    sources = [normalize_source(s) for s in sources] if sources is not None else None
    _check_foreign(out, layout, fresh)
    lock = acquire_output(layout)
    try:
        if fresh:
            _clear_output(layout)
        remove_stale_temporaries(out, other_hosts_dead=True)  # the lock is ours: no writer of this job runs
        if _check_job_file(layout, stage, cfg_hash, sources):
            return layout
        layout.work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(layout.job_file, {"stage": stage, "config_hash": cfg_hash, "sources": sources,
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except BaseException:
        lock.release()
        raise
    return layout


def _check_foreign(out: Path, layout: ShardSetLayout, fresh: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; --out must name a folder")
    if not out.exists() or layout.is_supirkit_output():
        return
    if fresh and any(out.iterdir()):
        raise ConfigError(f"{out}: --fresh refuses to delete a folder that supirkit did not create")
    if any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ConfigError(f"{out}: folder exists and is not a supirkit output; choose an empty or new --out")


def _clear_output(layout: ShardSetLayout) -> None:
    """``--fresh``: delete everything in the folder except the lock this run holds."""
    for p in layout.root.iterdir():
        if p.name == META_DIR and p.is_dir() and not p.is_symlink():
            for q in p.iterdir():
                if q.name != LOCK_FILE:
                    _remove(q)
        else:
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _check_job_file(layout: ShardSetLayout, stage: str, cfg_hash: str, sources: list[str] | None) -> bool:
    """True when the folder holds this job (resume); raises when it holds another one."""
    out = layout.root
    if (out / "_job.json").exists():
        raise ConfigError(f"{out}: made by an older supirkit (bookkeeping beside the shards); rerun with --fresh "
                          "or choose another --out")
    if not layout.job_file.exists():
        if any(layout.stats_dir.glob("*.json")) if layout.stats_dir.is_dir() else False:
            raise ConfigError(f"{layout.job_file}: missing although the folder holds finished shards; rerun with "
                              "--fresh to start over, or choose another --out")
        return False
    prev = read_bookkeeping(layout.job_file, "job record")
    if not isinstance(prev, dict):
        raise ConfigError(f"{layout.job_file}: this job record is damaged (not a JSON object); rerun with --fresh")
    if prev.get("stage") != stage:
        raise ConfigError(f"{out}: holds the output of '{prev.get('stage')}', not '{stage}'; choose another --out")
    if prev.get("config_hash") != cfg_hash:
        raise ConfigError(
            f"{out}: was made with a different config (hash {prev.get('config_hash')}, now {cfg_hash}); "
            "rerun with --fresh to start over, or choose another --out")
    if sources is not None and prev.get("sources") not in (None, sources):
        raise ConfigError(f"{out}: was made from other sources {prev.get('sources')}; use --fresh or another --out")
    return True


def acquire_output(layout: ShardSetLayout) -> OutputLock:
    """Take the lock of an output folder for this process (also for jobs that only re-select, like
    ``curate --select-only``); a folder that cannot be written is one line."""
    try:
        return OutputLock(layout.meta, layout.root).acquire()
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(layout.root) from None
        raise ConfigError(f"{layout.root}: cannot write the output folder here: {exc.strerror or exc}") from None


def release_output(layout: ShardSetLayout | str | Path) -> None:
    """End of a job: remove the folder's dead writers' temporary files and release its lock (a no-op when this
    process does not hold it). Also done at process exit."""
    root = layout.root if isinstance(layout, ShardSetLayout) else Path(layout).absolute()
    lock = held_lock(root)
    if lock is not None:
        remove_stale_temporaries(root, other_hosts_dead=True)
        lock.release()


# ------------------------------------------------------------------------------------------ passes

@dataclass
class Pass:
    """One resumable pass of a job: ``units`` units of ``stage`` written to ``output``."""

    stage: Stage
    output: UnitOutput
    units: int
    work_dir: Path
    config_hash: str = ""
    desc: str = ""
    inputs: Optional[int] = None  # inputs of all units, when known up front (progress and ETA by inputs)


def run_stage(job_pass: Pass, runner: RunnerConfig) -> JobResult:
    """Run the units of ``job_pass`` that are not done; returns the statistics of all of them. A unit whose
    stats marker is damaged (changed from outside: markers are written whole) is redone. A full disk stops
    the pass with one line (``DiskFull``) instead of failing every remaining unit the same way."""
    t0 = time.time()
    output = job_pass.output
    for folder in getattr(output, "folders", []):
        # a killed run's partial files; the lock is this job's, so every writer of them is gone
        remove_stale_temporaries(folder, other_hosts_dead=True, recursive=False)
    result = JobResult(units=job_pass.units)
    todo = []
    for i in range(job_pass.units):
        stats = _stats_of(output.marker(i))
        if stats is not None:
            result.add(UnitResult.from_stats(output.marker(i).name, i, "skipped", stats))
        else:
            todo.append(i)
    if todo and isinstance(output, ShardOutput):
        drop_shard_table(output.layout)  # shards are about to change: readers count footers until the summary
    token = new_setup_token()
    units = [UnitOfWork(job_pass.stage, str(job_pass.work_dir), output, i, job_pass.config_hash, token)
             for i in todo]
    inputs = job_pass.inputs if len(todo) == job_pass.units else None  # a resumed job: progress by units
    progress = Progress(job_pass.desc or job_pass.stage.name, job_pass.units, inputs, runner.progress,
                        runner.log_every_s, done_before=result.skipped)
    progress.units_done = result.skipped
    completed = 0
    try:
        for res in executor_for(job_pass.stage, runner, progress).map(units):
            progress.unit_done(res.index, res.counts, sum(res.rejected.values()), res.failed)
            if res.failed and res.error_type == DISK_FULL:
                raise _pass_disk_full(job_pass, len(todo) - completed)
            result.add(res)
            if res.failed:
                log.error("%s: %s", job_pass.desc or job_pass.stage.name, res.describe_failure())
                if res.traceback and log.isEnabledFor(logging.DEBUG):
                    print(res.traceback, file=sys.stderr)
            else:
                completed += 1
                faults.maybe_fail("after_shards", completed)
    finally:
        progress.close()
    for folder in getattr(output, "folders", []):
        # every unit has reported: what is left under a temporary name belongs to a worker that died with
        # its node (its unit was retried elsewhere), never to a writer still running
        remove_stale_temporaries(folder, other_hosts_dead=True, recursive=False)
    result.wall_s = time.time() - t0
    return result


def _pass_disk_full(job_pass: Pass, unfinished: int):
    """The full-disk line of a pass: its output folder, and about what its unfinished units still need (their
    share of the planned input bytes: shards keep the input bytes; other outputs are smaller)."""
    folders = getattr(job_pass.output, "folders", None) or [job_pass.work_dir]
    planned = planned_bytes(job_pass.work_dir, job_pass.units)
    needed = planned * unfinished // max(1, job_pass.units) if planned else None
    return disk_full(folders[0], needed)


def _stats_of(marker: Path) -> Optional[dict]:
    """The stats of a done unit; None when it is not done or its marker is damaged (then it is redone)."""
    if not marker.is_file():
        return None
    try:
        stats = read_json(marker)
    except (OSError, ValueError):
        stats = None
    if not isinstance(stats, dict):
        log.warning("%s: damaged stats marker; its unit is redone", marker)
        marker.unlink(missing_ok=True)
        return None
    return stats


# ------------------------------------------------------------------------------------------ summaries

def iter_rejections(root: str | Path, prefix: str = "") -> Iterator[dict]:
    """Every recorded rejection of a shard set (source, reason, detail), from its shards' stats."""
    for sp in sorted(ShardSetLayout(root).stats_dir.glob(f"{prefix}*.json")):
        for row in read_json(sp).get("rejections", []):
            yield row


def job_summary(name: str, result: JobResult, extra: Optional[dict] = None) -> dict:
    summary = {"stage": name, "shards": result.units, "skipped_done": result.skipped, "samples": result.samples,
               "inputs": result.inputs, "rejected": dict(sorted(result.rejected.items())),
               "failed": [{"unit": f.index, "name": f.name, "first_input": f.first_input, "error": f.error}
                          for f in result.failed],
               "wall_s": round(result.wall_s, 2)}
    if extra:
        summary.update(extra)
    return summary


def write_job_summary(layout: ShardSetLayout, name: str, result: JobResult, extra: Optional[dict] = None) -> Path:
    """The job's ``summary.json``; for a shard set also the consolidated row counts (``shard_table``)."""
    layout.meta.mkdir(parents=True, exist_ok=True)
    write_shard_table(layout)
    atomic_write_json(layout.summary_file, job_summary(name, result, extra))
    return layout.summary_file


__all__ = ["Pass", "prepare_output", "acquire_output", "release_output", "run_stage", "iter_rejections",
           "job_summary", "write_job_summary", "ensure_ray", "META_DIR"]

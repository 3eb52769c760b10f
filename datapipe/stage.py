"""The stage protocol: what a job asks of each of its passes, and the one unit of work a worker runs.

A stage is a small class with one job: ``setup()`` loads what it needs once per worker process or actor
(models: never in ``__init__``, the stage object is pickled to every worker); ``load_partition(work_dir, i)``
gives the input of unit ``i`` (by default the planned partition ``i`` of the listing); ``process(partition,
sink, stats)`` writes unit ``i``'s output to the sink and records every input that yields nothing with
``stats.reject(source, reason)``. Stages are generic over their partition type (planned inputs, a write
plan, a range of sample numbers). The runner owns resume, retries and the atomic commit.
"""
from __future__ import annotations

import os
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

from supirkit.datapipe import faults
from supirkit.datapipe.errors import DiskFull, TransientIOError
from supirkit.datapipe.files import NO_SPACE, read_json
from supirkit.datapipe.plan import Partition, load_partition
from supirkit.datapipe.progress import reporting
from supirkit.datapipe.sinks import Sink, UnitOutput
from supirkit.datapipe.stats import UnitResult, UnitStats

P = TypeVar("P")
#: ``UnitResult.error_type`` of a unit that failed for lack of space (the runner stops the pass on it)
DISK_FULL = "disk_full"


class Stage(Generic[P]):
    """Base of every stage (see the module docstring)."""

    name = "stage"
    needs_gpu = False  # True: run on a pool of actors (one model replica each) instead of tasks

    def setup(self) -> None:
        pass

    def load_partition(self, work_dir: Path, index: int) -> P:
        return load_partition(work_dir, index)  # type: ignore[return-value]

    def process(self, partition: P, sink: Sink, stats: UnitStats) -> None:
        raise NotImplementedError

    def first_input(self, partition: P) -> str:
        """A short description of the unit's first input, to name a failed unit in messages."""
        if isinstance(partition, Partition) and partition.refs:
            return partition.refs[0].display
        return ""


@dataclass
class UnitOfWork:
    """What a worker needs to produce output unit ``index`` of a pass."""

    stage: Stage
    work_dir: str
    output: UnitOutput
    index: int
    config_hash: str
    setup_token: str
    progress: Any = None  # a channel with add(samples, inputs, rejected), or None


_READY: dict[str, Stage] = {}


def _ready(stage: Stage, token: str) -> Stage:
    """The set-up instance of ``stage`` in this process: ``setup`` runs once per worker process although
    every task unpickles its own copy (``token`` identifies the pass, chosen by the driver)."""
    cached = _READY.get(token)
    if cached is None:
        stage.setup()
        _READY[token] = cached = stage
    return cached


def new_setup_token() -> str:
    return uuid.uuid4().hex


def run_unit(unit: UnitOfWork) -> UnitResult:
    """Produce one output unit. One bad input never fails it (stages record rejections); anything else
    that goes wrong (a bug, a full disk, a transient error past its retries) fails the unit, which is then
    retried (by Ray at once, or by the next run of the job), never turned into rejections."""
    output = unit.output
    name = os.path.basename(str(output.marker(unit.index)))
    done = _read_stats(output.marker(unit.index))
    if done is not None:
        return UnitResult.from_stats(name, unit.index, "skipped", done)
    stage = _ready(unit.stage, unit.setup_token)
    partition = None
    try:
        partition = stage.load_partition(Path(unit.work_dir), unit.index)
        sink = output.open(unit.index, unit.config_hash)
    except Exception as exc:
        return _failure(name, unit.index, exc, stage, partition)
    faults.maybe_hold("hold_unit", stage.name, unit.index)
    stats = UnitStats()
    try:
        with reporting(unit.progress, unit.index):
            stage.process(partition, sink, stats)
        record = sink.commit(stats)
    except Exception as exc:
        sink.abort()
        return _failure(getattr(sink, "name", name), unit.index, exc, stage, partition)
    except BaseException:  # SIGINT/SIGTERM in this process: nothing half-written stays behind
        sink.abort()
        raise
    return UnitResult.from_stats(getattr(sink, "name", name), unit.index, "done", record)


def _failure(name: str, index: int, exc: BaseException, stage: Stage, partition: Optional[Any]) -> UnitResult:
    first = ""
    if partition is not None:
        try:
            first = stage.first_input(partition)
        except Exception:
            first = ""
    if isinstance(exc, TransientIOError):
        kind = "transient"
    elif isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in NO_SPACE):
        kind = DISK_FULL
    else:
        kind = type(exc).__name__
    return UnitResult(name, index, "failed", error=f"{type(exc).__name__}: {exc}", error_type=kind,
                      traceback=traceback.format_exc(limit=8), first_input=first)


def _read_stats(marker: Path) -> Optional[dict]:
    """A done unit's stats; None when the unit is not done or its marker is damaged (it is then redone)."""
    try:
        stats = read_json(marker)
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None


__all__ = ["Stage", "UnitOfWork", "run_unit", "new_setup_token", "P", "DISK_FULL"]

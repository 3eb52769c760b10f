"""Cutting a streamed listing into partitions, once per job: partition i becomes output unit i.

The plan is a pure function of the listing and is stored under the job's work folder, so a file that
appears or vanishes between runs cannot move samples from one shard to another. Only one partition's
worth of entries is in memory at a time; a tar input is a partition of its own (shard in, shard out).
Every ``uri`` is stored as given by the listing (absolute paths and URLs: see ``sources``), as exact bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from supirkit.datapipe.config import ShardingConfig
from supirkit.datapipe.errors import ConfigError
from supirkit.datapipe.files import atomic_write_json, atomic_write_parquet, read_bookkeeping
from supirkit.datapipe.sources import FILE, INVALID, TAR, InputRef

PARTITIONS_DIR = "partitions"
DONE_FILE = "_DONE.json"


@dataclass
class Partition:
    index: int
    refs: list[InputRef]
    first_order: int = 0  # position of refs[0] in the whole listing (stable tie-breaker across partitions)


def partitions_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / PARTITIONS_DIR


def _partition_file(work_dir: str | Path, index: int) -> Path:
    return partitions_dir(work_dir) / f"part-{index:06d}.parquet"


def _write_partition(work_dir: Path, index: int, refs: list[InputRef], first_order: int) -> None:
    import pyarrow as pa

    table = pa.table({
        # file names may not be valid UTF-8: keep their exact bytes
        "uri": pa.array([os.fsencode(r.uri) for r in refs], pa.binary()),
        "kind": pa.array([r.kind for r in refs], pa.string()),
        "size": pa.array([r.size for r in refs], pa.int64()),
        "reason": pa.array([r.reason for r in refs], pa.string()),
        "order": pa.array(range(first_order, first_order + len(refs)), pa.int64()),
    })
    atomic_write_parquet(_partition_file(work_dir, index), table, compression="snappy")


def load_partition(work_dir: str | Path, index: int) -> Partition:
    import pyarrow.parquet as pq

    t = pq.read_table(_partition_file(work_dir, index)).to_pydict()
    refs = [InputRef(os.fsdecode(u), k, s, r) for u, k, s, r in zip(t["uri"], t["kind"], t["size"], t["reason"])]
    return Partition(index, refs, t["order"][0] if t["order"] else 0)


def plan_partitions(inputs: Iterable[InputRef], work_dir: str | Path, sharding: ShardingConfig) -> int:
    """Cut the listing into partitions and store them (reused on resume); returns the partition count."""
    work_dir = Path(work_dir)
    done_marker = partitions_dir(work_dir) / DONE_FILE
    if done_marker.is_file():
        return _planned(done_marker)["partitions"]
    partitions_dir(work_dir).mkdir(parents=True, exist_ok=True)
    counts = {FILE: 0, TAR: 0, INVALID: 0}
    count = order = first = current_bytes = total_bytes = 0
    current: list[InputRef] = []

    def flush() -> None:
        nonlocal count, current, current_bytes
        if current:
            _write_partition(work_dir, count, current, first)
            count += 1
            current, current_bytes = [], 0

    for ref in inputs:
        counts[ref.kind] = counts.get(ref.kind, 0) + 1
        if ref.kind == TAR:
            flush()
            first, current = order, [ref]
            flush()
        else:
            if not current:
                first = order
            current.append(ref)
            current_bytes += max(ref.size, 0)
            if len(current) >= sharding.samples_per_shard or current_bytes >= sharding.target_bytes:
                flush()
        total_bytes += max(ref.size, 0)
        order += 1
    flush()
    # the plan exists whole or not at all: the marker is written last
    atomic_write_json(done_marker, {"partitions": count, "inputs": order, "files": counts[FILE],
                                    "tars": counts[TAR], "invalid": counts[INVALID], "bytes": total_bytes})
    return count


def _planned(marker: Path) -> dict:
    """The plan's done marker; one line when it is damaged (the partitions it vouches for cannot be trusted)."""
    done = read_bookkeeping(marker, "partition plan marker")
    if not isinstance(done, dict) or not isinstance(done.get("partitions"), int):
        raise ConfigError(f"{marker}: this partition plan marker is damaged; rerun with --fresh to start over")
    return done


def planned_bytes(work_dir: str | Path, units: Optional[int] = None) -> Optional[int]:
    """Input bytes of the whole plan (listed sizes; a tar counts whole), when known; None for a plan with
    another unit count than ``units`` or without sizes."""
    marker = partitions_dir(work_dir) / DONE_FILE
    if not marker.is_file():
        return None
    done = _planned(marker)
    if units is not None and done["partitions"] != units:
        return None
    return done.get("bytes") or None


def planned_inputs(work_dir: str | Path) -> int | None:
    """How many inputs the plan holds, when that is known before reading them (no tar inputs: a tar's
    members are counted only when it is read); None otherwise."""
    marker = partitions_dir(work_dir) / DONE_FILE
    if not marker.is_file():
        return None
    done = _planned(marker)
    if done.get("tars", 1):
        return None
    return int(done.get("inputs", 0)) or None


__all__ = ["Partition", "PARTITIONS_DIR", "plan_partitions", "load_partition", "planned_inputs", "planned_bytes",
           "partitions_dir"]

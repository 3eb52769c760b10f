"""Statistics that add up: one ``UnitStats`` per unit of work, summed into a ``JobResult``.

A unit's stats are written to its stats JSON (the completion marker) and come back to the driver inside a
typed ``UnitResult``; the job's totals are the sum of its units' stats, whether a unit ran now or in an
earlier run (then its stats are read back from disk). Errors are values: every input that yields no
sample is one ``reject(source, reason)``.
"""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from supirkit.datapipe.progress import report

#: rejections listed by source in a unit's stats JSON; beyond this only the counts by reason are kept
MAX_LISTED_REJECTIONS = 100_000


class UnitStats:
    """Counts, rejections by reason, timings of one unit of work (a shard, a table part)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.rejected: Counter = Counter()
        self.rejections: list[dict] = []
        self.timings: Counter = Counter()
        self.extra: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n
        if name == "inputs":
            report(inputs=n)

    def reject(self, source: str, reason: str, detail: str = "", stage: str = "") -> None:
        """Record one input that produced no sample, with a stable reason code."""
        self.rejected[reason] += 1
        if len(self.rejections) < MAX_LISTED_REJECTIONS:
            row = {"source": source, "reason": reason}
            if detail:
                row["detail"] = detail[:300]
            if stage:
                row["stage"] = stage
            self.rejections.append(row)
        report(rejected=1)

    @contextmanager
    def timer(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] += time.perf_counter() - t

    def merge(self, other: "UnitStats") -> "UnitStats":
        """Add ``other``'s counts, rejections and timings to these (e.g. an earlier pass of the same unit)."""
        self.counts.update(other.counts)
        self.rejected.update(other.rejected)
        room = MAX_LISTED_REJECTIONS - len(self.rejections)
        self.rejections.extend(other.rejections[:max(room, 0)])
        self.timings.update(other.timings)
        return self

    def to_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "rejected": dict(self.rejected),
            "rejections": self.rejections,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "wall_s": round(time.perf_counter() - self._t0, 4),
            # the CPU time of the unit's process while it ran (work, writing, bookkeeping; the timers are the work)
            "cpu_s": round(time.process_time() - self._cpu0, 4),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "UnitStats":
        stats = cls()
        stats.counts.update(data.get("counts", {}))
        stats.rejected.update(data.get("rejected", {}))
        stats.rejections = list(data.get("rejections", []))
        stats.timings.update(data.get("timings_s", {}))
        return stats


@dataclass
class UnitResult:
    """What a worker reports for one unit: done now, done earlier (skipped), or failed (retried next run)."""

    name: str
    index: int
    status: str  # "done" | "skipped" | "failed"
    counts: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    error: str = ""
    error_type: str = ""
    traceback: str = ""
    first_input: str = ""  # the unit's first input, to find a failed shard's data

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @classmethod
    def from_stats(cls, name: str, index: int, status: str, stats: dict) -> "UnitResult":
        return cls(name, index, status, dict(stats.get("counts", {})), dict(stats.get("rejected", {})),
                   dict(stats.get("timings_s", {})))

    def describe_failure(self) -> str:
        where = f" (first input: {self.first_input})" if self.first_input else ""
        return f"unit {self.index} ({self.name}){where}: {self.error}"


@dataclass
class JobResult:
    """The sum of a job's units (those run now and those found done on disk)."""

    units: int = 0
    skipped: int = 0
    samples: int = 0
    inputs: int = 0
    counts: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    timings: Counter = field(default_factory=Counter)
    failed: list = field(default_factory=list)  # UnitResult of each failed unit
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, unit: UnitResult) -> None:
        if unit.failed:
            self.failed.append(unit)
            return
        self.counts.update(unit.counts)
        self.rejected.update(unit.rejected)
        self.timings.update(unit.timings)
        self.samples += int(unit.counts.get("samples", 0))
        self.inputs += int(unit.counts.get("inputs", 0))
        if unit.status == "skipped":
            self.skipped += 1

    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def rejection_line(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"

    def first_failure(self) -> Optional[UnitResult]:
        return self.failed[0] if self.failed else None


__all__ = ["UnitStats", "UnitResult", "JobResult", "MAX_LISTED_REJECTIONS"]

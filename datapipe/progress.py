"""Live progress of a job: inputs and samples as they happen (not only when a shard completes), with rate
and ETA; a bar on a terminal, a plain line every few seconds in logs (``ray job logs``, a batch system).

Workers report through ``report(samples=, inputs=, rejected=)`` (called by the sinks and ``UnitStats``):
the counts are buffered in the worker and sent at most twice a second to the driver's ``Progress``,
directly when the unit runs in the driver's process, through a small Ray actor otherwise. When a unit
completes, its exact counts (from its result) replace what it reported on the way, so the totals shown
at the end are the job's totals.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Optional

#: seconds between two sends of a worker's counts
SEND_EVERY_S = 0.5


class _UnitReporter:
    def __init__(self, channel, unit: int) -> None:
        self.channel, self.unit = channel, unit
        self.pending = [0, 0, 0, 0]
        self.last = time.monotonic()

    def add(self, samples: int, inputs: int, rejected: int, steps: int) -> None:
        self.pending[0] += samples
        self.pending[1] += inputs
        self.pending[2] += rejected
        self.pending[3] += steps
        if time.monotonic() - self.last >= SEND_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if any(self.pending):
            try:
                self.channel.add(self.unit, *self.pending)
            except Exception:  # progress is best effort: it never fails a unit
                pass
            self.pending = [0, 0, 0, 0]
        self.last = time.monotonic()


_current: Optional[_UnitReporter] = None


def report(samples: int = 0, inputs: int = 0, rejected: int = 0, steps: int = 0) -> None:
    """Count work done by the unit running in this process (no-op outside a unit); ``steps`` counts the
    model steps of generative stages (denoising steps of a batch), which move long before a sample is out."""
    if _current is not None:
        _current.add(samples, inputs, rejected, steps)


@contextmanager
def reporting(channel, unit: int = 0):
    """Route ``report`` calls of the enclosed unit to ``channel`` (an object with ``add(unit, samples,
    inputs, rejected)``); None reports nowhere."""
    global _current
    previous = _current
    _current = _UnitReporter(channel, unit) if channel is not None else None
    try:
        yield
    finally:
        if _current is not None:
            _current.flush()
        _current = previous


class RayChannel:
    """A picklable channel to the driver's counter actor (see ``Progress.ray_channel``)."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def add(self, unit: int, samples: int, inputs: int, rejected: int, steps: int = 0) -> None:
        self.actor.add.remote(unit, samples, inputs, rejected, steps)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _count_so_far(i: int) -> property:
    """``Progress``'s count ``i`` of [samples, inputs, rejected, steps]: the units finished in this run plus what
    the units in flight reported so far."""
    return property(lambda self: self.settled[i] + sum(v[i] for v in self.live.values()))


class Progress:
    """The driver's view: units done, inputs, samples and rejections so far, rate and ETA.

    ``mode``: ``bar`` (tqdm), ``log`` (a line every ``log_every_s``), ``none``; ``auto`` is ``bar`` on a
    terminal and ``log`` otherwise. The ETA uses inputs when the plan knows their number (it does not
    when inputs are tars, whose members are counted only when read), else units."""

    def __init__(self, desc: str, units: int, inputs: Optional[int] = None, mode: str = "auto",
                 log_every_s: float = 5.0, done_before: int = 0) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.desc, self.mode, self.every = desc, mode, log_every_s
        self.units_total, self.inputs_total = units, inputs
        self.units_done = self.failed = 0
        self.settled = [0, 0, 0, 0]  # exact counts of the units finished in this run
        self.live: dict[int, list[int]] = {}  # what units in flight reported so far
        self.finished: set[int] = set()
        self.done_before = done_before  # units found done on disk: not part of this run's rate
        self.t0 = self.last_log = time.monotonic()
        self._actor = None
        self._shown_inputs = 0
        self._last_line = ""
        self.bar = None
        if mode == "bar" and (units or inputs):
            from tqdm import tqdm

            by_inputs = bool(inputs)
            self.bar = tqdm(total=inputs if by_inputs else units, desc=desc, unit="input" if by_inputs else "unit",
                            dynamic_ncols=True, file=sys.stderr)

    # -------------------------------------------------------------------------------- counting
    samples = _count_so_far(0)
    inputs = _count_so_far(1)
    rejected = _count_so_far(2)
    steps = _count_so_far(3)

    def add(self, unit: int, samples: int = 0, inputs: int = 0, rejected: int = 0, steps: int = 0) -> None:
        """A worker's counts for ``unit`` (the local channel; Ray workers go through ``ray_channel``)."""
        if unit in self.finished:
            return
        v = self.live.setdefault(unit, [0, 0, 0, 0])
        for i, n in enumerate((samples, inputs, rejected, steps)):
            v[i] += n
        self._moved()

    def _moved(self) -> None:
        if self.bar is not None and self.inputs_total:
            now = min(self.inputs, self.inputs_total)
            self.bar.update(now - self._shown_inputs)
            self._shown_inputs = now
        self.refresh()

    def unit_done(self, unit: int = -1, counts: Optional[dict] = None, rejected: int = 0,
                  failed: bool = False) -> None:
        """A unit finished: its exact counts replace what it reported on the way."""
        self.units_done += 1
        self.failed += int(failed)
        self.finished.add(unit)
        self.live.pop(unit, None)
        if counts is not None and not failed:
            self.settled[0] += int(counts.get("samples", counts.get("rows", 0)))
            self.settled[1] += int(counts.get("inputs", 0))
            self.settled[2] += int(rejected)
            self.settled[3] += int(counts.get("steps", 0))
        if self.bar is not None and not self.inputs_total:
            self.bar.update(1)
        self._moved()

    def ray_channel(self) -> RayChannel:
        """A channel that Ray workers can use; the driver polls it in ``poll``."""
        import ray

        @ray.remote(num_cpus=0)
        class Counter:
            def __init__(self):
                self.units = {}

            def add(self, unit, samples, inputs, rejected, steps=0):
                v = self.units.setdefault(unit, [0, 0, 0, 0])
                for i, n in enumerate((samples, inputs, rejected, steps)):
                    v[i] += n

            def snapshot(self):
                return self.units

        # beside the driver: a worker node that fails takes its workers, never the job's progress
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._actor = Counter.options(scheduling_strategy=here).remote()
        return RayChannel(self._actor)

    def poll(self) -> None:
        """Fetch the counts Ray workers sent (cheap; called by the driver while it waits)."""
        if self._actor is None:
            return
        import ray

        try:
            units = ray.get(self._actor.snapshot.remote(), timeout=5)
        except Exception:
            return
        self.live = {u: list(v) for u, v in units.items() if u not in self.finished}
        self._moved()

    # -------------------------------------------------------------------------------- display
    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        if self.inputs_total:
            frac = self.inputs / self.inputs_total
            where = f"{self.inputs:,}/{self.inputs_total:,} inputs ({100 * frac:.0f}%)"
        else:
            todo = max(self.units_total - self.done_before, 1)
            frac = (self.units_done - self.done_before) / todo
            where = f"{self.inputs:,} inputs"
        eta = elapsed / frac * (1 - frac) if 0 < frac < 1 else 0.0
        steps = f"{self.steps:,} model steps at {self.steps / elapsed:.1f}/s, " if self.steps and elapsed > 0 else ""
        return (f"[{self.desc}] {where}, {steps}{self.samples:,} samples at {rate:.1f}/s, {self.rejected:,} rejected, "
                f"{self.units_done}/{self.units_total} units, {self.failed} failed, elapsed {_duration(elapsed)}"
                + (f", ETA {_duration(eta)}" if eta else ""))

    def refresh(self, force: bool = False) -> None:
        force = force or (self.units_done == self.units_total and not self.live)
        if self.bar is not None:
            elapsed = time.monotonic() - self.t0
            self.bar.set_postfix(samples=self.samples, per_s=round(self.samples / max(elapsed, 1e-9), 1),
                                 rejected=self.rejected, units=f"{self.units_done}/{self.units_total}",
                                 failed=self.failed, refresh=False)
            return
        if self.mode == "log" and (force or time.monotonic() - self.last_log >= self.every):
            line = self.line()
            if force and line == self._last_line:
                return
            self.last_log, self._last_line = time.monotonic(), line
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._actor is not None:
            import ray

            try:
                ray.kill(self._actor)
            except Exception:
                pass
            self._actor = None


__all__ = ["Progress", "RayChannel", "report", "reporting"]

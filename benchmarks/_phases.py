"""Wall time per named phase, summed over calls: the scale drivers wrap a job's functions with ``timed``."""
from __future__ import annotations

import time


def peak_rss_mb() -> float:
    """This process's peak RSS so far (VmHWM), MB."""
    with open("/proc/self/status") as f:
        return [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")][0]


def timed(phases: dict, name: str, fn, peaks: dict | None = None):
    """``fn`` wrapped so that each call adds its wall time to ``phases[name]`` (raising or not), and, with
    ``peaks``, records the process's peak RSS when the phase ends (where in a job the peak was reached)."""
    def wrapped(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
            if peaks is not None:
                peaks[name] = peak_rss_mb()
    return wrapped

"""Wall time per named phase, summed over calls: the scale drivers wrap a job's functions with ``timed``."""
from __future__ import annotations

import time


def timed(phases: dict, name: str, fn):
    """``fn`` wrapped so that each call adds its wall time to ``phases[name]`` (raising or not)."""
    def wrapped(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
    return wrapped

"""Fault injection for kill-and-resume drills.

``SUPIRKIT_FAULT=point`` or ``point:INDEX`` (comma-separated for several) makes the process SIGKILL
itself when it reaches that point (for that shard index); ``point:INDEX:TERM`` (or ``:INT``) sends that
signal instead, as a scheduler would. Points: ``after_tar_rename`` (between a shard's rename and its stats
write), ``mid_shard`` (half-way through a shard's samples), ``after_shards:N`` (the driver, once N shards
are complete), ``train_step:N`` (training, after step N). No sleeps, no timing: the same point is hit on
every run.
"""
from __future__ import annotations

import os
import signal

ENV = "SUPIRKIT_FAULT"


def _points() -> list[tuple[str, str | None, str]]:
    spec = os.environ.get(ENV, "").strip()
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        arg, _, sig = rest.partition(":")
        out.append((name, arg or None, sig or "KILL"))
    return out


def _matching(point: str, index: int | None) -> str | None:
    for name, arg, sig in _points():
        if name == point and (arg is None or index is None or str(index) == arg):
            return sig
    return None


def armed(point: str, index: int | None = None) -> bool:
    return _matching(point, index) is not None


def maybe_fail(point: str, index: int | None = None) -> None:
    sig = _matching(point, index)
    if sig is not None:
        os.kill(os.getpid(), getattr(signal, f"SIG{sig.upper()}"))

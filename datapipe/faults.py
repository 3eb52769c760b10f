"""Fault injection for kill-and-resume drills.

``SUPIRKIT_FAULT=point`` or ``point:INDEX`` (comma-separated for several) makes the process SIGKILL
itself when it reaches that point (for that shard index); ``point:INDEX:TERM`` (or ``:INT``) sends that
signal instead, as a scheduler would. Points: ``after_tar_rename`` (between a shard's rename and its stats
write), ``mid_shard`` (half-way through a shard's samples), ``after_shards:N`` (the driver, once N shards
are complete), ``train_step:N`` (training, after step N). No sleeps, no timing: the same point is hit on
every run.

``hold_unit:STAGE`` (e.g. ``hold_unit:curate:write``) does not kill: the worker that starts a unit of that
stage (its output opened, nothing written yet) announces it with a file in ``SUPIRKIT_FAULT_DIR`` and waits
there until it is killed, so that a drill can take its node away at that moment. Armed in the environment
of one node's processes only, it holds the units of that node and no other.
"""
from __future__ import annotations

import os
import signal

ENV = "SUPIRKIT_FAULT"
DIR_ENV = "SUPIRKIT_FAULT_DIR"
#: the signals a fault point may send instead of SIGKILL
SIGNALS = ("KILL", "TERM", "INT")


def _points() -> list[tuple[str, str | None, str]]:
    spec = os.environ.get(ENV, "").strip()
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, arg = item.partition(":")
        sig = "KILL"
        head, _, last = arg.rpartition(":")
        if head and last.upper() in SIGNALS:  # point:INDEX:TERM; an argument may hold colons (hold_unit:curate:write)
            arg, sig = head, last
        out.append((name, arg or None, sig))
    return out


def _matching(point: str, index: int | str | None) -> str | None:
    for name, arg, sig in _points():
        if name == point and (arg is None or index is None or str(index) == arg):
            return sig
    return None


def armed(point: str, index: int | str | None = None) -> bool:
    return _matching(point, index) is not None


def maybe_fail(point: str, index: int | None = None) -> None:
    sig = _matching(point, index)
    if sig is not None:
        os.kill(os.getpid(), getattr(signal, f"SIG{sig.upper()}"))


def maybe_hold(point: str, what: str, index: int) -> None:
    """Wait here until this process is killed, when ``point:what`` is armed (see the module docstring)."""
    if not armed(point, what):
        return
    folder = os.environ.get(DIR_ENV)
    if folder:
        with open(os.path.join(folder, f"{point}-{index}-{os.getpid()}"), "w") as f:
            f.write(what)
    while True:
        signal.pause()  # no timer: only the drill's kill ends the wait

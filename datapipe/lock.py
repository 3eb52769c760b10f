"""One run per output folder: an advisory lock file under ``OUT/__supirkit__/``, and which writers are alive.

The lock is a small JSON file (host, pid, the process's start time, the command, a random token). It is
created the way that is atomic on NFS-like shared folders as well as on local disks: the content is
written whole to a uniquely named file, which is then hard-linked to the lock's name (``link`` fails if the
name exists, on every NFS version; ``O_EXCL`` is not reliable on old ones). When the server's reply to
``link`` is lost, the link count of the unique file says whether it succeeded.

A lock whose owner is on this host and no longer runs (no such pid, a zombie, or a pid reused by a
process that started later) is stale: it is taken over. A lock held from another host cannot be checked
from here; the message names that host and pid and the file to delete once that run is known to be gone.
A process that already holds the lock may take it again (a library caller running several jobs in a row).
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from supirkit.datapipe.errors import OutputLocked
from supirkit.datapipe.files import TMP_PREFIX, parse_temporary_name, temporary_name, this_host

LOCK_FILE = "lock.json"


def _boot_time() -> Optional[float]:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def process_start(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    boot = _boot_time()
    if boot is None:
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks


def pid_alive(pid: int, started: Optional[float] = None) -> bool:
    """Whether ``pid`` runs on this host (a zombie does not), and is the process that started at ``started``
    (a later start is another process that reused the pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    if started is not None:
        now_started = process_start(pid)
        if now_started is not None and now_started > started + 2.0:  # clock-tick rounding
            return False
    return True


def writer_alive(name: str) -> bool:
    """Whether the writer of temporary file ``name`` may still be writing it: True for a live process of
    this host, False for a dead one, and True for another host's (it cannot be checked from here)."""
    owner = parse_temporary_name(name)
    if owner is None:
        return True
    host, pid = owner
    if host != this_host():
        return True
    return pid != os.getpid() and pid_alive(pid)


def remove_stale_temporaries(root: str | Path, other_hosts_dead: bool = False, recursive: bool = True) -> int:
    """Remove, in ``root`` (and below it unless ``recursive`` is False), the temporary files of writers that
    are no longer alive (and of this process: called where it writes nothing). ``other_hosts_dead``: also those
    of other hosts, for a caller that holds the folder's lock between passes (every writer of the folder is
    then this job's, and none of its workers is running). Returns how many were removed."""
    root = Path(root)
    if not root.is_dir():
        return 0
    n = 0
    for p in (root.rglob if recursive else root.glob)(f"{TMP_PREFIX}*"):
        owner = parse_temporary_name(p.name)
        if owner is None or not (p.is_file() or p.is_symlink()):
            continue
        mine = owner[0] == this_host()
        if (mine and (owner[1] == os.getpid() or not pid_alive(owner[1]))) or (not mine and other_hosts_dead):
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
    return n


class OutputLock:
    """The lock of one output folder (see the module docstring); ``acquire`` / ``release``."""

    def __init__(self, meta_dir: str | Path, folder: str | Path) -> None:
        self.path = Path(meta_dir) / LOCK_FILE
        self.folder = Path(folder)
        self.token = uuid.uuid4().hex
        self.held = False

    def _content(self) -> dict:
        return {"host": this_host(), "pid": os.getpid(), "started": process_start(os.getpid()) or time.time(),
                "locked_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv[:3])[:200],
                "token": self.token}

    def _try_link(self) -> bool:
        tmp = temporary_name(self.path)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._content(), f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            return os.stat(tmp).st_nlink == 2  # NFS: the link may have been made although the reply was lost
        finally:
            tmp.unlink(missing_ok=True)

    def holder(self) -> Optional[dict]:
        """The lock file's content; {} for one that cannot be read (being written by a crashed writer is
        impossible: it appears whole), None when there is no lock."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != this_host():
            return False
        pid = holder.get("pid")
        return not isinstance(pid, int) or not pid_alive(pid, holder.get("started"))

    def _take_over(self, holder: dict) -> None:
        """Move the stale lock aside, then check that it is the one judged stale (two runs may judge the same
        stale lock at once: the second must not remove the first one's new lock)."""
        aside = temporary_name(self.path.with_name("stale-" + LOCK_FILE))
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            moved = {}
        if moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)  # not the stale one: put it back
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._try_link():
                self.held = True
                _HELD[str(self.folder)] = self
                return self
            holder = self.holder()
            if holder is None:
                continue  # released in between: try again
            if holder.get("host") == this_host() and holder.get("pid") == os.getpid():
                self.token, self.held = holder.get("token", self.token), True  # this process holds it already
                _HELD[str(self.folder)] = self
                return self
            if self._stale(holder):
                self._take_over(holder)
                continue
            raise OutputLocked(self._describe(holder))
        raise OutputLocked(f"{self.folder}: could not take the lock {self.path} (it keeps changing hands)")

    def _describe(self, holder: dict) -> str:
        if not holder:
            return (f"{self.folder}: is locked by {self.path}, which cannot be read; if no other run writes here, "
                    "delete that file and rerun")
        who = f"pid {holder.get('pid')} on host {holder.get('host')}"
        since = holder.get("locked_at", "?")
        what = f" ({holder.get('command')})" if holder.get("command") else ""
        tail = ("" if holder.get("host") == this_host() else
                f"; if that run is gone (another host cannot be checked from here), delete {self.path} and rerun")
        return f"{self.folder}: another run is writing here: {who}{what}, since {since}{tail}"

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if not self.held:
            return
        self.held = False
        _HELD.pop(str(self.folder), None)
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


#: locks this process holds, by output folder (released at exit and by ``release_output_locks``)
_HELD: dict[str, OutputLock] = {}


def held_lock(folder: str | Path) -> Optional[OutputLock]:
    return _HELD.get(str(folder))


def release_output_locks() -> None:
    """Release every lock this process holds, removing the folder's dead writers' temporary files first."""
    for lock in list(_HELD.values()):
        try:
            remove_stale_temporaries(lock.folder, other_hosts_dead=True)
        except OSError:
            pass
        lock.release()


atexit.register(release_output_locks)

__all__ = ["OutputLock", "LOCK_FILE", "this_host", "pid_alive", "process_start", "writer_alive",
           "remove_stale_temporaries", "held_lock", "release_output_locks"]

"""Files that appear whole or not at all: the one write idiom of every stage.

A file that a resume reads (a shard, its index, a stats marker, a plan, the job file) is written under a
temporary name in its own folder, flushed and fsynced, then renamed over its final name: a reader (or a
rerun after a crash, a full disk or a SIGKILL) sees the old file, or the new one, never half of one.
Temporary names start with ``TMP_PREFIX`` and carry the writer's host and pid, so that a later run can
tell the leftovers of a dead writer from a live one's work in progress (``lock.remove_stale_temporaries``).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from supirkit.datapipe.errors import ConfigError, DiskFull

TMP_PREFIX = ".tmp-"
#: errno values of a full disk or an exhausted quota
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def this_host() -> str:
    """The host name as temporary names and locks record it (first label, '-' made '_')."""
    return socket.gethostname().split(".")[0].replace("-", "_")[:32] or "host"


def temporary_name(path: str | Path) -> Path:
    """A unique temporary sibling of ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{this_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(folder: str | Path) -> Optional[int]:
    """Space a non-root writer may still use in ``folder`` (or its nearest existing parent)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full(folder: str | Path, needed: Optional[int] = None) -> DiskFull:
    """The one-line error of a full disk: the folder, what is free there, and what the write needed."""
    free = free_bytes(folder)
    have = f"{format_bytes(free)} free" if free is not None else "free space unknown"
    need = f"; this step needs about {format_bytes(needed)} more" if needed else ""
    return DiskFull(f"{folder}: no space left on the device ({have}){need}; free some space (or choose another "
                    "--out) and rerun the same command to resume")


def parse_temporary_name(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of the writer of a temporary file named by ``temporary_name``; None for other names."""
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX):].split("-", 3)
    if len(parts) < 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a crash right after ``os.replace`` keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is fsynced and renamed over
    ``path``, on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temporary_name(path)
    f = open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        _discard(f, tmp)
        if exc.errno in NO_SPACE:
            raise disk_full(path.parent) from exc
        raise
    except BaseException:
        _discard(f, tmp)
        raise


def _discard(f, tmp: Path) -> None:
    try:
        f.close()  # a full disk can fail the close's flush as well
    except OSError:
        pass
    tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with atomic_output(path, "wb") as f:
            f.write(data)
    except DiskFull:
        raise disk_full(Path(path).parent, len(data)) from None


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default))


def atomic_write_parquet(path: str | Path, table, **options) -> None:
    """A pyarrow table as a parquet file, atomically (zstd unless ``compression`` says otherwise)."""
    import pyarrow.parquet as pq

    options.setdefault("compression", "zstd")
    try:
        with atomic_output(path, "wb") as f:
            pq.write_table(table, f, **options)
    except DiskFull:
        raise disk_full(Path(path).parent, table.nbytes) from None


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, paths and sets, as JSON understands them."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_json(path: str | Path) -> Any:
    """Read a JSON file that this package wrote (atomically, so a partial one means outside damage)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_or_none(path: str | Path) -> Any:
    """``read_json`` of a marker whose content can be rebuilt: None when it is missing or damaged."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def read_bookkeeping(path: str | Path, what: str = "bookkeeping file") -> Any:
    """``read_json`` of a file a resume depends on, with one line instead of a traceback when it is damaged
    (written atomically by this package, so a truncated or invalid one was changed from outside)."""
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: this {what} is damaged ({type(exc).__name__}); it is written whole, so it was "
                          "changed from outside (a full disk on an older supirkit, a copy cut short): rerun with "
                          "--fresh to start over, or choose another --out") from None


__all__ = ["TMP_PREFIX", "NO_SPACE", "this_host", "temporary_name", "parse_temporary_name", "format_bytes",
           "free_bytes", "disk_full", "atomic_output", "atomic_write", "atomic_write_json", "atomic_write_parquet",
           "read_json", "read_json_or_none", "read_bookkeeping"]

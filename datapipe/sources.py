"""Where inputs come from: local folders and globs, fsspec URLs, parquet/CSV lists, WebDataset tars.

Listing is streamed in a deterministic order (directories walked with sorted entries), so the
partitioning that follows is a pure function of the listing and never needs the whole listing in memory.
"""
from __future__ import annotations

import glob
import os
import stat
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from datapipe.decode import IMAGE_EXTENSIONS
from datapipe.keys import display_source

#: kinds of listed entries
FILE, TAR, INVALID = "file", "tar", "invalid"
LIST_EXTENSIONS = (".parquet", ".csv")
TAR_EXTENSIONS = (".tar",)
LIST_COLUMNS = ("url", "path", "source", "uri", "filepath", "file")


@dataclass(frozen=True)
class InputRef:
    """One listed input. ``uri`` is a local path or an fsspec URL; ``kind`` is file, tar or invalid
    (invalid entries carry ``reason`` and are accounted for in the statistics, never silently dropped)."""

    uri: str
    kind: str = FILE
    size: int = -1
    reason: str = ""

    @property
    def display(self) -> str:
        return display_source(self.uri)


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _strip_file_scheme(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000000..000009}.tar`` -> 10 names (webdataset's brace syntax)."""
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_local(root: str) -> Iterator[InputRef]:
    """Depth-first walk with sorted entries; symlinked directories are not followed (loops)."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        yield InputRef(root, INVALID, reason=f"unreadable_dir: {exc.strerror or exc}")
        return
    for entry in entries:
        path = entry.path
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_local(path)
                continue
            if entry.is_symlink():
                try:
                    st = os.stat(path)  # follows; raises ELOOP/ENOENT for loops and dangling links
                except OSError as exc:
                    if _is_image_name(entry.name):
                        yield InputRef(path, INVALID, reason=f"bad_symlink: {exc.strerror or exc}")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue  # directory links are not followed
                size = st.st_size
            else:
                size = entry.stat(follow_symlinks=False).st_size
        except OSError as exc:
            yield InputRef(path, INVALID, reason=f"unreadable: {exc.strerror or exc}")
            continue
        lower = entry.name.lower()
        if lower.endswith(TAR_EXTENSIONS):
            yield InputRef(path, TAR, size)
        elif _is_image_name(entry.name):
            yield InputRef(path, FILE, size)


def _classify_local(path: str) -> Iterator[InputRef]:
    try:
        st = os.stat(path)
    except OSError as exc:
        yield InputRef(path, INVALID, reason=f"unreadable: {exc.strerror or exc}")
        return
    if stat.S_ISDIR(st.st_mode):
        if _is_image_name(path):
            yield InputRef(path, INVALID, reason="is_directory")
        else:
            yield from _walk_local(path)
    elif path.lower().endswith(LIST_EXTENSIONS):
        yield from _iter_list_file(path)
    elif path.lower().endswith(TAR_EXTENSIONS):
        yield InputRef(path, TAR, st.st_size)
    else:
        yield InputRef(path, FILE, st.st_size)


def _iter_list_file(path: str) -> Iterator[InputRef]:
    """A parquet or CSV with one path/URL per row (column url, path, source, ...), streamed in file order."""
    import pyarrow.dataset as pads

    fmt = "parquet" if path.lower().endswith(".parquet") else "csv"
    ds = pads.dataset(path, format=fmt)
    names = ds.schema.names
    column = next((c for c in LIST_COLUMNS if c in names), None)
    if column is None:
        raise ValueError(f"{path}: no column named one of {', '.join(LIST_COLUMNS)} (columns: {names})")
    for batch in ds.to_batches(columns=[column], batch_size=65536):
        for value in batch.column(0).to_pylist():
            if value is None or value == "":
                continue
            value = str(value)
            kind = TAR if value.lower().endswith(TAR_EXTENSIONS) else FILE
            yield InputRef(_strip_file_scheme(value), kind)


def _iter_remote(url: str) -> Iterator[InputRef]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol

    def full(p: str) -> str:
        return p if "://" in p else f"{protocol}://{p}"

    if glob.has_magic(root):
        for p in sorted(fs.glob(root)):
            info = fs.info(p)
            if info.get("type") == "directory":
                continue
            kind = TAR if p.lower().endswith(TAR_EXTENSIONS) else FILE
            yield InputRef(full(p), kind, int(info.get("size") or -1))
        return
    if fs.isfile(root):
        kind = TAR if root.lower().endswith(TAR_EXTENSIONS) else FILE
        yield InputRef(full(root), kind, int(fs.size(root) or -1))
        return
    for dirpath, dirs, files in fs.walk(root, detail=True):
        # walk order is made deterministic: sorted sub-folders (in place, top-down) and sorted files
        if isinstance(dirs, dict):
            for name in sorted(files):
                info = files[name]
                p = info.get("name") or f"{dirpath}/{name}"
                low = name.lower()
                if low.endswith(TAR_EXTENSIONS):
                    yield InputRef(full(p), TAR, int(info.get("size") or -1))
                elif _is_image_name(name):
                    yield InputRef(full(p), FILE, int(info.get("size") or -1))


def list_inputs(sources: Iterable[str]) -> Iterator[InputRef]:
    """Stream every input of every source in a deterministic order (sources in the order given)."""
    for source in sources:
        source = str(source)
        if is_url(source):
            yield from _iter_remote(source)
            continue
        source = _strip_file_scheme(source)
        if "{" in source and ".." in source:
            for name in expand_braces(source):
                yield from _classify_local(name)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(source, recursive=True), key=os.fsencode)
            if not matches:
                yield InputRef(source, INVALID, reason="glob_matched_nothing")
            for match in matches:
                yield from _classify_local(match)
        elif not os.path.lexists(source):
            yield InputRef(source, INVALID, reason="not_found")
        else:
            yield from _classify_local(source)


class TransientIOError(Exception):
    pass


def read_bytes(uri: str, max_bytes: Optional[int] = None, retries: int = 3, backoff_s: float = 0.5) -> bytes:
    """Read a whole input. Transient errors (timeouts, connection resets) are retried with backoff;
    permanent ones (not found, permission, is a directory, symlink loop) are raised at once as OSError."""
    attempt = 0
    while True:
        try:
            if is_url(uri):
                import fsspec

                with fsspec.open(uri, "rb") as f:
                    data = f.read(max_bytes + 1 if max_bytes else -1)
            else:
                with open(uri, "rb") as f:
                    data = f.read(max_bytes + 1 if max_bytes else -1)
            if max_bytes and len(data) > max_bytes:
                raise OSError(f"file larger than max_file_bytes={max_bytes}")
            return data
        except (TimeoutError, ConnectionError) as exc:
            attempt += 1
            if attempt > retries:
                raise OSError(f"gave up after {retries} retries: {exc}") from exc
            time.sleep(backoff_s * (2 ** (attempt - 1)))


def open_binary(uri: str):
    if is_url(uri):
        import fsspec

        return fsspec.open(uri, "rb").open()
    return open(uri, "rb")

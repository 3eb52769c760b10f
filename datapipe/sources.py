"""Where inputs come from: local folders and globs, fsspec URLs, parquet/CSV lists, WebDataset tars.

Listing is streamed in a deterministic order (directories walked with sorted entries), so the
partitioning that follows is a pure function of the listing and never needs the whole listing in memory.
"""
from __future__ import annotations

import errno
import glob
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from supirkit.datapipe.errors import FileTooLarge, NotARegularFile, PreflightError, TransientIOError
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.shard_format import IMAGE_SUFFIXES

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


def strip_file_scheme(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


#: a webdataset brace pattern: a range ``{000000..000009}`` or a list ``{000000,000003}``
_BRACES = re.compile(r"\{[^{}]*(?:\.\.|,)[^{}]*\}")


def has_braces(pattern: str) -> bool:
    """True when ``pattern`` holds a brace range or list (a lone ``{`` in a file name is not one)."""
    return bool(_BRACES.search(pattern))


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000000..000009}.tar`` -> 10 names, ``shard-{000000,000003}.tar`` -> 2 (webdataset's syntax)."""
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def normalize_source(source: str) -> str:
    """The one spelling of a source: local paths absolute (relative ones taken from the current folder),
    without a trailing slash; URLs as given, less a trailing slash. Provenance and job identity use it,
    so the same folder named from another working folder, or with ``./`` or a slash, is the same source."""
    source = os.fsdecode(source)
    if is_url(source):
        return source.rstrip("/") if not source.endswith("://") else source
    source = strip_file_scheme(source)
    if has_braces(source) and not os.path.lexists(source):
        head, sep, tail = source.partition("{")
        return os.path.join(os.path.abspath(os.path.dirname(head) or "."), os.path.basename(head)) + sep + tail
    stripped = source.rstrip(os.sep) or os.sep
    return os.path.abspath(stripped)


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _input_kind(name: str) -> Optional[str]:
    """FILE or TAR for the names a listing takes as inputs, None for the names it passes over."""
    if name.lower().endswith(TAR_EXTENSIONS):
        return TAR
    return FILE if _is_image_name(name) else None


def _symlink_ref(path: str, kind: Optional[str], top: str, follow_outside: bool) -> Optional[InputRef]:
    """A symlinked entry of a walked folder: followed only to a regular file, and to one outside the walked
    folder only with ``follow_outside`` (a link to ``/dev/zero`` or to another user's files is not an input
    of this folder). Folder links are not followed (loops); links with names that are not inputs are passed over."""
    try:
        st = os.stat(path)  # follows; raises ELOOP/ENOENT for loops and dangling links
    except OSError as exc:
        return InputRef(path, INVALID, reason=f"bad_symlink: {exc.strerror or exc}") if kind else None
    if stat.S_ISDIR(st.st_mode) or kind is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        return InputRef(path, INVALID, reason=f"special_file: link to a {_file_kind(st.st_mode)}")
    target = os.path.realpath(path)
    if not follow_outside and not _inside(target, top):
        return InputRef(path, INVALID, reason=f"outside_source: links to {display_source(target)} (set "
                                              "listing.follow_symlinks_outside to read it)")
    return InputRef(path, kind, st.st_size)


def _walk_local(root: str, top: str, follow_outside: bool = False) -> Iterator[InputRef]:
    """Depth-first walk with sorted entries. Only regular files are inputs: FIFOs, sockets and devices named
    like inputs are recorded (``special_file``) and never opened; symlinks as ``_symlink_ref`` says. ``top``
    is the resolved folder the walk started from."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        yield InputRef(root, INVALID, reason=f"unreadable_dir: {exc.strerror or exc}")
        return
    for entry in entries:
        path = entry.path
        kind = _input_kind(entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                if _is_image_name(entry.name):
                    # named like an image, so some listing may name it as one: account for it, then
                    # walk it like any folder (its files are inputs of their own)
                    yield InputRef(path, INVALID, reason="is_directory")
                yield from _walk_local(path, top, follow_outside)
                continue
            if entry.is_symlink():
                ref = _symlink_ref(path, kind, top, follow_outside)
                if ref is not None:
                    yield ref
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            yield InputRef(path, INVALID, reason=f"unreadable: {exc.strerror or exc}")
            continue
        if kind is None:
            continue
        if not stat.S_ISREG(st.st_mode):
            yield InputRef(path, INVALID, reason=f"special_file: {_file_kind(st.st_mode)}")
        else:
            yield InputRef(path, kind, st.st_size)


def _classify_local(path: str, explicit: bool = False, follow_outside: bool = False) -> Iterator[InputRef]:
    """One local path: a folder is walked, a list file is read, a tar or an image file is an input.

    A folder named like an image that a glob or pattern matched is recorded as ``is_directory``; one
    given explicitly as a source is walked like any folder. A path named on the command line or matched
    by a glob may be a symlink (the user named it), but only to a regular file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        yield InputRef(path, INVALID, reason=f"unreadable: {exc.strerror or exc}")
        return
    if stat.S_ISDIR(st.st_mode):
        if _is_image_name(path) and not explicit:
            yield InputRef(path, INVALID, reason="is_directory")
        else:
            yield from _walk_local(path, os.path.realpath(path), follow_outside)
    elif not stat.S_ISREG(st.st_mode):
        yield InputRef(path, INVALID, reason=f"special_file: {_file_kind(st.st_mode)}")
    elif path.lower().endswith(LIST_EXTENSIONS):
        yield from _iter_list_file(path)
    elif path.lower().endswith(TAR_EXTENSIONS):
        yield InputRef(path, TAR, st.st_size)
    else:
        yield InputRef(path, FILE, st.st_size)


def _iter_list_file(path: str, fs=None) -> Iterator[InputRef]:
    """A parquet or CSV with one path/URL per row (column url, path, source, ...), streamed in file order.

    Relative paths are taken relative to the current folder, as on the command line, and stored absolute
    (a local list file's entries only: a remote list names remote objects). A binary column
    may hold exact file-name bytes. Read batch by batch with the format's own streaming reader: memory
    stays flat whatever the list's length (pyarrow's dataset scanner reads ahead and grew with it)."""
    for values in _iter_list_columns(path, fs):
        for value in values:
            if value is None or value == "" or value == b"":
                continue
            # a binary column holds exact file-name bytes (names that are not UTF-8)
            value = strip_file_scheme(os.fsdecode(value) if isinstance(value, bytes) else str(value))
            if fs is None and not is_url(value):
                value = os.path.abspath(value)
            kind = TAR if value.lower().endswith(TAR_EXTENSIONS) else FILE
            yield InputRef(value, kind)


def _iter_list_columns(path: str, fs=None, batch_rows: int = 65536) -> Iterator[list]:
    """The path column of a list file, as Python lists of ``batch_rows`` values."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with (fs.open(path, "rb") if fs is not None else open(path, "rb")) as f:
        if path.lower().endswith(".parquet"):
            pf = pq.ParquetFile(f)
            column = _list_column(path, pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[column]):
                yield batch.column(0).to_pylist()
            return
        import pyarrow as pa

        # paths are text whatever they look like (type inference on the first block could say otherwise)
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in LIST_COLUMNS}),
        )
        index = reader.schema.names.index(_list_column(path, reader.schema.names))
        for batch in reader:
            yield batch.column(index).to_pylist()


def _list_column(path: str, names: list[str]) -> str:
    column = next((c for c in LIST_COLUMNS if c in names), None)
    if column is None:
        raise ValueError(f"{path}: no column named one of {', '.join(LIST_COLUMNS)} (columns: {names})")
    return column


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
        if root.lower().endswith(LIST_EXTENSIONS):
            yield from _iter_list_file(root, fs)
            return
        kind = TAR if root.lower().endswith(TAR_EXTENSIONS) else FILE
        yield InputRef(full(root), kind, int(fs.size(root) or -1))
        return
    yield from _walk_remote(fs, root, full)


def _walk_remote(fs, root: str, full) -> Iterator[InputRef]:
    """Depth-first, sorted at every level (object stores list in their own order): one folder's
    listing in memory at a time."""
    try:
        entries = sorted(fs.ls(root, detail=True), key=lambda e: e["name"])
    except OSError as exc:
        yield InputRef(full(root), INVALID, reason=f"unreadable_dir: {exc}")
        return
    for info in entries:
        p = info["name"].rstrip("/")
        if p == root.rstrip("/"):
            continue  # some stores list a folder inside itself
        name = p.rsplit("/", 1)[-1]
        if info.get("type") == "directory":
            if _is_image_name(name):
                yield InputRef(full(p), INVALID, reason="is_directory")
            yield from _walk_remote(fs, p, full)
        elif name.lower().endswith(TAR_EXTENSIONS):
            yield InputRef(full(p), TAR, int(info.get("size") or -1))
        elif _is_image_name(name):
            yield InputRef(full(p), FILE, int(info.get("size") or -1))


#: the package each fsspec protocol needs, and the supirkit extra that installs it
PROTOCOL_EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
                   "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure")}


def check_protocols(sources: Iterable[str]) -> None:
    """``PreflightError`` (one line, before any output is made) for a URL whose fsspec protocol is unknown or
    whose filesystem package is not installed, naming the extra to install (``supirkit[s3]``, ...)."""
    import fsspec

    for source in sources:
        source = str(source)
        if not is_url(source):
            continue
        proto = source.split("://", 1)[0].lower()
        try:
            fsspec.get_filesystem_class(proto)
        except ImportError:
            package, extra = PROTOCOL_EXTRAS.get(proto, (f"the fsspec backend of {proto}://", None))
            how = f"pip install 'supirkit[{extra}]'" if extra else "install the fsspec backend for it"
            raise PreflightError(f"{source}: reading {proto}:// needs {package}, which is not installed: "
                                 f"{how}") from None
        except ValueError:
            raise PreflightError(f"{source}: unknown protocol {proto}:// (fsspec knows no such filesystem)") from None


def list_inputs(sources: Iterable[str], follow_symlinks_outside: bool = False) -> Iterator[InputRef]:
    """Stream every input of every source in a deterministic order (sources in the order given).
    ``follow_symlinks_outside``: read symlinks in a walked folder that point out of it (see ``_symlink_ref``)."""
    for source in sources:
        source = normalize_source(str(source))
        if is_url(source):
            names = expand_braces(source) if has_braces(source) else [source]
            for name in names:
                yield from _iter_remote(name)
            continue
        source = strip_file_scheme(source)
        if has_braces(source) and not os.path.lexists(source):  # a name that exists is taken as written
            for name in expand_braces(source):
                yield from _classify_local(name, follow_outside=follow_symlinks_outside)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(source, recursive=True), key=os.fsencode)
            if not matches:
                yield InputRef(source, INVALID, reason="glob_matched_nothing")
            for match in matches:
                yield from _classify_local(match, follow_outside=follow_symlinks_outside)
        elif not os.path.lexists(source):
            yield InputRef(source, INVALID, reason="not_found")
        else:
            yield from _classify_local(source, explicit=True, follow_outside=follow_symlinks_outside)


def read_bytes(uri: str, max_bytes: Optional[int] = None, retries: int = 3, backoff_s: float = 0.5) -> bytes:
    """Read a whole input. Transient errors (timeouts, connection resets) are retried with backoff and, past
    the retries, raised as ``TransientIOError`` (the unit fails and is retried; the input is not rejected);
    permanent ones (not found, permission, is a directory, symlink loop) are raised at once as ``OSError``,
    a file over ``max_bytes`` as ``FileTooLarge`` (read no further than the limit)."""
    attempt = 0
    while True:
        try:
            if is_url(uri):
                import fsspec

                with fsspec.open(uri, "rb") as f:
                    data = f.read(max_bytes + 1 if max_bytes else -1)
            else:
                with open_regular(uri) as f:
                    # the size from the open file, not a read of ``max_bytes``: a buffered read(n) allocates n
                    if max_bytes and os.fstat(f.fileno()).st_size > max_bytes:
                        raise FileTooLarge(display_source(uri), max_bytes)
                    data = f.read()
            if max_bytes and len(data) > max_bytes:
                raise FileTooLarge(display_source(uri), max_bytes)
            return data
        except (TimeoutError, ConnectionError) as exc:
            attempt += 1
            if attempt > retries:
                raise TransientIOError(f"{display_source(uri)}: gave up after {retries} retries: {exc}") from exc
            time.sleep(backoff_s * (2 ** (attempt - 1)))


def open_regular(path: str):
    """Open a local file for reading, refusing (``NotARegularFile``, ``IsADirectoryError``) anything that is
    not a regular file before a byte is read: the descriptor is opened without blocking (a FIFO's ``open``
    would otherwise wait forever for a writer) and checked with ``fstat``, so a file swapped for a FIFO or a
    device after the listing is refused too."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(mode):
            raise NotARegularFile(display_source(path), _file_kind(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_binary(uri: str):
    if is_url(uri):
        import fsspec

        return fsspec.open(uri, "rb").open()
    return open_regular(strip_file_scheme(uri))

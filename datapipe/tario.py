"""Reading and writing shards: sequential streams for passes over whole shards, random access by key
for samplers (the training loader, inspect's sampling, negatives' source picks).

Plain ``tarfile`` rather than webdataset's reader and writer: the same format (see ``shard_format``), but
members are streamed once without decoding, sizes are checked from the headers before any data is read,
unsafe names are refused, and no torch import is needed in every worker.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Optional

from supirkit.datapipe.errors import BadMetadata, FileTooLarge
from supirkit.datapipe.shard_format import (
    IMAGE_EXTS,
    META_DIR,
    STATS_DIR,
    ShardSetLayout,
    UnsafeMember,
    check_member,
    index_candidates,
    split_member,
)
from supirkit.datapipe.sources import expand_braces, has_braces, is_url, open_binary, strip_file_scheme

BLOCK = tarfile.BLOCKSIZE


# ------------------------------------------------------------------------------------------------ writing

class TarWriter:
    """Writes samples as adjacent members ``{key}.{ext}``, reproducibly (fixed mtime, owner, mode), and
    remembers where each member's data starts, so the index can offer random access without a scan.
    Member order inside a sample: the image first, then the other fields sorted (json, txt, ...)."""

    def __init__(self, stream) -> None:
        # members go out in large writes (tarfile's defaults copy and write in 10-16 KB pieces: thousands
        # of small writes per shard); the bytes written are the same
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=1 << 22,
                                 bufsize=1 << 20)

    def write(self, sample: dict) -> list[dict]:
        """Write one sample (``__key__`` + ext -> bytes); returns ``[{ext, offset, size}]`` of its members."""
        key = sample["__key__"]
        fields = [k for k in sample if not k.startswith("__")]
        fields.sort(key=lambda ext: (ext not in IMAGE_EXTS, ext))
        placed = []
        for ext in fields:
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            # the stream's offset is now past the data and its padding to a whole block
            padded = -(-len(data) // BLOCK) * BLOCK
            placed.append({"ext": ext, "offset": self._tar.offset - padded, "size": len(data)})
        return placed

    def close(self) -> None:
        self._tar.close()


# ------------------------------------------------------------------------------------------------ reading

class _TailTracker:
    """A read-only stream wrapper that remembers the last bytes it handed out (to check a tar's end)."""

    def __init__(self, fileobj) -> None:
        self._f = fileobj
        self._tail = b""

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._tail = (self._tail + data)[-1024:]
        return data

    def ends_with_zero_block(self) -> bool:
        while self.read(1 << 16):  # the rest after the end-of-archive marker is padding
            pass
        return len(self._tail) >= BLOCK and not any(self._tail[-BLOCK:])


def _skip_reason(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "directory"
    if info.issym() or info.islnk():
        return "link"
    if info.isfifo() or info.ischr() or info.isblk():
        return "special_file"
    return "not_a_file"


def iter_tar_samples(fileobj, on_unsafe=None, on_skip=None, max_member_bytes: Optional[int] = None) -> Iterator[dict]:
    """Group a tar stream into webdataset samples (bytes, undecoded), reading it once, sequentially.

    Members with absolute paths or ``..`` are refused: reported to ``on_unsafe(name)`` and skipped, never
    extracted or used as keys. Every other member that is not taken goes to ``on_skip(name, why)``: links,
    folders and special files, names without an extension, reserved and repeated fields (the first copy
    is kept). A member larger than ``max_member_bytes`` (from its header) is never read into memory: its
    field is left out, listed under the sample's ``__too_large__``, and reported as ``too_large``.
    A truncated or corrupt tar raises ``tarfile.TarError`` (or ``EOFError``) after the samples that could
    be read; the sample being assembled at that moment is not yielded.
    """
    skip = on_skip or (lambda name, why: None)
    current: Optional[dict] = None
    tracked = _TailTracker(fileobj)
    with tarfile.open(fileobj=tracked, mode="r|*") as stream:
        for info in stream:
            stream.members = []  # streaming: do not keep every TarInfo of a large tar
            name = info.name
            try:
                check_member(name)
            except UnsafeMember:
                if on_unsafe is not None:
                    on_unsafe(name)
                continue
            if not info.isreg():
                skip(name, _skip_reason(info))
                continue
            base = name.rsplit("/", 1)[-1]
            if base.startswith("__") and base.split(".", 1)[0].endswith("__"):
                continue  # webdataset's metadata members (__index__ etc.)
            key, ext = split_member(name)
            if key is None:
                skip(name, "no_extension")
                continue
            ext = ext.lower()
            if ext.startswith("__"):  # would collide with the reader's own fields (__key__, __too_large__)
                skip(name, "reserved_field")
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current  # complete: the next member belongs to another sample
                current = {"__key__": key}
            if ext in current or ext in current.get("__too_large__", ()):
                skip(name, "repeated_field")
                continue
            if max_member_bytes is not None and info.size > max_member_bytes:
                # the stream skips the unread data; reading it first would let one member exhaust memory
                current.setdefault("__too_large__", []).append(ext)
                skip(name, "too_large")
                continue
            f = stream.extractfile(info)
            current[ext] = f.read() if f is not None else b""
    if not tracked.ends_with_zero_block():
        # tarfile ends quietly when a file is cut at or inside a header: say so
        raise tarfile.ReadError("truncated tar: no end-of-archive marker")
    if current is not None:
        yield current


def read_shard(url: str, on_unsafe=None, on_skip=None, max_member_bytes: Optional[int] = None) -> Iterator[dict]:
    """Samples of one shard (local path or fsspec URL), as dicts of raw bytes plus ``__key__`` and
    ``__shard__`` (``max_member_bytes``: see ``iter_tar_samples``)."""
    with open_binary(url) as f:
        for sample in iter_tar_samples(f, on_unsafe=on_unsafe, on_skip=on_skip, max_member_bytes=max_member_bytes):
            sample["__shard__"] = url
            yield sample


def sample_image(sample: dict) -> tuple[Optional[str], Optional[bytes]]:
    """``(ext, bytes)`` of the sample's image (the first image field in ``IMAGE_EXTS`` order)."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    return None, None


def image_too_large(sample: dict) -> bool:
    """True when the sample has no image because its image member was over the reader's size limit."""
    return any(ext in IMAGE_EXTS for ext in sample.get("__too_large__", ()))


#: nesting levels a sample's metadata may have: real metadata has a handful; deeper JSON is hostile (it would
#: exhaust the stack of every recursive consumer: Arrow structs, printing, flattening)
MAX_META_DEPTH = 32


def _deeper_than(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def parse_meta(raw) -> dict:
    """A sample's ``.json`` member as a dict; ``BadMetadata`` for JSON that is not an object, invalid text
    or nesting deeper than ``MAX_META_DEPTH`` (hostile metadata rejects its sample, never its shard)."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadMetadata(f"{type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise BadMetadata(f"metadata is a JSON {type(value).__name__}, not an object")
    if _deeper_than(value, MAX_META_DEPTH):
        raise BadMetadata(f"metadata nested deeper than {MAX_META_DEPTH} levels")
    return value


def sample_meta(sample: dict) -> dict:
    """The sample's metadata, or {} when it has none or it is unusable (for readers that only look)."""
    try:
        return parse_meta(sample.get("json"))
    except BadMetadata:
        return {}


# ------------------------------------------------------------------------------------------------ listing

def _is_supirkit_folder(path: str) -> bool:
    return ShardSetLayout(path).is_supirkit_output()


def list_shards(spec: str | os.PathLike | Iterable[str]) -> list[str]:
    """A folder, a brace pattern, a glob, a single tar, or a list of these -> sorted shard URLs.

    In a folder written by supirkit (it has ``__supirkit__/``) only completed shards (with their stats
    marker) are listed; folders written by other tools (img2dataset) list every ``.tar``.
    """
    import glob as _glob

    if not isinstance(spec, (str, os.PathLike)):
        out: list[str] = []
        for s in spec:
            out.extend(list_shards(s))
        return out
    spec = strip_file_scheme(os.fspath(spec))
    if is_url(spec):
        return _list_remote_shards(spec)
    if has_braces(spec) and not os.path.lexists(spec):
        return expand_braces(spec)
    if _glob.has_magic(spec):
        return sorted(_glob.glob(spec))
    if os.path.isdir(spec):
        tars = sorted(x for x in os.listdir(spec) if x.endswith(".tar") and not x.startswith("."))
        paths = [os.path.join(spec, t) for t in tars]
        if _is_supirkit_folder(spec):  # only completed shards count
            layout = ShardSetLayout(spec)
            return [p for t, p in zip(tars, paths) if (layout.stats_dir / f"{t[:-4]}.json").exists()]
        return paths
    if os.path.isfile(spec):
        return [spec]
    raise FileNotFoundError(f"{spec}: no shard, folder or pattern found")


def _list_remote_shards(spec: str) -> list[str]:
    import fsspec

    if has_braces(spec):
        return expand_braces(spec)
    fs, root = fsspec.core.url_to_fs(spec)
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if root.endswith(".tar"):
        return [spec]
    names = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".tar"))
    stats_dir = f"{root.rstrip('/')}/{META_DIR}/{STATS_DIR}"
    done = None
    if fs.isdir(stats_dir):  # written by supirkit: only completed shards count
        done = {p.rsplit("/", 1)[-1][:-5] for p in fs.ls(stats_dir, detail=False)}
    return [f"{proto}://{p}" for p in names if done is None or p.rsplit("/", 1)[-1][:-4] in done]


def exists(url: str) -> bool:
    if is_url(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return fs.exists(path)
    return os.path.isfile(url)


def find_index(tar_url: str) -> Optional[str]:
    """The parquet index of a shard (supirkit's layout or beside the tar), or None."""
    for candidate in index_candidates(tar_url):
        if exists(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------------------------ random access

#: ``key -> {ext: (data offset, size)}`` of the members of one tar
MemberTable = dict[str, dict[str, tuple[int, int]]]


def scan_members(url: str) -> MemberTable:
    """Member table of a tar by one pass over its headers (the data is skipped by seeking)."""
    table: MemberTable = {}
    with open_binary(url) as f:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                try:
                    check_member(m.name)
                except UnsafeMember:
                    continue
                key, ext = split_member(m.name)
                if key is not None:
                    table.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
    return table


def members_from_index(url: str, index_url: Optional[str]) -> Optional[MemberTable]:
    """Member table from a supirkit index (its ``members`` column), without touching the tar; None when
    the index has no such column (an older or foreign shard set)."""
    if index_url is None:
        return None
    import pyarrow.parquet as pq

    with open_binary(index_url) as f:
        pf = pq.ParquetFile(f)
        if "members" not in pf.schema_arrow.names:
            return None
        t = pf.read(columns=["key", "members"]).to_pydict()
    return {k: {m["ext"]: (m["offset"], m["size"]) for m in members} for k, members in zip(t["key"], t["members"])}


def member_table(url: str) -> MemberTable:
    return members_from_index(url, find_index(url)) or scan_members(url)


def image_keys(table: MemberTable) -> list[str]:
    """Keys of the samples that have an image, sorted."""
    return [k for k in sorted(table) if any(e in IMAGE_EXTS for e in table[k])]


class LRU:
    """A small least-recently-used cache (per process; safe to share across threads)."""

    def __init__(self, size: int, on_evict: Optional[Callable] = None):
        self.size, self.on_evict = size, on_evict
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = make()
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                _, old = self._d.popitem(last=False)
                if self.on_evict:
                    self.on_evict(old)
        return value

    def clear(self):
        with self._lock:
            if self.on_evict:
                for v in self._d.values():
                    self.on_evict(v)
            self._d.clear()


class TarReader:
    """Reads the members of one key from a tar by offset: the member table comes from the shard's index
    (or one header scan), once per shard and process; open files are kept in a small cache."""

    def __init__(self, cache_shards: int = 256, cache_files: int = 8, max_member_bytes: Optional[int] = None):
        self._tables = LRU(cache_shards)
        self._files = LRU(cache_files, on_evict=lambda f: f.close())
        self._pid = os.getpid()
        self.max_member_bytes = max_member_bytes

    def _check_pid(self):
        if os.getpid() != self._pid:  # forked: never share file positions with the parent
            self._files = LRU(self._files.size, on_evict=lambda f: f.close())
            self._pid = os.getpid()

    def table(self, url: str) -> MemberTable:
        return self._tables.get(url, lambda: member_table(url))

    def read(self, url: str, key: str, members: Optional[dict] = None) -> dict:
        """``{__key__, __shard__, ext: bytes, ...}``; ``KeyError`` for an unknown key, ``FileTooLarge`` for a
        member over ``max_member_bytes`` (refused from the table, never read). ``members``: the key's
        ``{ext: (offset, size)}`` when the caller has them already (no member table is built)."""
        self._check_pid()
        if members is None:
            members = self.table(url).get(key)
        if members is None:
            raise KeyError(f"{url}: no member {key!r}")
        limit = self.max_member_bytes
        too_large = [ext for ext, (_, size) in members.items() if limit is not None and size > limit]
        if too_large:
            raise FileTooLarge(f"{url}#{key}.{too_large[0]}", limit)
        f = self._files.get(url, lambda: open_binary(url))
        sample = {"__key__": key, "__shard__": url}
        for ext, (offset, size) in members.items():
            f.seek(offset)
            sample[ext] = f.read(size)
        return sample

    def __getstate__(self):
        return {"_tables": LRU(self._tables.size), "_files": LRU(self._files.size, on_evict=lambda f: f.close()),
                "_pid": -1, "max_member_bytes": self.max_member_bytes}

    def __setstate__(self, state):
        self.__dict__.update(state)


__all__ = ["TarWriter", "iter_tar_samples", "read_shard", "sample_image", "image_too_large", "parse_meta",
           "sample_meta", "list_shards", "find_index", "exists", "scan_members", "member_table", "image_keys",
           "TarReader", "LRU", "MemberTable"]

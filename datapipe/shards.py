"""Lossless WebDataset shards with a parquet index and a stats JSON each.

Layout of a shard set folder::

    {prefix}-000000.tar            samples: {key}.jpg|png|..., {key}.json, {key}.txt (adjacent)
    {prefix}-000000.parquet        one row per sample: key, bytes, width, height, metadata columns
    {prefix}-000000.stats.json     counts, rejections by reason, timings; written LAST = "shard done"

A shard appears under its final name only when complete: everything is written under a temporary
name and renamed; the stats JSON is the completion marker, so a crash between the tar's rename and the
stats write leaves a shard that the next run simply redoes.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from supirkit.datapipe import faults

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "jp2", "ppm")
#: webdataset convention: the key is the basename up to its first dot.
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


def stats_path(out_dir: str | Path, prefix: str, index: int) -> Path:
    return Path(out_dir) / f"{shard_name(prefix, index)}.stats.json"


def is_done(out_dir: str | Path, prefix: str, index: int) -> bool:
    return stats_path(out_dir, prefix, index).is_file()


class ShardStats:
    """Counts, rejections by reason, timings for one unit of work; errors are values that get counted."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.rejected: Counter = Counter()
        self.rejections: list[dict] = []
        self.timings: Counter = Counter()
        self.extra: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def reject(self, source: str, reason: str, detail: str = "", stage: str = "") -> None:
        """Record one input that produced no sample, with a stable reason code."""
        self.rejected[reason] += 1
        row = {"source": source, "reason": reason}
        if detail:
            row["detail"] = detail[:300]
        if stage:
            row["stage"] = stage
        self.rejections.append(row)

    @contextmanager
    def timer(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] += time.perf_counter() - t

    def to_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "rejected": dict(self.rejected),
            "rejections": self.rejections,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "wall_s": round(time.perf_counter() - self._t0, 4),
            **self.extra,
        }


def _flatten_meta(meta: dict, prefix: str = "") -> dict:
    """Scalars become parquet columns; nested dicts are flattened with dots; lists become JSON text."""
    row: dict[str, Any] = {}
    for k, v in meta.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            row.update(_flatten_meta(v, name + "."))
        elif isinstance(v, (list, tuple)):
            row[name] = json.dumps(v, ensure_ascii=False)
        else:
            row[name] = v
    return row


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TarWriter:
    """Writes samples as adjacent tar members ``{key}.{ext}``, reproducibly (fixed mtime, owner, mode).

    Plain ``tarfile`` instead of webdataset's writer: same format, and no torch import in every worker.
    Member order inside a sample: image first, then the other fields sorted (json, txt, ...).
    """

    def __init__(self, stream) -> None:
        # members go out in large writes (tarfile's defaults copy and write in 10-16 KB pieces: thousands
        # of small writes per shard); the bytes written are the same
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=1 << 22,
                                 bufsize=1 << 20)

    def write(self, sample: dict) -> None:

        key = sample["__key__"]
        fields = [k for k in sample if not k.startswith("__")]
        fields.sort(key=lambda ext: (ext not in IMAGE_EXTS, ext))
        for ext in fields:
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


class ShardSink:
    """Writes one shard atomically: ``write(sample)`` n times, then ``commit(stats)``.

    A sample is a dict ``{"__key__": key, "jpg": bytes, "json": dict, "txt": str, ...}``; image bytes
    are written unchanged. An optional ``"__index__": dict`` adds columns to the parquet index only
    (values JSON cannot hold, such as the exact bytes of a file name). Exactly one of the image
    extensions must be present when the sample is an image sample. Nothing appears under the final
    names until ``commit``.
    """

    def __init__(self, out_dir: str | Path, prefix: str, index: int, config_hash: str = "") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(prefix, index)
        self.prefix, self.index, self.config_hash = prefix, index, config_hash
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tmp_tar = self.out_dir / f".tmp-{token}-{self.name}.tar"
        self._stream = open(self._tmp_tar, "wb")
        self._writer = TarWriter(self._stream)
        self._rows: list[dict] = []
        self._keys: set[str] = set()
        self.bytes_written = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key or not key:
            raise ValueError(f"invalid sample key {key!r}: keys must be non-empty, without dots or slashes")
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.name}")
        self._keys.add(key)
        encoded: dict[str, Any] = {"__key__": key}
        meta = dict(sample.get("json") or {})
        meta.setdefault("key", key)
        size = 0
        for ext, value in sample.items():
            if ext.startswith("__") or ext == "json":
                continue
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"sample {key}: field {ext!r} must be bytes or str, got {type(value).__name__}")
            encoded[ext] = bytes(value)
            size += len(value)
        # a stray undecodable file name (lone surrogates) is escaped, never a reason to lose the shard
        blob = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8", "backslashreplace")
        encoded["json"] = blob
        size += len(blob)
        self._writer.write(encoded)
        self.bytes_written += size
        row = {"key": key, "bytes": size}
        row.update(_flatten_meta(meta))
        row["key"] = key
        row.setdefault("width", meta.get("width", meta.get("orig_width")))
        row.setdefault("height", meta.get("height", meta.get("orig_height")))
        row["has_caption"] = "txt" in encoded
        row.update(sample.get("__index__") or {})  # index-only columns (e.g. exact source bytes)
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def commit(self, stats: ShardStats) -> dict:
        """Finish the tar, write index, rename into place, then write the stats (the done marker)."""
        self._writer.close()
        self._stream.flush()
        os.fsync(self._stream.fileno())  # the tar's bytes are on disk before its name says "complete"
        self._stream.close()
        table = rows_to_table(self._rows)
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        _atomic_write_bytes(self.out_dir / f"{self.name}.parquet", buf.getvalue())
        os.replace(self._tmp_tar, self.out_dir / f"{self.name}.tar")
        faults.maybe_fail("after_tar_rename", self.index)
        stats.counts["samples"] = len(self._rows)
        stats.counts["bytes"] = self.bytes_written
        stats_dict = {"shard": self.name, "config_hash": self.config_hash, **stats.to_dict()}
        _atomic_write_bytes(self.out_dir / f"{self.name}.stats.json",
                            json.dumps(stats_dict, indent=1, ensure_ascii=False).encode("utf-8"))
        return stats_dict

    def abort(self) -> None:
        try:
            self._writer.close()
            self._stream.close()
        finally:
            self._tmp_tar.unlink(missing_ok=True)


def rows_to_table(rows: list[dict]):
    """Rows with possibly differing keys -> one Arrow table; mixed-type columns fall back to strings."""
    import pyarrow as pa

    columns: dict[str, list] = {}
    for row in rows:
        for k in row:
            columns.setdefault(k, [])
    data = {k: [r.get(k) for r in rows] for k in columns}
    arrays = {}
    for k, values in data.items():
        try:
            arrays[k] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays[k] = pa.array([None if v is None else json.dumps(v) if not isinstance(v, str) else v
                                  for v in values], type=pa.string())
    if not arrays:
        return pa.table({"key": pa.array([], pa.string())})
    return pa.table(arrays)


# ----------------------------------------------------------------------------------------------- reading

class UnsafeMember(Exception):
    pass


def _check_member(name: str) -> None:
    """Refuse names that would escape an extraction folder or address another drive."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise UnsafeMember(name)


def split_member(name: str) -> tuple[Optional[str], Optional[str]]:
    """``dir/key.ext.gz`` -> (``dir/key``, ``ext.gz``): webdataset's rule, the key ends at the first dot
    of the base name."""
    m = _MEMBER_RE.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


def iter_tar_samples(fileobj, on_unsafe=None, on_skip=None, max_member_bytes: Optional[int] = None) -> Iterator[dict]:
    """Group a tar stream into webdataset samples (bytes, undecoded), reading it once, sequentially.

    Members with absolute paths or ``..`` are refused: reported to ``on_unsafe(name)`` and skipped,
    never extracted or used as keys. Links, folders and names without an extension are skipped; a
    field repeated inside one sample keeps its first copy and the repeat goes to ``on_skip(name, why)``.
    A member larger than ``max_member_bytes`` (from its header) is never read into memory: its field
    is left out, listed under the sample's ``__too_large__``, and reported as ``on_skip(name, "too_large")``.
    A truncated or corrupt tar raises ``tarfile.TarError`` (or ``EOFError``) after the samples that
    could be read; the sample being assembled at that moment is not yielded.
    """

    current: Optional[dict] = None
    tracked = _TailTracker(fileobj)
    with tarfile.open(fileobj=tracked, mode="r|*") as stream:
        for info in stream:
            stream.members = []  # streaming: do not keep every TarInfo of a large tar
            name = info.name
            try:
                _check_member(name)
            except UnsafeMember:
                if on_unsafe is not None:
                    on_unsafe(name)
                continue
            if not info.isreg():
                continue
            base = name.rsplit("/", 1)[-1]
            if base.startswith("__") and base.split(".", 1)[0].endswith("__"):
                continue  # webdataset's metadata members (__index__ etc.)
            key, ext = split_member(name)
            if key is None:
                if on_skip is not None:
                    on_skip(name, "no_extension")
                continue
            ext = ext.lower()
            if ext.startswith("__"):  # would collide with the reader's own fields (__key__, __too_large__)
                if on_skip is not None:
                    on_skip(name, "reserved_field")
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current  # complete: the next member belongs to another sample
                current = {"__key__": key}
            if ext in current or ext in current.get("__too_large__", ()):
                if on_skip is not None:
                    on_skip(name, "repeated_field")
                continue
            if max_member_bytes is not None and info.size > max_member_bytes:
                # the stream skips the unread data; reading it first would let one member exhaust memory
                current.setdefault("__too_large__", []).append(ext)
                if on_skip is not None:
                    on_skip(name, "too_large")
                continue
            f = stream.extractfile(info)
            current[ext] = f.read() if f is not None else b""
    if not tracked.ends_with_zero_block():
        # tarfile ends quietly when a file is cut at or inside a header: say so
        raise tarfile.ReadError("truncated tar: no end-of-archive marker")
    if current is not None:
        yield current


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
        return len(self._tail) >= 512 and not any(self._tail[-512:])


def read_shard(url: str, on_unsafe=None, on_skip=None, max_member_bytes: Optional[int] = None) -> Iterator[dict]:
    """Samples of one shard (local path or fsspec URL), as dicts of raw bytes plus ``__key__``
    (``max_member_bytes``: see ``iter_tar_samples``)."""
    from supirkit.datapipe.sources import open_binary

    with open_binary(url) as f:
        for sample in iter_tar_samples(f, on_unsafe=on_unsafe, on_skip=on_skip, max_member_bytes=max_member_bytes):
            sample["__shard__"] = url
            yield sample


def sample_image(sample: dict) -> tuple[Optional[str], Optional[bytes]]:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    return None, None


def image_too_large(sample: dict) -> bool:
    """True when the sample has no image because its image member was over the reader's size limit."""
    return any(ext in IMAGE_EXTS for ext in sample.get("__too_large__", ()))


def sample_meta(sample: dict) -> dict:
    raw = sample.get("json")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}


def list_shards(spec: str | Path | Iterable[str]) -> list[str]:
    """A folder, a brace pattern, a glob, a single tar, or a list of these -> sorted shard URLs.

    In a folder written by supirkit (it has ``_job.json``) only completed shards (with their stats
    JSON) are returned; folders written by other tools (img2dataset) list every ``.tar``.
    """
    import glob as _glob

    from supirkit.datapipe.sources import expand_braces, has_braces, is_url, strip_file_scheme

    if not isinstance(spec, (str, Path)):
        out: list[str] = []
        for s in spec:
            out.extend(list_shards(s))
        return out
    spec = strip_file_scheme(str(spec))
    if is_url(spec):
        import fsspec

        fs, root = fsspec.core.url_to_fs(spec)
        proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        if has_braces(spec):
            return expand_braces(spec)
        if root.endswith(".tar"):
            return [spec]
        names = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".tar"))
        return [f"{proto}://{p}" for p in names]
    if has_braces(spec) and not os.path.lexists(spec):
        return expand_braces(spec)
    if _glob.has_magic(spec):
        return sorted(_glob.glob(spec))
    p = Path(spec)
    if p.is_dir():
        tars = sorted(x for x in p.glob("*.tar") if not x.name.startswith("."))
        if (p / "_job.json").exists():  # written by supirkit: only completed shards count
            return [str(t) for t in tars if t.with_name(t.name[:-4] + ".stats.json").exists()]
        return [str(t) for t in tars]
    if p.is_file():
        return [str(p)]
    raise FileNotFoundError(f"{spec}: no shard, folder or pattern found")


def shard_index_path(tar_url: str) -> str:
    return tar_url[:-4] + ".parquet" if tar_url.endswith(".tar") else tar_url + ".parquet"


class TableSink:
    """Like ``ShardSink`` for stages whose unit output is a table (e.g. per-partition scores):
    ``{prefix}-NNNNNN.parquet`` then ``{prefix}-NNNNNN.stats.json`` (the done marker)."""

    def __init__(self, out_dir: str | Path, prefix: str, index: int, config_hash: str = "") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(prefix, index)
        self.index, self.config_hash = index, config_hash
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def commit(self, stats: ShardStats) -> dict:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(rows_to_table(self.rows), buf, compression="zstd")
        _atomic_write_bytes(self.out_dir / f"{self.name}.parquet", buf.getvalue())
        stats.counts["rows"] = len(self.rows)
        stats_dict = {"shard": self.name, "config_hash": self.config_hash, **stats.to_dict()}
        _atomic_write_bytes(self.out_dir / f"{self.name}.stats.json",
                            json.dumps(stats_dict, indent=1, ensure_ascii=False).encode("utf-8"))
        return stats_dict

    def abort(self) -> None:
        self.rows.clear()

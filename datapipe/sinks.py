"""Where a unit of work writes: a shard (tar + index + stats) or a table part (parquet + stats).

Both kinds follow one protocol, ``Sink``: ``write(item)`` any number of times, then ``commit(stats)``, or
``abort()``. Nothing appears under a final name before ``commit``; the stats marker is written last, so
a unit is done exactly when its marker exists (a crash in between leaves a unit that the next run redoes).
The runner never builds sinks itself: a job hands it a ``UnitOutput`` (``ShardOutput`` or ``TableOutput``)
that knows where unit ``i`` goes and whether it is done.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Protocol, TypeVar

from supirkit.datapipe import faults
from supirkit.datapipe.files import atomic_write, atomic_write_json, temporary_name
from supirkit.datapipe.progress import report
from supirkit.datapipe.shard_format import ShardSetLayout, check_key, shard_name
from supirkit.datapipe.stats import UnitStats
from supirkit.datapipe.tario import TarWriter

Item = TypeVar("Item", contravariant=True)


class Sink(Protocol[Item]):
    name: str

    def write(self, item: Item) -> None: ...

    def __len__(self) -> int: ...

    def commit(self, stats: UnitStats) -> dict: ...

    def abort(self) -> None: ...


class UnitOutput(Protocol):
    """Where the units of one pass go: ``open(i)`` gives unit ``i``'s sink, ``marker(i)`` its done marker."""

    prefix: str

    def open(self, index: int, config_hash: str) -> Sink: ...

    def marker(self, index: int) -> Path: ...


def _stats_record(name: str, config_hash: str, stats: UnitStats) -> dict:
    return {"shard": name, "config_hash": config_hash, **stats.to_dict()}


def rows_to_table(rows: list[dict]):
    """Rows with possibly differing keys -> one Arrow table with real types: nested dicts become structs,
    lists become list columns. A column whose values disagree in type is kept as JSON text, the one
    fallback (metadata carried from a foreign shard set may mix types)."""
    import pyarrow as pa

    columns: dict[str, list] = {}
    for row in rows:
        for k in row:
            columns.setdefault(k, [])
    arrays = {}
    for k in columns:
        values = [_no_empty_structs(r.get(k)) for r in rows]
        try:
            arrays[k] = pa.array(values)
            if arrays[k].type == pa.list_(pa.null()):
                # only empty lists here (a shard without duplicates): typed as lists of strings, so that one
                # dataset over every shard's index does not take a list of nulls as the column's type
                arrays[k] = arrays[k].cast(pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays[k] = pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                                  for v in values], type=pa.string())
    if not arrays:
        return pa.table({"key": pa.array([], pa.string())})
    return pa.table({k: _without_null_type(a) for k, a in arrays.items()})


def _concrete(t):
    """A type with every ``null`` (a column empty in this part: all missing, or only empty lists) made a
    string, so that the parts of one table agree and a reader of the folder can combine them."""
    import pyarrow as pa

    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_list(t):
        return pa.list_(_concrete(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _concrete(f.type)) for f in t])
    return t


def _without_null_type(array):
    target = _concrete(array.type)
    return array if target == array.type else array.cast(target)


def _no_empty_structs(value: Any) -> Any:
    """Parquet cannot store a struct without fields: an empty dict is stored as null."""
    if isinstance(value, dict):
        return {k: _no_empty_structs(v) for k, v in value.items()} or None
    return value


class ShardSink:
    """Writes one shard of a ``ShardSetLayout`` atomically: ``write(sample)`` n times, then ``commit(stats)``.

    A sample is a dict ``{"__key__": key, "jpg": bytes, "json": dict, "txt": str, ...}``; image bytes are
    written unchanged. An optional ``"__index__": dict`` adds columns to the parquet index only (values
    JSON cannot hold, such as the exact bytes of a file name). The index row holds the key, the sample's
    byte count, ``width``/``height``, ``has_caption``, the member offsets (``members``: random access
    without a scan) and the metadata fields as columns of their own types.
    """

    def __init__(self, root: str | Path, prefix: str, index: int, config_hash: str = "") -> None:
        self.layout = ShardSetLayout(root)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(prefix, index)
        self.prefix, self.index, self.config_hash = prefix, index, config_hash
        self._final_tar = self.layout.tar(prefix, index)
        self._tmp_tar = temporary_name(self._final_tar)
        self._stream = open(self._tmp_tar, "wb")
        self._writer = TarWriter(self._stream)
        self._rows: list[dict] = []
        self._keys: set[str] = set()
        self.bytes_written = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        check_key(key)
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
        members = self._writer.write(encoded)
        self.bytes_written += size
        row = {"key": key, "bytes": size}
        row.update(meta)
        row["key"] = key
        row.setdefault("width", meta.get("width", meta.get("orig_width")))
        row.setdefault("height", meta.get("height", meta.get("orig_height")))
        row["has_caption"] = "txt" in encoded
        row["members"] = members
        row.update(sample.get("__index__") or {})  # index-only columns (e.g. exact source bytes)
        self._rows.append(row)
        report(samples=1)

    def __len__(self) -> int:
        return len(self._rows)

    def commit(self, stats: UnitStats) -> dict:
        """Finish the tar, write the index, rename the tar into place, then write the stats (done marker)."""
        import pyarrow.parquet as pq

        self._writer.close()
        self._stream.flush()
        os.fsync(self._stream.fileno())  # the tar's bytes are on disk before its name says "complete"
        self._stream.close()
        buf = io.BytesIO()
        pq.write_table(rows_to_table(self._rows), buf, compression="zstd")
        self.layout.index_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.layout.index(self.prefix, self.index), buf.getvalue())
        os.replace(self._tmp_tar, self._final_tar)
        faults.maybe_fail("after_tar_rename", self.index)
        stats.counts["samples"] = len(self._rows)
        stats.counts["bytes"] = self.bytes_written
        record = _stats_record(self.name, self.config_hash, stats)
        self.layout.stats_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.layout.stats(self.prefix, self.index), record)
        return record

    def abort(self) -> None:
        try:
            self._writer.close()
            self._stream.close()
        except Exception:  # the stream may be broken already; the temporary file goes anyway
            pass
        finally:
            self._tmp_tar.unlink(missing_ok=True)


#: where a table output keeps its done markers: a subfolder whose name pyarrow and pandas skip, so that the
#: table folder reads as one dataset (``pyarrow.dataset(folder)``, ``pandas.read_parquet(folder)``)
TABLE_MARKERS = "_stats"


class TableSink:
    """A unit whose output is a table part: ``{prefix}-NNNNNN.parquet``, then its done marker
    ``_stats/{prefix}-NNNNNN.stats.json``."""

    def __init__(self, folder: str | Path, prefix: str, index: int, config_hash: str = "") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(prefix, index)
        self.index, self.config_hash = index, config_hash
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(row)
        report(samples=1)

    def __len__(self) -> int:
        return len(self.rows)

    def commit(self, stats: UnitStats) -> dict:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(rows_to_table(self.rows), buf, compression="zstd")
        atomic_write(self.folder / f"{self.name}.parquet", buf.getvalue())
        stats.counts["rows"] = len(self.rows)
        record = _stats_record(self.name, self.config_hash, stats)
        markers = self.folder / TABLE_MARKERS
        markers.mkdir(exist_ok=True)
        atomic_write_json(markers / f"{self.name}.stats.json", record)
        return record

    def abort(self) -> None:
        self.rows.clear()


class ShardOutput:
    """Units are shards of the shard set at ``root``."""

    def __init__(self, root: str | Path, prefix: str) -> None:
        self.layout = ShardSetLayout(root)
        self.prefix = prefix

    def open(self, index: int, config_hash: str) -> ShardSink:
        return ShardSink(self.layout.root, self.prefix, index, config_hash)

    def marker(self, index: int) -> Path:
        return self.layout.stats(self.prefix, index)

    @property
    def folders(self) -> list[Path]:
        """Where this output's writers put temporary files."""
        return [self.layout.root, self.layout.index_dir, self.layout.stats_dir]


class TableOutput:
    """Units are table parts in ``folder``."""

    def __init__(self, folder: str | Path, prefix: str) -> None:
        self.folder = Path(folder)
        self.prefix = prefix

    def open(self, index: int, config_hash: str) -> TableSink:
        return TableSink(self.folder, self.prefix, index, config_hash)

    def marker(self, index: int) -> Path:
        return self.folder / TABLE_MARKERS / f"{shard_name(self.prefix, index)}.stats.json"

    def part(self, index: int) -> Path:
        return self.folder / f"{shard_name(self.prefix, index)}.parquet"

    @property
    def folders(self) -> list[Path]:
        return [self.folder, self.folder / TABLE_MARKERS]


__all__ = ["TABLE_MARKERS", "Sink", "UnitOutput", "ShardSink", "TableSink", "ShardOutput", "TableOutput",
           "rows_to_table"]

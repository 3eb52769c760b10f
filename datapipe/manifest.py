"""Manifests: the parquet indexes of a shard set, and scores tables, read as one table.

"Score once, select later": a scores table holds a row per input with its source; selecting rows by
a condition gives a new listing, and the sources are re-read without recomputing any score.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from supirkit.datapipe.conditions import Condition, ConditionError, check_columns
from supirkit.datapipe.keys import source_from_display
from supirkit.datapipe.shard_format import ShardSetLayout
from supirkit.datapipe.sources import FILE, TAR, InputRef


def manifest_folder(path: str | Path) -> Path:
    """The table a path names: a parquet file or a folder of parts as given; a supirkit output folder
    means its scores table (``curate``), its caption tables (a caption set: a row per captioned sample,
    whose ``source`` is the sample in its input shard), else its shard index."""
    p = Path(path)
    layout = ShardSetLayout(p)
    if p.is_dir() and layout.is_supirkit_output():
        for folder in (layout.scores_dir, layout.captions_dir):
            if folder.is_dir():
                return folder
        return layout.index_dir
    return p


def manifest_files(path: str | Path) -> list[str]:
    p = manifest_folder(path)
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.parquet") if not x.name.startswith("."))
    if p.is_file():
        return [str(p)]
    raise FileNotFoundError(f"{path}: no parquet file or folder")


def open_manifest(path: str | Path):
    """A pyarrow dataset over one parquet file or a folder of them (schemas unified)."""
    import pyarrow.dataset as pads

    files = manifest_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: folder holds no parquet files")
    try:
        return pads.dataset(files, format="parquet")
    except Exception:
        # parts written by different stages may disagree on a column's type: unify by promotion
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas = [pq.read_schema(f) for f in files]
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        return pads.dataset(files, format="parquet", schema=schema)


def select(path: str | Path, where: str | None, columns: list[str] | None = None):
    """Rows of a manifest satisfying ``where`` (the condition language), as an Arrow table."""
    ds = open_manifest(path)
    flt = None
    if where:
        cond = Condition(where)
        check_columns(cond, ds.schema, str(path))
        flt = cond.to_arrow(ds.schema)
    return ds.to_table(columns=columns, filter=flt)


def manifest_inputs(path: str | Path, where: str | None, batch_rows: int = 65536) -> Iterator[InputRef]:
    """Listing from a scores/index table: per row the exact ``source_uri`` (bytes) when present, else
    ``source`` (its ``\\xNN`` escapes undone when the escaped name does not exist).

    Files in name order; rows in ``order`` inside a file when it has that column, else in file order.
    Streamed batch by batch, so a 20M-row manifest never sits in memory whole; only a file whose rows are
    out of ``order`` (not one supirkit wrote) is read whole to be sorted."""
    files = manifest_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: folder holds no parquet files")
    ds = open_manifest(path)
    names = ds.schema.names
    if "source_uri" not in names and "source" not in names:
        raise ConditionError(f"{path}: a manifest needs a 'source' column to re-read its inputs")
    flt, cond_cols = None, set()
    if where:
        cond = Condition(where)
        check_columns(cond, ds.schema, str(path))
        flt = cond.to_arrow(ds.schema)
        cond_cols = {c if c in names else c.split(".", 1)[0] for c in cond.columns}
    cols = [c for c in ("source_uri", "source", "order") if c in names]
    needed = cols + sorted(cond_cols - set(cols))
    for f in files:
        for part in _file_batches(f, ds.schema, needed, flt, batch_rows, sort_by="order" if "order" in cols else None):
            exact = part.column("source_uri").to_pylist() if "source_uri" in cols else [None] * part.num_rows
            shown = part.column("source").to_pylist() if "source" in cols else [None] * part.num_rows
            for uri, display in zip(exact, shown):
                if uri is not None:
                    uri = os.fsdecode(uri) if isinstance(uri, bytes) else str(uri)
                elif display is not None:
                    uri = _reopenable(str(display))
                else:
                    continue
                yield InputRef(uri, TAR if uri.lower().endswith(".tar") else FILE)


def _file_batches(f: str, schema, needed: list[str], flt, batch_rows: int, sort_by: str | None):
    """Filtered tables of ``needed`` columns from one parquet file, ``batch_rows`` rows read at a time.
    A column the file lacks reads as null (as in the unified dataset). Rows come in ``sort_by`` order:
    a file already in that order is streamed, any other is read whole and sorted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    have = [c for c in needed if c in pf.schema_arrow.names]

    def batches(columns):
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            t = pa.Table.from_batches([batch])
            for c in needed:
                if c not in t.column_names:
                    t = t.append_column(schema.field(c), pa.nulls(t.num_rows, schema.field(c).type))
            yield t

    if sort_by is not None and sort_by in have and not _is_sorted(batches([sort_by]), sort_by):
        whole = pa.concat_tables(batches(have)).sort_by(sort_by)
        yield whole.filter(flt) if flt is not None else whole
        return
    for t in batches(have):
        yield t.filter(flt) if flt is not None else t


def _is_sorted(tables, column: str) -> bool:
    import pyarrow.compute as pc

    last = None
    for t in tables:
        values = t.column(column)
        if t.num_rows == 0:
            continue
        if values.null_count or (t.num_rows > 1 and not pc.all(pc.greater_equal(values[1:], values[:-1])).as_py()):
            return False
        first = values[0].as_py()
        if last is not None and first < last:
            return False
        last = values[-1].as_py()
    return True


def _reopenable(display: str) -> str:
    if "\\x" in display and "://" not in display and not os.path.lexists(display):
        return source_from_display(display)
    return display

"""Manifests: the parquet indexes of a shard set, and scores tables, read as one table.

"Score once, select later": a scores table holds a row per input with its source; selecting rows by
a condition gives a new listing, and the sources are re-read without recomputing any score.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from datapipe.conditions import Condition, ConditionError
from datapipe.sources import FILE, TAR, InputRef


def manifest_files(path: str | Path) -> list[str]:
    p = Path(path)
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
        missing = sorted(c for c in cond.columns if c not in ds.schema.names)
        if missing:
            raise ConditionError(f"unknown column(s) {', '.join(missing)} in {path}; "
                                 f"available: {', '.join(ds.schema.names)}")
        flt = cond.to_arrow()
    return ds.to_table(columns=columns, filter=flt)


def manifest_inputs(path: str | Path, where: str | None) -> Iterator[InputRef]:
    """Listing from a scores/index table: the exact ``source_uri`` column if present, else ``source``.
    Rows come in the table's order sorted by ``order`` when that column exists (deterministic)."""
    ds = open_manifest(path)
    names = ds.schema.names
    col = "source_uri" if "source_uri" in names else "source" if "source" in names else None
    if col is None:
        raise ConditionError(f"{path}: a manifest needs a 'source' column to re-read its inputs")
    cols = [col] + (["order"] if "order" in names else [])
    t = select(path, where, columns=cols)
    if "order" in names:
        t = t.sort_by("order")
    for v in t.column(col).to_pylist():
        if v is None:
            continue
        uri = os.fsdecode(v) if isinstance(v, bytes) else str(v)
        yield InputRef(uri, TAR if uri.lower().endswith(".tar") else FILE)

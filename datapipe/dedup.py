"""Global exact-duplicate grouping over per-partition tables, in bounded memory.

Pass 1 of a stage writes, per partition, a table with at least ``key`` (content hash), ``order``
(position in the listing) and ``source``. Duplicates can sit in different partitions, so grouping is
global. It is a two-step external hash grouping: one read of the tables spills rows into buckets by
key (in bounded batches), then each bucket (1/N of the rows) is grouped in memory. Every input is
read once and written once, whatever the dataset size.

The output holds rows only for inputs that have duplicates, sorted by partition in one parquet file,
so that ``duplicates_for_partition`` reads only the row groups of its partition. The first copy in
listing order is the primary; the others point to it. A group's list of other sources is capped
(``MAX_LISTED``): an image copied 100,000 times (a placeholder picture) must not cost 10^10 strings.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from supirkit.datapipe.files import atomic_write, atomic_write_parquet

DUP_FILE = "dups-all.parquet"
ROWS_PER_BUCKET = 250_000  # rows grouped in memory at once (~50 MB)
SPILL_ROWS = 500_000  # rows buffered before the buckets are appended to
MAX_LISTED = 16  # other sources listed per row; ``copies`` always holds the full group size


def _bucket_of(keys, n_buckets: int):
    """Bucket index per key (keys are uniform hashes; any other string is hashed by Python's crc)."""
    import zlib

    if n_buckets == 1:
        return [0] * len(keys)
    out = []
    for k in keys.to_pylist():
        try:
            out.append(int(k[:6], 16) % n_buckets)
        except ValueError:
            out.append(zlib.crc32(k.encode("utf-8", "surrogateescape")) % n_buckets)
    return out


def _spill(files: list[str], cols: list[str], tmp: Path, n_buckets: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [tmp / f"bucket-{b:05d}.parquet" for b in range(n_buckets)]
    writers: dict[int, pq.ParquetWriter] = {}
    buffered: dict[int, list] = {}
    n_buffered = 0

    def flush() -> None:
        nonlocal n_buffered
        for b, tables in buffered.items():
            t = pa.concat_tables(tables)
            if b not in writers:
                writers[b] = pq.ParquetWriter(paths[b], t.schema)
            writers[b].write_table(t.cast(writers[b].schema))
        buffered.clear()
        n_buffered = 0

    schema = None
    for f in files:
        if pq.ParquetFile(f).metadata.num_rows == 0:
            continue  # an empty part may lack the columns (nothing was accepted in it)
        t = pq.read_table(f, columns=cols)
        if schema is None:
            schema = t.schema
        t = t.cast(schema)
        t = t.filter(t["key"].is_valid())
        if n_buckets == 1:
            buffered.setdefault(0, []).append(t)
        else:
            import pyarrow.compute as pc

            buckets = pa.array(_bucket_of(t["key"], n_buckets), pa.int32())
            for b in pc.unique(buckets).to_pylist():
                buffered.setdefault(b, []).append(t.filter(pc.equal(buckets, b)))
        n_buffered += t.num_rows
        if n_buffered >= SPILL_ROWS:
            flush()
    flush()
    for w in writers.values():
        w.close()
    return [p for p in paths if p.exists()]


def _group_bucket(path: Path):
    """Rows of one bucket that belong to a group of two or more, with their group's facts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path).sort_by([("key", "ascending"), ("order", "ascending")])
    d = t.to_pydict()
    n = t.num_rows
    rows: dict[str, list] = {"key": [], "order": [], "partition": [], "primary_order": [], "primary_source": [],
                             "is_primary": [], "duplicates": [], "copies": []}
    n_dups = 0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and d["key"][j + 1] == d["key"][i]:
            j += 1
        if j > i:
            listed = [d["source"][k] for k in range(i, min(j + 1, i + MAX_LISTED + 1))]
            for k in range(i, j + 1):
                rows["key"].append(d["key"][k])
                rows["order"].append(d["order"][k])
                rows["partition"].append(d["partition"][k])
                rows["primary_order"].append(d["order"][i])
                rows["primary_source"].append(d["source"][i])
                rows["is_primary"].append(k == i)
                rows["duplicates"].append([s for s in listed if s != d["source"][k]][:MAX_LISTED])
                rows["copies"].append(j - i + 1)
            n_dups += j - i
        i = j + 1
    schema = pa.schema([("key", pa.string()), ("order", pa.int64()), ("partition", pa.int64()),
                        ("primary_order", pa.int64()), ("primary_source", pa.string()), ("is_primary", pa.bool_()),
                        ("duplicates", pa.list_(pa.string())), ("copies", pa.int64())])
    return pa.table(rows, schema=schema), n_dups


def group_exact_duplicates(parts_dir: str | Path, dedup_dir: str | Path, runner=None) -> int:
    """Write ``dedup_dir/dups-all.parquet``; returns the number of inputs that are duplicates.

    Done once: a ``_DONE`` marker makes a rerun (resume) skip it; an interrupted run is redone whole. The
    buckets are grouped here, or as Ray tasks with a ``runner`` whose executor is ray (``map_tasks``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from supirkit.datapipe.executors import map_tasks

    out = Path(dedup_dir)
    marker = out / "_DONE"
    if marker.exists():
        try:
            return int(marker.read_text())
        except (OSError, ValueError):  # damaged from outside (written atomically): group again
            pass
    if out.exists():
        shutil.rmtree(out)  # a killed earlier attempt
    out.mkdir(parents=True)
    files = sorted(str(p) for p in Path(parts_dir).glob("*.parquet") if not p.name.startswith("."))
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    n_dups = 0
    groups = []
    if n_rows > 1:
        cols = ["key", "order", "source", "partition"]
        n_buckets = max(1, math.ceil(n_rows / ROWS_PER_BUCKET))
        tmp = out / ".spill"
        tmp.mkdir()
        for table, n in map_tasks(_group_bucket, _spill(files, cols, tmp, n_buckets), runner):
            if table.num_rows:
                groups.append(table)
            n_dups += n
        shutil.rmtree(tmp)
    if groups:
        table = pa.concat_tables(groups).sort_by([("partition", "ascending"), ("order", "ascending")])
        atomic_write_parquet(out / DUP_FILE, table, row_group_size=65536)
    atomic_write(marker, str(n_dups))
    return n_dups


def duplicates_for_partition(dedup_dir: str | Path, partition: int) -> dict[int, dict]:
    """order -> {is_primary, primary_source, duplicates, copies} for the inputs of one partition that
    have duplicates (row groups of other partitions are skipped by their statistics)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    d = Path(dedup_dir)
    files = sorted(str(p) for p in d.glob("dups-*.parquet"))
    if not files:
        return {}
    t = pads.dataset(files, format="parquet").to_table(filter=pc.field("partition") == partition)
    return {int(row["order"]): row for row in t.to_pylist()}

"""Global exact-duplicate grouping over per-partition tables, in bounded memory.

Pass 1 of a stage writes, per partition, a table with at least ``key`` (content hash), ``order``
(position in the listing) and ``source``. Duplicates can sit in different partitions, so grouping is
global; it runs bucket by bucket (the first hex digits of the key), so memory holds 1/256 of the
rows at a time. The output holds rows only for inputs that have duplicates: the first in listing
order is the primary, the others point to it.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

DUP_DIR = "_dedup"
BUCKET_HEX = 2  # 256 buckets


def group_exact_duplicates(parts_dir: str | Path, out_dir: str | Path) -> int:
    """Write ``out_dir/_dedup/dups-XX.parquet``; returns the number of inputs that are duplicates."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    out = Path(out_dir) / DUP_DIR
    marker = out / "_DONE"
    if marker.exists():
        return int(marker.read_text() or 0)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p) for p in Path(parts_dir).glob("*.parquet") if not p.name.startswith("."))
    n_dups = 0
    if files:
        ds = pads.dataset(files, format="parquet")
        cols = [c for c in ("key", "order", "source", "partition") if c in ds.schema.names]
        for b in range(16 ** BUCKET_HEX):
            prefix = format(b, f"0{BUCKET_HEX}x")
            t = ds.to_table(columns=cols, filter=pc.starts_with(pc.field("key"), pattern=prefix))
            t = t.filter(pc.invert(pc.is_null(t["key"])))
            if t.num_rows < 2:
                continue
            t = t.sort_by([("key", "ascending"), ("order", "ascending")])
            d = t.to_pydict()
            rows = {"key": [], "order": [], "partition": [], "primary_order": [], "primary_source": [],
                    "is_primary": [], "duplicates": []}
            i = 0
            n = t.num_rows
            while i < n:
                j = i
                while j + 1 < n and d["key"][j + 1] == d["key"][i]:
                    j += 1
                if j > i:
                    group_sources = [d["source"][k] for k in range(i, j + 1)]
                    for k in range(i, j + 1):
                        rows["key"].append(d["key"][k])
                        rows["order"].append(d["order"][k])
                        rows["partition"].append(d["partition"][k])
                        rows["primary_order"].append(d["order"][i])
                        rows["primary_source"].append(d["source"][i])
                        rows["is_primary"].append(k == i)
                        rows["duplicates"].append([s for s in group_sources if s != d["source"][k]])
                    n_dups += j - i
                i = j + 1
            if rows["key"]:
                tmp = out / f".tmp-{uuid.uuid4().hex[:6]}.parquet"
                pq.write_table(pa.table(rows), tmp)
                os.replace(tmp, out / f"dups-{prefix}.parquet")
    marker.write_text(str(n_dups))
    return n_dups


def duplicates_for_partition(out_dir: str | Path, partition: int) -> dict[int, dict]:
    """order -> {is_primary, primary_source, duplicates} for the inputs of one partition that have duplicates."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    d = Path(out_dir) / DUP_DIR
    files = sorted(str(p) for p in d.glob("dups-*.parquet"))
    if not files:
        return {}
    t = pads.dataset(files, format="parquet").to_table(filter=pc.field("partition") == partition)
    out = {}
    for row in t.to_pylist():
        out[int(row["order"])] = row
    return out

"""Row counts of many shards from one table, instead of one parquet footer per shard.

A sampler that draws rows uniformly over a shard set needs every shard's row count before its first draw.
At 25,000 shards that is 25,000 footers to open (each a small random read, slow on NFS or object storage),
in every process that builds a sampler. A supirkit shard set therefore keeps them in one table,
``__supirkit__/shards.parquet`` (``shard``: the tar's file name, ``rows``: the rows of its index), written
at the end of every job that writes shards (``runner.write_job_summary``) and removed as soon as a pass
starts changing the set's shards, so it never describes shards that have changed since. Readers take the
counts the table has and read the footers of the shards it does not list (a job still running, a set
written by another tool), in parallel. Local paths and fsspec URLs alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from supirkit.datapipe.files import atomic_write_parquet
from supirkit.datapipe.shard_format import META_DIR, SHARD_TABLE_FILE, ShardSetLayout
from supirkit.datapipe.sources import open_binary
from supirkit.datapipe.tario import exists, find_index, image_keys, list_shards, scan_members

#: threads reading footers: the reads are small and wait on storage, not on the CPU
FOOTER_THREADS = 16


def parquet_rows(url: str) -> int:
    """The row count of a parquet file from its footer (nothing else is read)."""
    import pyarrow.parquet as pq

    with open_binary(url) as f:
        return pq.ParquetFile(f).metadata.num_rows


def index_rows(tar_url: str) -> int:
    """Rows of one shard: its index's footer, or (a shard without an index) its samples that have an image,
    from one scan of the tar's headers."""
    index = find_index(tar_url)
    if index is not None:
        return parquet_rows(index)
    return len(image_keys(scan_members(tar_url)))


def _folder_and_name(url: str) -> tuple[str, str]:
    head, _, name = url.rpartition("/")
    if not head and os.sep != "/":
        head, name = os.path.split(url)
    return head, name


def read_shard_table(folder: str) -> dict[str, int]:
    """``tar name -> rows`` from a shard set's consolidated table; {} when it has none."""
    import pyarrow.parquet as pq

    url = "/".join([folder.rstrip("/"), META_DIR, SHARD_TABLE_FILE])
    if not exists(url):
        return {}
    with open_binary(url) as f:
        t = pq.read_table(f, columns=["shard", "rows"]).to_pydict()
    return dict(zip(t["shard"], t["rows"]))


def count_rows(urls: list[str], threads: int = FOOTER_THREADS, counter: Callable[[str], int] = index_rows):
    """Row count per shard (an int64 array in ``urls`` order): from the consolidated table of each shard's
    folder where it lists the shard, else ``counter(url)`` (the index footer) in a pool of threads."""
    import numpy as np

    counts = np.full(len(urls), -1, dtype=np.int64)
    tables: dict[str, dict[str, int]] = {}
    for i, url in enumerate(urls):
        folder, name = _folder_and_name(url)
        if folder not in tables:
            tables[folder] = read_shard_table(folder)
        rows = tables[folder].get(name)
        if rows is not None:
            counts[i] = rows
    missing = [i for i in range(len(urls)) if counts[i] < 0]
    if missing:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(missing)))) as pool:
            for i, n in zip(missing, pool.map(lambda j: counter(urls[j]), missing)):
                counts[i] = n
    return counts


def write_shard_table(layout: ShardSetLayout, threads: int = FOOTER_THREADS) -> Optional[Path]:
    """Write ``__supirkit__/shards.parquet`` for the completed shards of ``layout`` (None: no shards)."""
    import pyarrow as pa

    if not layout.index_dir.is_dir():
        return None
    urls = list_shards(str(layout.root))
    if not urls:
        drop_shard_table(layout)
        return None
    drop_shard_table(layout)  # the footers are read below, never the table being replaced
    rows = count_rows(urls, threads)
    table = pa.table({"shard": [os.path.basename(u) for u in urls], "rows": pa.array(rows, pa.int64())})
    atomic_write_parquet(layout.shard_table, table)
    return layout.shard_table


def drop_shard_table(layout: ShardSetLayout) -> None:
    """Forget the consolidated counts (a pass is about to change shards): readers read footers until the
    job that changes them writes a new table."""
    Path(layout.shard_table).unlink(missing_ok=True)


def total_rows(urls: Iterable[str]) -> int:
    return int(count_rows(list(urls)).sum())


__all__ = ["parquet_rows", "index_rows", "read_shard_table", "count_rows", "write_shard_table", "drop_shard_table",
           "total_rows", "FOOTER_THREADS"]

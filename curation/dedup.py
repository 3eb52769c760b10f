"""Global duplicate grouping: exact (content hash), near (perceptual hash), semantic (CLIP embeddings).

Grouping runs once over the whole scored set, between scoring and writing. Every kind of match is an
edge between two inputs; groups are the connected components. Which member of a group is kept is
decided later, at selection (the best-scoring member that passes the rules), so new thresholds
re-select without regrouping.

Exact matches come from datapipe's bounded-memory grouping of content hashes (the same function
``supirkit shard`` uses). Near matches: every pair of perceptual hashes within ``k`` bits, by sorting
(``curation.near``: exact, n log n per table). Semantic matching fits k-means centroids on a sample,
spills embeddings to bucket files by centroid, then compares pairs only inside a cluster (torch matmul),
so memory holds one bucket at a time.

Scale: the driver holds two 64-bit columns per scored input (the listing order, the perceptual hash: 20M
inputs, 320 MB), the edges, one near table's sort at a time and the k-means sample (at most
``semantic.sample_size`` embeddings); measured whole: 4.1 GB peak at 20M rows with 2M embeddings
(benchmarks/README.md "scale"). The per-bucket work (exact groups of a bucket, near pairs of a table,
semantic pairs of a bucket) runs here or, with ``runner.executor=ray``, as Ray tasks over the spilled
buckets (``datapipe.executors.map_tasks``), and the driver only joins the components.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from supirkit.datapipe.files import atomic_write_json, atomic_write_parquet, read_json_or_none

GROUPS_FILE = "groups.parquet"


def rows_of(orders: np.ndarray, wanted) -> np.ndarray:
    """Row index (position in the sorted ``orders``) of each order in ``wanted``; -1 where it is not there."""
    wanted = np.asarray(wanted, np.int64)
    pos = np.searchsorted(orders, wanted)
    pos = np.minimum(pos, max(len(orders) - 1, 0))
    hit = (orders[pos] == wanted) if len(orders) else np.zeros(len(wanted), bool)
    return np.where(hit, pos, -1)


def _pairs_of_orders(orders: np.ndarray, a, b) -> np.ndarray:
    ra, rb = rows_of(orders, a), rows_of(orders, b)
    keep = (ra >= 0) & (rb >= 0)
    return np.stack([ra[keep], rb[keep]], axis=1).astype(np.int64)


def exact_edges(signals_dir: Path, work: Path, orders: np.ndarray, runner=None) -> np.ndarray:
    """Pairs (copy, first copy) of inputs with identical bytes, as row indexes."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from supirkit.datapipe.dedup import DUP_FILE, group_exact_duplicates

    group_exact_duplicates(signals_dir, work, runner)
    if not (work / DUP_FILE).is_file():
        return np.zeros((0, 2), np.int64)
    t = pq.read_table(work / DUP_FILE, columns=["order", "primary_order", "is_primary"])
    t = t.filter(pc.invert(t["is_primary"]))
    return _pairs_of_orders(orders, t["order"].to_numpy(), t["primary_order"].to_numpy())


_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def phash_values(hexes) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hashes (16 hex digits, imagehash's format; an Arrow string array or a list) as unsigned
    64-bit integers, with a mask of the valid ones (missing or malformed: False), without a Python loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = hexes if isinstance(hexes, (pa.Array, pa.ChunkedArray)) else pa.array(list(hexes), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    sixteen = pc.fill_null(pc.equal(pc.utf8_length(arr), 16), False)
    fixed = pc.if_else(sixteen, arr, "0" * 16).cast(pa.binary(16))
    raw = np.frombuffer(fixed.buffers()[1], np.uint8)[fixed.offset * 16:(fixed.offset + len(fixed)) * 16]
    digits = _HEX[raw].reshape(-1, 16)
    valid = sixteen.to_numpy(zero_copy_only=False) & (digits != 255).all(axis=1)
    weights = np.uint64(1) << (np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64))
    values = (digits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return np.where(valid, values, np.uint64(0)), valid


def _kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Spherical k-means (cosine) on L2-normalised rows; returns unit centroids."""
    import torch

    rng = np.random.default_rng(seed)
    data = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    cent = data[torch.from_numpy(rng.choice(len(x), size=k, replace=False))].clone()
    for _ in range(iterations):
        assign = (data @ cent.T).argmax(dim=1)
        new = torch.zeros_like(cent).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        new[empty] = cent[empty]  # an empty cluster keeps its centroid
        cent = torch.nn.functional.normalize(new, dim=1)
    return cent.numpy()


def _embedding_batches(parts: list[Path]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(orders, L2-normalised embeddings) of every part that has them, one part at a time."""
    import pyarrow.parquet as pq

    for p in parts:
        if "clip_embedding" not in pq.read_schema(p).names:
            continue  # no scored input in this part had an embedding
        t = pq.read_table(p, columns=["order", "clip_embedding"])
        t = t.filter(t["clip_embedding"].is_valid())
        if t.num_rows == 0:
            continue
        emb = np.asarray(t["clip_embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         np.float32).reshape(t.num_rows, -1)
        yield np.asarray(t["order"].to_numpy(), np.int64), emb


def _spill_by_cluster(parts: list[Path], cent: np.ndarray, n_buckets: int, spill: Path,
                      flush_rows: int = 50_000) -> None:
    """Each embedding (as float16) to the bucket file of its nearest centroid (buckets hold whole clusters).
    At most ``flush_rows`` rows wait in memory across all buckets (~75 MB at 768 dimensions), whatever the
    bucket count; each flush appends one row group to every bucket's one file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    buffers: dict[int, list] = {}
    writers: dict[int, pq.ParquetWriter] = {}
    waiting = 0

    def flush() -> None:
        for b, rows in buffers.items():
            o, c, e = (np.concatenate([r[i] for r in rows]) for i in range(3))
            t = pa.table({"order": o, "cluster": c,
                          "emb": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), e.shape[1])})
            if b not in writers:
                writers[b] = pq.ParquetWriter(spill / f"b{b:04d}-{uuid.uuid4().hex[:8]}.parquet", t.schema)
            writers[b].write_table(t)
        buffers.clear()

    for orders, emb in _embedding_batches(parts):
        cl = (torch.from_numpy(emb) @ torch.from_numpy(cent).T).argmax(dim=1).numpy()
        bucket = cl % n_buckets
        for b in (int(x) for x in np.unique(bucket)):
            m = bucket == b
            buffers.setdefault(b, []).append((orders[m], cl[m], emb[m].astype(np.float16)))
        waiting += len(orders)
        if waiting >= flush_rows:
            flush()
            waiting = 0
    flush()
    for w in writers.values():
        w.close()


def sample_embeddings(parts: list[Path], sample_size: int) -> tuple[int, np.ndarray]:
    """``(n, sample)``: the number of embeddings and about ``sample_size`` of them, evenly strided, in one
    read. The stride comes from the parts' row counts (nulls included, so the sample can fall short of
    ``sample_size`` where many rows lack an embedding). Each part's slice is copied: a strided view would
    keep the whole part alive, and with it every embedding read (61 GB at 20M inputs)."""
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    stride = max(1, rows // sample_size)
    n, picked = 0, []
    for _, emb in _embedding_batches(parts):
        n += len(emb)
        picked.append(emb[::stride].copy())
    sample = np.concatenate(picked)[:sample_size] if picked else np.zeros((0, 0), np.float32)
    return n, sample


def bucket_pairs(threshold: float, files: list[Path]) -> np.ndarray:
    """Pairs of orders at cosine similarity >= ``threshold`` inside each cluster of one spilled bucket."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    t = pa.concat_tables([pq.read_table(f) for f in files])
    orders = t["order"].to_numpy()
    clusters = t["cluster"].to_numpy()
    emb = np.asarray(t["emb"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                     np.float32).reshape(t.num_rows, -1)
    edges = []
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        if idx.size < 2:
            continue
        x = torch.from_numpy(emb[idx])
        for s in range(0, idx.size, 4096):  # chunked so a huge cluster stays in memory bounds
            i, j = np.nonzero((x[s:s + 4096] @ x.T).numpy() >= threshold)
            keep = (i + s) < j
            if keep.any():
                edges.append(np.stack([orders[idx[i[keep] + s]], orders[idx[j[keep]]]], axis=1))
    return np.concatenate(edges).astype(np.int64) if edges else np.zeros((0, 2), np.int64)


def semantic_edges(parts: list[Path], orders: np.ndarray, cfg, work: Path, runner=None) -> np.ndarray:
    """Row pairs with cosine similarity >= threshold, via k-means buckets (see the module docstring); the
    buckets are compared here or as Ray tasks."""
    from supirkit.datapipe.executors import map_tasks

    n, sample = sample_embeddings(parts, cfg.sample_size)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    k = min(cfg.n_clusters or max(1, int(np.sqrt(n) / 2)), n)
    cent = _kmeans(sample, min(k, len(sample)), cfg.iterations, cfg.seed)
    spill = work / "semantic"
    spill.mkdir(parents=True, exist_ok=True)
    _spill_by_cluster(parts, cent, cfg.n_buckets, spill)
    buckets = [sorted(spill.glob(f"b{b:04d}-*.parquet")) for b in range(cfg.n_buckets)]
    buckets = [files for files in buckets if files]
    found = [pairs for pairs in map_tasks(bucket_pairs, buckets, runner, shared=(cfg.threshold,)) if len(pairs)]
    shutil.rmtree(spill)
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    return _pairs_of_orders(orders, pairs[:, 0], pairs[:, 1])


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label per node (the smallest node index in the component). Only the nodes that have an
    edge enter the graph: the others are their own component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.arange(n)
    if len(edges) == 0:
        return labels
    nodes, inverse = np.unique(edges.ravel(), return_inverse=True)  # sorted: a component's first node first
    inverse = inverse.reshape(-1, 2)
    m = len(nodes)
    g = coo_matrix((np.ones(len(inverse), np.int8), (inverse[:, 0], inverse[:, 1])), shape=(m, m))
    _, comp = connected_components(g, directed=False)
    first = np.full(comp.max() + 1, m, np.int64)
    np.minimum.at(first, comp, np.arange(m))
    labels[nodes] = nodes[first[comp]]
    return labels


def scored_hashes(signal_parts: list[Path], batch_rows: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(orders, phash, has_phash)`` of the scored inputs, sorted by order, read batch by batch (no Python
    object per input)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if not signal_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, bool)
    ds = pads.dataset([str(p) for p in signal_parts], format="parquet")
    names = ds.schema.names
    if "status" not in names:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, bool)
    cols = ["order"] + (["phash"] if "phash" in names else [])
    orders, hashes, valid = [], [], []
    for batch in ds.to_batches(columns=cols, filter=pc.field("status") == "scored", batch_size=batch_rows):
        orders.append(batch.column("order").to_numpy())
        if "phash" in cols:
            h, v = phash_values(batch.column("phash"))
        else:
            h, v = np.zeros(batch.num_rows, np.uint64), np.zeros(batch.num_rows, bool)
        hashes.append(h)
        valid.append(v)
    if not orders:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, bool)
    o, h, v = np.concatenate(orders).astype(np.int64), np.concatenate(hashes), np.concatenate(valid)
    by_order = np.argsort(o, kind="stable")
    return o[by_order], h[by_order], v[by_order]


def group_duplicates(signal_parts: list[Path], model_parts: list[Path], out_dir: Path, cfg, cfg_hash: str,
                     runner=None) -> dict:
    """Write ``out_dir/groups.parquet`` (order, group) for inputs that have duplicates. ``runner``: where
    the per-bucket work runs (``runner.executor=ray``: Ray tasks), else here."""
    import pyarrow as pa

    marker = out_dir / "_DONE.json"
    done = read_json_or_none(marker)  # missing or damaged: group again
    if isinstance(done, dict) and done.get("hash") == cfg_hash:
        return done
    if out_dir.exists():
        shutil.rmtree(out_dir)  # another dedup config, or an interrupted attempt: group again from scratch
    out_dir.mkdir(parents=True, exist_ok=True)
    order_arr, phash, has_phash = scored_hashes(signal_parts)
    n = len(order_arr)
    kinds: dict[str, int] = {}
    all_edges = []
    if cfg.exact and n and signal_parts:
        e = exact_edges(signal_parts[0].parent, out_dir / "exact", order_arr, runner)
        kinds["exact"] = len(e)
        all_edges.append(e)
    if cfg.near.enabled and n:
        from supirkit.curation.near import near_edges

        idx = np.flatnonzero(has_phash)
        e = near_edges(phash[idx], cfg.near.max_hamming, runner)
        e = idx[e] if len(e) else e
        kinds["near"] = len(e)
        all_edges.append(e)
    del phash, has_phash
    if cfg.semantic.enabled and n and model_parts:
        e = semantic_edges(model_parts, order_arr, cfg.semantic, out_dir, runner)
        kinds["semantic"] = len(e)
        all_edges.append(e)
    edges = np.concatenate(all_edges) if all_edges else np.zeros((0, 2), np.int64)
    labels = components(n, edges) if n else np.zeros(0, np.int64)
    counts = np.bincount(labels, minlength=n) if n else np.zeros(0, np.int64)
    member = counts[labels] > 1 if n else np.zeros(0, bool)
    table = pa.table({"order": order_arr[member], "group": order_arr[labels[member]]})
    atomic_write_parquet(out_dir / GROUPS_FILE, table)
    done = {"hash": cfg_hash, "inputs": n, "in_groups": int(member.sum()),
            "groups": int(len(np.unique(labels[member]))) if n else 0, "edges": kinds}
    atomic_write_json(marker, done)
    return done


def load_groups(out_dir: Path) -> dict[int, int]:
    import pyarrow.parquet as pq

    p = out_dir / GROUPS_FILE
    if not p.is_file():
        return {}
    t = pq.read_table(p).to_pydict()
    return dict(zip(t["order"], t["group"]))

"""Global duplicate grouping: exact (content hash), near (perceptual hash), semantic (CLIP embeddings).

Grouping runs once over the whole scored set, between scoring and writing. Every kind of match is an
edge between two inputs; groups are the connected components. Which member of a group is kept is
decided later, at selection (the best-scoring member that passes the rules), so new thresholds
re-select without regrouping.

Exact matches come from datapipe's bounded-memory grouping of content hashes (the same function
``supirkit shard`` uses). Scale: near matching holds two 64-bit columns per input (20M inputs: a few
hundred MB) and uses sorting, never all pairs: near matches within ``k`` bits share at least one of ``k+1``
bit bands exactly
(pigeonhole), so only inputs equal on a band are compared. Semantic matching fits k-means centroids
on a sample, spills embeddings to bucket files by centroid, then compares pairs only inside a cluster
(torch matmul), so memory holds one bucket at a time.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from supirkit.datapipe.files import atomic_write_json, atomic_write_parquet, read_json_or_none

GROUPS_FILE = "groups.parquet"
MAX_RUN = 2000  # inputs equal on one band beyond this are compared in windows (flat images all hash alike)


def exact_edges(signals_dir: Path, work: Path, index_of: dict[int, int]) -> np.ndarray:
    """Pairs (copy, first copy) of inputs with identical bytes, as row indexes."""
    import pyarrow.parquet as pq

    from supirkit.datapipe.dedup import DUP_FILE, group_exact_duplicates

    group_exact_duplicates(signals_dir, work)
    if not (work / DUP_FILE).is_file():
        return np.zeros((0, 2), np.int64)
    t = pq.read_table(work / DUP_FILE, columns=["order", "primary_order", "is_primary"]).to_pydict()
    pairs = [(index_of[o], index_of[p]) for o, p, first in zip(t["order"], t["primary_order"], t["is_primary"])
             if not first and o in index_of and p in index_of]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def phash_values(hexes: Iterable[str]) -> np.ndarray:
    """Perceptual hashes (16 hex digits, imagehash's format) as unsigned 64-bit integers."""
    return np.array([int(h, 16) for h in hexes], np.uint64)


def near_edges(phash: np.ndarray, max_hamming: int) -> np.ndarray:
    """Pairs whose 64-bit hashes (``uint64``) differ in at most ``max_hamming`` bits."""
    n_bands = max_hamming + 1
    bits = 64 // n_bands
    u = np.asarray(phash, np.uint64)
    edges = []
    for b in range(n_bands):
        width = bits if b < n_bands - 1 else 64 - bits * (n_bands - 1)
        band = (u >> np.uint64(b * bits)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        sb = band[order]
        starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
        ends = np.r_[starts[1:], len(sb)]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            idx = order[s:e]
            for w0 in range(0, len(idx), MAX_RUN):
                win = idx[w0:w0 + 2 * MAX_RUN]
                x = u[win]
                dist = np.bitwise_count(x[:, None] ^ x[None, :])
                i, j = np.nonzero(np.triu(dist <= max_hamming, 1))
                if i.size:
                    edges.append(np.stack([win[i], win[j]], axis=1))
    return np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)


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
        t = pq.read_table(p, columns=["order", "clip_embedding"])
        t = t.filter(t["clip_embedding"].is_valid())
        if t.num_rows == 0:
            continue
        emb = np.asarray(t["clip_embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         np.float32).reshape(t.num_rows, -1)
        yield np.asarray(t["order"].to_numpy(), np.int64), emb


def _spill_by_cluster(parts: list[Path], cent: np.ndarray, n_buckets: int, spill: Path,
                      flush_rows: int = 20_000) -> None:
    """Each embedding to the bucket file of its nearest centroid (buckets hold whole clusters)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    buffers: dict[int, list] = {}
    sizes: dict[int, int] = {}

    def flush(b: int) -> None:
        rows = buffers.pop(b, [])
        if rows:
            o, c, e = (np.concatenate([r[i] for r in rows]) for i in range(3))
            t = pa.table({"order": o, "cluster": c,
                          "emb": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), e.shape[1])})
            pq.write_table(t, spill / f"b{b:04d}-{uuid.uuid4().hex[:8]}.parquet")
        sizes[b] = 0

    for orders, emb in _embedding_batches(parts):
        cl = (torch.from_numpy(emb) @ torch.from_numpy(cent).T).argmax(dim=1).numpy()
        bucket = cl % n_buckets
        for b in (int(x) for x in np.unique(bucket)):
            m = bucket == b
            buffers.setdefault(b, []).append((orders[m], cl[m], emb[m].astype(np.float16)))
            sizes[b] = sizes.get(b, 0) + int(m.sum())
            if sizes[b] >= flush_rows:
                flush(b)
    for b in list(buffers):
        flush(b)


def _bucket_pairs(files: list[Path], threshold: float, index_of: dict[int, int]) -> list[np.ndarray]:
    """Pairs at cosine similarity >= ``threshold`` inside each cluster of one bucket, as row indexes."""
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
                a = [index_of[int(o)] for o in orders[idx[i[keep] + s]]]
                b = [index_of[int(o)] for o in orders[idx[j[keep]]]]
                edges.append(np.stack([np.asarray(a), np.asarray(b)], axis=1))
    return edges


def semantic_edges(parts: list[Path], index_of: dict[int, int], cfg, work: Path) -> np.ndarray:
    """Pairs with cosine similarity >= threshold, via k-means buckets (see the module docstring)."""
    n = sum(len(o) for o, _ in _embedding_batches(parts))
    if n < 2:
        return np.zeros((0, 2), np.int64)
    k = min(cfg.n_clusters or max(1, int(np.sqrt(n) / 2)), n)
    stride = max(1, n // cfg.sample_size)
    sample = np.concatenate([e[::stride] for _, e in _embedding_batches(parts)])[: cfg.sample_size]
    cent = _kmeans(sample, min(k, len(sample)), cfg.iterations, cfg.seed)
    spill = work / "semantic"
    spill.mkdir(parents=True, exist_ok=True)
    _spill_by_cluster(parts, cent, cfg.n_buckets, spill)
    edges = []
    for b in range(cfg.n_buckets):
        files = sorted(spill.glob(f"b{b:04d}-*.parquet"))
        if files:
            edges += _bucket_pairs(files, cfg.threshold, index_of)
            for f in files:
                f.unlink()
    return np.concatenate(edges).astype(np.int64) if edges else np.zeros((0, 2), np.int64)


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label per node (the smallest node index in the component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        return np.arange(n)
    g = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    first = np.full(labels.max() + 1, n, np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def group_duplicates(signal_parts: list[Path], model_parts: list[Path], out_dir: Path, cfg, cfg_hash: str) -> dict:
    """Write ``out_dir/groups.parquet`` (order, group, kinds) for inputs that have duplicates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = out_dir / "_DONE.json"
    done = read_json_or_none(marker)  # missing or damaged: group again
    if isinstance(done, dict) and done.get("hash") == cfg_hash:
        return done
    if out_dir.exists():
        shutil.rmtree(out_dir)  # another dedup config, or an interrupted attempt: group again from scratch
    out_dir.mkdir(parents=True, exist_ok=True)
    orders, hashes = [], []
    for p in signal_parts:
        cols = [c for c in ("order", "phash", "status") if c in pq.read_schema(p).names]
        t = pq.read_table(p, columns=cols).to_pydict()
        for i, st in enumerate(t.get("status", [])):
            if st != "scored":
                continue
            orders.append(t["order"][i])
            hashes.append(t["phash"][i] if "phash" in t and t["phash"][i] is not None else None)
    n = len(orders)
    order_arr = np.asarray(orders, np.int64)
    index_of = {int(o): i for i, o in enumerate(order_arr)}
    kinds: dict[str, int] = {}
    all_edges = []
    if cfg.exact and n and signal_parts:
        e = exact_edges(signal_parts[0].parent, out_dir / "exact", index_of)
        kinds["exact"] = len(e)
        all_edges.append(e)
    if cfg.near.enabled and n:
        have = np.array([h is not None for h in hashes])
        ph = phash_values(h if h is not None else "0" for h in hashes)
        idx = np.flatnonzero(have)
        e = near_edges(ph[idx], cfg.near.max_hamming)
        e = idx[e] if len(e) else e
        kinds["near"] = len(e)
        all_edges.append(e)
    if cfg.semantic.enabled and n and model_parts:
        e = semantic_edges(model_parts, index_of, cfg.semantic, out_dir)
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

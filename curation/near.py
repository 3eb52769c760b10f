"""Near-duplicate perceptual hashes: every pair of 64-bit hashes within ``k`` bits, exactly, in n log n.

Comparing all pairs is n^2/2 (2e14 at 20M inputs); one table per bit band (pigeonhole on k+1 bands) keeps
every pair within k bits but, with bands of 64/(k+1) bits, millions of inputs share each band value. The
hashes are therefore cut into ``b`` blocks, b > k (Manku, Jain and Das Sarma, "Detecting near-duplicates
for web crawling", WWW 2007): two hashes within k bits differ in at most k blocks, so they agree exactly
on at least b-k of them, and on all blocks of at least one of the C(b, k) choices of b-k blocks. One table
per choice: its key is the concatenation of the chosen blocks, equal keys are candidates, a popcount keeps
those within k bits. ``b`` grows with n so that a key has at least log2(n) + 2 bits (random candidates: n/8 per table);
more blocks mean more tables, each a sort of n keys. The tables are independent: ``near_edges`` runs them
here or as Ray tasks (``datapipe.executors.map_tasks``), each reading the one hash array without a copy.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

#: runs of equal keys up to this length are paired by vectorized offsets; longer runs (flat images all
#: hash alike) are compared in windows of this many
SMALL_RUN = 64
MAX_RUN = 2000


def block_plan(n: int, k: int) -> tuple[list[tuple[int, int]], list[tuple[int, ...]]]:
    """``(blocks, tables)``: bit ranges [lo, hi) of the b blocks and, per table, the blocks of its key."""
    if k <= 0:
        return [(0, 64)], [(0,)]
    want = math.log2(max(n, 2)) + 2
    b = k + 1
    while b < 16 and 64 * (b - k) // b < want:
        b += 1
    edges = [round(64 * i / b) for i in range(b + 1)]
    blocks = list(zip(edges[:-1], edges[1:]))
    return blocks, list(combinations(range(b), b - k))


def _table_key(u: np.ndarray, blocks: list[tuple[int, int]], chosen: tuple[int, ...]) -> np.ndarray:
    key = np.zeros(len(u), np.uint64)
    shift = 0
    for j in chosen:
        lo, hi = blocks[j]
        width = hi - lo
        key |= ((u >> np.uint64(lo)) & np.uint64((1 << width) - 1)) << np.uint64(shift)
        shift += width
    return key


def _close(u: np.ndarray, a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return np.bitwise_count(u[a] ^ u[b]) <= k


def table_pairs(u: np.ndarray, k: int, blocks: list[tuple[int, int]], chosen: tuple[int, ...]) -> np.ndarray:
    """Pairs (row, row) within ``k`` bits among the hashes equal on the blocks ``chosen``."""
    idx_type = np.int32 if len(u) < 2**31 else np.int64
    key = _table_key(u, blocks, chosen)
    order = np.argsort(key, kind="stable").astype(idx_type)
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    lengths = np.diff(np.r_[starts, len(key)])
    run_len = np.repeat(lengths, lengths)
    found = []
    small = (run_len >= 2) & (run_len <= SMALL_RUN)
    s_idx, s_key = order[small], key[small]
    del run_len, key
    for d in range(1, SMALL_RUN):  # members of one run are adjacent: pair each with the one d places on
        same = s_key[:-d] == s_key[d:]
        if not same.any():
            break
        a, b = s_idx[:-d][same], s_idx[d:][same]
        keep = _close(u, a, b, k)
        found.append(np.stack([a[keep], b[keep]], axis=1))
    for s, n in zip(starts[lengths > SMALL_RUN], lengths[lengths > SMALL_RUN]):
        run = order[s:s + n]
        for w0 in range(0, len(run), MAX_RUN):
            win = run[w0:w0 + 2 * MAX_RUN]
            i, j = np.nonzero(np.triu(np.bitwise_count(u[win][:, None] ^ u[win][None, :]) <= k, 1))
            found.append(np.stack([win[i], win[j]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)


def _tables_pairs(u: np.ndarray, k: int, blocks, tables) -> np.ndarray:
    """The pairs of several tables (one task's share), without repeats."""
    return unique_pairs(np.concatenate([table_pairs(u, k, blocks, t) for t in tables]))


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Each undirected pair once, as (smaller, larger)."""
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def near_edges(phash: np.ndarray, max_hamming: int, runner=None, tasks: int = 0) -> np.ndarray:
    """Every pair of rows whose 64-bit hashes (``uint64``) differ in at most ``max_hamming`` bits. With a
    Ray ``runner``, the tables are shared among ``tasks`` tasks (default: one per table)."""
    from supirkit.datapipe.executors import map_tasks

    u = np.ascontiguousarray(phash, np.uint64)
    if len(u) < 2:
        return np.zeros((0, 2), np.int64)
    blocks, tables = block_plan(len(u), max_hamming)
    n_tasks = max(1, min(tasks or len(tables), len(tables)))
    shares = [tables[i::n_tasks] for i in range(n_tasks)]
    found = list(map_tasks(_tables_pairs, shares, runner, shared=(u, max_hamming, blocks)))
    return unique_pairs(np.concatenate(found)) if found else np.zeros((0, 2), np.int64)


__all__ = ["near_edges", "block_plan", "table_pairs", "unique_pairs"]

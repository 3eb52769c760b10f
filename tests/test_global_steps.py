"""The global steps of curation at scale, on small synthetic tables: near-duplicate search by sorting equals
the brute-force answer, hashes are parsed without a Python loop, components join only what has edges, and
the per-bucket work gives the same groups as Ray tasks as on the driver."""
from __future__ import annotations

import numpy as np
import pytest


def _planted(n: int, k: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, set]:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(
        np.uint64)
    planted = set()
    for p in range(pairs):
        a, b = 2 * p, 2 * p + 1
        flips = rng.choice(64, size=rng.integers(0, k + 1), replace=False)
        mask = np.uint64(sum(1 << int(f) for f in flips))
        u[b] = u[a] ^ mask
        planted.add((a, b))
    u[-50:] = u[-51]  # a long run of one hash (flat images all hash alike)
    return u, planted


def _brute(u: np.ndarray, k: int) -> set:
    d = np.bitwise_count(u[:, None] ^ u[None, :])
    i, j = np.nonzero(np.triu(d <= k, 1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("k", [0, 2, 4])
def test_near_pairs_by_sorting_equal_the_brute_force_pairs(k, monkeypatch):
    from supirkit.curation import near

    u, planted = _planted(3000, k, 200, seed=k)
    blocks, tables = near.block_plan(len(u), k)
    assert len(tables) > k or k == 0  # more blocks than the k+1 bands when n asks for longer keys
    monkeypatch.setattr(near, "SMALL_RUN", 8)  # runs above it take the windowed path too
    got = {tuple(p) for p in near.near_edges(u, k).tolist()}
    assert got == _brute(u, k)
    assert planted <= got


def test_block_plans_keep_random_candidates_rare_at_20m():
    from supirkit.curation.near import block_plan

    blocks, tables = block_plan(20_000_000, 4)
    assert len(blocks) == 7 and len(tables) == 35  # C(7, 4) tables of 3-block keys (27-28 bits)
    blocks, tables = block_plan(80_000_000, 4)
    assert len(blocks) == 8 and len(tables) == 70  # 32-bit keys


def test_hex_hashes_parse_without_a_loop():
    import pyarrow as pa

    from supirkit.curation.dedup import phash_values

    hexes = ["00ff00ff00ff00ff", None, "abc", "0123456789ABCDEF", "ffffffffffffffff", "zzzzzzzzzzzzzzzz"]
    values, valid = phash_values(pa.array(hexes).slice(0))
    assert valid.tolist() == [True, False, False, True, True, False]
    for h, v, ok in zip(hexes, values, valid):
        if ok:
            assert int(v) == int(h, 16)
    sliced, _ = phash_values(pa.array(hexes).slice(3, 2))
    assert [int(x) for x in sliced] == [int(hexes[3], 16), int(hexes[4], 16)]


def test_components_join_only_nodes_with_edges():
    from supirkit.curation.dedup import components

    labels = components(10, np.array([[7, 3], [3, 5], [8, 9]]))
    assert labels.tolist() == [0, 1, 2, 3, 4, 3, 6, 3, 8, 8]


def _score_tables(folder, n: int = 400, seed: int = 1):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    (folder / "signals").mkdir(parents=True)
    u, _ = _planted(n, 4, 20, seed)
    keys = [f"{i:020x}" for i in rng.permutation(n)]
    keys[100] = keys[101] = keys[102]  # exact copies
    emb = rng.normal(size=(n, 32)).astype(np.float32)
    emb[201] = emb[200] + 0.01 * rng.normal(size=32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    parts = []
    for p, s in enumerate(range(0, n, 100)):
        rows = range(s, min(n, s + 100))
        path = folder / "signals" / f"signals-{p:06d}.parquet"
        pq.write_table(pa.table({
            "order": [i << 24 for i in rows], "partition": [p] * len(rows), "source": [f"/in/{i}.jpg" for i in rows],
            "key": [keys[i] for i in rows], "phash": [f"{int(u[i]):016x}" for i in rows],
            "status": ["scored"] * len(rows), "clip_embedding": [emb[i].tolist() for i in rows]}), path)
        parts.append(path)
    return parts


@pytest.mark.ray
def test_grouping_as_ray_tasks_equals_grouping_on_the_driver(tmp_path, ray_address):
    from supirkit.curation.config import DedupConfig
    from supirkit.curation.dedup import group_duplicates, load_groups
    from supirkit.datapipe.config import RunnerConfig

    parts = _score_tables(tmp_path)
    cfg = DedupConfig(semantic={"enabled": True, "threshold": 0.95, "n_clusters": 4, "n_buckets": 3})
    here = group_duplicates(parts, parts, tmp_path / "here", cfg, "h")
    ray = group_duplicates(parts, parts, tmp_path / "ray", cfg, "h",
                           RunnerConfig(executor="ray", num_cpus_per_task=0.5, max_in_flight=4))
    assert here == ray and here["edges"]["exact"] == 2 and here["edges"]["semantic"] >= 1
    assert here["edges"]["near"] >= 20
    groups = load_groups(tmp_path / "here")
    assert groups == load_groups(tmp_path / "ray")
    assert groups[100 << 24] == groups[101 << 24] == groups[102 << 24] == 100 << 24
    assert groups[200 << 24] == groups[201 << 24]
